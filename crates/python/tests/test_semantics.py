"""What the embedded ``chorus`` module promises: siblings and contexts,
resolvers, read-modify-write, transactions, snapshots, watches, the GIL
released while waiting, handles refused after fork, documents, operation
logs, and errors that match the ``chorus`` command's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

import chorus
from conftest import Cli, snapshot_of


def two_siblings(db, fp="sem/a", key="k"):
    """Writes ``base``, then ``left`` and ``right`` with the same read's
    context: two siblings. Returns that read."""
    db.put(fp, key, "base")
    seen = db.read(fp, key)
    db.put(fp, key, "left", context=seen.context)
    db.put(fp, key, "right", context=seen.context)
    return seen


# --- siblings and contexts -------------------------------------------------


def test_two_writes_with_one_context_make_siblings(db):
    seen = two_siblings(db)
    assert seen.values == [b"base"]
    now = db.read("sem/a", "k")
    assert sorted(now.values) == [b"left", b"right"]
    assert not now.deleted and len(now.siblings) == 2
    with pytest.raises(chorus.Conflict) as e:
        db.get("sem/a", "k")
    assert e.value.exit_code == 3 and e.value.code == "conflict"
    assert "2 siblings" in str(e.value)
    with pytest.raises(chorus.Conflict):
        _ = now.value
    # A write with the read's context supersedes both.
    db.put("sem/a", "k", "merged", context=now.context)
    assert db.get("sem/a", "k") == b"merged"
    assert db.read("sem/a", "k").values == [b"merged"]


def test_a_write_with_an_old_context_keeps_the_newer_value(db):
    db.put("sem/a", "k", "one")
    old = db.read("sem/a", "k")
    db.put("sem/a", "k", "two")  # no context: supersedes "one"
    db.put("sem/a", "k", "three", context=old.context)
    assert sorted(db.read("sem/a", "k").values) == [b"three", b"two"]


def test_absent_key_reads_as_deleted_with_the_empty_context(db):
    r = db.read("sem/a", "nothing")
    assert r.deleted and r.siblings == [] and r.value is None
    assert db.get("sem/a", "nothing") is None
    assert db.get("sem/a", "nothing", b"dflt") == b"dflt"
    db.put("sem/a", "nothing", "x", context=r.context)
    assert db.get("sem/a", "nothing") == b"x"


def test_if_absent_writes_only_once(db):
    db.put("sem/a", "once", "first", if_absent=True)
    with pytest.raises(chorus.Conflict):
        db.put("sem/a", "once", "second", if_absent=True)
    assert db.get("sem/a", "once") == b"first"


def test_keys_and_values_may_be_bytes_str_bytearray_or_memoryview(db):
    for i, (key, value) in enumerate(
        [
            (b"k0", b"v0"),
            ("k1", "v1"),
            (bytearray(b"k2"), bytearray(b"v2")),
            (memoryview(b"k3"), memoryview(b"xv3x")[1:3]),
        ]
    ):
        db.put("sem/types", key, value)
        assert db.get("sem/types", f"k{i}") == f"v{i}".encode()
        assert db.get("sem/types", key) == f"v{i}".encode()
    assert db.get("sem/types", "\u00e9") is None
    db.put("sem/types", "\u00e9", "\u00fc")  # str is stored as UTF-8
    assert db.get("sem/types", "\u00e9".encode()) == "\u00fc".encode()


def test_iteration(db):
    for k in ("a1", "a2", "b1"):
        db.put("sem/it", k, f"v-{k}")
    db.put("sem/it2", "a1", "elsewhere")
    db.put("sem/it", "gone", "x")
    db.delete("sem/it", "gone")
    assert sorted(db.keys("sem/it")) == [b"a1", b"a2", b"b1"]
    assert sorted(db.keys("sem/it", match="a*")) == [b"a1", b"a2"]
    assert sorted(db.items("sem/it", match="?1")) == [(b"a1", b"v-a1"), (b"b1", b"v-b1")]
    everything = {(i.full_prefix, i.key) for i in db.iter("sem")}
    assert everything == {("sem/it", b"a1"), ("sem/it", b"a2"), ("sem/it", b"b1"), ("sem/it2", b"a1")}
    with_tombstones = {i.key for i in db.iter("sem/it", tombstones=True)}
    assert b"gone" in with_tombstones
    two_siblings(db, "sem/it", "a2")
    with pytest.raises(chorus.Conflict):
        dict(db.items("sem/it"))
    settled = dict(db.items("sem/it", resolver="lww"))
    assert settled[b"a2"] == newest(db.read("sem/it", "a2"))
    assert db.prefix_hash("sem/it") != db.prefix_hash("sem/it2")


def test_a_closed_handle_refuses_calls(store_dir):
    with chorus.open(store_dir) as db:
        db.put("sem/c", "k", "v")
    with pytest.raises(chorus.InvalidInput, match="closed"):
        db.get("sem/c", "k")
    assert "closed" in repr(db)
    with chorus.open(store_dir, create=False) as again:
        assert again.get("sem/c", "k") == b"v"


# --- resolvers -------------------------------------------------------------


def newest(read):
    """The sibling lww must pick: greatest (timestamp, node, bytes)."""
    best = max(read.siblings, key=lambda s: (s.timestamp, s.node, s.value))
    return best.value


def test_lww_picks_the_same_winner_and_can_write_it_back(db, cli):
    two_siblings(db)
    before = db.read("sem/a", "k")
    winner = newest(before)
    for _ in range(3):
        assert db.get("sem/a", "k", resolver="lww", allow_put=False) == winner
    # The command settles it the same way.
    assert cli.run("get", "--resolve", "lww", "sem/a", "k").out == winner.decode()
    # allow_put=False leaves the siblings.
    assert db.read("sem/a", "k") == before
    with pytest.raises(chorus.Conflict):
        db.get("sem/a", "k")
    # allow_put=True writes the winner back: a plain get works after.
    assert db.get("sem/a", "k", resolver="lww", allow_put=True) == winner
    assert db.get("sem/a", "k") == winner
    assert db.read("sem/a", "k").values == [winner]


def test_read_with_lww_gives_one_sibling(db):
    two_siblings(db)
    r = db.read("sem/a", "k", resolver="lww", allow_put=False)
    assert r.values == [newest(db.read("sem/a", "k"))]
    assert len(db.read("sem/a", "k").values) == 2


def test_a_callable_resolver_gets_the_values_and_its_result_is_used(db):
    two_siblings(db)
    calls = []

    def join(values):
        calls.append(values)
        return b"+".join(sorted(values))

    assert db.get("sem/a", "k", resolver=join, allow_put=False) == b"left+right"
    assert len(calls) == 1
    assert isinstance(calls[0], list) and all(type(v) is bytes for v in calls[0])
    assert sorted(calls[0]) == [b"left", b"right"]
    assert len(db.read("sem/a", "k").values) == 2  # not written

    assert db.get("sem/a", "k", resolver=join) == b"left+right"
    assert db.read("sem/a", "k").values == [b"left+right"]
    # One value left: the resolver is not called again.
    assert db.get("sem/a", "k", resolver=join) == b"left+right"
    assert len(calls) == 2


def test_a_callable_resolver_returning_none_deletes(db):
    two_siblings(db)
    assert db.get("sem/a", "k", b"gone", resolver=lambda vs: None) == b"gone"
    assert db.read("sem/a", "k").deleted


class Mine(Exception):
    pass


def test_an_exception_in_a_resolver_propagates_and_writes_nothing(db):
    two_siblings(db)
    before = snapshot_of(db)
    raised = Mine("from the resolver")

    def bad(values):
        raise raised

    for call in (
        lambda: db.get("sem/a", "k", resolver=bad),
        lambda: db.read("sem/a", "k", resolver=bad),
        lambda: list(db.iter("sem/a", resolver=bad, allow_put=True)),
    ):
        with pytest.raises(Mine) as e:
            call()
        assert e.value is raised
    assert snapshot_of(db) == before


# --- read-modify-write ------------------------------------------------------


def test_put_with_a_function_gets_the_live_values(db):
    seen = []

    def first(values):
        seen.append(values)
        return b"1"

    db.put("sem/rmw", "n", first)
    assert seen == [[]]
    two_siblings(db, "sem/rmw", "n")
    db.put("sem/rmw", "n", lambda vs: seen.append(sorted(vs)) or b"one")
    assert seen[-1] == [b"left", b"right"]
    assert db.get("sem/rmw", "n") == b"one"
    db.put("sem/rmw", "n", lambda vs: None)  # None deletes
    assert db.read("sem/rmw", "n").deleted


def test_an_exception_in_a_put_function_propagates_and_writes_nothing(db):
    db.put("sem/rmw", "n", "7")
    before = snapshot_of(db)
    raised = Mine("from the write function")

    def bad(values):
        raise raised

    with pytest.raises(Mine) as e:
        db.put("sem/rmw", "n", bad)
    assert e.value is raised
    with pytest.raises(Mine):
        db.put("sem/rmw", "fresh", bad)
    assert snapshot_of(db) == before


def test_eight_threads_increment_one_counter(db):
    def bump(values):
        assert len(values) <= 1
        return str(int(values[0]) + 1 if values else 1).encode()

    def worker():
        for _ in range(100):
            db.put("sem/rmw", "counter", bump)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.get("sem/rmw", "counter") == b"800"


# --- transactions ----------------------------------------------------------


def test_a_transaction_commits_at_the_end_of_the_block(db):
    db.put("sem/tx", "a", "1")
    with db.transaction() as tx:
        assert tx.get("sem/tx", "a") == b"1"
        tx.put("sem/tx", "b", "2")
        tx.delete("sem/tx", "a")
        # Not visible outside before the commit.
        assert db.get("sem/tx", "b") is None
        assert db.get("sem/tx", "a") == b"1"
    assert db.get("sem/tx", "b") == b"2"
    assert db.get("sem/tx", "a") is None


def test_an_exception_in_the_block_aborts(db):
    db.put("sem/tx", "a", "1")
    before = snapshot_of(db)
    with pytest.raises(Mine):
        with db.transaction() as tx:
            tx.put("sem/tx", "b", "2")
            tx.put("sem/tx", "a", "changed")
            raise Mine("abort")
    assert snapshot_of(db) == before


def test_a_concurrent_write_to_a_read_key_is_a_write_conflict(db, cli):
    db.put("sem/tx", "a", "1")
    before_b = db.read("sem/tx", "b")
    with pytest.raises(chorus.WriteConflict) as e:
        with db.transaction() as tx:
            assert tx.get("sem/tx", "a") == b"1"
            tx.put("sem/tx", "b", "from the transaction")
            # Another process writes the key the transaction read.
            cli.run("put", "sem/tx", "a", "from the command")
    assert e.value.keys == [("sem/tx", b"a")]
    assert isinstance(e.value, chorus.Conflict) and e.value.exit_code == 3
    assert "sem/tx/a" in str(e.value)
    assert db.read("sem/tx", "b") == before_b
    assert db.get("sem/tx", "a") == b"from the command"


def test_a_transaction_cannot_be_used_after_it_ended(db):
    tx = db.transaction()
    tx.put("sem/tx", "x", "1")
    tx.commit()
    assert db.get("sem/tx", "x") == b"1"
    aborted = db.transaction()
    aborted.put("sem/tx", "y", "1")
    aborted.abort()
    assert db.get("sem/tx", "y") is None
    for ended in (tx, aborted):
        for use in (
            lambda: ended.get("sem/tx", "x"),
            lambda: ended.read("sem/tx", "x"),
            lambda: ended.put("sem/tx", "x", "2"),
            lambda: ended.delete("sem/tx", "x"),
            ended.commit,
        ):
            with pytest.raises(chorus.InvalidInput, match="transaction has ended"):
                use()
    assert db.get("sem/tx", "x") == b"1"


def test_a_transaction_reads_as_of_its_start(db, cli):
    db.put("sem/tx", "a", "1")
    tx = db.transaction()
    cli.run("put", "sem/tx", "a", "2")
    assert tx.get("sem/tx", "a") == b"1"
    tx.abort()


# --- snapshots -------------------------------------------------------------


def test_a_snapshot_does_not_see_later_writes(db, cli):
    db.put("sem/snap", "a", "1")
    db.put("sem/snap", "b", "1")
    snap = db.snapshot()
    db.put("sem/snap", "a", "2")
    db.delete("sem/snap", "b")
    cli.run("put", "sem/snap", "c", "3")
    assert snap.get("sem/snap", "a") == b"1"
    assert snap.read("sem/snap", "b").values == [b"1"]
    assert snap.get("sem/snap", "c") is None
    assert sorted(i.key for i in snap.iter("sem/snap")) == [b"a", b"b"]
    assert sorted(i.key for i in db.iter("sem/snap")) == [b"a", b"c"]
    assert db.get("sem/snap", "a") == b"2"


# --- watches ---------------------------------------------------------------

RESUME = """
import json, sys, chorus
db = chorus.open(sys.argv[1])
out = [[c.key.decode(), c.read.value.decode() if c.read.value else None]
       for c in db.watch(sys.argv[2], from_=sys.argv[3], timeout=1.0)]
print(json.dumps(out))
"""


def test_watch_reports_changes_and_resumes_from_an_id(db, store_dir):
    w = db.watch("sem/w", timeout=1.0)
    for i in range(5):
        db.put("sem/w", f"k{i}", f"v{i}")
    db.put("sem/other", "k0", "not watched")
    db.delete("sem/w", "k0")
    changes = list(w)
    assert [(c.key, c.full_prefix) for c in changes] == [
        (f"k{i}".encode(), "sem/w") for i in range(5)
    ] + [(b"k0", "sem/w")]
    assert [c.read.value for c in changes[:5]] == [f"v{i}".encode() for i in range(5)]
    assert changes[5].read.deleted and not changes[5].removed
    assert all(isinstance(c, chorus.Change) and not c.from_peer for c in changes)
    assert [c.seq for c in changes] == sorted({c.seq for c in changes})

    # Resuming after the second change gives exactly the later ones, once.
    again = list(db.watch("sem/w", from_=changes[1].id, timeout=1.0))
    assert [c.id for c in again] == [c.id for c in changes[2:]]

    # So does another process that opens the store anew.
    out = subprocess.run(
        [sys.executable, "-c", RESUME, store_dir, "sem/w", changes[1].id],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout) == [["k2", "v2"], ["k3", "v3"], ["k4", "v4"], ["k0", None]]

    # And from the last id: only what came after.
    db.put("sem/w", "k9", "later")
    tail = list(db.watch("sem/w", from_=changes[-1].id, timeout=1.0))
    assert [(c.key, c.read.value) for c in tail] == [(b"k9", b"later")]


def test_a_watch_ends_after_its_timeout_without_changes(db):
    t0 = time.monotonic()
    assert list(db.watch("sem/quiet", timeout=0.5)) == []
    took = time.monotonic() - t0
    assert 0.45 <= took < 5.0


def test_a_watch_of_one_key(db):
    w = db.watch("sem/w", key="wanted", timeout=1.0)
    db.put("sem/w", "other", "x")
    db.put("sem/w", "wanted", "1")
    db.put("sem/w", "wanted2", "x")
    db.put("sem/w", "wanted", "2")
    assert [(c.key, c.read.value) for c in w] == [(b"wanted", b"1"), (b"wanted", b"2")]


def test_a_watch_sees_another_process_write(db, cli):
    w = db.watch("sem/w", timeout=2.0)
    cli.run("put", "sem/w", "from-cli", "hello")
    got = next(w)
    assert (got.key, got.read.value) == (b"from-cli", b"hello")


# --- the GIL ---------------------------------------------------------------


def spin_rate(main_wait):
    """How far a busy Python thread counts while the main thread runs
    ``main_wait()``, per second."""
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        c0, t0 = count[0], time.monotonic()
        main_wait()
        c1, t1 = count[0], time.monotonic()
    finally:
        stop.set()
        t.join()
    return (c1 - c0) / (t1 - t0)


def test_a_waiting_watch_lets_other_threads_run(db):
    idle = spin_rate(lambda: time.sleep(0.6))
    watching = spin_rate(lambda: list(db.watch("sem/gil", timeout=0.6)))
    # Holding the GIL while waiting would stop the counter entirely.
    assert watching > 0.25 * idle, (watching, idle)


# --- fork ------------------------------------------------------------------


def test_a_handle_is_refused_in_a_forked_child(db, store_dir):
    db.put("sem/fork", "k", "parent")
    docs = db.docs("forked")
    docs.create({"_id": "d"})
    snap = db.snapshot()
    watch = db.watch("sem/fork", timeout=0.1)
    items = db.iter("sem/fork")
    tx = db.transaction()
    uses = {
        "get": lambda: db.get("sem/fork", "k"),
        "put": lambda: db.put("sem/fork", "k", "child"),
        "delete": lambda: db.delete("sem/fork", "k"),
        "docs": lambda: db.docs("forked"),
        "docs.get": lambda: docs.get("d"),
        "oplogs": lambda: db.oplogs,
        "snapshot.get": lambda: snap.get("sem/fork", "k"),
        "watch": lambda: next(watch),
        "iter": lambda: next(items),
        "tx.put": lambda: tx.put("sem/fork", "k", "child"),
        "tx.commit": tx.commit,
    }
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        report = {}
        try:
            os.close(read_end)
            for name, use in uses.items():
                try:
                    use()
                    report[name] = "no error"
                except chorus.InvalidInput as e:
                    report[name] = ["InvalidInput", str(e), e.exit_code]
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    report[name] = [type(e).__name__, str(e)]
            try:
                fresh = chorus.open(store_dir)
                fresh.put("sem/fork", "child", "wrote")
                report["fresh"] = [fresh.get("sem/fork", "k").decode(), fresh.get("sem/fork", "child").decode()]
                fresh.close()
            except BaseException as e:  # noqa: BLE001
                report["fresh"] = [type(e).__name__, str(e)]
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = json.loads(f.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert status == 0
    for name in uses:
        got = report.get(name)
        assert got and got[0] == "InvalidInput", f"{name} in the child: {got}"
        assert "fork" in got[1] and "chorus.open" in got[1], got[1]
        assert got[2] == 2
    assert report["fresh"] == ["parent", "wrote"]
    # The parent's handle and everything made from it keep working.
    assert db.get("sem/fork", "k") == b"parent"
    assert db.get("sem/fork", "child") == b"wrote"
    assert docs.get("d")["_id"] == "d"
    tx.put("sem/fork", "k", "after the fork")
    tx.commit()
    assert db.get("sem/fork", "k") == b"after the fork"
    assert snap.get("sem/fork", "k") == b"parent"


# --- documents ---------------------------------------------------------------


def test_documents(db, cli):
    docs = db.docs("people")
    assert docs.name == "people"
    made = docs.create({"_id": "ann", "age": 1, "tags": ["a"], "nested": {"x": None}})
    assert made["ok"] is True and made["_id"] == "ann" and made["_rev"].startswith("1-")
    rev1 = made["_rev"]
    assert docs.get("ann") == {"_id": "ann", "_rev": rev1, "age": 1, "tags": ["a"], "nested": {"x": None}}
    # The command reads what Python wrote.
    assert cli.run("doc", "get", "people", "ann", json_out=True).json()["_rev"] == rev1

    rev2 = docs.update({"_id": "ann", "_rev": rev1, "age": 2})["_rev"]
    assert rev2.startswith("2-")
    with pytest.raises(chorus.Conflict) as stale:
        docs.update({"_id": "ann", "_rev": rev1, "age": 99})
    assert stale.value.exit_code == 3 and rev1 in str(stale.value)
    assert docs.get("ann")["age"] == 2

    branch = docs.update({"_id": "ann", "_rev": rev1, "age": 3}, keep_both=True)["_rev"]
    both = docs.get("ann", conflicts=True)
    assert {both["_rev"], *both["_conflicts"]} == {rev2, branch}
    loser = both["_conflicts"][0]
    assert docs.conflicts("ann") == [loser]
    assert docs.get("ann", rev=branch)["age"] == 3
    assert docs.get("ann", rev=rev2)["age"] == 2
    with pytest.raises(chorus.NotFound, match="no longer kept"):
        docs.get("ann", rev=rev1)

    assert docs.resolve("ann", branch)["_rev"] == branch
    assert docs.conflicts("ann") == []
    assert docs.get("ann", conflicts=True) == {"_id": "ann", "_rev": branch, "age": 3}

    with pytest.raises(chorus.Conflict) as exists:
        docs.create({"_id": "ann"})
    assert exists.value.exit_code == 3
    generated = docs.create({"name": "no id"})["_id"]
    assert [d["_id"] for d in docs.all()] == sorted(["ann", generated])

    deleted = docs.delete("ann", branch)
    assert deleted["ok"] is True
    with pytest.raises(chorus.NotFound) as gone:
        docs.get("ann")
    assert gone.value.exit_code == 1 and gone.value.code == "not_found"
    assert cli.run("doc", "get", "people", "ann", expect=1).code == 1
    assert [d["_id"] for d in docs.all()] == [generated]
    with pytest.raises(chorus.NotFound):
        docs.get("nobody")
    with pytest.raises(chorus.NotFound):
        docs.update({"_id": "nobody", "_rev": rev1})


def test_documents_written_by_the_command_are_read_by_python(db, cli):
    cli.run("doc", "create", "people", '{"_id": "bob", "n": 1}')
    docs = db.docs("people")
    assert docs.get("bob")["n"] == 1
    rev = docs.get("bob")["_rev"]
    docs.update({"_id": "bob", "_rev": rev, "n": 2})
    stale = cli.run("doc", "update", "people", json.dumps({"_id": "bob", "_rev": rev, "n": 3}), expect=3)
    assert stale.code == 3
    assert docs.get("bob")["n"] == 2


# --- operation logs ------------------------------------------------------------


def test_builtin_counter(db, cli):
    ops = db.oplogs
    assert ops.get("sem/ops", "hits") is None
    assert ops.push("sem/ops", "hits", "counter", 5) == 5
    assert ops.push("sem/ops", "hits", "counter", 2) == 7
    assert ops.get("sem/ops", "hits") == 7
    log = ops.log("sem/ops", "hits")
    assert log["type"] == "counter"
    assert [op["payload"] for op in log["ops"]] == [5, 2]
    assert all(op["node"] == db.node_id for op in log["ops"])
    # The command folds the same log to the same value, and the reverse.
    assert json.loads(cli.run("op", "get", "sem/ops", "hits").out) == 7
    cli.run("op", "push", "sem/ops", "hits", "counter", "3")
    assert ops.get("sem/ops", "hits") == 10


def test_a_python_reducer(db):
    ops = db.oplogs
    seen = []

    def concat(state, op):
        seen.append(op)
        return state + [op["payload"]]

    ops.register("concat", concat, init=[])
    assert ops.push("sem/ops", "list", "concat", "a") == ["a"]
    assert ops.push("sem/ops", "list", "concat", {"b": [1]}) == ["a", {"b": [1]}]
    assert ops.get("sem/ops", "list") == ["a", {"b": [1]}]
    assert seen and {"id", "timestamp", "node", "sha", "payload"} <= set(seen[-1])


def test_a_reducer_that_raises_is_an_error_and_pushes_nothing(db):
    ops = db.oplogs

    def broken(state, op):
        if op["payload"] == "bad":
            raise ValueError("this reducer refuses bad")
        return (state or 0) + 1

    ops.register("picky", broken)
    assert ops.push("sem/ops", "p", "picky", "ok") == 1
    before = snapshot_of(db)
    with pytest.raises(chorus.Error) as e:
        ops.push("sem/ops", "p", "picky", "bad")
    assert "this reducer refuses bad" in str(e.value)
    assert isinstance(e.value, chorus.InvalidInput)
    assert snapshot_of(db) == before
    assert ops.get("sem/ops", "p") == 1


# --- errors: the same codes as the command -------------------------------------


def kind_table():
    return {code: (exit_code, status) for code, exit_code, status in chorus.kinds()}


ERROR_CLASSES = [
    chorus.NotFound,
    chorus.InvalidInput,
    chorus.Unauthorized,
    chorus.Forbidden,
    chorus.Conflict,
    chorus.WriteConflict,
    chorus.Busy,
    chorus.LockTimeout,
    chorus.StorageError,
    chorus.Corruption,
    chorus.InternalError,
]


def test_kinds_and_classes_agree():
    table = kind_table()
    assert len(table) == len(chorus.kinds())
    for cls in ERROR_CLASSES + [chorus.Error]:
        assert issubclass(cls, chorus.Error)
        assert table[cls.code][0] == cls.exit_code, cls
    assert issubclass(chorus.WriteConflict, chorus.Conflict)
    assert issubclass(chorus.LockTimeout, chorus.Busy)
    assert issubclass(chorus.Corruption, chorus.StorageError)
    for code, (exit_code, _status) in table.items():
        e = chorus.error_for(code, "msg")
        assert isinstance(e, chorus.Error) and e.code == code and e.exit_code == exit_code
        assert str(e) == "msg"
    assert {c.code for c in ERROR_CLASSES} <= set(table)
    assert (chorus.NotFound.exit_code, chorus.InvalidInput.exit_code, chorus.Conflict.exit_code) == (1, 2, 3)
    assert (chorus.StorageError.exit_code, chorus.Busy.exit_code) == (4, 5)
    unknown = chorus.error_for("no_such_code", "msg")
    assert type(unknown) is chorus.Error


def expect_same(cli_ran, call, cls, same_message=True):
    """``call()`` raises ``cls`` with the code and exit code the command
    exited with (and, when ``same_message``, the message it printed)."""
    with pytest.raises(chorus.Error) as e:
        call()
    printed = cli_ran.error()
    assert type(e.value) is cls, (type(e.value), str(e.value))
    assert e.value.code == printed["code"], (cli_ran.args, printed)
    assert e.value.exit_code == cli_ran.code, (cli_ran.args, printed)
    assert kind_table()[e.value.code][0] == cli_ran.code
    if same_message:
        assert str(e.value) == printed["message"]
    return e.value


def test_errors_match_the_command(db, cli, tmp_path, chorus_bin):
    db.put("err/a", "present", "v")
    docs = db.docs("errs")
    rev = docs.create({"_id": "d"})["_rev"]
    docs.update({"_id": "d", "_rev": rev})
    big = tmp_path / "big"
    big.write_bytes(b"x" * ((1 << 20) + 1))

    def run(*args):
        return cli.run(*args, json_out=True, expect=None)

    # get of an absent key: the command exits 1; Python returns the default
    # (and NotFound carries that exit code for the calls that raise it).
    absent = run("get", "err/a", "absent")
    assert absent.code == chorus.NotFound.exit_code == 1
    assert absent.error()["code"] == chorus.NotFound.code
    assert db.get("err/a", "absent") is None

    expect_same(run("del", "err/a", "absent"), lambda: db.delete("err/a", "absent"), chorus.NotFound)
    expect_same(run("doc", "get", "errs", "nope"), lambda: docs.get("nope"), chorus.NotFound)
    missing = str(tmp_path / "missing")
    expect_same(
        Cli(chorus_bin, missing).run("get", "a/b", "k", json_out=True, expect=None),
        lambda: chorus.open(missing, create=False),
        chorus.NotFound,
    )
    expect_same(run("get", "errab", "k"), lambda: db.get("errab", "k"), chorus.InvalidInput)
    expect_same(run("put", "errab", "k", "v"), lambda: db.put("errab", "k", "v"), chorus.InvalidInput)
    expect_same(run("put", "$cluster/x", "k", "v"), lambda: db.put("$cluster/x", "k", "v"), chorus.InvalidInput)
    expect_same(run("del", "$cluster/x", "k"), lambda: db.delete("$cluster/x", "k"), chorus.InvalidInput)
    expect_same(run("put", "err/a", "", "v"), lambda: db.put("err/a", "", "v"), chorus.InvalidInput)
    expect_same(
        run("put", "err/a", "big", f"@{big}"),
        lambda: db.put("err/a", "big", big.read_bytes()),
        chorus.InvalidInput,
    )
    expect_same(
        run("put", "--context", "garbage", "err/a", "k", "v"),
        lambda: db.put("err/a", "k", "v", context="garbage"),
        chorus.InvalidInput,
        same_message=False,
    )
    expect_same(
        run("doc", "create", "errs", '{"_id": "d"}'),
        lambda: docs.create({"_id": "d"}),
        chorus.Conflict,
    )
    expect_same(
        run("doc", "update", "errs", json.dumps({"_id": "d", "_rev": rev})),
        lambda: docs.update({"_id": "d", "_rev": rev}),
        chorus.Conflict,
    )
    assert db.get("err/a", "present") == b"v"


LOCKED = """
import json, sys, chorus
db = chorus.open(sys.argv[1], lock_timeout=0.3)
print("ready", flush=True)
sys.stdin.readline()
try:
    db.put("err/lock", "k", "from python")
    print(json.dumps(None))
except chorus.Error as e:
    print(json.dumps([type(e).__name__, e.code, e.exit_code, isinstance(e, chorus.Busy), str(e)]))
"""


def test_lock_timeout_matches_the_command(db, cli, store_dir):
    seen = {}
    # A second Python process, opened before the lock is taken.
    other = subprocess.Popen(
        [sys.executable, "-c", LOCKED, store_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert other.stdout.readline() == b"ready\n"

        def hold(values):
            # The writer lock is held while this runs: the others time out.
            seen["cli"] = cli.run(
                "--lock-timeout", "0.3", "put", "err/lock", "k", "from cli", json_out=True, expect=None
            )
            out, err = other.communicate(b"go\n", timeout=60)
            seen["py"] = (other.returncode, out, err)
            return b"held"

        db.put("err/lock", "k", hold)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert seen["cli"].code == 5, seen["cli"]
    assert seen["cli"].error()["code"] == "lock_timeout"
    code, out, err = seen["py"]
    assert code == 0, err.decode()
    name, kind, exit_code, busy, message = json.loads(out)
    assert (name, kind, exit_code, busy) == ("LockTimeout", "lock_timeout", 5, True)
    assert "writer lock" in message
    assert db.get("err/lock", "k") == b"held"


def test_corruption_matches_the_command(store_dir, cli):
    with chorus.open(store_dir) as db:
        for i in range(40):
            db.put("err/c", f"k{i}", "v" * 100)
    logs = sorted(f for f in os.listdir(store_dir) if f.startswith("gen-") and f.endswith(".log"))
    with open(os.path.join(store_dir, logs[-1]), "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 100)
    e = expect_same(
        cli.run("get", "err/c", "k1", json_out=True, expect=None),
        lambda: chorus.open(store_dir),
        chorus.Corruption,
    )
    assert isinstance(e, chorus.StorageError) and "chorus repair" in str(e)
