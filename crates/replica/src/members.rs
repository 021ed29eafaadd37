//! The member list, kept as data under `$cluster/members` so it replicates
//! like everything else: one key per node, named by the address peers dial,
//! holding `{"node": ID, "state": "up" | "left"}`, and where the node serves
//! its HTTP API (`"http"`, absent in records of earlier releases and of
//! nodes without one), which forwarded requests go to.
//!
//! A node writes its own record when it starts; `chorus leave` writes
//! `left`, which the node's daemon sees in its change feed (and stops), and
//! every other node sees once it has replicated (and stops exchanging
//! with it). Concurrent records of one node are settled by last write.
//!
//! A record also names the place it was written from (the machine's boot
//! and the data directory's device and inode): a node that starts at a new
//! address marks its records under other addresses left only when they
//! were written from this same place (it moved). A record of its node id
//! written from elsewhere may be a copy of its directory that still runs
//! (a restored backup, a cloned machine): marking it left would stop the
//! two from ever exchanging, and the copy would diverge silently. It is
//! left as it is, with a warning; the handshake then refuses the copy and
//! says how to give it a new identity (`net.rs`).

use std::collections::BTreeMap;

use chorus_core::{FullPrefix, NodeId};
use chorus_store::{IterOptions, Metadata, PutOptions, PutValue, Resolver, Scope};
use serde::{Deserialize, Serialize};

/// Where the member list lives.
pub const MEMBERS: &str = "$cluster/members";

/// One member's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node id (hex).
    pub node: String,
    /// `up` or `left`.
    pub state: String,
    /// Where the record was written from (see the module's doc); absent in
    /// records of earlier releases, which never count as this place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
    /// Where the node serves its HTTP API (`HOST:PORT`); absent in records
    /// of earlier releases and of nodes that serve none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

impl Member {
    /// True once the node has left.
    pub fn has_left(&self) -> bool {
        self.state == "left"
    }
}

fn members_prefix() -> Result<FullPrefix, chorus_store::Error> {
    FullPrefix::parse(MEMBERS).map_err(|e| chorus_store::Error::InvalidInput(e.to_string()))
}

/// Decodes a record's bytes (the last write of its siblings).
pub fn decode(bytes: &[u8]) -> Option<Member> {
    serde_json::from_slice(bytes).ok()
}

/// Where this process writes from: the machine's boot id and the data
/// directory's device and inode. A copy of the directory, or the same
/// directory on another machine or after a reboot, is another place.
/// `None` when it cannot be told (no `/proc`, a directory without inode).
pub fn place(meta: &Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let dir = std::fs::metadata(meta.store().dir()).ok()?;
    Some(format!("{}/{}:{}", boot.trim(), dir.dev(), dir.ino()))
}

/// Writes this node's record as `up`, unless it already says so. Refuses
/// a node that left (it must come back from an empty directory). Marks the
/// node's records under other addresses left when they were written from
/// this same place (the node moved); others, which may be a copy of this
/// directory still running elsewhere, stay as they are, with a warning.
/// `http` is where the node serves its HTTP API, if it does.
pub fn announce(
    meta: &Metadata,
    me: &str,
    node: NodeId,
    http: Option<&str>,
) -> Result<(), chorus_store::Error> {
    let fp = members_prefix()?;
    let here = place(meta);
    let record = Member {
        node: node.to_string(),
        state: "up".into(),
        place: here.clone(),
        http: http.map(str::to_string),
    };
    let all = read_all(meta)?;
    let mine: Vec<&Member> = all.values().filter(|m| m.node == record.node).collect();
    // A node that left (every record of it says so) must not come back
    // with its old data (see docs/tombstones.md): refuse rather than mark
    // it up again.
    if !mine.is_empty() && mine.iter().all(|m| m.has_left()) {
        return Err(chorus_store::Error::InvalidInput(format!(
            "node {} left the cluster: its data may hold deletes the cluster has forgotten; start it from an empty directory to join again",
            record.node
        )));
    }
    // The new record first: a crash between the two writes leaves the
    // node up under both addresses, never left under both.
    if all.get(me) != Some(&record) {
        put(meta, &fp, me, &record)?;
    }
    for (addr, m) in &all {
        if m.node != record.node || addr == me || m.has_left() {
            continue;
        }
        if here.is_some() && m.place == here {
            let moved = Member {
                state: "left".into(),
                ..m.clone()
            };
            put(meta, &fp, addr, &moved)?;
        } else {
            tracing::warn!(
                "node id {node} also has a member record up at {addr}, written from another machine, boot or directory: if that is a copy of this data directory still running (a restored backup, a cloned machine), the two refuse each other; stop one and run `chorus init --new-identity` in its data directory. If this node moved here from {addr}, nothing is needed, but {addr} stays a member until it leaves"
            );
        }
    }
    Ok(())
}

/// Writes this node's `up` record again (a new version), so that it is
/// broadcast once the node has peers: new members learn of it at once
/// instead of by anti-entropy.
pub fn refresh(
    meta: &Metadata,
    me: &str,
    node: NodeId,
    http: Option<&str>,
) -> Result<(), chorus_store::Error> {
    // Never over a record that says this node left (`chorus leave` ran
    // since it started): writing `up` again would make every member wait
    // for it for ever (found by the simulator with churn).
    let fp = members_prefix()?;
    let opts = chorus_store::GetOptions {
        resolver: Resolver::Lww,
        ..chorus_store::GetOptions::default()
    };
    if meta
        .get(&fp, me.as_bytes(), &opts)?
        .and_then(|r| r.values.first().and_then(|v| v.bytes().and_then(decode)))
        .is_some_and(|m| m.has_left())
    {
        return Ok(());
    }
    let record = Member {
        node: node.to_string(),
        state: "up".into(),
        place: place(meta),
        http: http.map(str::to_string),
    };
    put(meta, &members_prefix()?, me, &record)
}

fn put(
    meta: &Metadata,
    fp: &FullPrefix,
    addr: &str,
    record: &Member,
) -> Result<(), chorus_store::Error> {
    let bytes =
        serde_json::to_vec(record).map_err(|e| chorus_store::Error::InvalidInput(e.to_string()))?;
    meta.put_reserved(
        fp,
        addr.as_bytes(),
        PutValue::Bytes(bytes),
        &PutOptions::default(),
    )?;
    Ok(())
}

/// Every member record, by address.
pub fn read_all(meta: &Metadata) -> Result<BTreeMap<String, Member>, chorus_store::Error> {
    let fp = members_prefix()?;
    let opts = IterOptions {
        resolver: Resolver::Lww,
        ..IterOptions::default()
    };
    let mut all = BTreeMap::new();
    for item in meta.to_list(&Scope::FullPrefix(fp), &opts)? {
        let Ok(addr) = String::from_utf8(item.key) else {
            continue;
        };
        if let Some(m) = item
            .read
            .values
            .first()
            .and_then(|v| v.bytes().and_then(decode))
        {
            all.insert(addr, m);
        }
    }
    Ok(all)
}

/// Marks the member with this node id as left; returns its address, or
/// `None` if the node never served.
pub fn leave(meta: &Metadata, node: NodeId) -> Result<Option<String>, chorus_store::Error> {
    let fp = members_prefix()?;
    let id = node.to_string();
    let Some((addr, old)) = read_all(meta)?
        .into_iter()
        .find(|(_, m)| m.node == id && !m.has_left())
    else {
        return Ok(None);
    };
    let record = Member {
        node: id,
        state: "left".into(),
        place: place(meta),
        http: old.http,
    };
    put(meta, &fp, &addr, &record)?;
    Ok(Some(addr))
}

// The channels' nodes: what `chorus channel` and the HTTP API share.

/// Where a node can be reached, from its member records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// The address peers dial (its member record's key).
    pub gossip: Option<String>,
    /// Where it serves its HTTP API.
    pub http: Option<String>,
    /// `up` or `left`.
    pub state: Option<String>,
}

/// Every node's addresses, by node id: an `up` record wins over a `left`
/// one (a node that moved keeps its old address left).
pub fn addresses(meta: &Metadata) -> Result<BTreeMap<NodeId, Addresses>, chorus_store::Error> {
    let mut by_node: BTreeMap<NodeId, Addresses> = BTreeMap::new();
    for (addr, m) in read_all(meta)? {
        let Some(id) = NodeId::parse_hex(&m.node) else {
            continue;
        };
        let known = by_node.get(&id);
        if known.is_some_and(|k| k.state.as_deref() == Some("up")) && m.has_left() {
            continue;
        }
        by_node.insert(
            id,
            Addresses {
                gossip: Some(addr),
                http: m.http.clone(),
                state: Some(m.state.clone()),
            },
        );
    }
    Ok(by_node)
}

/// The node ids a channel may name as of `snapshot`: every member that is
/// up, and `me` (a node that never served is a member of its own
/// directory).
pub fn member_ids(
    snapshot: &chorus_store::Snapshot,
    me: NodeId,
) -> Result<std::collections::BTreeSet<NodeId>, chorus_store::Error> {
    let fp = members_prefix()?;
    let mut ids = std::collections::BTreeSet::from([me]);
    for (_, entry) in snapshot.iter_prefix(&fp) {
        let Ok(object) = chorus_core::object::Object::decode(&entry.value) else {
            continue;
        };
        let settled = object.resolve_lww();
        let member = settled
            .values()
            .first()
            .and_then(|v| v.bytes().and_then(decode));
        if let Some(m) = member.filter(|m| !m.has_left())
            && let Some(id) = NodeId::parse_hex(&m.node)
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// The node `text` names: its id (32 hex digits), or the address of a
/// member (the address peers dial, or its HTTP address).
pub fn resolve_node(meta: &Metadata, text: &str) -> Result<NodeId, chorus_store::Error> {
    if let Some(id) = NodeId::parse_hex(text) {
        return Ok(id);
    }
    let all = read_all(meta)?;
    let found = all
        .iter()
        .filter(|(addr, m)| *addr == text || m.http.as_deref() == Some(text))
        .min_by_key(|(_, m)| m.has_left())
        .and_then(|(_, m)| NodeId::parse_hex(&m.node));
    found.ok_or_else(|| {
        chorus_store::Error::InvalidInput(format!(
            "{text:?} names no node: give a node id (32 hex digits, as `chorus status` shows) or the address of a member (as `chorus channel ls` lists them)"
        ))
    })
}

/// Applies a change to the channel table, validated under the writer lock
/// against the table and the members of that moment (see
/// [`Metadata::change_channels`]); a refused change writes nothing.
pub fn change_channels(
    meta: &Metadata,
    change: chorus_store::channels::Change,
) -> Result<std::sync::Arc<chorus_store::channels::Channels>, chorus_store::Error> {
    let me = meta.store().node_id();
    meta.change_channels(change, move |snapshot| member_ids(snapshot, me))
}

/// The channel table as `chorus channel ls --json` and `GET /v1/channels`
/// show it: `{"channels": {NAME: {"patterns": [...], "nodes": [{"id",
/// "gossip", "http", "state"}]}}, "problems": [...]}` (a node's addresses
/// are absent when no member record names it).
pub fn channels_json(
    channels: &chorus_store::channels::Channels,
    addresses: &BTreeMap<NodeId, Addresses>,
) -> serde_json::Value {
    let mut all = serde_json::Map::new();
    for (name, c) in channels.table.channels() {
        let nodes: Vec<serde_json::Value> = c
            .nodes
            .iter()
            .map(|id| node_json(*id, addresses.get(id)))
            .collect();
        let patterns: Vec<String> = c.patterns.iter().map(ToString::to_string).collect();
        all.insert(
            name.to_string(),
            serde_json::json!({"patterns": patterns, "nodes": nodes}),
        );
    }
    serde_json::json!({"channels": all, "problems": channels.problems})
}

/// One node as [`channels_json`] lists it.
pub fn node_json(id: NodeId, addresses: Option<&Addresses>) -> serde_json::Value {
    let mut node = serde_json::json!({"id": id.to_string()});
    if let Some(a) = addresses {
        for (field, value) in [
            ("gossip", &a.gossip),
            ("http", &a.http),
            ("state", &a.state),
        ] {
            if let Some(v) = value {
                node[field] = serde_json::json!(v);
            }
        }
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_an_earlier_release_still_reads() {
        let old = br#"{"node":"0123456789abcdef0123456789abcdef","state":"up","place":"b/1:2"}"#;
        let Some(m) = decode(old) else {
            panic!("an earlier release's record no longer reads");
        };
        assert_eq!(m.http, None);
        assert_eq!(m.state, "up");
        let oldest = br#"{"node":"0123456789abcdef0123456789abcdef","state":"left"}"#;
        assert!(decode(oldest).is_some_and(|m| m.has_left() && m.http.is_none()));
        let new = Member {
            http: Some("127.0.0.1:7800".into()),
            ..m
        };
        let bytes = serde_json::to_vec(&new).unwrap_or_default();
        assert_eq!(decode(&bytes), Some(new));
    }
}
