#!/usr/bin/env bash
# The issue-19 daemon figures (BENCHMARKS.md, "6 daemons: 3 channels of 2
# nodes beside all serving everything"): six `chorus serve` daemons on
# 127.0.0.1, all serving everything, then with 3 channels of 2 nodes, fresh
# directories each time, 3 rounds at 24 and 96 client connections.
#
#   scripts/channels-bench.sh                 # 3 rounds (~5 min after the build)
#   scripts/channels-bench.sh --quick         # 1 round, 3 s windows (a smoke run)
#   scripts/channels-bench.sh --seconds 20    # longer measured windows
#
# Arguments go to `chorus-bench channels`; the raw figures go to
# $OUT/channels-<unix time>.json (OUT defaults to target/channels-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
OUT=${OUT:-$target/channels-bench}
mkdir -p "$OUT"
cargo build --release -p chorus-cli -p chorus-bench >&2
cores=$(nproc)
echo "channels-bench: 6 daemons and their client threads share this machine's $cores cores" \
  "(and whatever else runs on it: see 'other processes' below)." >&2
if [ "$cores" -lt 6 ]; then
  echo "channels-bench: fewer cores than daemons, so the run is CPU-bound: the throughput" \
    "ratio follows the CPU per write of the whole cluster, which is what channels save," \
    "not the ratio a cluster with a machine per node would see." >&2
fi
json="$OUT/channels-$(date +%s).json"
"$target/release/chorus-bench" channels --json "$json" "$@"
