"""Drives a running node's ZeroMQ broker with pyzmq through the example
wire-protocol client in docs/examples/chorus_wire.py; exits non-zero on
the first failure. Run by crates/cli/tests/zmq.rs: zmq_client.py ROUTER
PUB."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "docs", "examples"))

import zmq  # noqa: E402
from chorus_wire import Chorus, ChorusError, next_event, subscribe  # noqa: E402


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ChorusError as e:
        assert e.code == code, f"expected {code}, got {e.code}: {e.message}"
        assert e.message, "an error says what happened"
        return e.message
    raise AssertionError(f"expected a {code} error")


def main(router, pub):
    c = Chorus(router)
    other = Chorus(router)
    sub = subscribe(pub, "py/")
    # A SUB socket only receives what is published after it connected.
    deadline = time.time() + 10
    while True:
        c.put("py", "warm", "up", str(time.time()))
        if next_event(sub, 200) is not None:
            break
        assert time.time() < deadline, "the subscriber never received an event"

    # put and get
    assert c.request("ping")["node"]
    c.put("py", "cfg", "color", "blue")
    read = c.get("py", "cfg", "color")
    assert [v["value"] for v in read["values"]] == ["blue"], read
    assert read["context"]

    # siblings: two clients write over the same read
    c.put("py", "cfg", "color", "red", context=read["context"])
    other.put("py", "cfg", "color", "green", context=read["context"])
    both = c.get("py", "cfg", "color")
    assert sorted(v["value"] for v in both["values"]) == ["green", "red"], both
    lww = c.get("py", "cfg", "color", resolve="lww")
    assert len(lww["values"]) == 1
    # a write with the siblings' context settles them
    c.put("py", "cfg", "color", "teal", context=both["context"])
    assert [v["value"] for v in c.get("py", "cfg", "color")["values"]] == ["teal"]
    keys = c.list("py", "cfg")
    assert [k["key"] for k in keys] == ["color"], keys

    # documents: create, then two concurrent updates of one revision
    saved = c.doc_create("pyusers", {"_id": "alice", "email": "a@example.com"})
    rev = saved["_rev"]
    assert rev.startswith("1-"), saved
    expect_error("conflict", c.doc_create, "pyusers", {"_id": "alice"})
    c.doc_update("pyusers", {"_id": "alice", "_rev": rev, "email": "x@example.com"}, keep_both=True)
    other.doc_update("pyusers", {"_id": "alice", "_rev": rev, "phone": "555"}, keep_both=True)
    groups = c.doc_conflicts("pyusers", "alice")
    assert len(groups) == 1 and len(groups[0]) == 2, groups
    doc = c.doc_get("pyusers", "alice", conflicts=True)
    assert len(doc["_conflicts"]) == 1, doc
    page = c.doc_conflicts_page("pyusers", "alice", 1)
    assert page["conflicts"] == doc["_conflicts"] and page["next"] is None, page
    assert page["_rev"] == doc["_rev"], page
    for bad in (0, 10001, "x", -1):
        expect_error("bad_request", c.doc_conflicts_page, "pyusers", "alice", bad)
    expect_error("bad_request", c.doc_conflicts_page, "pyusers", "alice", 2, "nope")
    stale = {"_id": "alice", "_rev": rev, "email": "late@example.com"}
    expect_error("conflict", c.doc_update, "pyusers", stale)

    # operation logs
    for _ in range(5):
        c.op_push("py", "counts", "visits", "counter", 2)
    assert c.op_get("py", "counts", "visits") == 10
    assert other.op_push("py", "counts", "visits", "counter", 1) == 11

    # events: every write above reached the subscriber, in order
    seen = {}
    deadline = time.time() + 10
    while "py/counts/visits" not in seen or seen["py/counts/visits"] < 6:
        ev = next_event(sub, 1000)
        assert ev is not None and time.time() < deadline, f"events missing; seen {seen}"
        topic, event = ev
        assert topic.startswith("py/")
        assert event["full_prefix"] + "/" + event["key"] == topic, (topic, event)
        assert "id" in event and "seq" in event, event
        seen[topic] = seen.get(topic, 0) + 1
    assert seen.get("py/cfg/color", 0) >= 4, seen
    colors = seen["py/cfg/color"]
    assert colors == 4, f"one event per write of color, got {colors}"

    # bad input: a clear error, nothing written
    before = c.list("py", "cfg")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.connect(router)
    raw.send_multipart([b"", b"not json"])
    assert raw.poll(5000), "no reply to a malformed request"
    reply = json.loads(raw.recv_multipart()[-1])
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
    assert "not JSON" in reply["error"]["message"], reply
    raw.close()
    expect_error("bad_request", c.request, "frobnicate")
    expect_error("bad_request", c.request, "put", prefix="py", sub="cfg", key="k")
    expect_error("bad_request", c.request, "put", prefix="py", sub="cfg", key="k", value=5)
    expect_error("forbidden", c.put, "$auth", "users", "x", "v")
    expect_error("forbidden", c.get, "$auth", "keys", "hmac")
    expect_error("bad_request", c.put, "py", "cfg", "k", "v", context="garbage")
    expect_error("bad_request", c.op_push, "py", "counts", "visits", "counter", "x")
    expect_error("not_found", c.get, "py", "cfg", "absent")
    assert c.list("py", "cfg") == before, "a bad request changed nothing"
    assert c.op_get("py", "counts", "visits") == 11

    c.close()
    other.close()
    sub.close()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
