#!/usr/bin/env bash
# Runs Chorus's whole test suite. Needs only the Rust toolchain; installs
# whatever else the tests need: util-linux's flock, curl for the HTTP tests,
# pyzmq for the ZeroMQ client test.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  ($sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}") >/dev/null
fi
if ! python3 -c 'import zmq' >/dev/null 2>&1; then
  python3 -m pip install --quiet pyzmq 2>/dev/null \
    || python3 -m pip install --quiet --user pyzmq 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages pyzmq
fi
cargo test --workspace --all-targets
# The simulator's injected bugs: each must be caught by some seed.
cargo test -p chorus-sim --features mutations --test mutations
cargo test --workspace --doc
