#!/usr/bin/env bash
# Lints and tests the Go client against the real tokenvend server.
#
#   ./run-tests.sh
#   TOKENVEND_BIN=/path/to/tokenvend ./run-tests.sh
#   TOKENVEND_CHECK_GENERATED=1 ./run-tests.sh   # also rebuild tokenvendpb and compare
#                                                # (installs buf: several minutes the first time)
#
# Needs Go 1.25+ and the Go module proxy; modules go to the usual Go module cache.
# Packaging is separate: ./package.sh OUTDIR, then ./install-test.sh OUTDIR.
set -euo pipefail
cd "$(dirname "$0")"

export TOKENVEND_BIN="${TOKENVEND_BIN:-$(cd ../.. && pwd)/target/debug/tokenvend}"
if [[ ! -x "$TOKENVEND_BIN" ]]; then
  echo "tokenvend binary not found at $TOKENVEND_BIN; building it" >&2
  (cd ../.. && cargo build -p tokenvend-server --bin tokenvend)
fi

unformatted=$(gofmt -l .)
if [[ -n "$unformatted" ]]; then
  echo "gofmt needed on:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
# package.sh's zip writer is a module of its own (golang.org/x/mod), outside ./...
(cd tools/modzip && go vet .)
# The conformance tests (TestConformance_<id>, client/README.md) are part of this run;
# they start their own servers with `serve --config` and run in parallel (~25 s).
go test -count=1 ./... "$@"
