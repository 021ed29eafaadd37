//! `meta`: the cluster-metadata API (causal objects over the engine),
//! measured side by side with what it is built on and with SQLite:
//!
//! 1. `Metadata::get` of a key with one value, and of a key with 3 siblings
//!    settled by `Resolver::Lww`, against a plain engine read (`Store::get`)
//!    of the same key; goal: within 1.5x of the engine read.
//! 2. `Metadata::iter` over a full prefix of 1,000,000 keys against a full
//!    scan of the same rows in SQLite, and the engine's own iteration.
//! 3. The size of an object whose history has 1, 2 or 5 writing nodes:
//!    encoded, in the compacted log, and resident after a fresh open.

use std::hint::black_box;
use std::time::Instant;

use chorus_core::FullPrefix;
use chorus_core::NodeId;
use chorus_core::object::{Hlc, Object, Value};
use chorus_store::{
    GetOptions, IterOptions, Metadata, PutOptions, PutValue, Resolver, Scope, Store, SyncMode,
    Write,
};
use rusqlite::types::ValueRef;

use crate::engines;
use crate::harness::{
    Cfg, Outcome, Res, Row, Task, VALUE_LEN, fmt_ns, fmt_rate, fmt_ratio, interleaved, key, median,
    paired_ratio, settle, value,
};
use crate::open;

/// Keys in the store the get benchmark reads.
const GET_KEYS: usize = 100_000;
/// Keys in the full prefix the iteration benchmark walks.
const ITER_KEYS: usize = 1_000_000;
/// Keys per store in the size benchmark.
const SIZE_KEYS: usize = 100_000;
/// Numbers of writing nodes the size benchmark compares.
const WRITERS: [usize; 3] = [1, 2, 5];
/// Keys per commit when a store is built.
const BATCH: usize = 10_000;
/// The goal for a metadata read: at most this many times the engine read.
const GET_MAX_SLOWDOWN: f64 = 1.5;
/// Wall-clock milliseconds of the first timestamp the objects carry
/// (2026-01-01T00:00:00Z); key `i` is written at `BASE_MS + i`.
const BASE_MS: u64 = 1_767_225_600_000;
/// The key with three siblings (outside the `key-0000000` range).
const SIBLINGS_KEY: &[u8] = b"siblings-3";

/// Writing node number `j` of the benchmark (not the store's own id).
fn node(j: usize) -> NodeId {
    let mut b = [0xc0u8; 16];
    b[15] = j as u8;
    NodeId::from_bytes(b)
}

/// The object of key `i` after each node of `writers` wrote `value(i)` in
/// turn, each having read the previous write: one value, and a version
/// vector with an entry per writer.
fn object(i: u64, writers: &[NodeId]) -> Object {
    let v = value(i);
    let ts = |j: usize| Hlc(((BASE_MS + i) << 16) | j as u64);
    let first = writers[0];
    let mut obj = Object::modify(None, &Vec::new(), Value::data(&v, ts(0), first), first);
    for (j, n) in writers.iter().enumerate().skip(1) {
        let context = obj.context();
        obj = Object::modify(Some(&obj), &context, Value::data(&v, ts(j), *n), *n);
    }
    obj
}

/// Writes the objects of keys `0..keys` in commits of [`BATCH`] keys;
/// returns the total of their encoded sizes.
fn fill_objects(store: &Store, keys: usize, writers: &[NodeId]) -> Res<u64> {
    let fp = engines::fp()?;
    let mut encoded = 0u64;
    let mut i = 0;
    while i < keys {
        let end = (i + BATCH).min(keys);
        let writes: Vec<Write> = (i..end)
            .map(|j| {
                let bytes = object(j as u64, writers).encode();
                encoded += bytes.len() as u64;
                Write::put(&fp, &key(j as u64), &bytes)
            })
            .collect();
        store.write(writes)?;
        i = end;
    }
    Ok(encoded)
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let (mut rows, get) = get_bench(cfg)?;
    settle();
    let (iter_rows, iter) = iter_bench(cfg)?;
    rows.extend(iter_rows);
    settle();
    let (size_rows, size) = size_bench(cfg)?;
    rows.extend(size_rows);
    let raw = serde_json::json!({ "get": get, "iter": iter, "size": size });
    Ok(Outcome { rows, raw })
}

/// Per-round nanoseconds of each task as ns per operation.
fn per_op(rounds: &[f64], ops: usize) -> Vec<f64> {
    rounds.iter().map(|ns| ns / ops as f64).collect()
}

/// Benchmark 1: metadata reads against engine reads of the same key.
fn get_bench(cfg: &Cfg) -> Res<(Vec<Row>, serde_json::Value)> {
    let keys = cfg.n(GET_KEYS);
    let ops = cfg.n(1_000_000);
    let rounds = cfg.reps(5);
    let tmp = cfg.tempdir("meta-get")?;
    let fp = engines::fp()?;

    eprintln!("meta get: building a store of {keys} objects (1 value each)");
    let store = engines::chorus(&tmp.path().join("chorus"), SyncMode::Never)?;
    fill_objects(&store, keys, &[store.node_id()])?;
    let meta = Metadata::new(store.clone());
    // Three writes with an empty context: each adds a sibling.
    for s in 0..3u64 {
        meta.put(
            &fp,
            SIBLINGS_KEY,
            PutValue::Bytes(value(1_000_000 + s)),
            &PutOptions {
                context: Some(Vec::new()),
                ..Default::default()
            },
        )?;
    }

    let one = key(keys as u64 / 2);
    let lww = GetOptions {
        resolver: Resolver::Lww,
        ..GetOptions::default()
    };
    let plain = GetOptions::default();
    check_reads(&meta, &fp, &one, keys as u64 / 2, &lww)?;
    let one_bytes = store.get(&fp, &one)?.ok_or("hot key missing")?;
    let sib_bytes = store
        .get(&fp, SIBLINGS_KEY)?
        .ok_or("siblings key missing")?;

    let mut tasks: Vec<Task<'_>> = vec![
        (
            "engine get, 1-value key",
            Box::new(|_| {
                for _ in 0..ops {
                    let v = store.get(&fp, black_box(&one))?.ok_or("missing key")?;
                    black_box(v.len());
                }
                Ok(None)
            }),
        ),
        (
            "metadata get, 1-value key (no resolver)",
            Box::new(|_| {
                for _ in 0..ops {
                    let r = meta
                        .get(&fp, black_box(&one), &plain)?
                        .ok_or("missing key")?;
                    black_box(r.values.len());
                }
                Ok(None)
            }),
        ),
        (
            "engine get, 3-sibling key",
            Box::new(|_| {
                for _ in 0..ops {
                    let v = store
                        .get(&fp, black_box(SIBLINGS_KEY))?
                        .ok_or("missing key")?;
                    black_box(v.len());
                }
                Ok(None)
            }),
        ),
        (
            "metadata get, 3-sibling key (lww)",
            Box::new(|_| {
                for _ in 0..ops {
                    let r = meta
                        .get(&fp, black_box(SIBLINGS_KEY), &lww)?
                        .ok_or("missing key")?;
                    black_box(r.values.len());
                }
                Ok(None)
            }),
        ),
        // Context for where the time goes: the same reads without the
        // resolver, and decoding the stored bytes alone.
        (
            "metadata get, 3-sibling key (no resolver)",
            Box::new(|_| {
                for _ in 0..ops {
                    let r = meta
                        .get(&fp, black_box(SIBLINGS_KEY), &plain)?
                        .ok_or("missing key")?;
                    black_box(r.values.len());
                }
                Ok(None)
            }),
        ),
        (
            "Object::decode alone, 1-value key",
            Box::new(|_| {
                for _ in 0..ops {
                    let o = Object::decode(black_box(&one_bytes))?;
                    black_box(o.value_count());
                }
                Ok(None)
            }),
        ),
        (
            "Object::decode alone, 3-sibling key",
            Box::new(|_| {
                for _ in 0..ops {
                    let o = Object::decode(black_box(&sib_bytes))?;
                    black_box(o.value_count());
                }
                Ok(None)
            }),
        ),
    ];
    eprintln!("meta get: {rounds} interleaved rounds of {ops} reads per variant");
    let res = interleaved(rounds, &mut tasks)?;
    drop(tasks);
    let [eng1, meta1, eng3, lww3, all3, dec1, dec3] = &res[..] else {
        return Err("meta get: wrong number of results".into());
    };
    let ns = |r: &[f64]| median(&per_op(r, ops));

    let row = |bench: &str, m: &[f64], e: &[f64]| {
        let (m_ns, e_ns) = (ns(m), ns(e));
        let slowdown = paired_ratio(e, m);
        Row::slowdown_goal(
            bench,
            format!(
                "{} (= {} the engine's time)",
                fmt_ns(m_ns),
                fmt_ratio(slowdown)
            ),
            "engine read of the same key (`Store::get`, encoded object bytes)",
            fmt_ns(e_ns),
            paired_ratio(m, e),
            GET_MAX_SLOWDOWN,
        )
    };
    let rows = vec![
        row("metadata get, 1 value, no resolver (ns/op)", meta1, eng1),
        row("metadata get, 3 siblings, lww resolver (ns/op)", lww3, eng3),
        Row::ratio_goal(
            "(context) metadata get, 3 siblings, no resolver (ns/op)",
            fmt_ns(ns(all3)),
            "engine read of the same key",
            fmt_ns(ns(eng3)),
            paired_ratio(all3, eng3),
            None,
        ),
    ];
    let raw = serde_json::json!({
        "keys": keys,
        "value_bytes": VALUE_LEN,
        "rounds": rounds,
        "ops_per_round": ops,
        "encoded_bytes": { "one_value": one_bytes.len(), "three_siblings": sib_bytes.len() },
        "ns_per_op_median": {
            "engine_one": ns(eng1), "meta_one": ns(meta1),
            "engine_siblings": ns(eng3), "meta_siblings_lww": ns(lww3),
            "meta_siblings_all": ns(all3),
            "decode_one": ns(dec1), "decode_siblings": ns(dec3),
        },
        "slowdown_paired_median": {
            "meta_one": paired_ratio(eng1, meta1),
            "meta_siblings_lww": paired_ratio(eng3, lww3),
            "meta_siblings_all": paired_ratio(eng3, all3),
        },
        "ns_per_op_rounds": {
            "engine_one": per_op(eng1, ops), "meta_one": per_op(meta1, ops),
            "engine_siblings": per_op(eng3, ops), "meta_siblings_lww": per_op(lww3, ops),
            "meta_siblings_all": per_op(all3, ops),
            "decode_one": per_op(dec1, ops), "decode_siblings": per_op(dec3, ops),
        },
    });
    Ok((rows, raw))
}

/// Checks the reads the get benchmark times return what was written.
fn check_reads(
    meta: &Metadata,
    fp: &FullPrefix,
    one: &[u8],
    one_index: u64,
    lww: &GetOptions,
) -> Res<()> {
    let r = meta
        .get(fp, one, &GetOptions::default())?
        .ok_or("hot key missing")?;
    if r.values.len() != 1 || r.values[0].bytes() != Some(value(one_index).as_slice()) {
        return Err(format!("hot key read {} values, or the wrong one", r.values.len()).into());
    }
    let all = meta
        .get(fp, SIBLINGS_KEY, &GetOptions::default())?
        .ok_or("siblings key missing")?;
    if all.values.len() != 3 {
        return Err(format!("siblings key holds {} values, not 3", all.values.len()).into());
    }
    let settled = meta
        .get(fp, SIBLINGS_KEY, lww)?
        .ok_or("siblings key missing")?;
    if settled.values.len() != 1 {
        return Err("lww read did not settle the siblings".into());
    }
    let after = meta
        .get(fp, SIBLINGS_KEY, &GetOptions::default())?
        .ok_or("siblings key missing")?;
    if after.values.len() != 3 {
        return Err("an lww read wrote to the store".into());
    }
    Ok(())
}

/// Benchmark 2: iterating a full prefix of 1,000,000 keys.
fn iter_bench(cfg: &Cfg) -> Res<(Vec<Row>, serde_json::Value)> {
    let keys = cfg.n(ITER_KEYS);
    let rounds = cfg.reps(5);
    let tmp = cfg.tempdir("meta-iter")?;
    let fp = engines::fp()?;

    eprintln!("meta iter: building a store of {keys} objects and a SQLite copy of the rows");
    let t = Instant::now();
    let store = engines::chorus(&tmp.path().join("chorus"), SyncMode::Never)?;
    fill_objects(&store, keys, &[store.node_id()])?;
    let fill_ns = t.elapsed().as_nanos() as f64;
    let meta = Metadata::new(store.clone());
    let mut conn = engines::sqlite(&tmp.path().join("sqlite.db"), "FULL")?;
    engines::sqlite_fill(&mut conn, keys as u64)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let scope = Scope::FullPrefix(fp.clone());
    let opts = IterOptions::default();
    // Time to return the items (the rest of the round is reading and
    // freeing them).
    let mut returned_ns: Vec<f64> = Vec::new();

    let mut tasks: Vec<Task<'_>> = vec![
        (
            "metadata iter (streaming: each item decoded, read and freed)",
            Box::new(|round| {
                let t = Instant::now();
                let items = meta.iter(&scope, &opts)?;
                if round > 0 {
                    returned_ns.push(t.elapsed().as_nanos() as f64);
                }
                let (mut n, mut sum) = (0usize, 0usize);
                for it in items {
                    let it = it?;
                    let v = it.read.values.first().and_then(Value::bytes);
                    let v = v.ok_or("a key without data")?;
                    sum += it.key.len() + v.len() + usize::from(v[v.len() - 1]);
                    n += 1;
                }
                if n != keys {
                    return Err(format!("metadata iter saw {n} keys").into());
                }
                black_box(sum);
                Ok(None)
            }),
        ),
        (
            "engine iteration (snapshot + iter_prefix)",
            Box::new(|_| {
                let snap = store.snapshot()?;
                let (mut n, mut sum) = (0usize, 0usize);
                for (k, e) in snap.iter_prefix(&fp) {
                    let v = &e.value;
                    n += 1;
                    sum += k.len() + v.len() + usize::from(v[v.len() - 1]);
                }
                if n != keys {
                    return Err(format!("engine iteration saw {n} keys").into());
                }
                black_box(sum);
                Ok(None)
            }),
        ),
        (
            "SQLite scan (SELECT k, v FROM kv)",
            Box::new(|_| {
                let mut st = conn.prepare_cached("SELECT k, v FROM kv")?;
                let mut rows = st.query([])?;
                let (mut n, mut sum) = (0usize, 0usize);
                while let Some(r) = rows.next()? {
                    let (ValueRef::Blob(k), ValueRef::Blob(v)) = (r.get_ref(0)?, r.get_ref(1)?)
                    else {
                        return Err("SQLite row without blobs".into());
                    };
                    n += 1;
                    sum += k.len() + v.len() + usize::from(v[v.len() - 1]);
                }
                if n != keys {
                    return Err(format!("SQLite scan saw {n} rows").into());
                }
                black_box(sum);
                Ok(None)
            }),
        ),
    ];
    eprintln!("meta iter: {rounds} interleaved rounds, one full pass per engine each");
    let res = interleaved(rounds, &mut tasks)?;
    drop(tasks);
    let [meta_ns, eng_ns, sql_ns] = &res[..] else {
        return Err("meta iter: wrong number of results".into());
    };
    let rate = |r: &[f64]| keys as f64 / (median(r) / 1e9);
    let (meta_rate, eng_rate, sql_rate) = (rate(meta_ns), rate(eng_ns), rate(sql_ns));
    let k = keys / 1000;
    let meta_fig = format!(
        "{} ({} per pass)",
        fmt_rate(meta_rate),
        fmt_ns(median(meta_ns))
    );
    let rows = vec![
        Row::ratio_goal(
            &format!("metadata iter, full prefix of {k}k keys (keys/s)"),
            meta_fig.clone(),
            "SQLite full scan, SELECT k, v (same rows)",
            format!(
                "{} ({} per pass)",
                fmt_rate(sql_rate),
                fmt_ns(median(sql_ns))
            ),
            paired_ratio(meta_ns, sql_ns),
            None,
        ),
        Row::ratio_goal(
            &format!("metadata iter, full prefix of {k}k keys (keys/s)"),
            meta_fig,
            "engine iteration (snapshot + iter_prefix, raw bytes)",
            format!(
                "{} ({} per pass)",
                fmt_rate(eng_rate),
                fmt_ns(median(eng_ns))
            ),
            paired_ratio(meta_ns, eng_ns),
            None,
        ),
        Row::ratio_goal(
            &format!("(context) engine iteration, {k}k keys (keys/s)"),
            fmt_rate(eng_rate),
            "SQLite full scan, SELECT k, v (same rows)",
            fmt_rate(sql_rate),
            paired_ratio(eng_ns, sql_ns),
            None,
        ),
    ];
    let raw = serde_json::json!({
        "keys": keys,
        "rounds": rounds,
        "chorus_fill_ns": fill_ns,
        "keys_per_s_median": { "meta": meta_rate, "engine": eng_rate, "sqlite": sql_rate },
        "ns_per_pass_rounds": { "meta": meta_ns, "engine": eng_ns, "sqlite": sql_ns },
        "meta_ns_until_iter_returned_rounds": returned_ns,
    });
    Ok((rows, raw))
}

/// Benchmark 3: object sizes for 1, 2 and 5 writing nodes.
fn size_bench(cfg: &Cfg) -> Res<(Vec<Row>, serde_json::Value)> {
    let keys = cfg.n(SIZE_KEYS);
    let reps = cfg.reps(5);
    let tmp = cfg.tempdir("meta-size")?;
    let raw_per_key = (key(0).len() + VALUE_LEN) as f64;
    let raw_fig = format!("{raw_per_key:.0} B");
    let peer = "raw key + value bytes";
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();

    // Plain engine values (no object) first: what the object adds to.
    let mut cases: Vec<(String, Option<usize>)> = vec![("plain".to_string(), None)];
    cases.extend(WRITERS.iter().map(|n| (format!("{n}"), Some(*n))));
    for (name, writers) in cases {
        let dir = tmp.path().join(format!("store-{name}"));
        let store = engines::chorus(&dir, SyncMode::Never)?;
        let encoded = match writers {
            Some(n) => {
                let nodes: Vec<NodeId> = (0..n).map(node).collect();
                let check = object(0, &nodes);
                if check.value_count() != 1 || check.context().len() != n {
                    return Err(
                        format!("object of {n} writers is not 1 value / {n} entries").into(),
                    );
                }
                eprintln!("meta size: {keys} objects written by {n} node(s) in turn");
                Some(fill_objects(&store, keys, &nodes)? as f64 / keys as f64)
            }
            None => {
                eprintln!("meta size: {keys} plain engine values (baseline)");
                engines::chorus_fill(&store, keys as u64, BATCH as u64)?;
                None
            }
        };
        store.compact()?;
        let log = store.status()?.log_bytes as f64 / keys as f64;
        drop(store);
        settle();
        let engine = if writers.is_some() { "meta" } else { "chorus" };
        let child = open::measure_median(engine, &dir, keys, reps)?;
        let rss = child["rss_delta"].as_f64().unwrap_or(f64::NAN) / keys as f64;
        let anon = child["anon_delta"].as_f64().unwrap_or(f64::NAN) / keys as f64;
        let fig = |b: f64| format!("{b:.1} B = {:.2}x raw", b / raw_per_key);
        let label = match writers {
            Some(1) => "object, 1 writing node".to_string(),
            Some(n) => format!("object, {n} writing nodes"),
            None => "(baseline) plain engine value, no object".to_string(),
        };
        if let Some(e) = encoded {
            let with_key = e + key(0).len() as f64;
            rows.push(Row::context(
                &format!("{label}: encoded object bytes per key (`Object::encode`)"),
                format!(
                    "{e:.1} B; + key = {with_key:.1} B = {:.2}x raw",
                    with_key / raw_per_key
                ),
                peer,
                raw_fig.clone(),
            ));
        }
        rows.push(Row::context(
            &format!("{label}: log bytes per key after compact"),
            fig(log),
            peer,
            raw_fig.clone(),
        ));
        rows.push(Row::context(
            &format!("{label}: RSS per key after a fresh open"),
            fig(rss),
            peer,
            raw_fig.clone(),
        ));
        raw.insert(
            name,
            serde_json::json!({
                "writers": writers,
                "encoded_object_bytes_per_key": encoded,
                "log_bytes_per_key": log,
                "rss_delta_per_key": rss,
                "anon_delta_per_key": anon,
                "open_child": child,
            }),
        );
    }
    raw.insert("keys".to_string(), serde_json::json!(keys));
    raw.insert(
        "raw_bytes_per_key".to_string(),
        serde_json::json!(raw_per_key),
    );
    Ok((rows, serde_json::Value::Object(raw)))
}
