#!/usr/bin/env bash
# Runs Chorus's whole test suite. Needs only the Rust toolchain; installs
# whatever else the tests need (nothing yet beyond util-linux's flock).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v flock >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq util-linux) >/dev/null
  fi
fi
cargo test --workspace --all-targets
cargo test --workspace --doc
