"""Channels from Python: an embedded put or get of a full prefix this
node does not serve raises ``chorus.NotServed`` naming the channel and
the node that serves it; nothing is written.

Two real ``chorus serve`` nodes make the table (a channel may only name
members): B joins A, a channel ``render`` served by A alone is added on
B's directory, both stop, and B's directory is opened embedded."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest

import chorus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(chorus_bin: str, directory: str, join: int | None = None):
    gossip, http = _free_port(), _free_port()
    args = [
        chorus_bin, "--dir", directory, "serve", "--insecure",
        "--gossip", f"127.0.0.1:{gossip}", "--http", f"127.0.0.1:{http}",
    ]
    if join is not None:
        args += ["--join", f"127.0.0.1:{join}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, gossip, f"127.0.0.1:{http}"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"chorus serve on {directory} did not start")
        time.sleep(0.05)


def test_an_embedded_put_to_an_unserved_prefix_raises_not_served(chorus_bin, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    procs = []
    try:
        pa, gossip_a, http_a = _serve(chorus_bin, a)
        procs.append(pa)
        pb, _, _ = _serve(chorus_bin, b, join=gossip_a)
        procs.append(pb)
        # Once A's member record has reached B, the channel can name A.
        deadline = time.monotonic() + 30
        while True:
            added = subprocess.run(
                [chorus_bin, "--dir", b, "channel", "add", "render", "render/*", "--node", http_a],
                capture_output=True, text=True, timeout=60,
            )
            if added.returncode == 0:
                break
            assert time.monotonic() < deadline, added.stderr
            time.sleep(0.1)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    status = subprocess.run(
        [chorus_bin, "--dir", a, "--json", "status"], capture_output=True, text=True, timeout=60
    )
    id_a = json.loads(status.stdout)["node_id"]

    db = chorus.open(b)
    try:
        with pytest.raises(chorus.NotServed) as refused:
            db.put("render/shot1", "k", "v")
        e = refused.value
        assert isinstance(e, chorus.Error)
        assert (e.code, e.exit_code) == ("not_served", 1)
        assert e.channel == "render" and e.nodes == [id_a]
        assert "render/shot1 is not served on this node" in str(e) and id_a in str(e)
        with pytest.raises(chorus.NotServed):
            db.get("render/shot1", "k")
        # Nothing was written, and what the node serves still works.
        assert not any(i.full_prefix == "render/shot1" for i in db.iter(tombstones=True))
        db.put("other/a", "k", "v")
        assert db.get("other/a", "k") == b"v"
    finally:
        db.close()
    assert chorus.error_for("not_served", "m").__class__ is chorus.NotServed
    assert chorus.error_for("unreachable", "m").__class__ is chorus.Unreachable
