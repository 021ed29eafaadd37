"""Bad input: every wrong argument raises ``chorus.InvalidInput`` with a
message that names what was wrong, and the store is left exactly as it
was (compared key by key, tombstones and contexts included, and by the
prefix hashes)."""

from __future__ import annotations

import math

import pytest

import chorus
from conftest import snapshot_of

# The engine's limits (crates/store/src/store.rs, `Limits::default`).
MAX_KEY_BYTES = 4 << 10
MAX_VALUE_BYTES = 1 << 20


def deep_list(levels):
    out = []
    for _ in range(levels):
        out = [out]
    return out


def deep_dict(levels):
    out = {}
    for _ in range(levels):
        out = {"a": out}
    return out


@pytest.fixture
def filled(db):
    """A store with a key, siblings, a tombstone, a document and a log."""
    db.put("bad/a", "k", "v")
    db.put("bad/a", "sib", "base")
    seen = db.read("bad/a", "sib")
    db.put("bad/a", "sib", "left", context=seen.context)
    db.put("bad/a", "sib", "right", context=seen.context)
    db.put("bad/a", "gone", "x")
    db.delete("bad/a", "gone")
    docs = db.docs("bad")
    rev = docs.create({"_id": "doc", "n": 1})["_rev"]
    db.oplogs.push("bad/ops", "hits", "counter", 1)
    return db, docs, rev


def state(db):
    """Everything the store holds, reserved prefixes included."""
    reserved = sorted(
        (i.full_prefix, i.key, tuple(s.value or b"" for s in i.read.siblings))
        for i in db.iter("$cluster", tombstones=True)
    )
    return (
        snapshot_of(db),
        reserved,
        db.prefix_hash("bad"),
        db.prefix_hash("docs"),
        db.prefix_hash("$cluster"),
    )


def refused(db, call, *fragments):
    """``call()`` raises InvalidInput whose message holds every fragment,
    and writes nothing."""
    before = state(db)
    with pytest.raises(chorus.InvalidInput) as e:
        call()
    message = str(e.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert e.value.code == "bad_request" and e.value.exit_code == 2
    assert state(db) == before, f"the store changed after: {message}"
    return message


# --- wrong types -------------------------------------------------------------


@pytest.mark.parametrize(
    "label, call, fragments",
    [
        ("int key", lambda db: db.put("bad/a", 5, "v"), ["key must be", "not int"]),
        ("bool key", lambda db: db.put("bad/a", True, "v"), ["key must be", "not bool"]),
        ("tuple key", lambda db: db.get("bad/a", ("k",)), ["key must be", "not tuple"]),
        ("int key delete", lambda db: db.delete("bad/a", 5), ["key must be", "not int"]),
        ("int key read", lambda db: db.read("bad/a", 5), ["key must be", "not int"]),
        ("dict value", lambda db: db.put("bad/a", "k", {"a": 1}), ["value must be", "not dict"]),
        ("None value", lambda db: db.put("bad/a", "k", None), ["value must be", "not NoneType"]),
        ("int value", lambda db: db.put("bad/a", "k", 7), ["value must be", "not int"]),
        ("list full prefix", lambda db: db.put(["bad", "a"], "k", "v"), ["full prefix must be a str", "not list"]),
        ("list full prefix get", lambda db: db.get(["bad", "a"], "k"), ["full prefix must be a str"]),
        ("int scope", lambda db: db.iter(5), ["scope must be a str", "not int"]),
        ("bad resolver name", lambda db: db.get("bad/a", "sib", resolver="newest"), ['resolver="newest" is not a resolver', "lww"]),
        ("bad resolver type", lambda db: db.get("bad/a", "sib", resolver=5), ["resolver must be", "not int"]),
        ("bad resolver on iter", lambda db: list(db.iter("bad/a", resolver="first")), ['resolver="first"']),
        ("resolver result not bytes", lambda db: db.get("bad/a", "sib", resolver=lambda vs: 5), ["result must be bytes", "not int"]),
        ("write function result not bytes", lambda db: db.put("bad/a", "k", lambda vs: 1.5), ["result must be bytes", "not float"]),
        ("surrogate str key", lambda db: db.put("bad/a", "\udc80", "v"), ["key", "UTF-8 cannot encode"]),
        ("int document id", lambda db: db.docs("bad").get(5), ["document id must be a str", "not int"]),
        ("int store name", lambda db: db.docs(5), ["document store name must be a str"]),
        ("non-callable reducer", lambda db: db.oplogs.register("k", 5), ["reduce must be a function", "not int"]),
        ("tx int value", lambda db: db.transaction().put("bad/a", "k", 5), ["value must be", "not int"]),
        # Keyword options name themselves; a truthy str is not a flag.
        ("str allow_put", lambda db: db.get("bad/a", "sib", resolver="lww", allow_put="yes"), ["allow_put= must be True or False", "not str"]),
        ("int if_absent", lambda db: db.put("bad/a", "new", "v", if_absent=1), ["if_absent= must be True or False", "not int"]),
        ("int context", lambda db: db.put("bad/a", "k", "v", context=5), ["context= must be a str", "not int"]),
        ("int match", lambda db: list(db.iter("bad/a", match=5)), ["match= must be a str", "not int"]),
        ("str tombstones", lambda db: list(db.iter("bad/a", tombstones="no")), ["tombstones= must be True or False"]),
        ("str timeout", lambda db: db.watch("bad/a", timeout="1"), ["timeout= must be a number of seconds", "not str"]),
        ("bool timeout", lambda db: db.watch("bad/a", timeout=True), ["timeout= must be a number of seconds", "not bool"]),
        ("int from_", lambda db: db.watch("bad/a", from_=5), ["from_= must be a str"]),
        ("int keep_both", lambda db: db.docs("bad").update({"_id": "doc"}, keep_both=1), ["keep_both= must be True or False"]),
        ("int rev", lambda db: db.docs("bad").get("doc", rev=1), ["rev= must be a str"]),
    ],
)
def test_wrong_types(filled, label, call, fragments):
    db = filled[0]
    refused(db, lambda: call(db), *fragments)


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"sync": "sometimes"}, ['sync="sometimes" is not a sync mode', '"always"']),
        ({"sync": ""}, ['sync="" is not a sync mode']),
        ({"lock_timeout": -1.0}, ["lock_timeout=-1", "from 0 to 86400"]),
        ({"lock_timeout": math.nan}, ["lock_timeout=NaN"]),
        ({"lock_timeout": math.inf}, ["lock_timeout=inf"]),
        ({"lock_timeout": 1e9}, ["lock_timeout=1000000000"]),
        ({"sync": 1}, ["sync= must be a str", "not int"]),
        ({"lock_timeout": "1"}, ["lock_timeout= must be a number of seconds", "not str"]),
        ({"create": "yes"}, ["create= must be True or False", "not str"]),
    ],
)
def test_bad_open_options_create_nothing(tmp_path, kwargs, fragments):
    path = tmp_path / "never-made"
    with pytest.raises(chorus.InvalidInput) as e:
        chorus.open(str(path), **kwargs)
    for fragment in fragments:
        assert fragment in str(e.value)
    assert not path.exists()


def test_bad_open_options_on_an_existing_store(filled, store_dir):
    db = filled[0]
    refused(db, lambda: chorus.open(store_dir, sync="fast"), "sync")
    refused(db, lambda: chorus.open(store_dir, lock_timeout=-0.5), "lock_timeout")


def test_bad_watch_arguments(filled):
    db = filled[0]
    refused(db, lambda: db.watch("bad/a", timeout=-1), "timeout=-1", ">= 0")
    refused(db, lambda: db.watch("bad/a", timeout=math.nan), "timeout=NaN")
    refused(db, lambda: db.watch(None, key="k"), "needs the key's full prefix")
    refused(db, lambda: db.watch("bad", key="k"), "needs the key's full prefix")
    refused(db, lambda: db.watch("bad/a", key=5), "key must be")


# --- documents and payloads that are not JSON -------------------------------


@pytest.mark.parametrize(
    "label, doc, fragments",
    [
        ("list", [1, 2], ["document must be a dict", "not list"]),
        ("str", "doc", ["document must be a dict", "not str"]),
        ("None", None, ["document must be a dict", "not NoneType"]),
        ("set inside", {"_id": "x", "s": {1, 2}}, ["holds a set", "not JSON"]),
        ("NaN inside", {"_id": "x", "f": math.nan}, ["NaN", "JSON cannot represent"]),
        ("inf inside", {"_id": "x", "f": math.inf}, ["inf", "JSON cannot represent"]),
        ("bytes inside", {"_id": "x", "b": b"raw"}, ["holds a bytes", "not JSON"]),
        ("object inside", {"_id": "x", "o": object()}, ["holds a object", "not JSON"]),
        ("int key", {"_id": "x", 1: "a"}, ["key of type int", "keys are str"]),
        ("tuple key nested", {"_id": "x", "a": {(1, 2): "a"}}, ["key of type tuple"]),
        ("None key", {"_id": "x", None: 1}, ["key of type NoneType"]),
        ("int past 64 bits", {"_id": "x", "n": 1 << 70}, ["integer outside the 64-bit range"]),
        ("65 levels", dict(deep_dict(65), _id="x"), ["nests deeper than 64 levels"]),
        ("a list 70 deep", {"_id": "x", "l": deep_list(70)}, ["nests deeper than 64 levels"]),
        ("_rev on create", {"_id": "x", "_rev": "1-abc"}, ["new document has no _rev"]),
        ("int _id", {"_id": 5}, ["_id must be a string"]),
        ("empty _id", {"_id": ""}, ["document id", "empty"]),
    ],
)
def test_bad_documents_on_create(filled, label, doc, fragments):
    db, docs, _ = filled
    refused(db, lambda: docs.create(doc), *fragments)


def test_bad_documents_on_update(filled):
    db, docs, rev = filled
    refused(db, lambda: docs.update(["doc"]), "document must be a dict")
    refused(db, lambda: docs.update({"_id": "doc", "_rev": rev, "s": {1}}), "holds a set")
    refused(db, lambda: docs.update({"_id": "doc", "_rev": rev, 2: 1}), "key of type int")
    refused(db, lambda: docs.update({"_id": "doc", "_rev": rev, "d": deep_dict(70)}), "deeper than 64")
    refused(db, lambda: docs.update({"_rev": rev, "n": 2}), "needs _id")
    refused(db, lambda: docs.update({"_id": "doc", "n": 2}), "needs _rev")
    refused(db, lambda: docs.update({"_id": "doc", "_rev": "xyz"}), '"xyz" is not a revision id')
    refused(db, lambda: docs.delete("doc", "xyz"), '"xyz" is not a revision id')
    refused(db, lambda: docs.get("doc", rev="2-"), "is not a revision id")
    refused(db, lambda: docs.resolve("doc", "nope"), "is not a revision id")
    assert docs.get("doc") == {"_id": "doc", "_rev": rev, "n": 1}


def test_a_document_at_the_depth_limit_is_accepted(db):
    # 64 levels is the limit, not past it: the refusal above is of the
    # 65th level, not of nesting in general.
    docs = db.docs("bad")
    body = deep_dict(63)
    docs.create({"_id": "deep", "d": body})
    assert docs.get("deep")["d"] == body


@pytest.mark.parametrize(
    "label, payload, fragments",
    [
        ("set", {1, 2}, ["payload holds a set", "not JSON"]),
        ("frozenset", frozenset(), ["payload holds a frozenset"]),
        ("NaN", math.nan, ["payload holds NaN", "JSON cannot represent"]),
        ("-inf", -math.inf, ["payload holds -inf"]),
        ("bytes", b"1", ["payload holds a bytes"]),
        ("complex", 1j, ["payload holds a complex"]),
        ("int key", {1: 2}, ["payload has a key of type int"]),
        ("huge int", 1 << 64, ["integer outside the 64-bit range"]),
        ("deep", deep_list(70), ["payload nests deeper than 64 levels"]),
        ("counter of text", "x", ['reducer of type "counter" refused', "not a number"]),
    ],
)
def test_bad_payloads(filled, label, payload, fragments):
    db = filled[0]
    refused(db, lambda: db.oplogs.push("bad/ops", "hits", "counter", payload), *fragments)
    assert db.oplogs.get("bad/ops", "hits") == 1


def test_bad_oplog_arguments(filled):
    db = filled[0]
    ops = db.oplogs
    refused(db, lambda: ops.push("bad/ops", "x", "no-such-type", 1), 'no reducer for type "no-such-type"')
    refused(db, lambda: ops.push("bad/ops", 5, "counter", 1), "log path must be a str")
    refused(db, lambda: ops.push("bad/ops", "x", 5, 1), "log type must be a str")
    refused(db, lambda: ops.push("$cluster/x", "x", "counter", 1), "$cluster/x is reserved")
    refused(db, lambda: ops.register("k", lambda s, o: s, init={1, 2}), "initial state holds a set")
    refused(db, lambda: ops.register("k", lambda s, o: s, init=deep_list(70)), "initial state nests deeper")
    # A reducer whose result is not JSON: refused, the log unchanged.
    ops.register("setter", lambda state, op: {1, 2})
    refused(db, lambda: ops.push("bad/ops", "s", "setter", 1), "reducer's result holds a set")


# --- sizes ---------------------------------------------------------------------


def test_oversize_values_and_keys(filled):
    db = filled[0]
    over = b"x" * (MAX_VALUE_BYTES + 1)
    refused(db, lambda: db.put("bad/a", "big", over), "bad/a/big", f"the limit is {MAX_VALUE_BYTES} bytes")
    refused(db, lambda: db.put("bad/a", "k", lambda vs: over), f"the limit is {MAX_VALUE_BYTES} bytes")
    refused(db, lambda: db.put("bad/a", b"k" * (MAX_KEY_BYTES + 1), "v"), f"{MAX_KEY_BYTES + 1} bytes long", f"the limit is {MAX_KEY_BYTES}")
    refused(db, lambda: db.put("bad/a", "", "v"), "key is empty")

    def in_transaction():
        with db.transaction() as tx:
            tx.put("bad/a", "fits", "small")
            tx.put("bad/a", "big", over)

    refused(db, in_transaction, f"the limit is {MAX_VALUE_BYTES} bytes")
    # Just under the limits is fine (the value limit counts the stored
    # object, so leave room for its header).
    db.put("bad/a", b"k" * MAX_KEY_BYTES, "v")
    db.put("bad/a", "nearly", b"x" * (MAX_VALUE_BYTES - 1024))
    assert len(db.get("bad/a", "nearly")) == MAX_VALUE_BYTES - 1024


# --- reserved names and malformed names ----------------------------------------------


def test_reserved_names(filled):
    db = filled[0]
    for fp in ("$cluster/x", "bad/$x"):
        refused(db, lambda: db.put(fp, "k", "v"), f"{fp} is reserved", "pick a name without '$'")
        refused(db, lambda: db.delete(fp, "k"), f"{fp} is reserved")
        refused(db, lambda: db.put(fp, "k", lambda vs: b"v"), f"{fp} is reserved")

        def in_transaction(fp=fp):
            with db.transaction() as tx:
                tx.put("bad/a", "fits", "v")
                tx.put(fp, "k", "v")

        refused(db, in_transaction, f"{fp} is reserved")

        def delete_in_transaction(fp=fp):
            with db.transaction() as tx:
                tx.delete(fp, "k")

        refused(db, delete_in_transaction, f"{fp} is reserved")
    refused(db, lambda: db.docs("$cluster/x"), "is reserved")


@pytest.mark.parametrize(
    "fp, fragment",
    [
        ("nosep", "has no '/'"),
        ("", "has no '/'"),
        ("/", "is empty"),
        ("a/", "is empty"),
        ("a/b/c", "contains '/'"),
        ("a\n/b", "control characters"),
    ],
)
def test_malformed_full_prefixes(filled, fp, fragment):
    db = filled[0]
    refused(db, lambda: db.put(fp, "k", "v"), fragment)
    refused(db, lambda: db.get(fp, "k"), fragment)


# --- contexts and change ids ---------------------------------------------------


@pytest.mark.parametrize("context", ["", "garbage", "not a context!", "AAAA", "%%%", "AQ"])
def test_malformed_contexts(filled, context):
    db = filled[0]
    fragment = f"the context {context!r}".replace("'", '"')
    refused(db, lambda: db.put("bad/a", "k", "v2", context=context), fragment, "pass the `context` of a read")
    refused(db, lambda: db.put("bad/a", "new", "v", context=context), fragment)
    refused(db, lambda: db.delete("bad/a", "k", context=context), fragment)

    def in_transaction():
        with db.transaction() as tx:
            tx.put("bad/a", "fits", "v")
            tx.put("bad/a", "k", "v2", context=context)

    refused(db, in_transaction, fragment)
    tx = db.transaction()
    refused(db, lambda: tx.delete("bad/a", "k", context=context), fragment)
    tx.abort()


@pytest.mark.parametrize("from_", ["", "nope", "1-2", "1-2-x", "a-b-c.d", "1-2-3.4.5", "-1-2-3.0"])
def test_malformed_change_ids(filled, from_):
    db = filled[0]
    refused(db, lambda: db.watch("bad/a", from_=from_), f"from_={from_!r}".replace("'", '"'), "pass a change's `id`")


def test_a_change_id_from_elsewhere(filled):
    db = filled[0]
    # Well formed, but past the end of this directory's history: the
    # engine checks the position when the watch first reads, so the
    # refusal comes from the first next(), not from watch() itself.
    w = db.watch("bad/a", from_="999-999999-99.0", timeout=0.1)
    refused(db, lambda: next(w), "not in this directory's history")
