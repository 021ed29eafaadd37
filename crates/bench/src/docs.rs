//! `docs`: the document store beside multiprocess-store (the npm package
//! Chorus's documents API comes from), 1 KiB documents: create, get and
//! update rates from one process and from four, and the size of one
//! document's history after 10,000 updates.
//!
//! Both sides run as child processes driven by the same line protocol
//! (`ready`, then a phase name per line answered by `ok`): Chorus children
//! are this executable (`__docs`), the peer is `scripts/docs-peer.js`
//! under Node.js with multiprocess-store installed from npm by the run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chorus_store::docs::Docs;
use chorus_store::{Metadata, SyncMode};
use serde_json::json;

use crate::engines;
use crate::harness::{Cfg, Kid, Outcome, Res, Row, dir_bytes, fmt_rate, hear, say};

const PEER_VERSION: &str = "multiprocess-store@1.25.0";

fn payload() -> String {
    "x".repeat(1000)
}

/// Hidden subcommand `__docs SYNC PATH ID COUNT`: the Chorus side of the
/// protocol above.
pub(crate) fn child(args: &[String]) -> Res<()> {
    let [sync, path, id, count] = args else {
        return Err("usage: __docs SYNC PATH ID COUNT".into());
    };
    let sync = match sync.as_str() {
        "always" => SyncMode::Always,
        _ => SyncMode::Never,
    };
    let count: u64 = count.parse()?;
    let meta = Metadata::new(engines::chorus(Path::new(path), sync)?);
    let docs = Docs::open(&meta, "bench")?;
    let payload = payload();
    say("ready")?;
    while let Some(phase) = hear()? {
        match phase.as_str() {
            "create" => {
                for j in 0..count {
                    docs.create(json!({"_id": format!("p{id}-{j}"), "n": j, "payload": payload}))?;
                }
            }
            "get" => {
                for j in 0..count {
                    let doc = docs.get(&format!("p{id}-{j}"))?;
                    if doc["n"] != j {
                        return Err(format!("read back {}, wrote {j}", doc["n"]).into());
                    }
                }
            }
            "update" => {
                for j in 0..count {
                    let mut doc = docs.get(&format!("p{id}-{j}"))?;
                    doc["n"] = json!(j + 1);
                    docs.update(doc, false)?;
                }
            }
            "history" => {
                let hid = format!("h{id}");
                docs.upsert(json!({"_id": hid, "n": 0, "payload": payload}))?;
                for j in 0..count {
                    let mut doc = docs.get(&hid)?;
                    doc["n"] = json!(j + 1);
                    docs.update(doc, false)?;
                }
            }
            other => return Err(format!("unknown phase {other}").into()),
        }
        say("ok")?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Chorus(SyncMode),
    Peer,
}

/// Starts `procs` children on one store directory; returns the seconds
/// each phase took, from the order to the last `ok`.
fn run_side(
    side: Side,
    store: &Path,
    peer_modules: &Path,
    procs: usize,
    count: usize,
    phases: &[&str],
) -> Res<Vec<f64>> {
    let mut kids = Vec::new();
    for id in 0..procs {
        let args: Vec<String> = match side {
            Side::Chorus(sync) => vec![
                "__docs".into(),
                if sync == SyncMode::Always {
                    "always"
                } else {
                    "never"
                }
                .into(),
                store.display().to_string(),
                id.to_string(),
                count.to_string(),
            ],
            Side::Peer => vec![
                peer_script().display().to_string(),
                peer_modules.display().to_string(),
                store.display().to_string(),
                id.to_string(),
                count.to_string(),
            ],
        };
        kids.push(match side {
            Side::Chorus(_) => Kid::spawn(&args)?,
            Side::Peer => Kid::spawn_program("node", &args)?,
        });
    }
    for k in &mut kids {
        k.expect("ready")?;
    }
    let mut secs = Vec::new();
    for phase in phases {
        let start = Instant::now();
        for k in &mut kids {
            k.send(phase)?;
        }
        for k in &mut kids {
            k.expect("ok")?;
        }
        secs.push(start.elapsed().as_secs_f64());
    }
    for k in kids {
        k.finish()?;
    }
    Ok(secs)
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/docs-peer.js")
}

/// Installs the peer from npm into `dir`.
fn install_peer(dir: &Path) -> Res<()> {
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(dir)
        .arg(PEER_VERSION)
        .output()
        .map_err(|e| format!("cannot run npm ({e}): install Node.js and npm"))?;
    if !out.status.success() {
        return Err(format!(
            "npm install {PEER_VERSION} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let count = cfg.n(2000);
    let history = cfg.n(10_000);
    let modules = cfg.tempdir("docs-peer-modules")?;
    install_peer(modules.path())?;
    let phases = ["create", "get", "update"];
    let sides = [
        ("chorus sync=always", Side::Chorus(SyncMode::Always)),
        ("chorus sync=never", Side::Chorus(SyncMode::Never)),
        ("multiprocess-store", Side::Peer),
    ];
    let mut rates: Vec<Vec<Vec<f64>>> = Vec::new(); // side -> procs -> phase
    for (_, side) in sides {
        let mut per_procs = Vec::new();
        for procs in [1usize, 4] {
            let dir = cfg.tempdir("docs")?;
            let secs = run_side(side, dir.path(), modules.path(), procs, count, &phases)?;
            per_procs.push(secs.iter().map(|s| (procs * count) as f64 / s).collect());
        }
        rates.push(per_procs);
    }
    let mut rows = Vec::new();
    for (pi, procs) in [1usize, 4].iter().enumerate() {
        for (phase_i, phase) in phases.iter().enumerate() {
            let peer = rates[2][pi][phase_i];
            for (si, (label, _)) in sides[..2].iter().enumerate() {
                let ours = rates[si][pi][phase_i];
                rows.push(Row::ratio_goal(
                    &format!("docs: {phase}, {procs} proc, {label} (1 KiB)"),
                    fmt_rate(ours),
                    "multiprocess-store",
                    fmt_rate(peer),
                    ours / peer,
                    None,
                ));
            }
        }
    }
    // One document updated `history` times.
    let dir = cfg.tempdir("docs-history")?;
    run_side(
        Side::Chorus(SyncMode::Never),
        dir.path(),
        modules.path(),
        1,
        history,
        &["history"],
    )?;
    let meta = Metadata::new(engines::chorus(dir.path(), SyncMode::Never)?);
    let docs = Docs::open(&meta, "bench")?;
    // Every key of the document: one record per kept revision, and the
    // tombstones of revisions past the revs limit until they are collected.
    let snap = meta.store().snapshot()?;
    let stored = snap
        .group(docs.full_prefix(), b"h0")
        .map(|(k, e)| k.as_bytes().len() + e.value.len())
        .sum::<usize>() as f64;
    let revs = docs.tree("h0")?.len();
    meta.store().compact()?;
    let chorus_dir = dir_bytes(dir.path()) as f64;
    drop(meta);
    let peer_dir = cfg.tempdir("docs-history-peer")?;
    run_side(
        Side::Peer,
        peer_dir.path(),
        modules.path(),
        1,
        history,
        &["history"],
    )?;
    let peer_bytes = dir_bytes(peer_dir.path()) as f64;
    rows.push(Row::ratio_goal(
        &format!("docs: one document after {history} updates, bytes stored"),
        format!("{stored:.0} B ({revs} revisions kept)"),
        "multiprocess-store",
        format!("{peer_bytes:.0} B"),
        peer_bytes / stored,
        None,
    ));
    rows.push(Row::context(
        "docs: data directory after compaction (log, index map, lock)",
        format!("{chorus_dir:.0} B"),
        "multiprocess-store",
        format!("{peer_bytes:.0} B"),
    ));
    let raw = json!({
        "count_per_process": count,
        "phases": phases,
        "rates": {
            "chorus_always": rates[0], "chorus_never": rates[1], "multiprocess_store": rates[2],
        },
        "history": {"updates": history, "chorus_value_bytes": stored, "chorus_revisions_kept": revs,
                    "chorus_dir_bytes": chorus_dir, "peer_dir_bytes": peer_bytes},
    });
    Ok(Outcome { rows, raw })
}
