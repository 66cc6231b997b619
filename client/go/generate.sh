#!/usr/bin/env bash
# Regenerates tokenvendpb/ from proto/tokenvend/v1/tokenvend.proto.
#
# The generated code is committed (Go modules are consumed from source), so this only needs
# running after the proto changes. The tools are pinned and installed into ./.bin so that
# every run produces byte-identical output whatever is on the machine's PATH.
#
#   ./generate.sh             # writes ./tokenvendpb
#   OUT_DIR=/tmp/x ./generate.sh  # writes /tmp/x/tokenvendpb (used by the freshness test)
set -euo pipefail
cd "$(dirname "$0")"

BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

HERE=$PWD
BIN="$HERE/.bin"
OUT_DIR="${OUT_DIR:-$HERE}"
mkdir -p "$BIN" "$OUT_DIR"

# Each tool is reinstalled only when the recorded version differs from the pin.
install() { # name module version
  local stamp="$BIN/.$1.version"
  if [[ ! -x "$BIN/$1" || "$(cat "$stamp" 2>/dev/null)" != "$3" ]]; then
    echo "installing $2@$3" >&2
    GOBIN="$BIN" GOFLAGS=-mod=mod go install "$2@$3"
    echo "$3" >"$stamp"
  fi
}
install buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
install protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

# module= strips the go_package prefix, so files land in $OUT_DIR/tokenvendpb.
TEMPLATE=$(cat <<JSON
{"version":"v2","clean":false,"plugins":[
 {"local":"$BIN/protoc-gen-go","out":"$OUT_DIR","opt":["module=github.com/tokenvend/tokenvend/client/go"]},
 {"local":"$BIN/protoc-gen-go-grpc","out":"$OUT_DIR","opt":["module=github.com/tokenvend/tokenvend/client/go"]}
]}
JSON
)
cd ../../proto
"$BIN/buf" generate --template "$TEMPLATE" --path tokenvend/v1/tokenvend.proto .
