#!/usr/bin/env bash
# The issue-4 figures: every `chorus sim` run BENCHMARKS.md reports, for
# seeds 1 to 3, with JSON kept in $OUT (default target/sim-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/sim-bench}
mkdir -p "$OUT"
cargo build --release -q -p chorus-cli
chorus="${CARGO_TARGET_DIR:-target}/release/chorus"
for seed in 1 2 3; do
  "$chorus" sim --json --nodes 10000 --messages 200 --seed "$seed" --plot "$OUT/sim-10k-seed$seed.svg" >"$OUT/nofail-$seed.json"
  "$chorus" sim --json --nodes 10000 --messages 200 --fail 0.5 --seed "$seed" >"$OUT/fail-$seed.json"
  "$chorus" sim --json --nodes 1000 --messages 200 --loss 0.01 --seed "$seed" >"$OUT/loss-$seed.json"
  "$chorus" sim --json --exchange-keys 1000000 --diff 0.01 --seed "$seed" >"$OUT/exchange-$seed.json"
done
python3 - "$OUT" <<'PY'
import json, sys, glob
out = sys.argv[1]
def runs(name):
    for f in sorted(glob.glob(f"{out}/{name}-*.json")):
        yield f, json.load(open(f))
for name in ("nofail", "fail", "loss"):
    print(f"== {name}")
    for f, doc in runs(name):
        p, fl = doc["runs"]
        print(f"{f}: plumtree rel min {p['reliability_min']:.4f} after10 {p['reliability_min_after_10']:.4f} "
              f"RMR10 mean {p['rmr_after_10_mean']:.4f} max {p['rmr_after_10_max']:.4f} LDH {p['ldh_mean']:.2f} "
              f"lat {p['latency_mean_ms']:.0f}/{p['latency_max_ms']} msgs {p['messages_per_broadcast']:.0f} "
              f"bytes {p['bytes_per_broadcast']:.0f} grafts {p['grafts']} repairs {p['counters']['ae_repairs']} wall {p['wall_ms']/1000:.1f}s")
        print(f"{' '*len(f)}  flood    rel min {fl['reliability_min']:.4f} after10 {fl['reliability_min_after_10']:.4f} "
              f"RMR10 mean {fl['rmr_after_10_mean']:.4f} max {fl['rmr_after_10_max']:.4f} LDH {fl['ldh_mean']:.2f} "
              f"lat {fl['latency_mean_ms']:.0f}/{fl['latency_max_ms']} msgs {fl['messages_per_broadcast']:.0f} "
              f"bytes {fl['bytes_per_broadcast']:.0f} repairs {fl['counters']['ae_repairs']} wall {fl['wall_ms']/1000:.1f}s")
        print(f"{' '*len(f)}  ratios   LDH {p['ldh_mean']/fl['ldh_mean']:.2f}x  bytes {p['bytes_per_broadcast']/fl['bytes_per_broadcast']:.2f}x  "
              f"latency {p['latency_mean_ms']/fl['latency_mean_ms']:.2f}x")
print("== exchange")
for f, r in runs("exchange"):
    print(f"{f}: {r['differing_keys']} of {r['keys']} differ, objects {r['differing_object_bytes']} B, sent {r['bytes_total']} B "
          f"({r['bytes_ratio']:.2f}x), {r['messages']} msgs, exchange {r['exchange_ms']:.0f} ms + merge {r['merge_ms']:.0f} ms "
          f"= {r['total_ms']:.0f} ms, equal {r['equal_after']}, tree build {r['tree_build_ms']:.0f} ms")
PY
