#!/usr/bin/env bash
# Builds the wheel and the sdist of tokenvend-client into OUTDIR:
#
#   client/python/package.sh OUTDIR
#
# `python -m build` makes the sdist, then the wheel from that sdist, so a file missing
# from the sdist fails here rather than at a user's `pip install`. `twine check` then
# reads the metadata and the README as PyPI would. Both tools come from PyPI into
# .venv-build beside this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
out="$(cd "$1" && pwd)"

venv="$here/.venv-build"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check 'build>=1.2' 'twine>=6.1'

# A private staging dir: an old wheel or sdist in OUTDIR must not be taken for this one.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
"$venv/bin/python" -m build --outdir "$stage" "$here" >"$stage/build.log" 2>&1 || {
  cat "$stage/build.log" >&2
  exit 1
}
rm "$stage/build.log"
"$venv/bin/twine" check --strict "$stage"/*

# The wheel must carry the licence, the typing marker and the stubs' .pyi, and no tests.
wheel="$(ls "$stage"/tokenvend_client-*.whl)"
"$venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["tokenvend_client/py.typed", "tokenvend_client/_pb/tokenvend/v1/tokenvend_pb2.pyi"]
missing = [n for n in need if n not in names]
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    missing.append("LICENSE")
stray = [n for n in names if n.startswith("tests/") or "__pycache__" in n]
if missing or stray:
    sys.exit(f"package.sh: wheel lacks {missing}, has stray {stray}")
PY
mv "$stage"/* "$out/"
echo "python: $out/$(basename "$wheel") and the sdist beside it"
