#!/usr/bin/env python3
"""Durable puts and gets through Chorus's ZeroMQ broker beside Redis with
`appendonly yes`, `appendfsync always`, in the same run on the same disk
(BENCHMARKS.md, issue 15).

For each op (put, get) and client count (1, 8, 64 by default), in every
round, three loads run back to back, their order rotating from round to
round:

  * Chorus from N closed-loop pyzmq clients (one process each),
  * Chorus from N native libzmq clients (`chorus-bench __zmq-load`, one
    thread each, one process),
  * Redis from `redis-benchmark -c N` (C, no pipelining).

Every request has one in flight per client; values are 64 bytes over
10,000 keys written beforehand. For each load it records ops/s and p50/p99
latency; for Chorus the node's `/metrics` counters before and after
(`chorus_zmq_writes_total`, `chorus_store_commits_total`,
`chorus_store_syncs_total`: syncs per write); for both servers the process
CPU time (utime + stime from /proc/PID/stat) divided by the requests
served (the counts of `chorus_zmq_request_duration_seconds`); and the
clients' own CPU (getrusage of the reaped children).
Ratios are Chorus ops/s / Redis ops/s within a round; the table shows
the median over rounds of those ratios, and of every figure.

Run it through scripts/zmq-bench.sh, which installs redis and pyzmq and
builds the release binaries: scripts/zmq-bench.sh [--seconds 5] [--rounds 3]
"""

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

KEYS = 10_000
VALUE = "x" * 64
TICKS = os.sysconf("SC_CLK_TCK")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_bin(name):
    """target/release/NAME under the repository, or under $CARGO_TARGET_DIR."""
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    return os.path.join(target, "release", name)


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


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14, stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def client(endpoint, op, seconds, start_at, out):
    """One closed-loop pyzmq client: requests until the deadline; sends
    back its latencies (seconds)."""
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


def pyzmq_load(endpoint, op, clients, seconds):
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
        "ops": len(lat),
        "rps": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
    }


def native_load(bench, endpoint, op, clients, seconds):
    """The same load from chorus-bench's libzmq clients (no Python)."""
    out = subprocess.run([bench, "__zmq-load", endpoint, op, str(clients), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    r.setdefault("ops", round(r["rps"] * seconds))
    return r


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


def metrics(http):
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("chorus_") and not line.startswith("#"):
            name, value = line.split()[:2]
            out[name[len("chorus_"):]] = float(value)
    # Requests answered and those answered with an error: the ZeroMQ
    # latency histogram's counts, per operation and outcome code.
    counts = {k: v for k, v in out.items() if k.startswith("zmq_request_duration_seconds_count{")}
    out["zmq_requests_total"] = sum(counts.values())
    out["zmq_errors_total"] = sum(v for k, v in counts.items() if 'code="ok"' not in k)
    return out


def redis_benchmark(port, test, clients, n):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", str(n), "-t", test,
         "-d", str(len(VALUE)), "-r", str(KEYS), "--csv"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [l for l in out.splitlines() if l.startswith('"')]
    header = [h.strip('"') for h in rows[0].split(",")]
    values = [v.strip('"') for v in rows[1].split(",")]
    row = dict(zip(header, values))
    return {"ops": n, "rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"])}


def redis_load(server, test, clients, seconds):
    """redis-benchmark sized to run about `seconds` (it takes a request
    count, not a duration): a short probe gives the rate."""
    pid, port = server
    probe = redis_benchmark(port, test, clients, max(1000, clients * 50))
    n = max(2000, int(probe["rps"] * seconds))
    cpu0, kids0 = cpu_seconds(pid), children_cpu()
    r = redis_benchmark(port, test, clients, n)
    r["server_cpu_us_per_op"] = (cpu_seconds(pid) - cpu0) / n * 1e6
    r["client_cpu_us_per_op"] = (children_cpu() - kids0) / n * 1e6
    return r


def chorus_run(load, node_pid, http, op):
    """Runs a Chorus load, reading the node's counters and CPU around it."""
    m0, cpu0, kids0 = metrics(http), cpu_seconds(node_pid), children_cpu()
    r = load()
    m1, cpu1, kids1 = metrics(http), cpu_seconds(node_pid), children_cpu()
    d = {k: m1.get(k, 0) - m0.get(k, 0) for k in
         ("zmq_requests_total", "zmq_writes_total", "store_commits_total", "store_syncs_total", "zmq_errors_total")}
    served = max(1.0, d["zmq_requests_total"])
    r["node"] = d
    r["server_cpu_us_per_op"] = (cpu1 - cpu0) / served * 1e6
    r["client_cpu_us_per_op"] = (kids1 - kids0) / max(1, r["ops"]) * 1e6
    if op == "put":
        writes = max(1.0, d["zmq_writes_total"])
        r["syncs_per_write"] = d["store_syncs_total"] / writes
        r["commits_per_write"] = d["store_commits_total"] / writes
    return r


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


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chorus", default=os.environ.get("CHORUS_BIN", default_bin("chorus")))
    ap.add_argument("--bench", default=os.environ.get("CHORUS_BENCH_BIN", default_bin("chorus-bench")),
                    help="chorus-bench, for the native-client rows (skipped if missing)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each load")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians over them")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--ops", default="put,get")
    ap.add_argument("--no-pyzmq", action="store_true", help="native clients only")
    ap.add_argument("--everysec", action="store_true",
                    help="also a Redis with appendfsync everysec (context, not durable per write)")
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR"),
                    help="where the servers' data goes (default: the system temp dir; a local disk)")
    ap.add_argument("--json", metavar="FILE", help="also write every round's raw figures here")
    ap.add_argument("--table", metavar="FILE", help="print the table of a run saved with --json, and exit")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            print_table(json.load(f))
        return
    counts = [int(c) for c in args.clients.split(",")]
    ops = args.ops.split(",")
    for exe in (args.chorus,):
        if not os.path.exists(exe):
            sys.exit(f"{exe} is missing: run scripts/zmq-bench.sh, which builds it")
    native = os.path.exists(args.bench)
    kinds = (["pyzmq"] if not args.no_pyzmq else []) + (["native"] if native else [])
    fsyncs = ["always"] + (["everysec"] if args.everysec else [])
    base = tempfile.mkdtemp(prefix="chorus-zmq-bench-", dir=args.dir)
    rounds = []
    try:
        router, http = free_port(), free_port()
        node = subprocess.Popen(
            [args.chorus, "--dir", os.path.join(base, "chorus"), "serve", "--insecure",
             "--gossip", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{http}",
             "--zmq", f"tcp://127.0.0.1:{router}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(http)
        redis = {f: start_redis(os.path.join(base, f"redis-{f}"), f) for f in fsyncs}
        endpoint = f"tcp://127.0.0.1:{router}"
        try:
            populate_chorus(endpoint)
            for _, port in redis.values():
                populate_redis(port)
            for rnd in range(args.rounds):
                for op in ops:
                    test = {"put": "set", "get": "get"}[op]
                    for c in counts:
                        loads = [(k, None) for k in kinds] + [("redis", f) for f in fsyncs]
                        shift = rnd % len(loads)
                        loads = loads[shift:] + loads[:shift]
                        row = {"round": rnd + 1, "op": op, "clients": c}
                        for kind, f in loads:
                            if kind == "pyzmq":
                                row["pyzmq"] = chorus_run(lambda: pyzmq_load(endpoint, op, c, args.seconds),
                                                          node.pid, http, op)
                            elif kind == "native":
                                row["native"] = chorus_run(
                                    lambda: native_load(args.bench, endpoint, op, c, args.seconds),
                                    node.pid, http, op)
                            else:
                                proc, port = redis[f]
                                row[f"redis_{f}"] = redis_load((proc.pid, port), test, c, args.seconds)
                        for k in kinds:
                            for f in fsyncs:
                                row[f"ratio_{k}_{f}"] = row[k]["rps"] / row[f"redis_{f}"]["rps"]
                        rounds.append(row)
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

    doc = {"args": vars(args), "nproc": os.cpu_count(), "redis": version(["redis-server", "--version"]),
           "unix_time": int(time.time()), "rounds": rounds}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    print_table(doc)


def print_table(doc):
    """The Markdown table of a run (medians over its rounds)."""
    rounds, a = doc["rounds"], doc["args"]
    ops = list(dict.fromkeys(r["op"] for r in rounds))
    counts = list(dict.fromkeys(r["clients"] for r in rounds))
    kinds = [k for k in ("pyzmq", "native") if any(k in r for r in rounds)]
    fsyncs = [f for f in ("always", "everysec") if any(f"redis_{f}" in r for r in rounds)]
    print(f"\n{a['rounds']} round(s) of {a['seconds']:g} s per load; every figure is the median over rounds; "
          f"ratio = Chorus ops/s / Redis ops/s in the same round (median of the rounds' ratios).\n")
    head = ("| op | clients | Chorus client | Chorus ops/s | p50 ms | p99 ms | syncs/write | node CPU µs/op "
            "| client CPU µs/op")
    for f in fsyncs:
        head += (f" | Redis {f} ops/s | p50 ms | p99 ms | redis-server CPU µs/op | redis-benchmark CPU µs/op "
                 f"| ratio | goal >= 1x")
    print(head + " |")
    print("|---" * head.count("|") + "|")
    for op in ops:
        for c in counts:
            cell = [r for r in rounds if r["op"] == op and r["clients"] == c]
            for k in kinds:
                label = {"pyzmq": "pyzmq", "native": "libzmq (Rust)"}[k]
                g = lambda field: med([r[k].get(field) for r in cell])
                spw = g("syncs_per_write")
                line = (f"| {op} | {c} | {label} | {g('rps'):,.0f} | {g('p50_ms'):.3f} | {g('p99_ms'):.3f} "
                        f"| {'-' if spw is None else f'{spw:.2f}'} | {g('server_cpu_us_per_op'):.1f} "
                        f"| {g('client_cpu_us_per_op'):.1f}")
                for f in fsyncs:
                    rg = lambda field: med([r[f"redis_{f}"].get(field) for r in cell])
                    ratio = med([r[f"ratio_{k}_{f}"] for r in cell])
                    met = "met" if ratio >= 1.0 else "**MISSED**"
                    line += (f" | {rg('rps'):,.0f} | {rg('p50_ms'):.3f} | {rg('p99_ms'):.3f} "
                             f"| {rg('server_cpu_us_per_op'):.1f} | {rg('client_cpu_us_per_op'):.1f} "
                             f"| {ratio:.2f}x | {met if f == 'always' else 'context'}")
                print(line + " |")


if __name__ == "__main__":
    main()
