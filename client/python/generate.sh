#!/usr/bin/env bash
# Regenerates the protobuf/gRPC stubs from ../../proto into the package.
#
#   ./generate.sh            # writes src/tokenvend_client/_pb (the committed copy)
#   ./generate.sh OUT_DIR    # writes elsewhere (the drift test uses this)
#
# Needs grpcio-tools at the version pinned in pyproject.toml's `test` extra: the stubs
# embed the generator's version, so another version yields a (harmless) diff.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_root="$(cd "$here/../../proto" && pwd)"
out="${1:-$here/src/tokenvend_client/_pb}"
python="${PYTHON:-python3}"

mkdir -p "$out"
rm -rf "$out/tokenvend"
"$python" -m grpc_tools.protoc \
  -I"$proto_root" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "$proto_root/tokenvend/v1/tokenvend.proto"

# protoc emits imports rooted at the proto path (`from tokenvend.v1 import ...`); inside
# this package they must be rooted at tokenvend_client._pb instead. Done in Python rather
# than `sed -i`, whose flags differ between GNU and BSD.
"$python" - "$out" <<'PY'
import pathlib, sys
out = pathlib.Path(sys.argv[1])
for path in sorted(out.joinpath("tokenvend").rglob("*.py*")):
    text = path.read_text()
    fixed = text.replace("from tokenvend.v1 import", "from tokenvend_client._pb.tokenvend.v1 import")
    if fixed != text:
        path.write_text(fixed)
for pkg in (out, out / "tokenvend", out / "tokenvend" / "v1"):
    init = pkg / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated code; regenerate with generate.sh, do not edit."""\n' if pkg == out else "")
PY
