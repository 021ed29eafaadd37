"""Edges of the embedded handle and chorus.om: callbacks that call the
store, long runs of skipped keys, reserved prefixes in a whole-store
iteration, huge timeouts, list groups, and om after fork()."""

import os
import socket
import subprocess
import time
import urllib.request

import pytest

import chorus
import chorus.om as om


def test_a_callback_that_calls_the_store_is_refused_not_hung(db):
    db.put("cb/a", "other", b"1")

    def reads_the_store(values):
        return db.get("cb/a", "other")

    with pytest.raises(chorus.InvalidInput) as e:
        db.put("cb/a", "k", reads_the_store)
    assert "called the store" in str(e.value)
    assert db.get("cb/a", "k") is None  # nothing written

    # A reducer that reads its own log would relock the log's mutex.
    db.oplogs.register("py-nested", lambda s, op: db.oplogs.get("cb/a", "log"), init=0)
    with pytest.raises(chorus.Error) as e:
        db.oplogs.push("cb/a", "log", "py-nested", 1)
    assert "called the store" in str(e.value)
    # The store still works afterwards, from outside a callback.
    db.put("cb/a", "k", b"2")
    assert db.get("cb/a", "k") == b"2"


def test_many_keys_in_a_row_skipped_by_items(tmp_path):
    # items() leaves out keys its resolver deletes; thousands in a row
    # must not grow the stack.
    db = chorus.open(str(tmp_path / "many"), sync="never")
    n = 20_000
    with db.transaction() as tx:
        for i in range(n):
            tx.put("many/a", f"k{i}", b"base")
    for i in range(n):
        ctx = db.read("many/a", f"k{i}").context
        db.put("many/a", f"k{i}", b"x", context=ctx)
        db.put("many/a", f"k{i}", b"y", context=ctx)
    db.put("many/a", "zz-live", b"live")
    pairs = list(db.items("many/a", resolver=lambda values: None if b"x" in values else values[0]))
    assert pairs == [(b"zz-live", b"live")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_iterating_everything_leaves_out_chorus_own_prefixes(tmp_path, chorus_bin):
    path = str(tmp_path / "served")
    # A node's first start writes its member record under $cluster.
    http = free_port()
    node = subprocess.Popen(
        [chorus_bin, "--dir", path, "serve", "--insecure", "--http", f"127.0.0.1:{http}",
         "--gossip", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        db = chorus.open(path)
        deadline = time.monotonic() + 30
        while not list(db.iter("$cluster")):
            assert time.monotonic() < deadline, "the node wrote no member record"
            time.sleep(0.1)
        db.put("app/cfg", "k", b"v")
        assert {i.full_prefix for i in db.iter()} == {"app/cfg"}
        assert {i.full_prefix for i in db.snapshot().iter()} == {"app/cfg"}
        assert all(i.full_prefix.startswith("$cluster") for i in db.iter("$cluster"))
    finally:
        node.kill()
        node.wait()


@pytest.mark.parametrize("timeout", [1e20, float("inf"), -1.0, float("nan")])
def test_a_watch_timeout_no_duration_holds_is_invalid(db, timeout):
    with pytest.raises(chorus.InvalidInput) as e:
        db.watch("a/b", timeout=timeout)
    assert "timeout=" in str(e.value)


@pytest.fixture
def omdb(tmp_path):
    om.configure(store=str(tmp_path / "om-store"), full_prefix="om/edges", root="/")
    yield om._store()
    om.configure(store=str(tmp_path / "closed"), full_prefix="om/default", root="/")


def test_list_and_dict_groups_keep_their_items(omdb):
    om.write("/show/a", "sizes.list", [1920, 1080])
    om.write("/show/a", "render.dict", {"frames": 240, "passes": {"beauty": True}})
    assert om.read("/show/a", "sizes") == {"0": 1920, "1": 1080}
    assert om.read("/show/a", "render") == {"frames": 240, "passes": {"beauty": True}}
    with pytest.raises(chorus.InvalidInput):
        om.write("/show/a", "bad.list", 5)


def test_a_commit_with_a_bad_child_writes_nothing(omdb):
    loc = om.Location("/show/b")
    om.Entry("good.int", value=1, parent=loc)
    om.Entry("bad.int", value=object(), parent=loc)
    with pytest.raises(chorus.InvalidInput):
        om.commit(loc)
    assert om.read("/show/b") == {}


def test_om_after_fork_writes_to_the_configured_store(omdb, tmp_path):
    om.write("/show/c", "before.int", 1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            om.write("/show/c", "child.int", 2)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert om.read("/show/c", "child") == 2  # the configured store, not ~/.chorus/stage


def test_a_watch_reconnects_after_a_failed_attempt(tmp_path, chorus_bin):
    http, gossip = free_port(), free_port()
    args = [chorus_bin, "--dir", str(tmp_path / "n"), "serve", "--insecure",
            "--http", f"127.0.0.1:{http}", "--gossip", f"127.0.0.1:{gossip}"]
    url = f"http://127.0.0.1:{http}"

    def start():
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                return p
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)

    node = start()
    try:
        db = chorus.connect(url, timeout=5)
        db.put("w/a", "k", b"1")
        watch = db.watch("w/a", timeout=30)
        db.put("w/a", "k", b"2")
        assert next(watch).read.value == b"2"
        node.kill()
        node.wait()
        time.sleep(1.0)  # the first reconnect attempts fail: the node is down
        node = start()
        db.put("w/a", "k", b"3")
        assert next(watch).read.value == b"3"
        watch.close()
    finally:
        node.kill()
        node.wait()


def test_a_key_that_is_not_utf8_lists_the_same_remotely(tmp_path, chorus_bin):
    path = str(tmp_path / "n")
    http = free_port()
    node = subprocess.Popen(
        [chorus_bin, "--dir", path, "serve", "--insecure", "--http", f"127.0.0.1:{http}",
         "--gossip", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        local = chorus.open(path)
        local.put("bin/a", b"\xff\x00key", b"v1")
        local.put("bin/a", "text", b"v2")
        remote = chorus.connect(url)
        listed = sorted((i.key, i.read.value) for i in remote.iter("bin/a"))
        assert listed == sorted((i.key, i.read.value) for i in local.iter("bin/a"))
        assert (b"\xff\x00key", b"v1") in listed
    finally:
        node.kill()
        node.wait()


def test_zeromq_pages_of_large_values_shrink_to_fit(tmp_path, chorus_bin):
    pytest.importorskip("zmq")
    path = str(tmp_path / "z")
    http, zport = free_port(), free_port()
    node = subprocess.Popen(
        [chorus_bin, "--dir", path, "serve", "--insecure", "--http", f"127.0.0.1:{http}",
         "--gossip", f"127.0.0.1:{free_port()}", "--zmq", f"tcp://127.0.0.1:{zport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        local = chorus.open(path, sync="never")
        big = os.urandom(900_000)  # base64 in the reply: 1.2 MB each
        for i in range(70):
            local.put("big/a", f"k{i:03}", big)
        remote = chorus.connect(f"tcp://127.0.0.1:{zport}", timeout=30)
        keys = [k for k, v in remote.items("big/a") if v == big]
        assert len(keys) == 70
    finally:
        node.kill()
        node.wait()
