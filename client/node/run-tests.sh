#!/usr/bin/env bash
# Installs the Node client's dependencies locally and runs its lint and tests against the
# real tokenvend binary (TOKENVEND_BIN, default ../../target/debug/tokenvend).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export TOKENVEND_BIN="${TOKENVEND_BIN:-$(cd ../.. && pwd)/target/debug/tokenvend}"
if [[ ! -x "$TOKENVEND_BIN" ]]; then
  echo "tokenvend binary not found at $TOKENVEND_BIN; building it" >&2
  (cd ../.. && cargo build -p tokenvend-server --bin tokenvend)
fi

npm ci --no-audit --no-fund
npm run lint
npm test
