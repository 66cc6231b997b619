#!/usr/bin/env bash
# Tests the C# client.
#
# With a .NET 8 SDK on PATH: `dotnet test` against the real tokenvend binary.
# Without one (the polyglot machine kind, which cannot reach nuget.org): static checks only —
# protoc generates the C# messages, and tree-sitter parses the generated and hand-written C#.
# Nothing is compiled and no C# test runs in that case; the output says so.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
REPO=$(cd ../.. && pwd)
BUILD="$HERE/.build"
export TOKENVEND_BIN="${TOKENVEND_BIN:-$REPO/target/debug/tokenvend}"
started=$SECONDS

if command -v dotnet >/dev/null 2>&1 && [ -n "$(dotnet --list-sdks 2>/dev/null)" ]; then
    if [ ! -x "$TOKENVEND_BIN" ]; then
        (cd "$REPO" && cargo build -q -p tokenvend-server --bin tokenvend)
    fi
    dotnet test Tokenvend.Client.Tests --nologo
    echo "csharp: dotnet test finished in $((SECONDS - started)) s"
    exit 0
fi

echo "NOTE: no .NET SDK on PATH: dotnet test is NOT run; static checks only."

# protoc and the well-known types' .proto files (libprotobuf-dev) from Debian; we are root
# on this machine kind, so apt-get works without sudo.
if ! command -v protoc >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/duration.proto ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null
fi

# tree-sitter's C# grammar from PyPI, in a local venv.
if [ ! -x "$BUILD/venv/bin/python" ] || ! "$BUILD/venv/bin/python" -c 'import tree_sitter, tree_sitter_c_sharp' 2>/dev/null; then
    rm -rf "$BUILD/venv"
    python3 -m venv "$BUILD/venv"
    "$BUILD/venv/bin/pip" install -q --disable-pip-version-check tree-sitter==0.25.2 tree-sitter-c-sharp==0.23.5
fi

# The same proto, with relative paths as Grpc.Tools passes them.
GEN="$BUILD/gen"
rm -rf "$GEN" && mkdir -p "$GEN"
grpc_args=()
if plugin=$(command -v grpc_csharp_plugin); then
    grpc_args=(--grpc_out="$GEN" --plugin=protoc-gen-grpc="$plugin")
fi
(cd "$REPO/proto" && protoc --csharp_out="$GEN" "${grpc_args[@]}" -I . tokenvend/v1/tokenvend.proto)

"$BUILD/venv/bin/python" tools/check_csharp.py "$GEN"
# Without an SDK the packaging scripts must say they did nothing, and not fail CI.
for script in package.sh install-test.sh; do
    line=$(./$script "$BUILD/pkg")
    [[ "$line" == SKIP* ]] || { echo "FAIL $script without an SDK: $line"; exit 1; }
    echo "PASS $script without an SDK: $line"
done
echo "csharp: static checks finished in $((SECONDS - started)) s (dotnet test not run)"
