#!/usr/bin/env python3
"""Chorus's Python module (`import chorus`, the embedded engine) beside
py-lmdb and the standard library's sqlite3, from Python, in the same run
on the same filesystem (BENCHMARKS.md, "Python (issue 18)").

Every store holds the same 10,000 keys of 16 bytes with 100-byte values
before the measurements start. Measured, each in every round, the
engines' order rotating from round to round:

  * get of one hot key, and of random keys among the 10,000:
    chorus `db.get(fp, key)`; py-lmdb `txn.get` in a read transaction of
    its own per get (`with env.begin() as txn`), and in one long read
    transaction for every get; sqlite3 (WAL, synchronous=FULL)
    `SELECT v FROM kv WHERE k=?` through one cursor (the statement cache
    keeps it prepared). Also the floors: an empty loop, a no-op native
    call of each module, and `os.getpid()`.
  * durable put, each its own commit and synced: chorus `sync="always"`;
    sqlite3 autocommit `INSERT OR REPLACE` (one transaction per row);
    py-lmdb `put` in a write transaction of its own (sync=True, the
    default). Overwrites of random keys among the 10,000, the engines
    taking turns every 100 puts.
  * 4 processes putting at once for a fixed time, each its own keys, each
    opening the store itself (spawned, not forked): chorus
    `sync="always"` and `sync="batch"`, sqlite3 (WAL, synchronous=FULL,
    busy_timeout) and py-lmdb. The last value each process wrote is read
    back afterwards.

A get's time per op is the CPU time of the measuring thread over a tight
loop (gets never wait, so on an idle machine it equals the wall time; on
a shared one it leaves out the time other processes held the core); the
wall time is shown beside it. Latencies (median, p99) come from a second
loop timing each call with perf_counter_ns (that includes the timer's
own cost, printed as "timer floor"). Puts are timed by the wall clock.
Every figure is the median of its rounds; each ratio is the median of
the per-round ratios.

Run it through scripts/python-bench.sh, which makes a venv, installs
py-lmdb and the wheel of crates/python in it and runs this file there.
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import chorus
import lmdb

KEYS = 10_000
KEY_SIZE = 16
VALUE_SIZE = 100
FP = "bench/kv"
SQL_GET = "SELECT v FROM kv WHERE k=?"
SQL_PUT = "INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)"
SCHEMA = "CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
MAP_SIZE = 1 << 30


def key(i, tag=b"k"):
    """A 16-byte key: the tag, then `i` zero-padded to fill 16 bytes."""
    return tag + b"%0*d" % (KEY_SIZE - len(tag), i)


def value(i):
    """A 100-byte value that differs from key to key."""
    return (b"%08d" % i) * (VALUE_SIZE // 8) + b"v" * (VALUE_SIZE % 8)


# ---------------------------------------------------------------- opening


def open_sqlite(path):
    con = sqlite3.connect(path, timeout=120, isolation_level=None)
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise SystemExit(f"SQLite refused WAL mode (got {mode})")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=120000")
    con.execute(SCHEMA)
    return con


def open_lmdb(path):
    # Default flags: sync=True, metasync=True (every commit synced).
    return lmdb.open(path, map_size=MAP_SIZE, max_readers=64)


def preload(root):
    """The three stores under `root`, each with the same 10,000 keys."""
    paths = {
        "chorus": os.path.join(root, "chorus"),
        "sqlite": os.path.join(root, "sqlite.db"),
        "lmdb": os.path.join(root, "lmdb"),
    }
    with chorus.open(paths["chorus"], sync="never") as db:
        for i in range(KEYS):
            db.put(FP, key(i), value(i))
    con = open_sqlite(paths["sqlite"])
    con.execute("BEGIN")
    con.executemany(SQL_PUT, ((key(i), value(i)) for i in range(KEYS)))
    con.execute("COMMIT")
    con.close()
    env = open_lmdb(paths["lmdb"])
    with env.begin(write=True) as txn:
        for i in range(KEYS):
            txn.put(key(i), value(i))
    env.close()
    return paths


# ---------------------------------------------------------------- get loops
# Each loop is written out in full so that every engine pays the same
# Python overhead: one for-loop step and one call (or two, for a
# transaction per get) per key.


def loop_empty(_h, keys):
    for _k in keys:
        pass


def loop_chorus(db, keys):
    get = db.get
    fp = FP
    for k in keys:
        get(fp, k)


def loop_lmdb_txn(env, keys):
    begin = env.begin
    for k in keys:
        with begin() as txn:
            txn.get(k)


def loop_lmdb_long(env, keys):
    with env.begin() as txn:
        get = txn.get
        for k in keys:
            get(k)


def loop_sqlite(con, keys):
    ex = con.cursor().execute
    sql = SQL_GET
    for k in keys:
        ex(sql, (k,)).fetchone()


def loop_chorus_noop(db, keys):
    # A native attribute that parses nothing and checks nothing (a copy of
    # a short str): the floor of a call into the module.
    for _k in keys:
        db.path


def loop_chorus_node_id(db, keys):
    # The handle check every store call makes (lock, Arc clone, getpid)
    # plus a small string result.
    for _k in keys:
        db.node_id


def loop_lmdb_noop(env, keys):
    f = env.max_key_size
    for _k in keys:
        f()


def loop_getpid(_h, keys):
    f = os.getpid
    for _k in keys:
        f()


def timed_chorus(db, keys, out):
    get = db.get
    fp = FP
    pc = time.perf_counter_ns
    for i, k in enumerate(keys):
        t = pc()
        get(fp, k)
        out[i] = pc() - t


def timed_lmdb_txn(env, keys, out):
    begin = env.begin
    pc = time.perf_counter_ns
    for i, k in enumerate(keys):
        t = pc()
        with begin() as txn:
            txn.get(k)
        out[i] = pc() - t


def timed_lmdb_long(env, keys, out):
    pc = time.perf_counter_ns
    with env.begin() as txn:
        get = txn.get
        for i, k in enumerate(keys):
            t = pc()
            get(k)
            out[i] = pc() - t


def timed_sqlite(con, keys, out):
    ex = con.cursor().execute
    sql = SQL_GET
    pc = time.perf_counter_ns
    for i, k in enumerate(keys):
        t = pc()
        ex(sql, (k,)).fetchone()
        out[i] = pc() - t


def timed_empty(_h, keys, out):
    pc = time.perf_counter_ns
    for i, _k in enumerate(keys):
        t = pc()
        out[i] = pc() - t


def clocks(wall=0, cpu=0):
    """(wall, this thread's CPU) in ns, minus the given starting values."""
    return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def check_gets(handles):
    """Every engine returns the stored value for a key (or the run is void)."""
    k, v = key(1234), value(1234)
    got = {
        "chorus": handles["chorus"].get(FP, k),
        "sqlite": handles["sqlite"].execute(SQL_GET, (k,)).fetchone()[0],
    }
    with handles["lmdb"].begin() as txn:
        got["lmdb"] = txn.get(k)
    for name, g in got.items():
        if g != v:
            raise SystemExit(f"{name} returned {g!r} for {k!r}, expected {v!r}")


GET_ROWS = [
    # (row name, handle, loop, timed loop)
    ("chorus", "chorus", loop_chorus, timed_chorus),
    ("lmdb_txn", "lmdb", loop_lmdb_txn, timed_lmdb_txn),
    ("lmdb_long", "lmdb", loop_lmdb_long, timed_lmdb_long),
    ("sqlite", "sqlite", loop_sqlite, timed_sqlite),
]
FLOOR_ROWS = [
    ("empty loop", None, loop_empty),
    ("chorus: db.path (native attribute, no check)", "chorus", loop_chorus_noop),
    ("chorus: db.node_id (handle check + hex formatting of the id)", "chorus", loop_chorus_node_id),
    ("lmdb: env.max_key_size() (native call)", "lmdb", loop_lmdb_noop),
    ("os.getpid()", None, loop_getpid),
]


def bench_gets(handles, n, n_timed, rounds, rng):
    hot = [key(4321)] * n
    rand = [key(rng.randrange(KEYS)) for _ in range(n)]
    out = {"hot": {}, "random": {}, "floors": {}, "timer_floor_ns": []}
    buf = [0] * n_timed
    for r in range(rounds):
        order = GET_ROWS[r % len(GET_ROWS):] + GET_ROWS[: r % len(GET_ROWS)]
        for which, keys in (("hot", hot), ("random", rand)):
            for name, h, loop, timed in order:
                wall, cpu = clocks()
                loop(handles[h], keys)
                wall, cpu = clocks(wall, cpu)
                timed(handles[h], keys[:n_timed], buf)
                s = sorted(buf)
                out[which].setdefault(name, []).append(
                    {"ns_per_op": cpu / n, "wall_ns_per_op": wall / n,
                     "p50_ns": pct(s, 50), "p99_ns": pct(s, 99)}
                )
        for name, h, loop in FLOOR_ROWS:
            wall, cpu = clocks()
            loop(handles.get(h), hot)
            wall, cpu = clocks(wall, cpu)
            out["floors"].setdefault(name, []).append(cpu / n)
        timed_empty(None, hot[:n_timed], buf)
        out["timer_floor_ns"].append(pct(sorted(buf), 50))
    return out


# ---------------------------------------------------------------- durable puts


def put_chorus(db, k, v):
    db.put(FP, k, v)


def put_sqlite(con, k, v):
    con.execute(SQL_PUT, (k, v))


def put_lmdb(env, k, v):
    with env.begin(write=True) as txn:
        txn.put(k, v)


PUT_ROWS = [("chorus", put_chorus), ("sqlite", put_sqlite), ("lmdb", put_lmdb)]


def bench_puts(handles, n, rounds, rng, chunk=100):
    """Each round: `n` puts per engine, the engines taking turns every
    `chunk` puts (so a change in the disk's speed hits all of them alike)."""
    out = {}
    pc = time.perf_counter_ns
    for r in range(rounds):
        order = PUT_ROWS[r % len(PUT_ROWS):] + PUT_ROWS[: r % len(PUT_ROWS)]
        picks = [rng.randrange(KEYS) for _ in range(n)]
        lat = {name: [] for name, _ in order}
        busy = {name: 0 for name, _ in order}
        for at in range(0, n, chunk):
            for name, put in order:
                h, mine = handles[name], lat[name]
                start = pc()
                for i in picks[at:at + chunk]:
                    t = pc()
                    put(h, key(i), value(i + r + 1))
                    mine.append(pc() - t)
                busy[name] += pc() - start
        for name, _ in order:
            s = sorted(lat[name])
            out.setdefault(name, []).append(
                {"ops_per_s": len(s) / (busy[name] / 1e9), "p50_ns": pct(s, 50), "p99_ns": pct(s, 99)}
            )
    return out


# ---------------------------------------------------------------- 4 processes


def worker(engine, path, wid, seconds, barrier, results):
    """One writer process: opens the store itself, then puts its own keys
    (each put its own synced commit) for `seconds`."""
    if engine.startswith("chorus"):
        db = chorus.open(path, sync=engine.split("-")[1])

        def put(k, v):
            db.put(FP, k, v)

    elif engine == "sqlite":
        con = open_sqlite(path)

        def put(k, v):
            con.execute(SQL_PUT, (k, v))

    else:
        env = open_lmdb(path)

        def put(k, v):
            with env.begin(write=True) as txn:
                txn.put(k, v)

    tag = b"w%d-" % wid
    lat = []
    pc = time.perf_counter_ns
    barrier.wait()
    start = pc()
    deadline = start + int(seconds * 1e9)
    i = 0
    last = None
    while True:
        t = pc()
        if t >= deadline:
            break
        k, v = key(i % KEYS, tag), value(i)
        put(k, v)
        lat.append(pc() - t)
        last = (k, v)
        i += 1
    elapsed = (pc() - start) / 1e9
    lat.sort()
    results.put(
        {"wid": wid, "count": i, "elapsed": elapsed, "p50_ns": pct(lat, 50),
         "p99_ns": pct(lat, 99), "last": last}
    )


def read_back(engine, path, last):
    """The value each process wrote last, read by a fresh handle."""
    k, v = last
    if engine.startswith("chorus"):
        with chorus.open(path) as db:
            got = db.get(FP, k)
    elif engine == "sqlite":
        con = open_sqlite(path)
        got = con.execute(SQL_GET, (k,)).fetchone()[0]
        con.close()
    else:
        env = open_lmdb(path)
        with env.begin() as txn:
            got = txn.get(k)
        env.close()
    if got != v:
        raise SystemExit(f"{engine}: {k!r} reads {got!r} after the run, last written {v!r}")


PROC_ROWS = ["chorus-always", "chorus-batch", "sqlite", "lmdb"]


def bench_procs(paths, procs, seconds, rounds):
    ctx = mp.get_context("spawn")
    out = {}
    for r in range(rounds):
        order = PROC_ROWS[r % len(PROC_ROWS):] + PROC_ROWS[: r % len(PROC_ROWS)]
        for engine in order:
            path = paths[engine.split("-")[0]]
            barrier = ctx.Barrier(procs)
            results = ctx.Queue()
            ps = [ctx.Process(target=worker, args=(engine, path, w, seconds, barrier, results))
                  for w in range(procs)]
            for p in ps:
                p.start()
            got = [results.get(timeout=seconds + 120) for _ in ps]
            for p in ps:
                p.join()
                if p.exitcode != 0:
                    raise SystemExit(f"{engine}: a writer exited with {p.exitcode}")
            for g in got:
                if g["last"] is not None:
                    read_back(engine, path, g["last"])
            out.setdefault(engine, []).append(
                {
                    "ops_per_s": sum(g["count"] / g["elapsed"] for g in got),
                    "per_process": [g["count"] for g in got],
                    "p50_ns": statistics.median(g["p50_ns"] for g in got),
                    "p99_ns": max(g["p99_ns"] for g in got),
                }
            )
    return out


# ---------------------------------------------------------------- report


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def environment(root):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    df = sh(["df", "-T", root]).splitlines()
    fs = df[1].split() if len(df) > 1 else ["?", "?"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "chorus": getattr(chorus, "__version__", "?"),
        "py_lmdb": lmdb.__version__,
        "lmdb": ".".join(map(str, lmdb.version())),
        "sqlite": sqlite3.sqlite_version,
        "dir": root,
        "filesystem": f"{fs[1]} on {fs[0]}",
        "loadavg_start": os.getloadavg(),
    }


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def ns(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e3:
        return f"{x / 1e3:.2f} µs"
    return f"{x:.0f} ns"


def rate(x):
    return f"{x / 1e3:.1f} k/s" if x >= 1e4 else f"{x:.0f}/s"


def ratios_get(doc, which, peer):
    """Per round: peer time / chorus time (above 1: chorus faster)."""
    rows = doc["gets"][which]
    return [p["ns_per_op"] / c["ns_per_op"] for c, p in zip(rows["chorus"], rows[peer])]


def ratio_get(doc, which, peer):
    """Median over rounds of peer time / chorus time."""
    return med(ratios_get(doc, which, peer))


def ratios_rate(rows, mine, peer):
    """Per round: chorus rate / peer rate."""
    return [c["ops_per_s"] / p["ops_per_s"] for c, p in zip(rows[mine], rows[peer])]


def ratio_rate(rows, mine, peer):
    """Median over rounds of chorus rate / peer rate."""
    return med(ratios_rate(rows, mine, peer))


GET_NAMES = {
    "chorus": "chorus db.get(fp, key)",
    "lmdb_txn": "py-lmdb: read txn per get",
    "lmdb_long": "py-lmdb: one long read txn",
    "sqlite": "sqlite3 WAL: prepared SELECT",
}
PUT_NAMES = {
    "chorus": 'chorus put, sync="always"',
    "sqlite": "sqlite3 WAL FULL, autocommit INSERT",
    "lmdb": "py-lmdb, write txn per put (sync)",
}
PROC_NAMES = {
    "chorus-always": 'chorus, sync="always"',
    "chorus-batch": 'chorus, sync="batch"',
    "sqlite": "sqlite3 WAL FULL, busy_timeout",
    "lmdb": "py-lmdb, write txn per put (sync)",
}


def print_report(doc):
    env, a = doc["env"], doc["args"]
    print("\n== environment")
    for k, v in env.items():
        print(f"  {k}: {v}")
    print(f"  rounds: {a['rounds']} (figures: medians over rounds; ratios: medians of per-round ratios)")
    print(f"  keys: {KEYS} of {KEY_SIZE} B, values {VALUE_SIZE} B")

    g, p, q = doc["gets"], doc["puts"], doc["procs"]
    if g:
        print_gets(doc, g, a)
    if p:
        print_puts(p, a)
    if q:
        print_procs(q, a)
    print_goals(doc, g, p, q, a)


def print_gets(doc, g, a):
    print(f"\n== get ({a['gets']} per loop; latency from {a['timed']} individually timed calls, "
          f"timer floor {ns(med(g['timer_floor_ns']))})")
    print("| keys | engine | CPU ns/op | ops/s (1 / CPU) | wall ns/op | p50 | p99 | chorus faster by |")
    print("|---|---|---|---|---|---|---|---|")
    for which in ("hot", "random"):
        for name in ("chorus", "lmdb_txn", "lmdb_long", "sqlite"):
            rows = g[which][name]
            t = med([x["ns_per_op"] for x in rows])
            r = "" if name == "chorus" else f"{ratio_get(doc, which, name):.2f}x"
            w = med([x["wall_ns_per_op"] for x in rows])
            print(f"| {which} | {GET_NAMES[name]} | {ns(t)} | {rate(1e9 / t)} | {ns(w)} | "
                  f"{ns(med([x['p50_ns'] for x in rows]))} | {ns(med([x['p99_ns'] for x in rows]))} | {r} |")
    print("\nfloors (CPU ns per call, tight loop over the same list):")
    for name, xs in g["floors"].items():
        print(f"  {name}: {ns(med(xs))}")


def print_puts(p, a):
    print(f"\n== durable put, one process ({a['puts']} puts per round, each its own synced commit)")
    print("| engine | puts/s | p50 | p99 | chorus rate / peer rate |")
    print("|---|---|---|---|---|")
    for name in ("chorus", "sqlite", "lmdb"):
        rows = p[name]
        r = "" if name == "chorus" else f"{ratio_rate(p, 'chorus', name):.2f}x"
        print(f"| {PUT_NAMES[name]} | {rate(med([x['ops_per_s'] for x in rows]))} | "
              f"{ns(med([x['p50_ns'] for x in rows]))} | {ns(med([x['p99_ns'] for x in rows]))} | {r} |")


def print_procs(q, a):
    print(f"\n== {a['procs']} processes putting at once ({a['seconds']} s per round; each its own keys, "
          "durable puts; last value of each process read back: ok)")
    print("| engine | total puts/s | p50 | p99 (worst process) | vs sqlite3 | vs py-lmdb |")
    print("|---|---|---|---|---|---|")
    for name in PROC_ROWS:
        rows = q[name]
        vs_s = "" if name in ("sqlite", "lmdb") else f"{ratio_rate(q, name, 'sqlite'):.2f}x"
        vs_l = "" if name in ("sqlite", "lmdb") else f"{ratio_rate(q, name, 'lmdb'):.2f}x"
        print(f"| {PROC_NAMES[name]} | {rate(med([x['ops_per_s'] for x in rows]))} | "
              f"{ns(med([x['p50_ns'] for x in rows]))} | {ns(med([x['p99_ns'] for x in rows]))} | {vs_s} | {vs_l} |")


def print_goals(doc, g, p, q, a):
    print("\n== goals")
    print("| goal | measured | met? |")
    print("|---|---|---|")

    def goal(text, rounds, ok):
        x = med(rounds)
        each = ", ".join(f"{r:.2f}" for r in rounds)
        verdict = "n/a" if ok is None else "met" if ok(x) else "**MISSED**"
        print(f"| {text} | {x:.2f}x (rounds: {each}) | {verdict} |")

    for which in ("hot", "random") if g else ():
        for peer, label in (("lmdb_txn", "read txn per get"), ("lmdb_long", "one long read txn")):
            rounds = [1 / x for x in ratios_get(doc, which, peer)]
            goal(f"get, {which} key: chorus time / py-lmdb time ({label}) <= 1.5", rounds,
                 lambda x: x <= 1.5)
        goal(f"get, {which} key: chorus >= 10x faster than sqlite3",
             ratios_get(doc, which, "sqlite"), lambda x: x >= 10)
    if p:
        goal("durable put: chorus rate >= 1.0x sqlite3", ratios_rate(p, "chorus", "sqlite"),
             lambda x: x >= 1.0)
    for name in ("chorus-always", "chorus-batch") if q else ():
        goal(f"{a['procs']} processes: {PROC_NAMES[name]} total rate / sqlite3's (no threshold)",
             ratios_rate(q, name, "sqlite"), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gets", type=int, default=200_000, help="gets per tight loop")
    ap.add_argument("--timed", type=int, default=50_000, help="individually timed gets per round")
    ap.add_argument("--puts", type=int, default=2_000, help="durable puts per engine per round")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each multi-process load")
    ap.add_argument("--only", default="gets,puts,procs", help="which parts to run")
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR"),
                    help="parent of the temporary data directory (default: the system temp dir)")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--json", metavar="FILE", help="also write every round's raw figures here")
    ap.add_argument("--table", metavar="FILE", help="print the report of a run saved with --json, and exit")
    a = ap.parse_args()
    if a.table:
        with open(a.table) as f:
            print_report(json.load(f))
        return
    root = tempfile.mkdtemp(prefix="chorus-pybench-", dir=a.dir)
    try:
        rng = random.Random(a.seed)
        env = environment(root)
        only = set(a.only.split(","))
        doc = {"env": env, "args": vars(a), "gets": None, "puts": None, "procs": None}
        print(f"data in {root} ({env['filesystem']}); preloading {KEYS} keys into each store...",
              file=sys.stderr)
        paths = preload(root)
        handles = {
            "chorus": chorus.open(paths["chorus"], sync="always"),
            "sqlite": open_sqlite(paths["sqlite"]),
            "lmdb": open_lmdb(paths["lmdb"]),
        }
        check_gets(handles)
        if "gets" in only:
            print("gets...", file=sys.stderr)
            doc["gets"] = bench_gets(handles, a.gets, a.timed, a.rounds, rng)
        if "puts" in only:
            print("durable puts...", file=sys.stderr)
            doc["puts"] = bench_puts(handles, a.puts, a.rounds, rng)
        handles["chorus"].close()
        handles["sqlite"].close()
        handles["lmdb"].close()
        if "procs" in only:
            print(f"{a.procs} processes...", file=sys.stderr)
            doc["procs"] = bench_procs(paths, a.procs, a.seconds, a.rounds)
        env["loadavg_end"] = os.getloadavg()
        if a.json:
            with open(a.json, "w") as f:
                json.dump(doc, f, indent=1)
        print_report(doc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
