"""Shared fixtures of the Python tests: a fresh data directory per test,
the ``chorus`` command (``$CHORUS_BIN``, else ``chorus`` on ``PATH``) and
a helper that runs it on that directory.

The tests run real processes (the ``chorus`` binary, spawned Python
interpreters); nothing is mocked. Run them with the module importable::

    PYTHONPATH=crates/python/python CHORUS_BIN=target/debug/chorus \\
        python3 -m pytest crates/python/tests
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pytest

import chorus

# Longest a single `chorus` command may run before the test fails (a hung
# command is a failure, not a stall of the suite).
CLI_TIMEOUT = 60.0


@dataclass
class Ran:
    """What one `chorus` command did."""

    args: Sequence[str]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        """Its stdout as JSON (for ``--json`` runs)."""
        return json.loads(self.out)

    def error(self) -> dict:
        """The ``{"code", "message"}`` a failing ``--json`` run prints."""
        text = self.out.strip() or self.err.strip()
        return json.loads(text.splitlines()[0])


def chorus_binary() -> str:
    """The `chorus` command to run: ``$CHORUS_BIN``, else ``chorus`` on PATH."""
    name = os.environ.get("CHORUS_BIN") or "chorus"
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"the chorus command {name!r} was not found: build it "
            "(cargo build -p chorus-cli) and set CHORUS_BIN to its path",
            pytrace=False,
        )
    return found


class Cli:
    """Runs the ``chorus`` command on one data directory."""

    def __init__(self, binary: str, directory: str):
        self.binary = binary
        self.dir = directory

    def run(
        self,
        *args: str,
        json_out: bool = False,
        stdin: Optional[bytes] = None,
        expect: Optional[int] = 0,
    ) -> Ran:
        """``chorus --dir DIR [--json] ARGS...``; fails the test when the
        exit code is not ``expect`` (``None``: any code)."""
        argv = [self.binary, "--dir", self.dir]
        if json_out:
            argv.append("--json")
        argv.extend(args)
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            timeout=CLI_TIMEOUT,
        )
        ran = Ran(
            args=argv,
            code=done.returncode,
            out=done.stdout.decode("utf-8", "replace"),
            err=done.stderr.decode("utf-8", "replace"),
        )
        if expect is not None and ran.code != expect:
            pytest.fail(
                f"{' '.join(argv)} exited {ran.code}, expected {expect}\n"
                f"stdout: {ran.out}\nstderr: {ran.err}"
            )
        return ran


@pytest.fixture
def store_dir(tmp_path) -> str:
    """A data directory path of this test only (not yet created)."""
    return str(tmp_path / "data")


@pytest.fixture
def db(store_dir):
    """The store at ``store_dir``, opened (and closed after the test)."""
    handle = chorus.open(store_dir)
    yield handle
    handle.close()


@pytest.fixture(scope="session")
def chorus_bin() -> str:
    """Path of the ``chorus`` command."""
    return chorus_binary()


@pytest.fixture
def cli(chorus_bin, store_dir) -> Cli:
    """The ``chorus`` command on ``store_dir``."""
    return Cli(chorus_bin, store_dir)


def snapshot_of(handle) -> list:
    """Everything a store holds outside the reserved prefixes, tombstones
    included, as sorted ``(full_prefix, key, siblings)``: equal before and
    after a refused call exactly when the call wrote nothing."""
    out = []
    for item in handle.iter(tombstones=True):
        siblings = sorted(
            (s.value is None, s.value or b"", s.timestamp, s.node)
            for s in item.read.siblings
        )
        out.append((item.full_prefix, item.key, tuple(siblings), item.read.context))
    return sorted(out)
