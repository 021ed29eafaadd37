"""Many processes on one data directory: 32 spawned Python interpreters,
each opening the store itself, write their own keys, overwrite shared
keys and edit shared documents at once; then nothing may be missing and
every process must see the same thing. And a Python process and the
``chorus`` command taking turns on one directory.

Durability: the writers use the default ``sync="always"`` (every put is
on disk when it returns, one commit per put). Measured on a loaded
2-core machine: 32 x 1,000 puts took about 25 s with "always" and 21 s
with "batch" (batch only groups concurrent commits of one process, and
each writer here is single-threaded), so the stricter mode is kept. The
whole test takes about 25 s on that machine, and about 85 s while a Rust
build runs beside it.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback

import chorus

N_PROCS = 32
KEYS_PER_PROC = 1000
KV = "mp/keys"
SHARED = "mp/shared"
SHARED_KEYS = ["s0", "s1", "s2"]
SHARED_ROUNDS = 3
DOC_STORE = "shared"
DOC_IDS = [f"doc{d}" for d in range(5)]
DOC_EDITS = 3
SYNC = "always"
# Longest any step may wait on the others before the test fails.
WAIT = 240.0


def key_of(proc: int, k: int) -> str:
    return f"w{proc:02d}-k{k:04d}"


def value_of(proc: int, k: int) -> bytes:
    return f"{proc}:{k}".encode()


def marker(proc: int, doc: str, edit: int) -> str:
    return f"{doc}/w{proc:02d}/e{edit}"


def _jobs():
    """The extra jobs of one writer, spread over its key writes: every
    doc edit and every round of shared-key writes."""
    jobs = [("doc", d, e) for e in range(DOC_EDITS) for d in DOC_IDS]
    jobs += [("shared", r, None) for r in range(SHARED_ROUNDS)]
    return jobs


def _edit_doc(docs, proc: int, doc_id: str, edit: int) -> str:
    """Reads the winner, adds this edit's marker, saves with keep_both."""
    current = docs.get(doc_id)
    current["edits"][marker(proc, doc_id, edit)] = True
    saved = docs.update(current, keep_both=True)
    assert saved["ok"] is True and saved["_id"] == doc_id
    return saved["_rev"]


def view(db) -> dict:
    """What one handle sees of everything the test wrote."""
    docs = db.docs(DOC_STORE)
    seen = {}
    for doc_id in DOC_IDS:
        d = docs.get(doc_id, conflicts=True)
        seen[doc_id] = (d["_rev"], tuple(d.get("_conflicts", [])), d["edits"])
    shared = {k: db.read(SHARED, k).values for k in SHARED_KEYS}
    return {
        "docs": seen,
        "shared": shared,
        "hash": db.prefix_hash("mp"),
        "count": sum(1 for _ in db.keys(KV)),
    }


def writer(path, proc, start, done, results):
    """One writer process: its keys, the shared keys, the shared docs;
    then (after every writer finished) its view through its own handle
    and through a handle opened anew."""
    try:
        db = chorus.open(path, sync=SYNC)
        docs = db.docs(DOC_STORE)
        jobs = _jobs()
        revs = []
        start.wait(WAIT)
        began = time.monotonic()
        for k in range(KEYS_PER_PROC):
            db.put(KV, key_of(proc, k), value_of(proc, k))
            # One job after every KEYS_PER_PROC / len(jobs) keys.
            if (k + 1) * len(jobs) // KEYS_PER_PROC != k * len(jobs) // KEYS_PER_PROC:
                kind, a, b = jobs[k * len(jobs) // KEYS_PER_PROC]
                if kind == "doc":
                    revs.append((a, marker(proc, a, b), _edit_doc(docs, proc, a, b)))
                else:
                    for s in SHARED_KEYS:
                        db.put(SHARED, s, f"w{proc:02d}/r{a}")
        took = time.monotonic() - began
        done.wait(WAIT)
        old = view(db)
        db.close()
        with chorus.open(path) as again:
            new = view(again)
        results.put(("ok", proc, revs, took, old, new))
    except BaseException:
        results.put(("error", proc, traceback.format_exc()))
        raise


def _collect(results, procs):
    got = {}
    deadline = time.monotonic() + WAIT
    while len(got) < len(procs):
        try:
            item = results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"writer processes died: {[p.exitcode for p in dead]}"
            assert time.monotonic() < deadline, "writers did not finish in time"
            continue
        assert item[0] == "ok", f"writer {item[1]} failed:\n{item[2]}"
        got[item[1]] = item
    return got


def test_32_processes_write_keys_shared_keys_and_documents(store_dir):
    db = chorus.open(store_dir)
    docs = db.docs(DOC_STORE)
    for doc_id in DOC_IDS:
        docs.create({"_id": doc_id, "edits": {}})
    # Iterated once the writers are done: it ends after 1 s with no change.
    shared_changes = db.watch(SHARED, timeout=1.0)

    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(N_PROCS), ctx.Barrier(N_PROCS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=writer, args=(store_dir, p, start, done, results))
        for p in range(N_PROCS)
    ]
    began = time.monotonic()
    for p in procs:
        p.start()
    got = _collect(results, procs)
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    elapsed = time.monotonic() - began
    print(
        f"{N_PROCS} writers, {N_PROCS * KEYS_PER_PROC} keys: {elapsed:.1f} s "
        f"(slowest writer {max(g[3] for g in got.values()):.1f} s)"
    )

    # Every key of every writer, with its value, and nothing else.
    expected = {
        key_of(p, k).encode(): value_of(p, k)
        for p in range(N_PROCS)
        for k in range(KEYS_PER_PROC)
    }
    assert dict(db.items(KV)) == expected

    # Shared keys written with no context: each write superseded every
    # sibling, so one value is left, and it is the last write the log
    # recorded; the watch (opened before the writers) saw every write once.
    writes = {s: [] for s in SHARED_KEYS}
    for change in shared_changes:
        assert isinstance(change, chorus.Change), f"unexpected {change!r}"
        assert len(change.read.siblings) == 1, change
        writes[change.key.decode()].append(change.read.value)
    for s in SHARED_KEYS:
        everyone = sorted(f"w{p:02d}/r{r}".encode() for p in range(N_PROCS) for r in range(SHARED_ROUNDS))
        assert sorted(writes[s]) == everyone
        final = db.read(SHARED, s)
        assert final.values == [writes[s][-1]]

    # No document edit lost: every marker is in the body of a current
    # revision (the winner or a conflict), and every revision a writer got
    # back is a current revision or in the kept history.
    for doc_id in DOC_IDS:
        d = docs.get(doc_id, conflicts=True)
        leaves = [d["_rev"]] + d.get("_conflicts", [])
        seen = set()
        for rev in leaves:
            body = docs.get(doc_id, rev=rev)
            assert body["_rev"] == rev
            seen.update(body["edits"])
        wanted = {marker(p, doc_id, e) for p in range(N_PROCS) for e in range(DOC_EDITS)}
        assert seen == wanted, f"{doc_id}: lost edits {sorted(wanted - seen)}"
        for g in got.values():
            for edited, _, rev in g[2]:
                if edited != doc_id or rev in leaves:
                    continue
                try:
                    docs.get(doc_id, rev=rev)
                    raise AssertionError(f"{rev} of {doc_id} is readable but not current")
                except chorus.NotFound as e:
                    assert "no longer kept" in str(e), f"{rev} of {doc_id} unknown: {e}"
        print(f"{doc_id}: {len(leaves)} current revisions")

    # Every process, through its own handle and through a new one, sees
    # what this one sees.
    here = view(db)
    assert here["count"] == N_PROCS * KEYS_PER_PROC
    for p, g in sorted(got.items()):
        assert g[4] == here, f"writer {p}'s handle differs"
        assert g[5] == here, f"writer {p}'s reopened handle differs"
    db.close()


def test_python_and_cli_take_turns(db, cli):
    for i in range(6):
        # Each sees the other's latest write of the same key and of its own.
        cli.run("put", "mix/a", "turn", f"cli-{i}")
        assert db.get("mix/a", "turn") == f"cli-{i}".encode()
        db.put("mix/a", "turn", f"py-{i}")
        assert cli.run("get", "mix/a", "turn").out == f"py-{i}"
        cli.run("put", "mix/a", f"cli{i}", f"from-cli-{i}")
        db.put("mix/a", f"py{i}", f"from-py-{i}")
    for i in range(6):
        assert db.get("mix/a", f"cli{i}") == f"from-cli-{i}".encode()
        assert cli.run("get", "mix/a", f"py{i}").out == f"from-py-{i}"
    # A delete by the command is seen by Python, and the reverse.
    cli.run("del", "mix/a", "cli0")
    assert db.get("mix/a", "cli0") is None
    db.delete("mix/a", "py0")
    assert cli.run("get", "mix/a", "py0", expect=1).code == 1


def test_cli_shows_siblings_made_in_python(db, cli):
    db.put("mix/s", "k", "base")
    seen = db.read("mix/s", "k")
    db.put("mix/s", "k", "left", context=seen.context)
    db.put("mix/s", "k", "right", context=seen.context)
    shown = cli.run("get", "mix/s", "k", json_out=True).json()
    assert sorted(v["value"] for v in shown["values"]) == ["left", "right"]
    assert shown["context"] == db.read("mix/s", "k").context
    text = cli.run("get", "mix/s", "k").out
    assert "sibling 1 of 2" in text and "sibling 2 of 2" in text
    assert "left" in text and "right" in text
    # The command's context supersedes both, and Python sees one value.
    cli.run("put", "--context", shown["context"], "mix/s", "k", "merged")
    assert db.get("mix/s", "k") == b"merged"
