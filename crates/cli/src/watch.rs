//! `chorus watch`: one JSON line per change of a full prefix, by any
//! process on the directory or merged from a peer, until interrupted.
//!
//! Each line is a change event exactly as `/v1/watch` and the ZeroMQ PUB
//! socket send it ([`chorus_node::events::event_json`]); `--from ID`
//! resumes after an event id (or a cursor) a previous watch printed.

use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use chorus_node::events::{event_json, overflow_json};
use chorus_node::json::Viewer;
use chorus_store::watch::Watched;
use chorus_store::{ChangedKey, EventId, Match};

use crate::{Cli, Failure, parse_prefix};

#[derive(Args, Debug)]
pub(crate) struct WatchArgs {
    /// PREFIX/SUBPREFIX to watch
    full_prefix: String,
    /// Only keys matching this glob (`*` any run, `?` one byte)
    #[arg(long = "match", value_name = "PATTERN")]
    pattern: Option<String>,
    /// Resume exactly after this event: an event's "id" or the first
    /// line's "cursor", as a previous watch printed them
    #[arg(long, value_name = "ID")]
    from: Option<String>,
}

pub(crate) fn run(cli: &Cli, args: &WatchArgs) -> Result<(), Failure> {
    let fp = parse_prefix(&args.full_prefix)?;
    let from = args
        .from
        .as_deref()
        .map(|text| EventId::parse(text).map_err(|e| Failure::usage(format!("--from: {e}"))))
        .transpose()?;
    let matching = args.pattern.clone().map_or(Match::All, Match::Glob);
    let store = cli.open()?;
    let only = fp.clone();
    let filter: chorus_store::watch::KeyFilter = Box::new(move |f, key| {
        *f == only && matching.matches(chorus_store::split_record(key).map_or(key, |(b, _)| b))
    });
    let mut watcher = match from {
        Some(id) => store.watcher_after(id, filter)?,
        None => store.watcher(filter)?,
    };
    let mut out = std::io::stdout().lock();
    // The first line says where the watch starts: every later commit shows.
    let start = json!({"watching": fp.to_string(), "cursor": watcher.cursor().to_string()});
    if writeln!(out, "{start}").and_then(|()| out.flush()).is_err() {
        return Ok(());
    }
    loop {
        let Some(event) = watcher.next(Duration::from_secs(3600))? else {
            continue;
        };
        let line = match event {
            Watched::Change(e) => {
                let changed = ChangedKey {
                    full_prefix: e.full_prefix,
                    key: e.key,
                    value: e.value,
                };
                // On the directory: its owner sees token ids.
                event_json(&e.id, e.seq, &e.origin, &changed, &Viewer::Admin)
            }
            // Compaction replaced commits this watch had not read: every
            // commit up to `resume` is only in the snapshot now. The watch
            // goes on from there; the reader should re-read the keys.
            Watched::Gap { resume } => overflow_json(resume.seq().saturating_add(1)),
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): stop quietly.
            return Ok(());
        }
    }
}
