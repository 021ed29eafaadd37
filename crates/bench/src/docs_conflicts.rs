//! `docs-conflicts`: one document with 100 / 10,000 / 1,000,000 conflicting
//! revisions (the seed's "one million revision conflicts" on one machine),
//! then updates on top of the winner: time per update at each size (goal:
//! at 1,000,000 within 2x of the time at 100), log bytes written per
//! update, and the resident memory of the process. Then the worst case
//! of self-clearing (every loser shares its smallest field with a winner
//! of more than 8 fields) at 100 and 10,000 revisions, reported as is.
//!
//! The conflicting revisions are written in this process, one `keep_both`
//! update of the same first revision each (one commit per revision, sync
//! `never` so that building a million takes minutes, not hours); the
//! timed updates run in the same process and sync mode, each a read of the
//! winner and an update of it, so that the figures compare sizes, not
//! disks.

use std::time::Instant;

use chorus_store::docs::Docs;
use chorus_store::{Metadata, SyncMode};
use serde_json::json;

use crate::engines;
use crate::harness::{Cfg, Outcome, Res, Row, fmt_mib, fmt_ns, fmt_ratio, median, mem};

/// The bodies of the conflicting revisions.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// `{"writer": i}`: every loser differs from the winner in its only
    /// field (the usual case: self-clearing finds no candidate).
    Distinct,
    /// Nine fields shared by every revision plus `writer`: the winner has
    /// more than 8 fields and every loser shares its smallest field with
    /// it, self-clearing's worst case (every loser is a candidate).
    Wide,
}

fn body(shape: Shape, i: i64) -> serde_json::Value {
    match shape {
        Shape::Distinct => json!({"_id": "d", "writer": i}),
        Shape::Wide => {
            let mut v = json!({"_id": "d", "writer": i});
            for f in 0..9 {
                v[format!("a{f}")] = json!("shared");
            }
            v
        }
    }
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let sizes = [cfg.n(100), cfg.n(10_000), cfg.n(1_000_000)];
    let (mut rows, distinct) = run_shape(cfg, Shape::Distinct, &sizes, cfg.n(1000).max(20))?;
    // Every edit costs O(losers) in the worst case, so writing the
    // revisions costs O(n^2): a million is out of reach; 10,000 shows the
    // slope.
    let (wide_rows, wide) = run_shape(cfg, Shape::Wide, &sizes[..2], 20)?;
    rows.extend(wide_rows);
    Ok(Outcome {
        rows,
        raw: json!({"distinct": distinct, "wide": wide}),
    })
}

fn run_shape(
    cfg: &Cfg,
    shape: Shape,
    sizes: &[usize],
    updates: usize,
) -> Res<(Vec<Row>, serde_json::Value)> {
    let label = match shape {
        Shape::Distinct => "one-field bodies",
        Shape::Wide => "worst case for self-clearing: 10 fields, 9 shared",
    };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut per_update = Vec::new();
    for &size in sizes {
        let dir = cfg.tempdir("docs-conflicts")?;
        let meta = Metadata::new(engines::chorus(dir.path(), SyncMode::Never)?);
        let docs = Docs::open(&meta, "bench")?;
        let built = Instant::now();
        let first = docs.create(body(shape, -1))?.rev.to_string();
        for i in 0..size {
            let mut doc = body(shape, i as i64);
            doc["_rev"] = json!(first);
            docs.update(doc, true)?;
        }
        let build_s = built.elapsed().as_secs_f64();
        let live = docs.conflicts_page("d", 1, None)?;
        let log_before = meta.store().status()?.log_bytes;
        let mut times = Vec::with_capacity(updates);
        for j in 0..updates {
            let t = Instant::now();
            let mut doc = docs.get("d")?;
            doc["n"] = json!(j);
            docs.update(doc, false)?;
            times.push(t.elapsed().as_nanos() as f64);
        }
        let log_after = meta.store().status()?.log_bytes;
        let bytes = (log_after - log_before) as f64 / updates as f64;
        let m = mem()?;
        let t = median(&times);
        per_update.push(t);
        eprintln!(
            "docs-conflicts ({label}): {size} revisions built in {build_s:.1} s; update {} , {bytes:.0} log bytes/update, rss {} (anon {}, file {})",
            fmt_ns(t),
            fmt_mib(m.rss as f64),
            fmt_mib(m.anon as f64),
            fmt_mib(m.file as f64)
        );
        if live.conflicts.is_empty() && size > 1 {
            return Err("the conflicting revisions did not show as conflicts".into());
        }
        rows.push(Row::context(
            &format!(
                "docs-conflicts: update on top of the winner, {size} conflicting revisions, {label}"
            ),
            format!("{} per update, {bytes:.0} B of log per update", fmt_ns(t)),
            "process memory: RSS (anonymous + file-backed)",
            format!(
                "{} ({} + {})",
                fmt_mib(m.rss as f64),
                fmt_mib(m.anon as f64),
                fmt_mib(m.file as f64)
            ),
        ));
        raw.push(json!({
            "revisions": size,
            "build_seconds": build_s,
            "update_median_ns": t,
            "log_bytes_per_update": bytes,
            "rss_bytes": m.rss,
            "hwm_bytes": m.hwm,
            "anon_bytes": m.anon,
            "file_bytes": m.file,
            "log_bytes": log_after,
        }));
    }
    let (small, large) = (per_update[0], per_update[per_update.len() - 1]);
    let slowdown = large / small;
    rows.push(Row::absolute(
        &format!(
            "docs-conflicts: update at {} vs {} conflicting revisions, {label}",
            sizes[sizes.len() - 1],
            sizes[0]
        ),
        format!("{} vs {}", fmt_ns(large), fmt_ns(small)),
        "slowdown",
        fmt_ratio(slowdown),
        "slowdown <= 2x",
        slowdown <= 2.0,
    ));
    Ok((
        rows,
        json!({"sizes": raw, "slowdown": slowdown, "updates_timed": updates}),
    ))
}
