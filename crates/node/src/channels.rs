//! This node's own part of the channel table (docs/channels.md): what
//! `chorus serve --serve CHANNEL[=PATTERN,...]` and a local table file
//! (`--channels FILE`, GiG.fs's local table) add to the replicated table
//! when the node starts, and the HTTP address its member record names.
//!
//! Invariant: the flags and the file only add: a channel that is absent is
//! created, a channel with the same patterns gets the listed nodes; they
//! never remove a node or a channel, and a channel whose patterns differ
//! from the replicated one stops the start, with both named. Every change
//! goes through `members::change_channels`, validated like `chorus
//! channel`'s.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use chorus_core::NodeId;
use chorus_core::channels::Pattern;
use chorus_replica::members;
use chorus_store::Metadata;
use chorus_store::channels::Change;
use serde_json::Value;

use crate::Error;

/// Largest table file read.
const FILE_MAX: u64 = 4 << 20;

/// One `--serve`: this node serves `channel`; with patterns, the channel
/// is created with them when it is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    /// The channel's name.
    pub channel: String,
    /// Its patterns, when given (`CHANNEL=PATTERN,PATTERN`).
    pub patterns: Option<Vec<String>>,
}

impl Serve {
    /// Parses `CHANNEL` or `CHANNEL=PATTERN[,PATTERN...]`.
    pub fn parse(text: &str) -> Result<Serve, String> {
        let usage = "give --serve CHANNEL (an existing channel) or --serve CHANNEL=PATTERN[,PATTERN...] (for example --serve render=render/*)";
        let (channel, patterns) = match text.split_once('=') {
            Some((c, p)) => {
                let list: Vec<String> = p.split(',').map(|s| s.trim().to_string()).collect();
                if list.iter().any(String::is_empty) {
                    return Err(format!("--serve {text}: an empty pattern; {usage}"));
                }
                (c.trim(), Some(list))
            }
            None => (text.trim(), None),
        };
        if channel.is_empty() {
            return Err(format!("--serve {text}: no channel name; {usage}"));
        }
        Ok(Serve {
            channel: channel.to_string(),
            patterns,
        })
    }
}

/// The HTTP address other nodes forward to: `http`, with an unspecified
/// IP (`0.0.0.0`, `::`) replaced by the IP of `me`, the address peers
/// dial.
pub fn announced_http(http: SocketAddr, me: &str) -> String {
    if !http.ip().is_unspecified() {
        return http.to_string();
    }
    match me.parse::<SocketAddr>() {
        Ok(peer) => SocketAddr::new(peer.ip(), http.port()).to_string(),
        Err(_) => http.to_string(),
    }
}

/// Merges `--channels FILE` and then every `--serve` into the table the
/// directory `dir` holds, before the node starts (nothing else is opened
/// when neither is given). This node may always be named; the other
/// nodes a file names must be members already.
pub(crate) fn at_start(dir: &Path, serve: &[Serve], file: Option<&Path>) -> Result<(), Error> {
    if serve.is_empty() && file.is_none() {
        return Ok(());
    }
    let store = chorus_store::Store::open(
        dir,
        chorus_store::Options {
            create: true,
            ..chorus_store::Options::default()
        },
    )?;
    let meta = &Metadata::new(store);
    let me = meta.store().node_id();
    if let Some(path) = file {
        for (name, patterns, nodes) in read_file(meta, path)? {
            let what = format!("--channels {}: the channel {name:?}", path.display());
            merge(meta, &name, Some(&patterns), &nodes, &what)?;
        }
    }
    for s in serve {
        let what = format!("--serve {}", s.channel);
        merge(
            meta,
            &s.channel,
            s.patterns.as_deref(),
            &BTreeSet::from([me]),
            &what,
        )?;
    }
    Ok(())
}

/// Adds channel `name` (absent: with `patterns`) or `nodes` to it.
fn merge(
    meta: &Metadata,
    name: &str,
    patterns: Option<&[String]>,
    nodes: &BTreeSet<NodeId>,
    what: &str,
) -> Result<(), Error> {
    let refused = |e: chorus_store::Error| Error::Config(format!("{what}: {e}"));
    let table = meta.channels()?;
    let Some(current) = table.table.get(name) else {
        let Some(patterns) = patterns else {
            return Err(Error::Config(format!(
                "{what}: there is no channel {name:?} in the table this node holds: give its patterns (--serve {name}=PATTERN,...) to create it, or create it with `chorus channel add`"
            )));
        };
        let change = Change::Add {
            name: name.to_string(),
            patterns: patterns.to_vec(),
            nodes: nodes.clone(),
        };
        members::change_channels(meta, change).map_err(refused)?;
        tracing::info!("channel {name:?} created ({})", patterns.join(", "));
        return Ok(());
    };
    if let Some(patterns) = patterns {
        let wanted: BTreeSet<Pattern> = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Config(format!("{what}: {e}")))?;
        if wanted != current.patterns {
            let show = |set: &BTreeSet<Pattern>| {
                set.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(Error::Config(format!(
                "{what}: the channel {name:?} has the patterns {} in the replicated table, not {}: give the same patterns, name only the channel (--serve {name}), or change the table with `chorus channel rm` and `chorus channel add`",
                show(&current.patterns),
                show(&wanted)
            )));
        }
    }
    for node in nodes.iter().filter(|n| !current.nodes.contains(n)) {
        let change = Change::Serve {
            name: name.to_string(),
            node: *node,
        };
        members::change_channels(meta, change).map_err(refused)?;
        tracing::info!("node {node} serves the channel {name:?}");
    }
    Ok(())
}

/// A channel of a table file: name, patterns and the nodes it names that
/// are members.
type FileChannel = (String, Vec<String>, BTreeSet<NodeId>);

/// The channels of a table file, in the shape `chorus channel ls --json`
/// prints. A node the file names that is not a member (yet) is left out,
/// with a warning: it adds itself when it starts with the same file.
fn read_file(meta: &Metadata, path: &Path) -> Result<Vec<FileChannel>, Error> {
    let fail = |why: String| {
        Error::Config(format!(
            "--channels {}: {why}; write it as `chorus channel ls --json` prints the table: {{\"channels\": {{\"render\": {{\"patterns\": [\"render/*\"], \"nodes\": [\"NODE_ID\"]}}}}}}",
            path.display()
        ))
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > FILE_MAX {
        return Err(fail(format!("{size} bytes, over the limit of {FILE_MAX}")));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON ({e})")))?;
    let Some(channels) = json.get("channels").and_then(Value::as_object) else {
        return Err(fail("no \"channels\" object".into()));
    };
    let me = meta.store().node_id();
    let snapshot = meta.store().snapshot()?;
    let known = members::member_ids(&snapshot, me)?;
    let mut out = Vec::with_capacity(channels.len());
    for (name, c) in channels {
        let patterns: Vec<String> = c
            .get("patterns")
            .and_then(Value::as_array)
            .ok_or_else(|| fail(format!("the channel {name:?} has no \"patterns\" list")))?
            .iter()
            .map(|p| p.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                fail(format!(
                    "the channel {name:?} has a pattern that is not a string"
                ))
            })?;
        let listed = c
            .get("nodes")
            .and_then(Value::as_array)
            .ok_or_else(|| fail(format!("the channel {name:?} has no \"nodes\" list")))?;
        let mut nodes = BTreeSet::new();
        for n in listed {
            let text = n
                .as_str()
                .or_else(|| n.get("id").and_then(Value::as_str))
                .ok_or_else(|| {
                    fail(format!(
                        "the channel {name:?} lists a node that is neither a string nor {{\"id\": ...}}"
                    ))
                })?;
            match members::resolve_node(meta, text) {
                Ok(id) if known.contains(&id) => {
                    nodes.insert(id);
                }
                _ => tracing::warn!(
                    "--channels {}: the channel {name:?} names {text}, which is not a member of the cluster yet: left out until it starts with this file",
                    path.display()
                ),
            }
        }
        if nodes.is_empty() {
            tracing::warn!(
                "--channels {}: the channel {name:?} names no member of the cluster yet: left out",
                path.display()
            );
            continue;
        }
        out.push((name.clone(), patterns, nodes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_flags_parse_and_refuse_what_they_must() {
        assert_eq!(
            Serve::parse("render"),
            Ok(Serve {
                channel: "render".into(),
                patterns: None
            })
        );
        assert_eq!(
            Serve::parse("assets=assets/shot*,assets/lib"),
            Ok(Serve {
                channel: "assets".into(),
                patterns: Some(vec!["assets/shot*".into(), "assets/lib".into()])
            })
        );
        for bad in ["", "=a/*", "x=", "x=a/*,"] {
            assert!(Serve::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn an_unspecified_http_address_takes_the_peer_address_ip() {
        let any: SocketAddr = "0.0.0.0:7800".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(announced_http(any, "10.0.0.5:7900"), "10.0.0.5:7800");
        let set: SocketAddr = "127.0.0.1:7801".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(announced_http(set, "10.0.0.5:7900"), "127.0.0.1:7801");
    }
}
