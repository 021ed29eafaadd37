//! `docs-conflicts`: one document with 100 / 10,000 / 1,000,000 conflicting
//! revisions (the seed's "one million revision conflicts" on one machine),
//! then updates on top of the winner: time per update at each size (goal:
//! at 1,000,000 within 2x of the time at 100), log bytes written per
//! update, and the resident memory of the process.
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

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let sizes = [cfg.n(100), cfg.n(10_000), cfg.n(1_000_000)];
    let updates = cfg.n(1000).max(20);
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut per_update = Vec::new();
    for &size in &sizes {
        let dir = cfg.tempdir("docs-conflicts")?;
        let meta = Metadata::new(engines::chorus(dir.path(), SyncMode::Never)?);
        let docs = Docs::open(&meta, "bench")?;
        let built = Instant::now();
        let first = docs
            .create(json!({"_id": "d", "writer": -1}))?
            .rev
            .to_string();
        for i in 0..size {
            docs.update(json!({"_id": "d", "_rev": first, "writer": i}), true)?;
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
            "docs-conflicts: {size} revisions built in {build_s:.1} s; update {} , {bytes:.0} log bytes/update, rss {} (anon {}, file {})",
            fmt_ns(t),
            fmt_mib(m.rss as f64),
            fmt_mib(m.anon as f64),
            fmt_mib(m.file as f64)
        );
        if live.conflicts.is_empty() && size > 1 {
            return Err("the conflicting revisions did not show as conflicts".into());
        }
        rows.push(Row::context(
            &format!("docs-conflicts: update on top of the winner, {size} conflicting revisions"),
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
            "docs-conflicts: update at {} vs {} conflicting revisions",
            sizes[sizes.len() - 1],
            sizes[0]
        ),
        format!("{} vs {}", fmt_ns(large), fmt_ns(small)),
        "slowdown",
        fmt_ratio(slowdown),
        "slowdown <= 2x",
        slowdown <= 2.0,
    ));
    Ok(Outcome {
        rows,
        raw: json!({"sizes": raw, "slowdown": slowdown, "updates_timed": updates}),
    })
}
