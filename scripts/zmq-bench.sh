#!/usr/bin/env bash
# Chorus's ZeroMQ broker beside Redis (appendfsync always / everysec): see
# scripts/zmq-bench.py and BENCHMARKS.md. Installs redis-server,
# redis-tools and pyzmq if missing, builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  ($sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server redis-tools) >/dev/null
fi
python3 -c 'import zmq' >/dev/null 2>&1 || python3 -m pip install --quiet pyzmq
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
cargo build --release -q -p chorus-cli -p chorus-bench
CHORUS_BIN="$CARGO_TARGET_DIR/release/chorus" CHORUS_BENCH_BIN="$CARGO_TARGET_DIR/release/chorus-bench" exec python3 scripts/zmq-bench.py "$@"
