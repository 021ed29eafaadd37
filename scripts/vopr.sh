#!/usr/bin/env bash
# A soak of the whole-node simulator: runs seeds one after another for a
# while, under every fault, and appends each failing seed to a file.
#
#   scripts/vopr.sh [--minutes M] [--nodes N] [--faults SPEC] [--out FILE]
#
# Defaults: 10 minutes, 5 nodes, all faults, failing seeds to
# target/vopr-failures.txt. The first seed is drawn from the clock, so
# every soak covers new seeds; reproduce a failure with
#   chorus sim --faults SPEC --nodes N --seed S
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10 nodes=5 faults=all out=target/vopr-failures.txt
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --faults) faults="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "vopr.sh: unknown argument $1 (use --minutes M, --nodes N, --faults SPEC, --out FILE)" >&2; exit 2 ;;
  esac
done
case "$minutes" in ''|*[!0-9]*) echo "vopr.sh: --minutes takes a whole number" >&2; exit 2 ;; esac

cargo build --release -q -p chorus-cli
chorus=target/release/chorus
mkdir -p "$(dirname "$out")"
deadline=$(( $(date +%s) + minutes * 60 ))
seed=$(( $(date +%s) * 1000 ))
before=$( [ -f "$out" ] && wc -l < "$out" || echo 0 )
ran=0
while [ "$(date +%s)" -lt "$deadline" ]; do
  # Batches of 20 seeds; the command exits 1 (and records the seeds) when
  # one found a violation, and shows what it found.
  if ! "$chorus" sim --faults "$faults" --nodes "$nodes" --seed "$seed" --seeds 20 --failures "$out" > target/vopr-last.txt 2>&1; then
    grep -v ': ok,' target/vopr-last.txt | head -80 >&2 || true
  fi
  ran=$(( ran + 20 ))
  seed=$(( seed + 20 ))
done
after=$( [ -f "$out" ] && wc -l < "$out" || echo 0 )
found=$(( after - before ))
echo "vopr: $ran seeds in $minutes min ($nodes nodes, faults: $faults); $found found a violation (appended to $out)"
[ "$found" -eq 0 ]
