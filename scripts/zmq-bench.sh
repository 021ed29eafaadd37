#!/usr/bin/env bash
# Chorus's ZeroMQ broker beside Redis (appendfsync always): see
# scripts/zmq-bench.py and BENCHMARKS.md (issue 15). Installs redis-server,
# redis-tools and pyzmq if missing, builds the release binaries into the
# workspace's target directory ($CARGO_TARGET_DIR if set, else target/
# under the repository) and passes its arguments on to zmq-bench.py:
#
#   scripts/zmq-bench.sh                       # 1, 8, 64 clients, 3 rounds of 5 s
#   scripts/zmq-bench.sh --seconds 3 --rounds 1 --clients 1,8 --json out.json
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # RUNLEVEL=1: Debian's postinst then leaves the packaged service (port
  # 6379) stopped; the benchmark starts its own server.
  ($sudo apt-get update -qq && $sudo env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq redis-server redis-tools) >/dev/null
fi
python3 -c 'import zmq' >/dev/null 2>&1 || python3 -m pip install --quiet pyzmq
target="${CARGO_TARGET_DIR:-target}"
CARGO_TARGET_DIR="$target" cargo build --release -q -p chorus-cli -p chorus-bench
target="$(cd "$target" && pwd)"
CHORUS_BIN="$target/release/chorus" CHORUS_BENCH_BIN="$target/release/chorus-bench" \
  exec python3 scripts/zmq-bench.py "$@"
