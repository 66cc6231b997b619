"""Fixtures: the real tokenvend binary in --dev mode, and a tiny upstream HTTP API."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tokenvend_client import TokenClient

REPO_ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tokenvend_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = os.environ.get("TOKENVEND_BIN", str(REPO_ROOT / "target" / "debug" / "tokenvend"))
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"tokenvend binary not found at {binary}; build it with "
            "`cargo build -p tokenvend-server --bin tokenvend` or set TOKENVEND_BIN"
        )
    target = f"127.0.0.1:{_free_port()}"
    admin = f"127.0.0.1:{_free_port()}"
    log_path = tmp_path_factory.mktemp("tokenvend") / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [binary, "serve", "--dev", "--listen", target, "--admin-listen", admin],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(proc, target, log_path)
        yield target
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen, target: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    last: BaseException | None = None
    with TokenClient(target, timeout=2) as probe:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tokenvend exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                probe.get_token("demo")
                return
            except grpc.RpcError as err:
                last = err
                time.sleep(0.2)
    pytest.fail(f"tokenvend not ready after 30 s ({last}):\n{log_path.read_text()}")


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Records each unary RPC's method and metadata, to see what the client really sends."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation, client_call_details, request):
        with self._lock:
            self.calls.append((client_call_details.method, tuple(client_call_details.metadata or ())))
        return continuation(client_call_details, request)

    def count(self, method_suffix: str = "/GetToken") -> int:
        with self._lock:
            return sum(1 for m, _ in self.calls if m.endswith(method_suffix))


@pytest.fixture
def counted(tokenvend_target: str):
    """A TokenClient over an intercepted channel, and the interceptor counting its RPCs."""
    interceptor = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(tokenvend_target), interceptor)
    client = TokenClient(channel=channel)
    yield client, interceptor
    channel.close()


@pytest.fixture
def client(tokenvend_target: str) -> Iterator[TokenClient]:
    with TokenClient(tokenvend_target) as c:
        yield c


class Upstream:
    """A resource API stand-in: answers 401 to the first ``fail_first`` requests (all of
    them when ``fail_first`` is None), 200 after; records each request's Authorization
    header and body."""

    def __init__(self) -> None:
        self.fail_first: int | None = 1
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                else:
                    body = self.rfile.read(length) if length else b""
                with upstream._lock:
                    upstream.seen.append({"authorization": self.headers.get("authorization"), "body": body})
                    n = len(upstream.seen)
                    fail = upstream.fail_first is None or n <= upstream.fail_first
                payload = b"unauthorized" if fail else b"ok"
                self.send_response(401 if fail else 200)
                if fail:
                    self.send_header("www-authenticate", 'Bearer error="invalid_token"')
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _read_chunked(self) -> bytes:
                out = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/order/response"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    yield u
    u.close()
