#!/usr/bin/env bash
# Builds the Rust client's crates into OUTDIR, as `cargo publish` would upload them:
# tokenvend (the generated gRPC API) and tokenvend-client, which depends on it.
#
#   client/rust/package.sh OUTDIR
#
# The files are packaged from the working tree as it is, committed or not. Not verified
# here: install-test.sh builds a project from these very files.
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}

# Both at once: cargo resolves the client's dependency on the unpublished `tokenvend`
# through a temporary local registry holding the other package.
cargo package --quiet --allow-dirty --no-verify -p tokenvend -p tokenvend-client
for crate in tokenvend tokenvend-client; do
  cp "$target/package/$crate-0.1.0.crate" "$out/"
  echo "$out/$crate-0.1.0.crate"
done
