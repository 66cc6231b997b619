#!/usr/bin/env bash
# Calls tokenvend's ext_authz service with the client generated from Envoy's own protos
# (go-control-plane), as Envoy would, against the real server binary.
#
#   TOKENVEND_BIN=/path/to/tokenvend tests/extauthz-go/run-tests.sh
#   TOKENVEND_CHECK_GENERATED=1 tests/extauthz-go/run-tests.sh   # also print Envoy's protos
#                                  # again (scripts/envoy-protos) and compare with proto/
#
# Needs Go and the Go module proxy; modules go to the usual Go module cache.
set -euo pipefail
cd "$(dirname "$0")"

export TOKENVEND_BIN="${TOKENVEND_BIN:-$(cd ../.. && pwd)/target/debug/tokenvend}"
unformatted=$(gofmt -l .)
if [[ -n "$unformatted" ]]; then
  echo "gofmt needed on:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
go test -count=1 ./...

if [[ "${TOKENVEND_CHECK_GENERATED:-}" == 1 ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  go -C ../../scripts/envoy-protos run . "$out" >/dev/null
  # Every file the generator writes, and no other, is vendored, byte for byte.
  diff -r --exclude=tokenvend --exclude=README.md "$out" ../../proto
  echo "proto/: Envoy's files match scripts/envoy-protos"
fi
