//! The member list, kept as data under `$cluster/members` so it replicates
//! like everything else: one key per node, named by the address peers dial,
//! holding `{"node": ID, "state": "up" | "left"}`.
//!
//! A node writes its own record when it starts; `chorus leave` writes
//! `left`, which the node's daemon sees in its change feed (and stops), and
//! every other node sees once it has replicated (and stops exchanging
//! with it). Concurrent records of one node are settled by last write.

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

/// Writes this node's record as `up`, unless it already says so. Refuses
/// a node that left (it must come back from an empty directory), and marks
/// the node's records under other addresses left (it moved).
pub fn announce(meta: &Metadata, me: &str, node: NodeId) -> Result<(), chorus_store::Error> {
    let fp = members_prefix()?;
    let record = Member {
        node: node.to_string(),
        state: "up".into(),
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
        if m.node == record.node && addr != me && !m.has_left() {
            let moved = Member {
                node: m.node.clone(),
                state: "left".into(),
            };
            put(meta, &fp, addr, &moved)?;
        }
    }
    Ok(())
}

/// Writes this node's `up` record again (a new version), so that it is
/// broadcast once the node has peers: new members learn of it at once
/// instead of by anti-entropy.
pub fn refresh(meta: &Metadata, me: &str, node: NodeId) -> Result<(), chorus_store::Error> {
    let record = Member {
        node: node.to_string(),
        state: "up".into(),
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
    let Some((addr, _)) = read_all(meta)?
        .into_iter()
        .find(|(_, m)| m.node == id && !m.has_left())
    else {
        return Ok(None);
    };
    let record = Member {
        node: id,
        state: "left".into(),
    };
    put(meta, &fp, &addr, &record)?;
    Ok(Some(addr))
}
