//! `visibility`: how soon a commit made by one process can be read by another.
//!
//! Method: the parent (reader) and a child (writer) talk over pipes. For
//! each sample the parent writes `go i` to the child and starts spinning on
//! a read of key `vis` until it returns the value for `i`. The child, on
//! `go i`, commits `vis = i` and replies with the wall-clock time just
//! before and just after its commit call. The parent records:
//! - end to end: its own monotonic time from sending `go i` to first
//!   seeing the value (one clock: includes the pipe wake-up of the writer,
//!   the commit itself and the propagation to the reader);
//! - after ack: wall-clock time from the writer's commit call returning to
//!   the reader first seeing the value (both read CLOCK_REALTIME, the same
//!   kernel clock in both processes; negative means the reader saw the
//!   value before the writer's call returned).
//!
//! Four writers (Chorus Always and Never, SQLite WAL FULL and NORMAL) run
//! at once, each on its own store, and are sampled in turn, so each sees
//! the same disk conditions.

use std::path::Path;
use std::time::{Duration, Instant};

use chorus_store::SyncMode;
use rusqlite::types::ValueRef;

use crate::engines;
use crate::harness::{Cfg, Kid, Outcome, Res, Row, fmt_ns, hear, median, quantile, say, wall_ns};

const VIS_KEY: &[u8] = b"vis";

fn vis_value(i: u64) -> Vec<u8> {
    format!("{i:0100}").into_bytes()
}

/// Commits one value of key `vis`.
type Commit = Box<dyn FnMut(&[u8]) -> Res<()>>;

/// Hidden subcommand `__writer ENGINE PATH`: commits `vis = i` for each
/// `go i` it reads; replies `ok T0 T1` (wall ns before/after the commit).
pub(crate) fn child(args: &[String]) -> Res<()> {
    let [engine, path] = args else {
        return Err("usage: __writer ENGINE PATH".into());
    };
    let path = Path::new(path);
    let mut commit: Commit = match engine.as_str() {
        "chorus-always" | "chorus-never" => {
            let sync = if engine == "chorus-always" {
                SyncMode::Always
            } else {
                SyncMode::Never
            };
            let store = engines::chorus(path, sync)?;
            let fp = engines::fp()?;
            Box::new(move |v| {
                store.put(&fp, VIS_KEY, v)?;
                Ok(())
            })
        }
        "sqlite-full" | "sqlite-normal" => {
            let sync = if engine == "sqlite-full" {
                "FULL"
            } else {
                "NORMAL"
            };
            let conn = engines::sqlite(path, sync)?;
            Box::new(move |v| {
                engines::sqlite_insert_retry(&conn, VIS_KEY, v)?;
                Ok(())
            })
        }
        other => return Err(format!("unknown engine {other}").into()),
    };
    say("ready")?;
    while let Some(line) = hear()? {
        let i: u64 = line.strip_prefix("go ").ok_or("expected 'go N'")?.parse()?;
        let v = vis_value(i);
        let t0 = wall_ns();
        commit(&v)?;
        let t1 = wall_ns();
        say(&format!("ok {t0} {t1}"))?;
    }
    Ok(())
}

/// Per-sample figures, in nanoseconds.
#[derive(Default)]
struct Samples {
    e2e: Vec<f64>,
    after_ack: Vec<f64>,
    commit: Vec<f64>,
}

impl Samples {
    fn summary(&self) -> serde_json::Value {
        let s = |v: &[f64]| {
            serde_json::json!({
                "median": median(v), "p99": quantile(v, 0.99), "max": quantile(v, 1.0),
                "min": quantile(v, 0.0),
            })
        };
        serde_json::json!({
            "samples": self.e2e.len(),
            "end_to_end_ns": s(&self.e2e),
            "after_ack_ns": s(&self.after_ack),
            "writer_commit_ns": s(&self.commit),
        })
    }
}

/// Reads key `vis` and says whether it holds the wanted value.
type Seen<'a> = Box<dyn FnMut(&[u8]) -> Res<bool> + 'a>;

/// One writer child and the parent's reader on the same store.
struct Pair<'a> {
    engine: &'static str,
    kid: Kid,
    seen: Seen<'a>,
    samples: Samples,
}

impl Pair<'_> {
    /// One sample: `go i`, spin until visible, read the writer's times.
    fn sample(&mut self, i: u64, keep: bool) -> Res<()> {
        let want = vis_value(i);
        let start = Instant::now();
        self.kid.send(&format!("go {i}"))?;
        while !(self.seen)(&want)? {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("{}: write {i} not visible after 30 s", self.engine).into());
            }
            std::hint::spin_loop();
        }
        let e2e = start.elapsed().as_nanos() as f64;
        let seen_at = wall_ns();
        let rest = self.kid.expect("ok")?;
        let mut it = rest.split_whitespace();
        let t0: i128 = it.next().ok_or("no t0")?.parse()?;
        let t1: i128 = it.next().ok_or("no t1")?.parse()?;
        if keep {
            self.samples.e2e.push(e2e);
            self.samples.after_ack.push((seen_at - t1) as f64);
            self.samples.commit.push((t1 - t0) as f64);
        }
        Ok(())
    }
}

fn spawn(engine: &str, path: &Path) -> Res<Kid> {
    let mut kid = Kid::spawn(&[
        "__writer".to_string(),
        engine.to_string(),
        path.display().to_string(),
    ])?;
    kid.expect("ready")?;
    Ok(kid)
}

fn chorus_reader<'a>(store: &'a chorus_store::Store, fp: &'a chorus_core::FullPrefix) -> Seen<'a> {
    Box::new(move |want| Ok(store.get(fp, VIS_KEY)?.as_deref() == Some(want)))
}

fn sqlite_reader(conn: &rusqlite::Connection) -> Res<Seen<'_>> {
    let mut st = conn.prepare("SELECT v FROM kv WHERE k = ?1")?;
    Ok(Box::new(move |want| {
        let r = st.query_row([VIS_KEY], |r| {
            Ok(matches!(r.get_ref(0)?, ValueRef::Blob(b) if b == want))
        });
        match r {
            Ok(hit) => Ok(hit),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }))
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let count = cfg.n(1000) as u64;
    let warm = 20;
    let tmp = cfg.tempdir("visibility")?;
    let dir = |name: &str| tmp.path().join(name);
    let fp = engines::fp()?;

    let always = engines::chorus(&dir("chorus-always"), SyncMode::Never)?;
    let never = engines::chorus(&dir("chorus-never"), SyncMode::Never)?;
    let full = engines::sqlite(&dir("sqlite-full.db"), "FULL")?;
    let normal = engines::sqlite(&dir("sqlite-normal.db"), "NORMAL")?;
    let mut pairs = vec![
        Pair {
            engine: "chorus-always",
            kid: spawn("chorus-always", &dir("chorus-always"))?,
            seen: chorus_reader(&always, &fp),
            samples: Samples::default(),
        },
        Pair {
            engine: "sqlite-full",
            kid: spawn("sqlite-full", &dir("sqlite-full.db"))?,
            seen: sqlite_reader(&full)?,
            samples: Samples::default(),
        },
        Pair {
            engine: "chorus-never",
            kid: spawn("chorus-never", &dir("chorus-never"))?,
            seen: chorus_reader(&never, &fp),
            samples: Samples::default(),
        },
        Pair {
            engine: "sqlite-normal",
            kid: spawn("sqlite-normal", &dir("sqlite-normal.db"))?,
            seen: sqlite_reader(&normal)?,
            samples: Samples::default(),
        },
    ];
    eprintln!(
        "visibility: {count} samples per writer ({warm} warm-up), 4 writers interleaved sample by sample"
    );
    for i in 1..=warm + count {
        let n = pairs.len();
        for j in 0..n {
            let at = (i as usize + j) % n;
            pairs[at].sample(i, i > warm)?;
        }
    }
    let mut samples = Vec::new();
    for p in pairs {
        p.kid.finish()?;
        samples.push(p.samples);
    }
    let [ca, sf, cn, sn] = &samples[..] else {
        return Err("wrong number of writers".into());
    };

    let mut rows = Vec::new();
    for (label, c, peer, s) in [
        ("Always", ca, "SQLite WAL FULL writer", sf),
        ("Never", cn, "SQLite WAL NORMAL writer", sn),
    ] {
        for (stat, q) in [("median", 0.5), ("p99", 0.99)] {
            let cv = quantile(&c.e2e, q);
            let sv = quantile(&s.e2e, q);
            rows.push(Row::ratio_goal(
                &format!("cross-process visibility, end to end, {stat}"),
                format!("{} ({label})", fmt_ns(cv)),
                peer,
                fmt_ns(sv),
                sv / cv,
                None,
            ));
        }
        let cv = median(&c.after_ack);
        let sv = median(&s.after_ack);
        rows.push(Row {
            bench: "cross-process visibility, after writer's ack, median".to_string(),
            chorus: format!("{} ({label})", fmt_ns(cv)),
            peer: peer.to_string(),
            peer_figure: fmt_ns(sv),
            // A ratio only means something when both lags are positive.
            ratio: (cv > 0.0 && sv > 0.0).then(|| sv / cv),
            goal: "none (context)".to_string(),
            met: None,
        });
    }
    let raw = serde_json::json!({
        "method": "pipe round trip, writers interleaved sample by sample; see visibility.rs and BENCHMARKS.md",
        "warm_up_samples": warm,
        "chorus_always": ca.summary(),
        "sqlite_wal_full": sf.summary(),
        "chorus_never": cn.summary(),
        "sqlite_wal_normal": sn.summary(),
    });
    Ok(Outcome { rows, raw })
}
