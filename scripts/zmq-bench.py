#!/usr/bin/env python3
"""Durable puts and gets through Chorus's ZeroMQ broker with 1, 8 and 64
pyzmq clients, beside redis-benchmark against a Redis server with
appendfsync always and with appendfsync everysec, in the same run on the
same disk. Prints a Markdown table (and JSON with --json).

Run it through scripts/zmq-bench.sh, which installs redis and pyzmq and
builds the release binary: scripts/zmq-bench.sh [--seconds 5]
"""

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

KEYS = 10_000
VALUE = "x" * 64


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=30):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after {limit}s")


def client(endpoint, op, seconds, start_at, out):
    """One closed-loop pyzmq client: requests until the deadline; sends
    back its count and latencies (seconds)."""
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    rng = random.Random(os.getpid())
    lat = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    rid = 0
    while True:
        now = time.perf_counter()
        if time.time() >= end:
            break
        rid += 1
        key = f"key:{rng.randrange(KEYS):012d}"
        if op == "put":
            body = {"id": rid, "op": "put", "prefix": "bench", "sub": "kv", "key": key, "value": VALUE}
        else:
            body = {"id": rid, "op": "get", "prefix": "bench", "sub": "kv", "key": key}
        s.send_multipart([b"", json.dumps(body).encode()])
        if not s.poll(10_000):
            out.put(("error", "no reply within 10 s"))
            return
        reply = json.loads(s.recv_multipart()[-1])
        if not reply.get("ok"):
            out.put(("error", reply))
            return
        lat.append(time.perf_counter() - now)
    out.put(("ok", lat))
    s.close()
    ctx.term()


def chorus_load(endpoint, op, clients, seconds):
    out = mp.Queue()
    start_at = time.time() + 1.0 + clients * 0.02
    procs = [mp.Process(target=client, args=(endpoint, op, seconds, start_at, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    lat = []
    for _ in procs:
        kind, data = out.get()
        if kind != "ok":
            sys.exit(f"a client failed: {data}")
        lat.extend(data)
    for p in procs:
        p.join()
    lat.sort()
    return {
        "rps": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
    }


def populate_chorus(endpoint):
    """Writes every key once (pipelined), so that gets find them."""
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(endpoint)
    window, sent, done = 512, 0, 0
    while done < KEYS:
        while sent < KEYS and sent - done < window:
            body = {"id": sent, "op": "put", "prefix": "bench", "sub": "kv", "key": f"key:{sent:012d}", "value": VALUE}
            s.send_multipart([b"", json.dumps(body).encode()])
            sent += 1
        reply = json.loads(s.recv_multipart()[-1])
        if not reply.get("ok"):
            sys.exit(f"populating failed: {reply}")
        done += 1
    s.close()
    ctx.term()


def populate_redis(port):
    cmds = "".join(f"SET key:{i:012d} {VALUE}\n" for i in range(KEYS))
    subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=cmds, text=True,
                   capture_output=True, check=True)


def native_load(bench, endpoint, op, clients, seconds):
    """The same load from chorus-bench's libzmq clients (no Python)."""
    out = subprocess.run([bench, "__zmq-load", endpoint, op, str(clients), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def metric(http, name):
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(f"chorus_{name} "):
            return int(float(line.split()[1]))
    return 0


def redis_load(port, test, clients, seconds, rps_hint):
    # Enough requests for about `seconds` at the rate seen in a probe.
    n = max(2000, int(rps_hint * seconds))
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", str(n), "-t", test,
         "-d", str(len(VALUE)), "-r", str(KEYS), "--csv"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [l for l in out.splitlines() if l.startswith('"')]
    header = [h.strip('"') for h in rows[0].split(",")]
    values = [v.strip('"') for v in rows[1].split(",")]
    row = dict(zip(header, values))
    return {"rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]), "p99_ms": float(row["p99_latency_ms"])}


def start_redis(dirpath, fsync):
    port = free_port()
    os.makedirs(dirpath, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", dirpath,
         "--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chorus", default=os.environ.get("CHORUS_BIN", "/work/target-bench/release/chorus"))
    ap.add_argument("--bench", default=os.environ.get("CHORUS_BENCH_BIN", "/work/target-bench/release/chorus-bench"),
                    help="chorus-bench, for the native-client rows (skipped if missing)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    base = tempfile.mkdtemp(prefix="chorus-zmq-bench-", dir=os.environ.get("BENCH_DIR", "/work"))
    results = []
    try:
        router, http = free_port(), free_port()
        node = subprocess.Popen(
            [args.chorus, "--dir", os.path.join(base, "chorus"), "serve", "--insecure",
             "--gossip", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{http}",
             "--zmq", f"tcp://127.0.0.1:{router}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(http)
        redis = {f: start_redis(os.path.join(base, f"redis-{f}"), f) for f in ("always", "everysec")}
        endpoint = f"tcp://127.0.0.1:{router}"
        try:
            populate_chorus(endpoint)
            for _, port in redis.values():
                populate_redis(port)
            for op, test in (("put", "set"), ("get", "get")):
                for c in counts:
                    w0, s0 = metric(http, "zmq_writes_total"), metric(http, "store_syncs_total")
                    ch = chorus_load(endpoint, op, c, args.seconds)
                    w1, s1 = metric(http, "zmq_writes_total"), metric(http, "store_syncs_total")
                    ch["writes_per_sync"] = (w1 - w0) / max(1, s1 - s0) if op == "put" else None
                    row = {"op": op, "clients": c, "chorus": ch}
                    if os.path.exists(args.bench):
                        w0, s0 = metric(http, "zmq_writes_total"), metric(http, "store_syncs_total")
                        nat = native_load(args.bench, endpoint, op, c, args.seconds)
                        w1, s1 = metric(http, "zmq_writes_total"), metric(http, "store_syncs_total")
                        nat["writes_per_sync"] = (w1 - w0) / max(1, s1 - s0) if op == "put" else None
                        row["chorus_native"] = nat
                    for f, (_, port) in redis.items():
                        row[f"redis_{f}"] = redis_load(port, test, c, args.seconds, max(ch["rps"], 2000))
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            node.send_signal(signal.SIGTERM)
            for proc, _ in redis.values():
                proc.terminate()
            node.wait(timeout=10)
            for proc, _ in redis.values():
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| op | clients | Chorus client | Chorus req/s | p50 ms | p99 ms | writes/sync | Redis always req/s | p50 ms | ratio | Redis everysec req/s | p50 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ra, re_ = r["redis_always"], r["redis_everysec"]
        for label, key in (("pyzmq", "chorus"), ("libzmq (Rust)", "chorus_native")):
            ch = r.get(key)
            if ch is None:
                continue
            wps = f"{ch['writes_per_sync']:.1f}" if ch["writes_per_sync"] is not None else "-"
            print(f"| {r['op']} | {r['clients']} | {label} | {ch['rps']:,.0f} | {ch['p50_ms']:.3f} | {ch['p99_ms']:.3f} | {wps} "
                  f"| {ra['rps']:,.0f} | {ra['p50_ms']:.3f} | {ch['rps'] / ra['rps']:.2f}x "
                  f"| {re_['rps']:,.0f} | {re_['p50_ms']:.3f} | {ch['rps'] / re_['rps']:.2f}x |")


if __name__ == "__main__":
    main()
