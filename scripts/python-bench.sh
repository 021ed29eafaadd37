#!/usr/bin/env bash
# Chorus's Python module beside py-lmdb and sqlite3: see
# scripts/python_bench.py and BENCHMARKS.md ("Python (issue 18)").
#
# Makes a venv (never touching the system's site-packages), installs
# maturin and py-lmdb in it with pip, builds the release wheel of
# crates/python into the workspace's target directory ($CARGO_TARGET_DIR
# if set, else target/ under the repository), installs the wheel in the
# venv and runs python_bench.py there with this script's arguments:
#
#   scripts/python-bench.sh                              # 3 rounds of everything (~3 min after the build)
#   scripts/python-bench.sh --rounds 1 --gets 20000 --puts 200 --seconds 2   # a smoke run
#   scripts/python-bench.sh --json run.json              # ...and every round's raw figures
#
# PYBENCH_VENV=DIR keeps the venv there (default: a temporary one, removed
# afterwards). Needs python3 with the venv module (Debian: python3-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"

if [ -n "${PYBENCH_VENV:-}" ]; then
  venv="$PYBENCH_VENV"
else
  venv=$(mktemp -d "${TMPDIR:-/tmp}/chorus-pybench-venv.XXXXXX")
  trap 'rm -rf "$venv"' EXIT
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip >/dev/null
"$py" -m pip install --quiet "maturin>=1.5,<2" lmdb

wheels="$target/python-bench-wheels"
rm -rf "$wheels"
CARGO_TARGET_DIR="$target" "$py" -m maturin build --release --quiet \
  -m "$ROOT/crates/python/Cargo.toml" --out "$wheels" >&2
"$py" -m pip install --quiet --force-reinstall --no-deps "$wheels"/*.whl

# Not exec: the EXIT trap removes the temporary venv afterwards.
"$py" "$ROOT/scripts/python_bench.py" "$@"
