#!/usr/bin/env bash
# Runs Chorus's whole test suite. Needs only the Rust toolchain and Python 3;
# installs whatever else the tests need: util-linux's flock, curl for the
# HTTP tests, Python's venv module, and, in a virtual environment of its own
# (target/python-venv, never the system's site-packages), maturin to build
# the Python module, pytest, and pyzmq for the ZeroMQ client tests.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  ($sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}") >/dev/null
fi
# The Python module: built as a wheel (the same artifact `pip install`
# takes) and installed into the suite's own virtual environment, which
# comes first on PATH for everything below (the README's and docs'
# Python examples run with it too).
venv="$PWD/target/python-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" pytest pyzmq
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
rm -rf target/wheels
python -m maturin build --quiet --profile dev --strip -m crates/python/Cargo.toml --out target/wheels
python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps target/wheels/chorus_store-*.whl
cargo test --workspace --all-targets
# The simulator's injected bugs: each must be caught by some seed.
cargo test -p chorus-sim --features mutations --test mutations
cargo test --workspace --doc
# The Python module's tests, against the wheel installed above and the
# `chorus` binary the cargo tests built.
CHORUS_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/chorus" python -m pytest -q -p no:cacheprovider crates/python/tests
