#!/usr/bin/env bash
# Builds the Go client as the Go module proxy serves it: OUTDIR becomes a GOPROXY
# directory holding github.com/tokenvend/tokenvend/client/go/@v/{list,v0.1.0.info,
# v0.1.0.mod,v0.1.0.zip}, the zip carrying the repository's LICENSE. Use it with
# GOPROXY=file://OUTDIR (see install-test.sh), or publish the repository's tag instead.
#
#   client/go/package.sh OUTDIR
#
# Checks first: go mod verify (the dependencies in the module cache are the ones go.sum
# names) and go vet. Go installs from source, so this zip is what a user's go command
# would download and hash; its go.sum line is printed.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
module=github.com/tokenvend/tokenvend/client/go
version=v0.1.0

cd "$here"
go mod verify
go vet ./...

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# The files a tagged release would hold: those git tracks or would track (not .bin/, the
# generators generate.sh installs). Outside a git checkout, everything but .bin/.
if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$here" ls-files -z --cached --others --exclude-standard . |
    while IFS= read -r -d '' f; do
      [[ -f "$f" ]] || continue # deleted, not yet committed
      mkdir -p "$stage/$(dirname "$f")"
      cp -p "$f" "$stage/$f"
    done
else
  tar -C "$here" --exclude=./.bin -cf - . | tar -C "$stage" -xf -
fi
# The licence lives at the repository root; a module zip must carry its own.
cp "$repo/LICENSE" "$stage/LICENSE"

# tools/modzip is a module of its own (golang.org/x/mod), so it is not in the zip.
(cd "$here/tools/modzip" && go run . -dir "$stage" -module "$module" -version "$version" -out "$out")
zip="$out/$module/@v/$version.zip"
# python3's zipfile rather than unzip: a fresh machine of this kind may lack unzip.
python3 - "$zip" "$module@$version" <<'PY' || exit 1
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
prefix = sys.argv[2] + "/"
for f in ("LICENSE", "go.mod", "go.sum", "client.go", "README.md"):
    if prefix + f not in names:
        sys.exit(f"package.sh: {f} missing from {sys.argv[1]}")
if any("/.bin/" in n or "/tools/" in n for n in names):
    sys.exit(f"package.sh: {sys.argv[1]} holds build tools")
PY
echo "go: $zip (GOPROXY=file://$out)"
