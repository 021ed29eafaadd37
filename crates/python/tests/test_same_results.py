"""One sequence of operations gives the same results on every handle.

The sequence (``scenario``) runs on a reference embedded store, then on
each handle under test: ``chorus.open(dir)``, ``chorus.connect(http URL)``
of a real ``chorus serve`` node serving another directory, and
``chorus.connect(tcp URL)`` of that node's ZeroMQ broker (without the
watch steps: the broker has no resumable watch). Every step records its
result, or the class of the exception it raised, and the transcripts must
be equal.

Normalized, because they must differ between two data directories:

- node ids and timestamps of values (each directory writes with its own
  node id and clock);
- contexts (they hold node ids and counters), except the empty one
  (``"AQA"``, an absent key's), which is the same everywhere;
- change ids and sequence numbers of watched changes (positions in each
  directory's log, which holds different bytes);
- operation log entries: ``id``, ``timestamp``, ``node`` and ``sha`` (all
  derived from the writer's node and clock): only payloads are compared;
- prefix hashes: they cover node ids and timestamps, so each handle's hash
  is compared with the hash of an embedded handle on the same directory
  (for the node, its directory opened beside it), and the hash of an empty
  scope, which is the same everywhere, is compared as is.

Document revisions are not normalized: they are derived from the content
only, so both directories make the same ones.

The node binary is ``$CHORUS_BIN``, else ``chorus`` on PATH.
"""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from typing import Any, Callable, List, Tuple

import pytest

import chorus

FP = "app/cfg"


# ---------------------------------------------------------------------------
# A real node.


def _chorus_bin() -> str:
    path = os.environ.get("CHORUS_BIN") or shutil.which("chorus")
    if not path:
        pytest.skip("no chorus binary: set CHORUS_BIN or put chorus on PATH")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """``chorus serve`` on free loopback ports, with its ZeroMQ broker."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.http_port = _free_port()
        self.zmq_port = _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.zmq_url = f"tcp://127.0.0.1:{self.zmq_port}"
        args = [
            _chorus_bin(), "--dir", directory, "serve", "--insecure",
            "--http", f"127.0.0.1:{self.http_port}",
            "--gossip", f"127.0.0.1:{_free_port()}",
            "--zmq", self.zmq_url,
        ]
        self.log = open(os.path.join(os.path.dirname(directory), "node.log"), "wb")
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
                with open(self.log.name, "rb") as f:
                    raise RuntimeError(f"the node did not start: {f.read().decode(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def node(tmp_path):
    n = Node(str(tmp_path / "node"))
    yield n
    n.stop()


# ---------------------------------------------------------------------------
# The sequence.


def norm(x: Any) -> Any:
    """A result with what must differ between directories left out."""
    if isinstance(x, chorus.Read):
        return {
            "values": [s.value for s in x.siblings],
            "deleted": x.deleted,
            "context": x.context if x.context == "AQA" else "<context>",
        }
    if isinstance(x, chorus.Item):
        return ("item", x.full_prefix, x.key, norm(x.read))
    if isinstance(x, chorus.Change):
        return ("change", x.full_prefix, x.key, x.record is not None, x.from_peer, norm(x.read))
    if isinstance(x, dict):
        if set(x) == {"type", "checkpoint", "ops", "late"}:
            return {"type": x["type"], "ops": [o["payload"] for o in x["ops"]], "late": len(x["late"])}
        return {k: norm(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [norm(v) for v in x]
    return x


def scenario(db: Any, twin: Any, watch: bool) -> List[Tuple[str, Any]]:
    """Runs the sequence on ``db``; ``twin`` is an embedded handle on the
    same directory (for the hash comparisons)."""
    out: List[Tuple[str, Any]] = []

    def step(label: str, f: Callable[[], Any]) -> Any:
        try:
            result = f()
        except chorus.Error as e:
            out.append((label, "raises " + type(e).__name__))
            return None
        out.append((label, norm(result)))
        return result

    # Plain writes and reads; values of any bytes.
    step("put", lambda: db.put(FP, "color", "blue"))
    step("get", lambda: db.get(FP, "color"))
    step("get absent", lambda: db.get(FP, "nope"))
    step("get absent default", lambda: db.get(FP, "nope", b"dflt"))
    step("read absent", lambda: db.read(FP, "nope"))
    step("binary value", lambda: (db.put(FP, "bin", b"\x00\xff\xfe\x80"), db.get(FP, "bin")))
    step("text key and value", lambda: (db.put(FP, "caf\u00e9", "th\u00e9"), db.get(FP, b"caf\xc3\xa9")))
    step("bytearray", lambda: (db.put(FP, bytearray(b"ba"), bytearray(b"\x01")), db.get(FP, "ba")))
    step("key with slash", lambda: (db.put(FP, "a/b.c", "s"), db.get(FP, "a/b.c")))

    # Siblings: two writes over one read.
    first = db.read(FP, "color")
    step("write from a read", lambda: db.put(FP, "color", "red", context=first.context))
    step("concurrent write", lambda: db.put(FP, "color", "green", context=first.context))
    step("read siblings", lambda: db.read(FP, "color"))
    step("get siblings", lambda: db.get(FP, "color"))
    step("items siblings", lambda: list(db.items(FP)))
    step("read value of siblings", lambda: db.read(FP, "color").value)
    step("lww without put", lambda: db.get(FP, "color", resolver="lww", allow_put=False))
    step("lww read without put", lambda: db.read(FP, "color", resolver="lww", allow_put=False))
    step("still siblings", lambda: len(db.read(FP, "color").siblings))
    join = lambda values: b"+".join(sorted(values))  # noqa: E731
    step("function without put", lambda: db.read(FP, "color", resolver=join, allow_put=False))
    step("function with put", lambda: db.get(FP, "color", resolver=join))
    step("settled by the function", lambda: db.read(FP, "color"))
    empty = db.read(FP, "size")
    step("create from the empty context", lambda: db.put(FP, "size", "s", context=empty.context))
    step("concurrent create", lambda: db.put(FP, "size", "m", context=empty.context))
    step("lww with put", lambda: db.get(FP, "size", resolver="lww"))
    step("settled by lww", lambda: db.read(FP, "size"))
    step("function of one value", lambda: db.read(FP, "size", resolver=lambda v: None, allow_put=False))
    gone = db.read(FP, "gone")
    db.put(FP, "gone", "1", context=gone.context)
    db.put(FP, "gone", "2", context=gone.context)
    step("function deleting, no put", lambda: db.read(FP, "gone", resolver=lambda v: None, allow_put=False))
    step("function deleting", lambda: db.get(FP, "gone", b"dflt", resolver=lambda v: None))
    step("deleted by the function", lambda: db.read(FP, "gone"))

    # Conditional and computed writes.
    step("if_absent on a live key", lambda: db.put(FP, "color", "x", if_absent=True))
    step("if_absent on a new key", lambda: (db.put(FP, "fresh", "1", if_absent=True), db.get(FP, "fresh")))
    step("function write on absent", lambda: (db.put(FP, "count", lambda v: b"%d" % len(v)), db.get(FP, "count")))
    step("function write on present", lambda: (db.put(FP, "count", lambda v: v[0] + b"!"), db.get(FP, "count")))

    # Deletes.
    step("delete", lambda: db.delete(FP, "fresh"))
    step("get deleted", lambda: db.get(FP, "fresh", b"gone"))
    step("read deleted", lambda: db.read(FP, "fresh"))
    step("delete deleted", lambda: db.delete(FP, "fresh"))
    step("delete absent", lambda: db.delete(FP, "never"))
    step("if_absent on a deleted key", lambda: (db.put(FP, "fresh", "2", if_absent=True), db.get(FP, "fresh")))

    # Iteration (sorted: the embedded handle walks its index's order, a
    # node's listing is in key order).
    for i in range(12):
        db.put("app/many", f"k{i:02d}", f"v{i}")
    db.delete("app/many", "k05")
    step("iter full prefix", lambda: sorted(norm(list(db.iter("app/many")))))
    step("iter match", lambda: sorted(i.key for i in db.iter("app/many", match="k1*")))
    step("iter match escape", lambda: sorted(i.key for i in db.iter(FP, match="a/b\\.c")))
    step("keys", lambda: sorted(db.keys("app/many", match="k0?")))
    step("items", lambda: sorted(db.items("app/many", match="k1*")))
    step("iter prefix", lambda: sorted((i.full_prefix, i.key) for i in db.iter("app")))
    step("iter everything", lambda: sorted((i.full_prefix, i.key) for i in db.iter()))
    step("iter absent scope", lambda: list(db.iter("none/such")))
    r = db.read("app/sib", "k")
    db.put("app/sib", "k", "a", context=r.context)
    db.put("app/sib", "k", "b", context=r.context)
    step("iter siblings", lambda: norm(list(db.iter("app/sib"))))
    step("iter lww", lambda: norm(list(db.iter("app/sib", resolver="lww"))))
    step("iter function", lambda: norm(list(db.iter("app/sib", resolver=join))))
    step("items lww", lambda: list(db.items("app/sib", resolver="lww")))
    step("iter function with put", lambda: norm(list(db.iter("app/sib", resolver=join, allow_put=True))))
    step("settled by iter", lambda: db.read("app/sib", "k"))

    # Hashes.
    step("hash of a full prefix", lambda: db.prefix_hash(FP) == twin.prefix_hash(FP))
    step("hash of a prefix", lambda: db.prefix_hash("app") == twin.prefix_hash("app"))
    step("hash of an empty scope", lambda: db.prefix_hash("none/such"))
    step("hash of an empty prefix", lambda: db.prefix_hash("none"))

    # Documents (revisions are content hashes: equal everywhere).
    d = db.docs("users")
    step("doc create", lambda: d.create({"_id": "alice", "email": "a@example.com", "n": [1, 2.5, None, True]}))
    step("doc create again", lambda: d.create({"_id": "alice"}))
    step("doc get", lambda: d.get("alice"))
    rev1 = d.get("alice")["_rev"]
    step("doc update", lambda: d.update({"_id": "alice", "_rev": rev1, "email": "b@example.com"}))
    step("doc update stale", lambda: d.update({"_id": "alice", "_rev": rev1, "email": "c@example.com"}))
    step("doc update keep_both", lambda: d.update({"_id": "alice", "_rev": rev1, "phone": "555"}, keep_both=True))
    step("doc conflicts", lambda: d.conflicts("alice"))
    step("doc get conflicts", lambda: d.get("alice", conflicts=True))
    step("doc get rev", lambda: d.get("alice", rev=d.conflicts("alice")[0]))
    step("doc get old rev", lambda: d.get("alice", rev=rev1))
    step("doc resolve", lambda: d.resolve("alice", d.conflicts("alice")[0]))
    step("doc after resolve", lambda: d.get("alice", conflicts=True))
    step("doc create bob", lambda: d.create({"_id": "bob"}))
    step("doc all", lambda: d.all())
    step("doc delete stale", lambda: d.delete("alice", rev1))
    step("doc delete", lambda: d.delete("alice", d.get("alice")["_rev"]))
    step("doc get deleted", lambda: d.get("alice"))
    step("doc conflicts absent", lambda: d.conflicts("nobody"))
    step("doc update without _rev", lambda: d.update({"_id": "bob", "x": 1}))
    step("doc update without _id", lambda: d.update({"_rev": rev1, "x": 1}))
    step("doc field with _", lambda: d.create({"_id": "carol", "_x": 1}))
    step("doc store prefix/name", lambda: db.docs("app/people").create({"_id": "dave"}))

    # Operation logs.
    o = db.oplogs
    step("op push", lambda: [o.push(FP, "visits/daily", "counter", n) for n in (1, 2, 3)])
    step("op get", lambda: o.get(FP, "visits/daily"))
    step("op log", lambda: o.log(FP, "visits/daily"))
    step("op push other type", lambda: o.push(FP, "visits/daily", "max", 1))
    step("op push bad payload", lambda: o.push(FP, "visits/daily", "counter", "x"))
    step("op push set", lambda: o.push(FP, "tags", "set", {"add": "a"}))
    step("op get none", lambda: o.get(FP, "none"))
    step("op log none", lambda: o.log(FP, "none"))
    step("op push unknown type", lambda: o.push(FP, "u", "no-such-type", 1))
    step("op on a plain key", lambda: o.get(FP, "bin"))

    # Watches, resumed from a change's id.
    if watch:
        w = db.watch("app/watched", timeout=10)
        for k in ("w1", "w2", "w3"):
            db.put("app/watched", k, k.upper())
        got = [next(w) for _ in range(3)]
        step("watch", lambda: got)
        step("watch resume", lambda: list(db.watch("app/watched", from_=got[0].id, timeout=1)))
        step("watch key", lambda: list(db.watch("app/watched", key="w3", from_=got[0].id, timeout=1)))
        step("watch ends after its timeout", lambda: list(db.watch("app/watched", timeout=0.2)))
        db.delete("app/watched", "w1")
        step("watch a delete", lambda: next(w))
        step("watch records", lambda: (db.docs("app/watched").create({"_id": "doc"}), next(w).record is not None))

    # Bad input: the same exception class, nothing written.
    step("bad full prefix type", lambda: db.get(3, "k"))
    step("full prefix without /", lambda: db.get("ab", "k"))
    step("full prefix with two /", lambda: db.put("a/b/c", "k", "v"))
    step("empty subprefix", lambda: db.get("a/", "k"))
    step("bad key type", lambda: db.get(FP, 3))
    step("memoryview key", lambda: db.get(FP, memoryview(b"k")))
    step("bad value type", lambda: db.put(FP, "k", 3))
    step("empty key write", lambda: db.put(FP, "", "v"))
    step("key too long", lambda: db.put(FP, "k" * 5000, "v"))
    step("value too big", lambda: db.put(FP, "big", b"x" * ((1 << 20) + 1)))
    step("reserved prefix write", lambda: db.put("$x/y", "k", "v"))
    step("bad resolver", lambda: db.get(FP, "color", resolver="newest"))
    step("bad resolver type", lambda: db.get(FP, "color", resolver=3))
    step("bad context", lambda: db.put(FP, "k", "v", context="not a context"))
    step("bad context type", lambda: db.put(FP, "k", "v", context=3))
    step("bad allow_put", lambda: db.get(FP, "k", allow_put="yes"))
    step("bad match type", lambda: db.iter(FP, match=3))
    step("bad scope", lambda: db.iter("a/b/c"))
    step("bad scope type", lambda: db.iter(3))
    step("hash of everything", lambda: db.prefix_hash(None))
    step("bad document", lambda: db.docs("users").create([1]))
    step("bad store name", lambda: db.docs("a/b/c"))
    step("bad store name type", lambda: db.docs(3))
    step("bad payload", lambda: db.oplogs.push(FP, "p", "counter", object()))
    step("bad log path", lambda: db.oplogs.get(FP, 3))
    step("bad watch: a key without its full prefix", lambda: db.watch("app", key="k"))
    step("nothing written", lambda: (db.get(FP, "k"), db.get(FP, "big"), db.get(FP, "k" * 10)))
    return out


# ---------------------------------------------------------------------------
# The test.


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sequence's transcript on an embedded store."""
    path = str(tmp_path_factory.mktemp("reference"))
    with chorus.open(path) as db, chorus.open(path) as twin:
        return scenario(db, twin, watch=True)


@pytest.mark.parametrize("handle", ["embedded", "http", "zmq"])
def test_same_results(handle, tmp_path, reference, request):
    if handle == "embedded":
        path = str(tmp_path / "embedded")
        db, twin = chorus.open(path), chorus.open(path)
    else:
        if handle == "zmq":
            pytest.importorskip("zmq", reason="the ZeroMQ handle needs pyzmq")
        n = request.getfixturevalue("node")
        db = chorus.connect(n.url if handle == "http" else n.zmq_url, timeout=20)
        # The node's own directory, opened beside it, for the hashes.
        twin = chorus.open(n.dir)
    watch = handle != "zmq"
    try:
        got = scenario(db, twin, watch=watch)
    finally:
        db.close()
        twin.close()
    # Without watches (ZeroMQ): every step but those named "watch...".
    want = [s for s in reference if watch or not s[0].startswith("watch")]
    assert [label for label, _ in got] == [label for label, _ in want]
    for (label, result), (_, expected) in zip(got, want):
        assert result == expected, f"{handle}: step {label!r}"
