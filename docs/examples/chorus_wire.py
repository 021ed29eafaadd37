"""Chorus's ZeroMQ wire protocol written by hand, with pyzmq alone.

Python programs use the chorus package instead: chorus.connect(
"tcp://HOST:7801") (docs/examples/chorus_zmq.py, docs/python-remote.md).
This file is the protocol of docs/zeromq.md spelled out, a model for a
client in another language: one JSON request per message on a DEALER
socket (an empty delimiter frame, then the body), one JSON reply per
request matched by "id"; change events on a SUB socket.

    from chorus_wire import Chorus
    c = Chorus("tcp://127.0.0.1:7801")
    c.put("app", "cfg", "color", "blue")
    print(c.get("app", "cfg", "color")["values"][0]["value"])

Run it as a script for a short tour against a running node:

    chorus serve --insecure --zmq tcp://127.0.0.1:7801 --zmq-pub tcp://127.0.0.1:7802
    python3 docs/examples/chorus_wire.py tcp://127.0.0.1:7801 tcp://127.0.0.1:7802
"""

import itertools
import json
import sys

import zmq


class ChorusError(Exception):
    """A request the node refused: .code is stable (bad_request, not_found,
    conflict, unauthorized, forbidden, ...), the message says what to do."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Chorus:
    """One connection to a node's broker. Not thread-safe: use one per
    thread (ZeroMQ sockets are not shared between threads)."""

    def __init__(self, endpoint, token=None, timeout_ms=10_000, context=None):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.token = token
        self.timeout_ms = timeout_ms
        self.ids = itertools.count(1)

    def close(self):
        self.socket.close()

    def request(self, op, **fields):
        """Sends one request and waits for its reply; returns the reply's
        fields, or raises ChorusError."""
        rid = next(self.ids)
        body = {"id": rid, "op": op, **fields}
        if self.token is not None:
            body["token"] = self.token
        self.socket.send_multipart([b"", json.dumps(body).encode()])
        while True:
            if not self.socket.poll(self.timeout_ms, zmq.POLLIN):
                raise TimeoutError(f"no reply to {op} within {self.timeout_ms} ms")
            frames = self.socket.recv_multipart()
            reply = json.loads(frames[-1])
            if reply.get("id") != rid:
                continue  # the late reply of an earlier, timed-out request
            if not reply.get("ok"):
                err = reply.get("error", {})
                raise ChorusError(err.get("code"), err.get("message"))
            return reply

    # Keys.
    def get(self, prefix, sub, key, resolve=None):
        args = {"prefix": prefix, "sub": sub, "key": key}
        if resolve:
            args["resolve"] = resolve
        return self.request("get", **args)

    def put(self, prefix, sub, key, value, context=None):
        args = {"prefix": prefix, "sub": sub, "key": key, "value": value}
        if context is not None:
            args["context"] = context
        return self.request("put", **args)

    def delete(self, prefix, sub, key, context=None):
        args = {"prefix": prefix, "sub": sub, "key": key}
        if context is not None:
            args["context"] = context
        return self.request("delete", **args)

    def list(self, prefix, sub, match=None):
        args = {"prefix": prefix, "sub": sub}
        if match:
            args["match"] = match
        return self.request("list", **args)["keys"]

    # Documents.
    def doc_create(self, store, doc):
        return self.request("doc.create", store=store, doc=doc)

    def doc_get(self, store, doc_id, conflicts=False):
        return self.request("doc.get", store=store, doc_id=doc_id, conflicts=conflicts)["doc"]

    def doc_update(self, store, doc, keep_both=False):
        return self.request("doc.update", store=store, doc=doc, keep_both=keep_both)

    def doc_conflicts(self, store, doc_id):
        return self.request("doc.conflicts", store=store, doc_id=doc_id)["conflicts"]

    def doc_conflicts_page(self, store, doc_id, limit, after=None):
        """One page of the losing current revisions, greatest first:
        {"_id", "_rev" (the winner), "conflicts", "next"}; pass "next" as
        `after` for the next page (None on the last)."""
        fields = {"store": store, "doc_id": doc_id, "limit": limit}
        if after is not None:
            fields["after"] = after
        return self.request("doc.conflicts", **fields)

    # Operation logs.
    def op_push(self, prefix, sub, path, kind, payload):
        return self.request(
            "op.push", prefix=prefix, sub=sub, path=path, type=kind, payload=payload
        )["value"]

    def op_get(self, prefix, sub, path):
        return self.request("op.get", prefix=prefix, sub=sub, path=path)["value"]


def subscribe(endpoint, topic="", context=None):
    """A SUB socket on a node's event endpoint, receiving changes whose
    topic (PREFIX/SUBPREFIX/KEY) starts with `topic`. Read events with
    next_event()."""
    context = context or zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(endpoint)
    return sub


def next_event(sub, timeout_ms=5_000):
    """The next (topic, event) from a SUB socket, or None after the timeout."""
    if not sub.poll(timeout_ms, zmq.POLLIN):
        return None
    topic, body = sub.recv_multipart()
    return topic.decode(), json.loads(body)


def tour(endpoint, events):
    c = Chorus(endpoint)
    sub = subscribe(events, "tour/")
    print("ping:", c.request("ping")["node"])
    c.put("tour", "cfg", "color", "blue")
    read = c.get("tour", "cfg", "color")
    print("color:", read["values"][0]["value"])
    # Two writers that read the same version: both values are kept.
    c.put("tour", "cfg", "color", "red", context=read["context"])
    c.put("tour", "cfg", "color", "green", context=read["context"])
    print("siblings:", sorted(v["value"] for v in c.get("tour", "cfg", "color")["values"]))
    saved = c.doc_create("tour", {"_id": "alice", "email": "alice@example.com"})
    print("document:", saved["_rev"])
    print("counter:", c.op_push("tour", "counts", "visits", "counter", 1))
    print("event:", next_event(sub))
    c.close()
    sub.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chorus_wire.py ROUTER_ENDPOINT PUB_ENDPOINT")
    tour(sys.argv[1], sys.argv[2])
