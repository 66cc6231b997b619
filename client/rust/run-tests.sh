#!/usr/bin/env bash
# Lints and tests the Rust client beyond what `cargo test --workspace` covers: clippy for
# each feature set a user can choose (the workspace build sees only the features the
# workspace turns on), and the client's unit and doc tests with every feature.
#
#   client/rust/run-tests.sh
#   client/rust/run-tests.sh --e2e   # also the end-to-end tests against the real server
#                                    # (tests/e2e/rust_client*.rs; `cargo test --workspace`
#                                    # runs them too)
set -euo pipefail
cd "$(dirname "$0")/../.."

for features in "--no-default-features" \
  "--no-default-features --features reqwest" \
  "--no-default-features --features tower" \
  "--all-features"; do
  # shellcheck disable=SC2086 # one word per flag
  cargo clippy --quiet -p tokenvend-client $features --all-targets -- -D warnings
done
cargo test --quiet -p tokenvend-client --all-features
if [[ "${1:-}" == "--e2e" ]]; then
  cargo test --quiet -p tokenvend --test e2e rust_client
  cargo test --quiet -p tokenvend-server --test cli_get
fi
