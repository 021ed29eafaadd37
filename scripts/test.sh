#!/usr/bin/env bash
# Runs Chorus's whole test suite. Needs only the Rust toolchain; installs
# whatever else the tests need: util-linux's flock, curl for the HTTP tests.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  ($sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}") >/dev/null
fi
cargo test --workspace --all-targets
cargo test --workspace --doc
