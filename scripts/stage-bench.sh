#!/usr/bin/env bash
# Staging figures for BENCHMARKS.md, on this machine:
#  - writes per second into a stage directory from one process (each write
#    its own commit, synced: --sync always, the default);
#  - the time from the last write to its arrival upstream, with the stage
#    daemon running with --quiet 1s and a batch limit above the round's
#    size (so about 1 s is the quiet period itself; the rest is the push).
#
# Usage: scripts/stage-bench.sh [KEYS_PER_ROUND] [ROUNDS]   (default 10000 3)
# CHORUS=/path/to/chorus uses that binary; otherwise a release build is made.
# Needs curl and python3. Everything runs on 127.0.0.1 in a temporary directory.
set -euo pipefail

KEYS=${1:-10000}
ROUNDS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${CHORUS:-}" ]; then
  cargo build --release -p chorus-cli --manifest-path "$ROOT/Cargo.toml" >&2
  CHORUS="${CARGO_TARGET_DIR:-$ROOT/target}/release/chorus"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { python3 -c 'import time; print(f"{time.time():.4f}")'; }

HTTP=$(port)
GOSSIP=$(port)
URL="http://127.0.0.1:$HTTP"
"$CHORUS" --dir "$WORK/up" serve --insecure --gossip "127.0.0.1:$GOSSIP" --http "127.0.0.1:$HTTP" 2>"$WORK/up.log" &
PIDS+=($!)
for _ in $(seq 200); do curl -sf "$URL/health" >/dev/null && break; sleep 0.05; done

# --batch high enough that the quiet period, not a full batch, starts each push.
"$CHORUS" --dir "$WORK/stage" stage --upstream "$URL" --quiet 1s --batch 1000000 2>"$WORK/stage.log" &
PIDS+=($!)
for _ in $(seq 200); do grep -q "connected to" "$WORK/stage.log" 2>/dev/null && break; sleep 0.05; done

echo "chorus stage benchmark: $ROUNDS rounds of $KEYS writes, one process, sync always, --quiet 1s"
echo "stage directory on: $(df -T "$WORK" | awk 'NR==2 {print $2}')"
for r in $(seq "$ROUNDS"); do
  OUT=$("$CHORUS" --dir "$WORK/stage" --json stage fill bench/keys "$KEYS" --tag "r$r")
  LAST=$(now)
  until curl -sf "$URL/v1/kv/bench/keys/r$r-$((KEYS - 1))" >/dev/null; do sleep 0.005; done
  ARRIVED=$(now)
  python3 - "$OUT" "$LAST" "$ARRIVED" "$r" <<'EOF'
import json, sys
fill = json.loads(sys.argv[1])
last, arrived, r = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"round {r}: {fill['per_second']:.0f} writes/s into the stage; "
      f"last write -> upstream {arrived - last:.3f} s")
EOF
done

# Every key arrived, and in how many pushes.
COUNT=$(curl -sf "$URL/v1/kv/bench/keys" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["keys"]))')
echo "keys upstream: $COUNT of $((KEYS * ROUNDS))"
"$CHORUS" --dir "$WORK/stage" --json stage status | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("pushes: %d (%d requests) for %d keys" % (s["pushes_total"], s["requests_total"], s["keys_pushed_total"]))'
