//! The member list, kept as data under `$cluster/members` so it replicates
//! like everything else: one key per node, named by the address peers dial,
//! holding `{"node": ID, "state": "up" | "left"}`.
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
pub fn announce(meta: &Metadata, me: &str, node: NodeId) -> Result<(), chorus_store::Error> {
    let fp = members_prefix()?;
    let here = place(meta);
    let record = Member {
        node: node.to_string(),
        state: "up".into(),
        place: here.clone(),
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
                node: m.node.clone(),
                state: "left".into(),
                place: m.place.clone(),
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
pub fn refresh(meta: &Metadata, me: &str, node: NodeId) -> Result<(), chorus_store::Error> {
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
        place: place(meta),
    };
    put(meta, &fp, &addr, &record)?;
    Ok(Some(addr))
}
