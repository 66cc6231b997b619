#!/usr/bin/env bash
# Installs the client with its test deps into ./.venv, lints, and runs the tests against
# the real tokenvend binary ($TOKENVEND_BIN, default ../../target/debug/tokenvend).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ -z "${TOKENVEND_BIN:-}" ]]; then
  export TOKENVEND_BIN="$PWD/../../target/debug/tokenvend"
fi
if [[ ! -x "$TOKENVEND_BIN" ]]; then
  echo "building tokenvend ($TOKENVEND_BIN missing)" >&2
  (cd ../.. && cargo build -q -p tokenvend-server --bin tokenvend)
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,lint]'

.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
# Four workers: the slow tests sleep through token lifetimes rather than use the CPU.
.venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-4}" "$@"
