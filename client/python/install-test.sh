#!/usr/bin/env bash
# Installs the wheel that package.sh built into a fresh venv in a scratch directory, as a
# new user would, and gets a token from `tokenvend serve --dev` with it:
#
#   client/python/install-test.sh OUTDIR
#
# The server is $TOKENVEND_BIN (default ../../target/debug/tokenvend), started on free
# loopback ports and stopped on exit. Fails if any step does.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out="$(cd "$1" && pwd)"
shopt -s nullglob
wheels=("$out"/tokenvend_client-*.whl)
if [[ ${#wheels[@]} -ne 1 ]]; then
  echo "install-test.sh: expected one tokenvend_client wheel in $out, found ${#wheels[@]}" >&2
  exit 1
fi
wheel="${wheels[0]}"
bin="${TOKENVEND_BIN:-$here/../../target/debug/tokenvend}"
if [[ ! -x "$bin" ]]; then
  echo "install-test.sh: no tokenvend binary at $bin (set TOKENVEND_BIN)" >&2
  exit 1
fi

scratch="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

python3 -m venv "$scratch/venv"
# With both extras, so that the adapters' imports are checked against the wheel too.
"$scratch/venv/bin/python" -m pip install -q --disable-pip-version-check "${wheel}[requests,httpx]"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
listen="127.0.0.1:$(free_port)"
"$bin" serve --dev --listen "$listen" --admin-listen "127.0.0.1:$(free_port)" >"$scratch/server.log" 2>&1 &
server_pid=$!

# Until the gRPC port accepts connections; a server that exited fails at once.
for _ in $(seq 150); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "install-test.sh: tokenvend exited; its log:" >&2
    cat "$scratch/server.log" >&2
    exit 1
  fi
  if python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()' \
    "${listen%:*}" "${listen##*:}" 2>/dev/null; then
    break
  fi
  sleep 0.2
done

cat >"$scratch/hello.py" <<'PY'
import http.server
import sys
import threading

import requests

import tokenvend_client
from tokenvend_client import TokenClient, TokenvendAdapter, TokenvendHttpxAuth

target = sys.argv[1]
# Installed from the wheel, not imported from a checkout.
assert "site-packages" in tokenvend_client.__file__, tokenvend_client.__file__
assert TokenvendAdapter and TokenvendHttpxAuth

with TokenClient(target) as tv:
    token = tv.get_token("demo", timeout=10)
    assert token.headers["authorization"] == "Bearer " + token.access_token

    # And on an HTTP call, through the requests adapter, to a local API that records it.
    seen = []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("authorization"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    api = http.server.HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{api.server_address[1]}/"
    with requests.Session() as session:
        session.mount(url, TokenvendAdapter(tv, "demo"))
        assert session.get(url, timeout=5).status_code == 204
    api.shutdown()
    assert seen == [token.headers["authorization"]], "the API did not get the token"
    print(f"hello from tokenvend-client {tokenvend_client.__version__}: a {token.token_type} token "
          f"for {token.profile!r}, valid until {token.expires_at:%H:%M:%S} UTC")
PY
(cd "$scratch" && ./venv/bin/python hello.py "$listen") || {
  echo "install-test.sh: hello world failed; server log:" >&2
  cat "$scratch/server.log" >&2
  exit 1
}
