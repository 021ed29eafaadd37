"""chorus.connect against real ``chorus serve`` processes: tokens, a node
that is not there, values over the node's limit, paging through more keys
than a page holds, reconnecting after a restart, what only the embedded
handle has, and the examples of docs/python-remote.md and docs/zeromq.md
run as the repository's doc harness runs them.

The node binary is ``$CHORUS_BIN``, else ``chorus`` on PATH.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import chorus
import chorus.remote

ROOT = Path(__file__).resolve().parents[3]
SECRET = "correct horse battery staple"


# ---------------------------------------------------------------------------
# Real nodes.


def _chorus_bin() -> str:
    path = os.environ.get("CHORUS_BIN") or shutil.which("chorus")
    if not path:
        pytest.skip("no chorus binary: set CHORUS_BIN or put chorus on PATH")
    return os.path.abspath(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """``chorus serve`` on free loopback ports with its ZeroMQ broker
    (``auth=True``: with ``--auth``, its directory holding user alice)."""

    def __init__(self, directory: Path, auth: bool = False) -> None:
        self.dir = str(directory)
        self.auth = auth
        self.http_port, self.gossip_port, self.zmq_port = _free_port(), _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.zmq_url = f"tcp://127.0.0.1:{self.zmq_port}"
        self.proc = None
        if auth:
            self.cli("init")
            self.cli("user", "add", "alice", stdin=SECRET + "\n")
        self.start()

    def cli(self, *args: str, stdin: str = "", token: str = "") -> str:
        env = dict(os.environ, CHORUS_DIR=self.dir)
        env.pop("CHORUS_TOKEN", None)
        if token:
            env["CHORUS_TOKEN"] = token
        out = subprocess.run(
            [_chorus_bin(), "--dir", self.dir, *args],
            input=stdin, capture_output=True, text=True, env=env, timeout=60,
        )
        assert out.returncode == 0, f"chorus {' '.join(args)}: {out.stderr}"
        return out.stdout

    def start(self) -> None:
        args = [
            _chorus_bin(), "--dir", self.dir, "serve", "--insecure",
            "--http", f"127.0.0.1:{self.http_port}",
            "--gossip", f"127.0.0.1:{self.gossip_port}",
            "--zmq", self.zmq_url,
        ]
        if self.auth:
            args.append("--auth")
        self.log = open(self.dir + ".log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the node did not start: {Path(self.dir + '.log').read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.log.close()

    def session_token(self) -> str:
        out = self.cli("--json", "session", "create", "--user", "alice", "--description", "t", "--ttl", "1h", stdin=SECRET + "\n")
        return json.loads(out)["token"]

    def derived_token(self, session: str, *args: str) -> str:
        out = self.cli("--json", "token", "create", *args, "--ttl", "1h", token=session)
        return json.loads(out)["token"]


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "node")
    yield n
    n.stop()


@pytest.fixture
def db(node):
    with chorus.connect(node.url, timeout=20) as handle:
        yield handle


def _needs_zmq():
    pytest.importorskip("zmq", reason="the ZeroMQ handle needs pyzmq")


# ---------------------------------------------------------------------------
# Tokens.


@pytest.mark.parametrize("transport", ["http", "zmq"])
def test_tokens_reach_what_they_allow(transport, tmp_path):
    if transport == "zmq":
        _needs_zmq()
    n = Node(tmp_path / "auth", auth=True)
    try:
        url = n.url if transport == "http" else n.zmq_url
        session = n.session_token()
        reader = n.derived_token(session, "--scope", "app/*", "--read-only")

        admin = chorus.connect(url, token=session)
        admin.put("app/cfg", "mode", "fast")
        admin.put("other/cfg", "mode", "slow")

        ro = chorus.connect(url, token=reader)
        assert ro.get("app/cfg", "mode") == b"fast"
        assert list(ro.keys("app/cfg")) == [b"mode"]
        with pytest.raises(chorus.Forbidden, match="read-only"):
            ro.put("app/cfg", "mode", "x")
        with pytest.raises(chorus.Forbidden, match="other/cfg"):
            ro.get("other/cfg", "mode")
        with pytest.raises(chorus.Forbidden):
            list(ro.iter())  # the whole node is beyond app/*
        assert admin.get("app/cfg", "mode") == b"fast", "a refused write changed nothing"

        for token in (None, "chorus1.garbage"):
            anonymous = chorus.connect(url, token=token)
            with pytest.raises(chorus.Unauthorized) as e:
                anonymous.get("app/cfg", "mode")
            assert e.value.code == "unauthorized" and e.value.exit_code == 2
        with pytest.raises(chorus.InvalidInput, match="token"):
            chorus.connect(url, token="two\nlines")

        if transport == "http":
            with pytest.raises(chorus.Unauthorized):
                chorus.connect(url).watch("app")
            with ro.watch("app", timeout=10) as changes:
                admin.put("app/cfg", "mode", "faster")
                assert next(changes).read.value == b"faster"
    finally:
        n.stop()


# ---------------------------------------------------------------------------
# A node that is not there.


def test_a_node_that_is_not_there_is_busy_with_a_clear_message():
    port = _free_port()
    db = chorus.connect(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(chorus.Busy) as e:
        db.get("app/cfg", "color")
    message = str(e.value)
    assert f"http://127.0.0.1:{port}" in message and "refused" in message.lower()
    assert "chorus serve" in message
    assert e.value.code == "busy" and e.value.exit_code == 5
    with pytest.raises(chorus.Busy, match="may have been applied"):
        db.put("app/cfg", "color", "blue")
    with pytest.raises(chorus.Busy):
        db.watch("app")


def test_a_node_that_does_not_answer_is_busy_after_the_timeout():
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(chorus.Busy, match="did not answer within 0.5 s"):
            chorus.connect(url, timeout=0.5).get("app/cfg", "color")
        assert time.monotonic() - started < 5


def test_a_broker_that_is_not_there_is_busy_after_the_timeout():
    _needs_zmq()
    port = _free_port()
    db = chorus.connect(f"tcp://127.0.0.1:{port}", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(chorus.Busy) as e:
        db.get("app/cfg", "color")
    assert time.monotonic() - started < 5
    assert f"tcp://127.0.0.1:{port}" in str(e.value) and "chorus serve --zmq" in str(e.value)


def test_a_request_sent_while_the_broker_was_down_is_not_applied_later(tmp_path):
    _needs_zmq()
    n = Node(tmp_path / "node")
    try:
        n.stop()
        db = chorus.connect(n.zmq_url, timeout=0.5)
        with pytest.raises(chorus.Busy):
            db.put("app/cfg", "late", "1")
        n.start()
        time.sleep(1)
        assert chorus.connect(n.url).get("app/cfg", "late") is None
        assert db.get("app/cfg", "late") is None  # the handle works again
    finally:
        n.stop()


# ---------------------------------------------------------------------------
# Limits.


@pytest.mark.parametrize("transport", ["http", "zmq"])
def test_a_value_over_the_nodes_limit_is_invalid_input(transport, node):
    if transport == "zmq":
        _needs_zmq()
    db = chorus.connect(node.url if transport == "http" else node.zmq_url)
    for big in (b"x" * ((1 << 20) + 1), b"\xff" * (800 << 10), b"x" * (70 << 20)):
        if transport == "http" and big[0] == 0xFF:
            continue  # over HTTP the body is the bytes: 800 KiB is fine
        with pytest.raises(chorus.InvalidInput) as e:
            db.put("app/cfg", "big", big)
        assert e.value.code == "too_large", e.value
        assert "1048576" in str(e.value)
    assert db.get("app/cfg", "big") is None, "nothing was written"
    db.put("app/cfg", "big", b"\x00" * (600 << 10))
    assert db.get("app/cfg", "big") == b"\x00" * (600 << 10)


# ---------------------------------------------------------------------------
# Paging.


def _fill(node, full_prefix, count):
    """``count`` keys written in one transaction on the node's directory."""
    with chorus.open(node.dir) as direct:
        with direct.transaction() as tx:
            for i in range(count):
                tx.put(full_prefix, f"k{i:05d}", f"v{i}")


def _counting(db):
    calls = []
    call = db._t.call

    def counted(op, fields, cap=chorus.remote.MAX_ANSWER):
        calls.append((op, fields.get("limit")))
        return call(op, fields, cap)

    db._t.call = counted
    return calls


def test_iteration_pages_through_more_keys_than_a_page(node, db):
    count = chorus.remote.PAGE_LIMIT * 2 + 37
    _fill(node, "big/keys", count)
    calls = _counting(db)
    keys = list(db.keys("big/keys"))
    assert keys == [f"k{i:05d}".encode() for i in range(count)]
    assert [op for op, _ in calls] == ["list"] * 3
    items = list(db.items("big/keys", match="k0000*"))
    assert items == [(f"k{i:05d}".encode(), f"v{i}".encode()) for i in range(10)]
    assert sum(1 for _ in db.iter("big")) == count


def test_a_page_too_big_is_asked_again_with_fewer_items(node, db, monkeypatch):
    _fill(node, "big/keys", 50)
    monkeypatch.setattr(chorus.remote, "PAGE_BYTES", 2000)
    calls = _counting(db)
    assert len(list(db.iter("big/keys"))) == 50
    limits = [limit for _, limit in calls]
    assert limits[0] == chorus.remote.PAGE_LIMIT and min(limits) < 20, limits


def test_prefixes_subprefixes_and_documents_are_paged(node, db, monkeypatch):
    monkeypatch.setattr(chorus.remote, "PAGE_LIMIT", 3)
    for p in range(7):
        for s in range(4):
            db.put(f"p{p}/s{s}", "k", "v")
    calls = _counting(db)
    seen = sorted(i.full_prefix for i in db.iter())
    assert seen == sorted(f"p{p}/s{s}" for p in range(7) for s in range(4))
    assert sum(1 for op, _ in calls if op == "prefixes") == 3
    users = db.docs("users")
    for i in range(8):
        users.create({"_id": f"u{i}"})
    assert [d["_id"] for d in users.all()] == [f"u{i}" for i in range(8)]


# ---------------------------------------------------------------------------
# Connections.


def test_a_thread_reuses_its_connection_and_threads_have_their_own(db):
    made = []
    new = db._t.new_connection

    def counted(*args, **kwargs):
        conn = new(*args, **kwargs)
        made.append(conn)
        return conn

    db._t.new_connection = counted
    for i in range(20):
        db.put("app/cfg", f"k{i}", "v")
        db.get("app/cfg", f"k{i}")
    assert len(made) == 1
    errors = []

    def work():
        try:
            for i in range(10):
                assert db.get("app/cfg", f"k{i}") == b"v"
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(made) == 5


def test_the_handle_and_a_watch_go_on_after_the_node_restarts(node, db):
    with db.watch("app/cfg", timeout=20) as changes:
        db.put("app/cfg", "a", "1")
        assert next(changes).key == b"a"
        node.stop()
        node.start()
        # The kept-alive connection died with the node: opened again.
        db.put("app/cfg", "b", "2")
        change = next(changes)
        assert (change.key, change.read.value) == (b"b", b"2")


def test_a_watch_behind_compaction_yields_a_gap_then_goes_on(node, db):
    with db.watch("app/cfg", timeout=10) as changes:
        db.put("app/cfg", "a", "1")
        first = next(changes)
    for i in range(5):
        db.put("app/cfg", f"k{i}", "v")
    node.cli("compact")  # the commits after `first` are replaced by a snapshot
    with db.watch("app/cfg", from_=first.id, timeout=10) as changes:
        gap = next(changes)
        assert isinstance(gap, chorus.Gap) and gap.resume == first.id
        db.put("app/cfg", "after", "1")  # the watch goes on from the node's present
        change = next(changes)
        assert (change.key, change.read.value) == (b"after", b"1")


def test_a_watch_ends_its_reader_thread_when_closed(db):
    before = threading.active_count()
    w = db.watch("app/cfg")
    assert threading.active_count() == before + 1
    w.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(w)


def test_a_watch_outlives_its_handles_close(node):
    db = chorus.connect(node.url)
    with db.watch("app/cfg", timeout=10) as changes:
        db.close()
        chorus.connect(node.url).put("app/cfg", "after", "1")
        assert next(changes).key == b"after"


def test_a_forked_child_uses_connections_of_its_own(db):
    db.put("app/cfg", "color", "blue")
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            code = 0 if db.get("app/cfg", "color") == b"blue" else 3
            db.put("app/cfg", "child", "yes")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert db.get("app/cfg", "child") == b"yes"
    assert db.get("app/cfg", "color") == b"blue"


def test_a_closed_handle_refuses_calls(node):
    db = chorus.connect(node.url)
    db.close()
    with pytest.raises(chorus.InvalidInput, match="closed"):
        db.get("app/cfg", "color")
    assert "closed" in repr(db)


# ---------------------------------------------------------------------------
# What only the embedded handle has, and bad arguments.


@pytest.mark.parametrize("transport", ["http", "zmq"])
def test_what_only_the_embedded_handle_has_is_invalid_input(transport, node):
    if transport == "zmq":
        _needs_zmq()
    db = chorus.connect(node.url if transport == "http" else node.zmq_url)
    cases = {
        "transaction": (db.transaction, "chorus.open"),
        "snapshot": (db.snapshot, "chorus.open"),
        "tombstones": (lambda: db.iter("app/cfg", tombstones=True), "live keys"),
        "register": (lambda: db.oplogs.register("mine", lambda s, op: s), "chorus reducer set"),
        "non-UTF-8 key": (lambda: db.put("app/cfg", b"\xff\xfe", "v"), "UTF-8"),
    }
    if transport == "zmq":
        cases["watch"] = (lambda: db.watch("app/cfg"), "http")
    for name, (call, hint) in cases.items():
        with pytest.raises(chorus.InvalidInput) as e:
            call()
        assert hint in str(e.value), name
    # Values that are not UTF-8 are fine, both ways.
    db.put("app/cfg", "raw", b"\xff\xfe\x00")
    assert db.get("app/cfg", "raw") == b"\xff\xfe\x00"


def test_without_pyzmq_a_tcp_url_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "zmq", None)
    with pytest.raises(chorus.InvalidInput, match=re.escape("pip install chorus-store[zmq]")):
        chorus.connect("tcp://127.0.0.1:7801")


def test_bad_urls_and_timeouts():
    for url in ("ftp://host", "localhost:7800", "http://", "http://host:notaport/"):
        with pytest.raises(chorus.InvalidInput):
            chorus.connect(url)
    with pytest.raises(chorus.InvalidInput):
        chorus.connect(3)
    for timeout in (0, -1, float("nan")):
        with pytest.raises(chorus.InvalidInput):
            chorus.connect("http://127.0.0.1:7800", timeout=timeout)
    with pytest.raises(chorus.InvalidInput):
        chorus.connect("http://127.0.0.1:7800", timeout="30")

