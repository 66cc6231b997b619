#!/usr/bin/env bash
# Installs the Rust client from the crates that package.sh made, in a new cargo project
# in a temporary directory, and gets a token from `tokenvend serve --dev` with it.
#
#   client/rust/install-test.sh OUTDIR
#   TOKENVEND_BIN=/path/to/tokenvend client/rust/install-test.sh OUTDIR
#
# The project depends on the unpacked .crate files (never on client/rust), as it would on
# crates.io; it builds in the repository's target directory (or CARGO_TARGET_DIR), where
# the dependencies are already compiled.
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
bin=${TOKENVEND_BIN:-$repo/target/debug/tokenvend}
if [[ ! -x "$bin" ]]; then
  echo "tokenvend binary not found at $bin; building it" >&2
  (cd "$repo" && cargo build --quiet -p tokenvend-server --bin tokenvend)
fi

scratch=$(mktemp -d)
server=
cleanup() {
  [[ -z "$server" ]] || kill "$server" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

mkdir "$scratch/crates"
for crate in tokenvend tokenvend-client; do
  file="$out/$crate-0.1.0.crate"
  [[ -f "$file" ]] || { echo "missing $file: run package.sh first" >&2; exit 1; }
  tar -xzf "$file" -C "$scratch/crates"
done

mkdir -p "$scratch/hello/src"
cat >"$scratch/hello/Cargo.toml" <<'TOML'
[package]
name = "hello-tokenvend"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
tokenvend-client = { path = "../crates/tokenvend-client-0.1.0" }
tokio = { version = "1", features = ["macros", "rt-multi-thread", "time"] }

# The packaged client asks for `tokenvend` from crates.io; until it is published, the
# packaged one stands in.
[patch.crates-io]
tokenvend = { path = "../crates/tokenvend-0.1.0" }

[workspace]
TOML
cat >"$scratch/hello/src/main.rs" <<'RUST'
use std::time::{Duration, Instant};

use tokenvend_client::{TokenClient, TokenMiddleware};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args().nth(1).ok_or("usage: hello-tokenvend HOST:PORT")?;
    // Builds before the server is up: it connects on first use.
    let tokens = TokenClient::new(server)?;
    let _http = reqwest_middleware_client(&tokens);
    let give_up = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match tokens.get_token("demo").await {
            Ok(token) => break token,
            Err(error) if error.is_retryable() && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    assert!(!token.access_token.is_empty());
    println!(
        "hello-tokenvend: a {} token for {:?}, valid {} s more",
        token.token_type,
        token.profile,
        token.remaining().as_secs()
    );
    Ok(())
}

fn reqwest_middleware_client(tokens: &TokenClient) -> tokenvend_client::reqwest_middleware::ClientWithMiddleware {
    tokenvend_client::reqwest_middleware::ClientBuilder::new(tokenvend_client::reqwest::Client::new())
        .with(TokenMiddleware::new(tokens.clone(), "demo"))
        .build()
}
RUST
# The versions the repository builds with, so that the shared target directory already
# holds them; cargo adds what the project needs beside.
cp "$repo/Cargo.lock" "$scratch/hello/Cargo.lock"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc="127.0.0.1:$(free_port)"
"$bin" serve --dev --listen "$grpc" --admin-listen "127.0.0.1:$(free_port)" \
  >"$scratch/server.log" 2>&1 &
server=$!

(cd "$scratch/hello" && cargo build --quiet)
if ! (cd "$scratch/hello" && cargo run --quiet -- "$grpc"); then
  echo "install test failed; server log:" >&2
  cat "$scratch/server.log" >&2
  exit 1
fi
echo "client/rust install test: OK"
