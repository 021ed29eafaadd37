//! `chorus watch`: one JSON line per change of a full prefix, by any
//! process on the directory or merged from a peer, until interrupted.

use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use chorus_core::object::Object;
use chorus_store::watch::Watched;
use chorus_store::{Match, Origin};

use crate::{Cli, Failure, parse_prefix};

#[derive(Args, Debug)]
pub(crate) struct WatchArgs {
    /// PREFIX/SUBPREFIX to watch
    full_prefix: String,
    /// Only keys matching this glob (`*` any run, `?` one byte)
    #[arg(long = "match", value_name = "PATTERN")]
    pattern: Option<String>,
}

pub(crate) fn run(cli: &Cli, args: &WatchArgs) -> Result<(), Failure> {
    let fp = parse_prefix(&args.full_prefix)?;
    let matching = args.pattern.clone().map_or(Match::All, Match::Glob);
    let store = cli.open()?;
    let only = fp.clone();
    let mut watcher = store.watcher(Box::new(move |f, key| {
        *f == only && matching.matches(chorus_store::split_record(key).map_or(key, |(b, _)| b))
    }))?;
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
                let origin = match e.origin {
                    Origin::Local => "local".to_string(),
                    Origin::Peer(id) => format!("peer:{}", chorus_core::NodeId::from_bytes(id)),
                };
                // A document's or a log's record shows under its key.
                let (base, record) = match chorus_store::split_record(&e.key) {
                    Some((base, name)) => (base, Some(name)),
                    None => (&e.key[..], None),
                };
                let key = String::from_utf8_lossy(base).into_owned();
                let read = e.value.as_deref().and_then(|b| Object::decode(b).ok());
                let body = match &read {
                    Some(o) => chorus_node::json::object_json(o),
                    None => json!({"values": [], "tombstone": true}),
                };
                let mut line = json!({"seq": e.seq, "cursor": e.cursor.to_string(), "origin": origin,
                       "full_prefix": e.full_prefix.to_string(), "key": key, "object": body});
                if let Some(name) = record {
                    line["record"] = json!(String::from_utf8_lossy(name));
                }
                line
            }
            Watched::Gap { resume } => {
                json!({"gap": true, "resume": resume.to_string(),
                       "message": "compaction replaced commits this watch had not read: read the keys again"})
            }
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): stop quietly.
            return Ok(());
        }
    }
}
