"""Fixtures: the real tokenvend binary in --dev mode, and a tiny upstream HTTP API."""

from __future__ import annotations

import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from tokenvend_client import TokenClient
from tokenvend_client._pb.tokenvend.v1 import tokenvend_pb2, tokenvend_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tokenvend_bin() -> str:
    binary = os.environ.get("TOKENVEND_BIN", str(REPO_ROOT / "target" / "debug" / "tokenvend"))
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"tokenvend binary not found at {binary}; build it with "
            "`cargo build -p tokenvend-server --bin tokenvend` or set TOKENVEND_BIN"
        )
    return binary


class TokenvendServer:
    """The real tokenvend binary on free loopback ports, with ``serve --dev`` or a
    configuration file; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: Path, config: str | None = None, target: str | None = None):
        self.target = target or f"127.0.0.1:{_free_port()}"
        admin = f"127.0.0.1:{_free_port()}"
        self.log_path = workdir / "server.log"
        args = [tokenvend_bin(), "serve", "--listen", self.target, "--admin-listen", admin]
        if config is None:
            args.append("--dev")
        else:
            config_path = workdir / "tokenvend.yaml"
            config_path.write_text(config)
            args += ["--config", str(config_path)]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(self.proc, self.target, self.log_path)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def tokenvend_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = TokenvendServer(tmp_path_factory.mktemp("tokenvend"))
    try:
        yield server.target
    finally:
        server.stop()


def _wait_ready(proc: subprocess.Popen, target: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    last: BaseException | None = None
    with grpc.insecure_channel(target) as channel:
        # Through the raw stub: the probe must not count as a call of the client under test.
        stub = tokenvend_pb2_grpc.TokenServiceStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tokenvend exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                stub.ListProfiles(tokenvend_pb2.ListProfilesRequest(), timeout=2)
                return
            except grpc.RpcError as err:
                last = err
                time.sleep(0.1)
    pytest.fail(f"tokenvend not ready after 30 s ({last}):\n{log_path.read_text()}")


class _Recorder:
    """Records each unary RPC's method, metadata and request, to see what the client
    really sends."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.requests: list = []
        self.times: list[float] = []
        self._lock = threading.Lock()

    def record(self, client_call_details, request) -> None:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        with self._lock:
            self.calls.append((method, tuple(client_call_details.metadata or ())))
            self.requests.append(request)
            self.times.append(time.monotonic())

    def count(self, method_suffix: str = "/GetToken") -> int:
        with self._lock:
            return sum(1 for m, _ in self.calls if m.endswith(method_suffix))

    def get_token_requests(self) -> list:
        with self._lock:
            return [r for (m, _), r in zip(self.calls, self.requests) if m.endswith("/GetToken")]

    def get_token_times(self) -> list[float]:
        with self._lock:
            return [t for (m, _), t in zip(self.calls, self.times) if m.endswith("/GetToken")]


class CountingInterceptor(_Recorder, grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.record(client_call_details, request)
        return continuation(client_call_details, request)


class AsyncCountingInterceptor(_Recorder, grpc.aio.UnaryUnaryClientInterceptor):
    """The same for grpc.aio channels."""

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        self.record(client_call_details, request)
        return await continuation(client_call_details, request)


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
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    yield u
    u.close()


class IdentityProvider:
    """A token endpoint of our own for configurations where the dev issuer does not fit:
    ``POST /token/<seconds>`` issues an opaque token living that long. Counts requests
    per path; ``failing`` makes it answer 503."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.failing = False
        self._lock = threading.Lock()
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                with idp._lock:
                    idp.hits[self.path] = idp.hits.get(self.path, 0) + 1
                    failing = idp.failing
                if failing or not self.path.startswith("/token/"):
                    payload = b'{"error":"temporarily_unavailable"}'
                    self.send_response(503)
                else:
                    lifetime = int(self.path.rsplit("/", 1)[1])
                    token = {"access_token": secrets.token_hex(16), "token_type": "Bearer"}
                    payload = json.dumps({**token, "expires_in": lifetime}).encode()
                    self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def count(self, lifetime: int) -> int:
        with self._lock:
            return self.hits.get(f"/token/{lifetime}", 0)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def short_lived_config(idp: IdentityProvider, secret_file: Path, lifetimes: dict[str, int]) -> str:
    """A tokenvend configuration with one profile per entry of ``lifetimes``, each getting
    tokens that live that many seconds from ``idp``."""
    lines = ["server:", "  shutdown_delay: 0s", "profiles:"]
    for name, lifetime in lifetimes.items():
        lines += [
            f"  {name}:",
            f"    token_url: {idp.url}/token/{lifetime}",
            "    client_id: conformance",
            f"    client_secret: {{ file: {secret_file} }}",
            "    rejected_token_min_interval: 0s",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


@pytest.fixture
def short_lived(idp: IdentityProvider, tmp_path: Path):
    """Starts tokenvend with short-lived profiles: ``short_lived({"p": 10})`` returns the
    running server (on ``target`` if given); it is stopped after the test."""
    secret = tmp_path / "client-secret"
    secret.write_text("not-a-real-secret\n")
    servers: list[TokenvendServer] = []

    def start(lifetimes: dict[str, int], target: str | None = None) -> TokenvendServer:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = TokenvendServer(workdir, short_lived_config(idp, secret, lifetimes), target)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def unresponsive() -> Iterator[str]:
    """A loopback TCP listener that accepts connections and never answers: tokenvend hung."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def closed_port() -> str:
    """An address where nothing listens: tokenvend down."""
    return f"127.0.0.1:{_free_port()}"
