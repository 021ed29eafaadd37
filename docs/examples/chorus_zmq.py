"""Chorus over ZeroMQ from Python, with the chorus package
(pip install chorus-store[zmq]):

    import chorus
    db = chorus.connect("tcp://127.0.0.1:7801")
    db.put("app/cfg", "color", "blue")
    print(db.get("app/cfg", "color"))        # b'blue'

The handle has the methods of the embedded one (chorus.open(path)) but
watch, transaction and snapshot (docs/python-remote.md). Run this file for
a short tour against a running node:

    chorus serve --insecure --zmq tcp://127.0.0.1:7801
    python3 docs/examples/chorus_zmq.py tcp://127.0.0.1:7801

docs/examples/chorus_wire.py speaks the same protocol by hand with pyzmq
alone.
"""

import sys


def tour(endpoint):
    import chorus

    with chorus.connect(endpoint, timeout=10) as db:
        print("node:", db.node_id)
        db.put("tour/cfg", "color", "blue")
        read = db.read("tour/cfg", "color")
        print("color:", read.value)
        # Two writers that read the same version: both values are kept.
        db.put("tour/cfg", "color", "red", context=read.context)
        db.put("tour/cfg", "color", "green", context=read.context)
        print("siblings:", sorted(db.read("tour/cfg", "color").values))
        print("last writer wins:", db.get("tour/cfg", "color", resolver="lww"))
        users = db.docs("tour/people")
        try:
            print("document:", users.create({"_id": "alice", "email": "alice@example.com"})["_rev"])
        except chorus.Conflict:
            print("document (there already):", users.get("alice")["_rev"])
        print("counter:", db.oplogs.push("tour/counts", "visits", "counter", 1))
        print("keys:", list(db.keys("tour/cfg")))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: chorus_zmq.py ROUTER_ENDPOINT (tcp://HOST:PORT)")
    tour(sys.argv[1])
