#!/usr/bin/env bash
# Builds the npm tarball, OUTDIR/tokenvend-client-VERSION.tgz, with the repository's LICENSE.
#
#   client/node/package.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: client/node/package.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

license=$here/../../LICENSE
[[ -f "$license" ]] || { echo "client/node/package.sh: no LICENSE at the repository root" >&2; exit 1; }
# npm packs the licence file only from the package's own directory.
cp "$license" "$here/LICENSE"
trap 'rm -f "$here/LICENSE"' EXIT

cd "$here"
tgz=$(npm pack --silent --ignore-scripts --pack-destination "$out")
# A tarball without these would install and then fail at the first require or type check.
listing=$(tar -tzf "$out/$tgz")
for f in package/LICENSE package/README.md package/index.d.ts package/src/index.js package/proto/tokenvend/v1/tokenvend.proto; do
  grep -qx "$f" <<<"$listing" || { echo "client/node/package.sh: $f missing from $tgz" >&2; exit 1; }
done
if grep -q '^package/test/' <<<"$listing"; then
  echo "client/node/package.sh: tests leaked into $tgz" >&2
  exit 1
fi
echo "node: $out/$tgz"
