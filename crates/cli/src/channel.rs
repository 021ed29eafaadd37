//! `chorus channel`: which nodes serve which full prefixes (docs/channels.md),
//! on the data directory of a node (`--dir`, like `chorus leave`): a
//! change is validated against the table and the members of that moment
//! under the writer lock, written as one record under `$cluster`, and
//! replicates to every node.

use chorus_core::NodeId;
use chorus_node::members;
use chorus_store::Metadata;
use chorus_store::channels::{Change, Channels};
use clap::Subcommand;
use serde_json::Value;

use crate::{Cli, Failure};

#[derive(Subcommand, Debug)]
pub(crate) enum ChannelCommand {
    /// Create a channel: full-prefix patterns (PREFIX/SUB or PREFIX/STEM*) served by the nodes given
    Add {
        /// The channel's name (a-z, 0-9, '.', '_', '-')
        name: String,
        /// Its patterns, such as render/* or assets/shot*
        patterns: Vec<String>,
        /// A node that serves it: its id or a member's address; repeat for several
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Remove a channel: its full prefixes are served by every node again
    Rm {
        /// The channel
        name: String,
    },
    /// List the channels, their patterns and nodes (with addresses), and records left out
    Ls,
    /// Have a node serve a channel (this node by default)
    Serve {
        /// The channel
        name: String,
        /// The node: its id or a member's address [default: this node]
        node: Option<String>,
    },
    /// Have a node stop serving a channel (this node by default); refused for its last node
    Leave {
        /// The channel
        name: String,
        /// The node: its id or a member's address [default: this node]
        node: Option<String>,
    },
}

pub(crate) fn run(cli: &Cli, command: &ChannelCommand) -> Result<(), Failure> {
    let meta = Metadata::new(cli.open()?);
    let me = meta.store().node_id();
    let node = |text: &Option<String>| -> Result<NodeId, Failure> {
        match text {
            Some(t) => Ok(members::resolve_node(&meta, t)?),
            None => Ok(me),
        }
    };
    let (change, done) = match command {
        ChannelCommand::Ls => return list(cli, &meta),
        ChannelCommand::Add {
            name,
            patterns,
            nodes,
        } => {
            let nodes = nodes
                .iter()
                .map(|n| members::resolve_node(&meta, n))
                .collect::<Result<_, _>>()?;
            let change = Change::Add {
                name: name.clone(),
                patterns: patterns.clone(),
                nodes,
            };
            (change, format!("channel {name} added"))
        }
        ChannelCommand::Rm { name } => (
            Change::Remove { name: name.clone() },
            format!("channel {name} removed: its full prefixes are served by every node again"),
        ),
        ChannelCommand::Serve { name, node: n } => {
            let id = node(n)?;
            (
                Change::Serve {
                    name: name.clone(),
                    node: id,
                },
                format!("node {id} serves the channel {name}"),
            )
        }
        ChannelCommand::Leave { name, node: n } => {
            let id = node(n)?;
            (
                Change::Leave {
                    name: name.clone(),
                    node: id,
                },
                format!("node {id} no longer serves the channel {name}"),
            )
        }
    };
    let name = change.name().to_string();
    let table = members::change_channels(&meta, change)?;
    let addresses = members::addresses(&meta)?;
    let json = members::channels_json(&table, &addresses);
    crate::emit(cli, json.clone(), || match lines(&json, Some(&name)) {
        shown if shown.is_empty() => done.clone(),
        shown => format!("{done}\n{shown}"),
    });
    Ok(())
}

fn list(cli: &Cli, meta: &Metadata) -> Result<(), Failure> {
    let channels: std::sync::Arc<Channels> = meta.channels()?;
    let addresses = members::addresses(meta)?;
    let json = members::channels_json(&channels, &addresses);
    crate::emit(cli, json.clone(), || {
        let shown = lines(&json, None);
        if shown.is_empty() {
            "no channel: every node serves every full prefix".to_string()
        } else {
            shown
        }
    });
    Ok(())
}

/// The table as text: one line per channel (or only `only`), then its
/// nodes, then the records left out.
fn lines(json: &Value, only: Option<&str>) -> String {
    let mut out = Vec::new();
    if let Some(all) = json["channels"].as_object() {
        for (name, c) in all.iter().filter(|(n, _)| only.is_none_or(|o| o == *n)) {
            let patterns: Vec<&str> = c["patterns"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push(format!("{name}\t{}", patterns.join(" ")));
            for n in c["nodes"].as_array().into_iter().flatten() {
                out.push(format!("  {}", node_text(n)));
            }
        }
    }
    for p in json["problems"].as_array().into_iter().flatten() {
        if let Some(p) = p.as_str() {
            out.push(format!("problem: {p}"));
        }
    }
    out.join("\n")
}

fn node_text(n: &Value) -> String {
    let mut text = n["id"].as_str().unwrap_or("?").to_string();
    for field in ["gossip", "http", "state"] {
        if let Some(v) = n[field].as_str() {
            text.push_str(&format!(" {field} {v}"));
        }
    }
    text
}

/// For a `not_served` failure: the serving nodes with their addresses
/// from this directory's member records, added to the message; `None`
/// for other failures.
pub(crate) fn serving(cli: &Cli, f: &mut Failure) -> Option<Value> {
    if f.serving.is_empty() {
        return None;
    }
    let addresses = cli
        .open()
        .ok()
        .and_then(|s| members::addresses(&Metadata::new(s)).ok())
        .unwrap_or_default();
    let nodes: Vec<Value> = f
        .serving
        .iter()
        .map(|id| members::node_json(*id, addresses.get(id)))
        .collect();
    let reach: Vec<String> = nodes.iter().map(node_text).collect();
    f.message = format!("{} (serving: {})", f.message, reach.join("; "));
    Some(Value::Array(nodes))
}
