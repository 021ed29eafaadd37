//! The channel table as a store holds it and enforces it (issue 19): one
//! reserved key per channel under `$cluster/channels`, each holding
//! `ChannelTable::record`, read into a `ChannelTable` the same way on
//! every node (`ChannelTable::from_records`).
//!
//! The store refuses, with [`Error::NotServed`], what this node must not
//! do with a full prefix of a channel it does not serve:
//! - every local commit that puts a value there (the engine checks each
//!   commit's writes under the writer lock, against the table of the
//!   state the commit applies to, so a write is refused before it is
//!   acknowledged, whichever API made it: keys, transactions, write
//!   functions, documents, operation logs, stage pushes);
//! - reads of it: `Store::get`, `Metadata::get`, iterations and hashes of
//!   it (or of a prefix one of its patterns is under), documents and
//!   operation logs.
//!
//! Not refused: commits merged from peers (the replica decides what it
//! keeps), removals of keys (`Write::delete`: tombstone collection and
//! dropping a channel's data write no value), reads of snapshots
//! (`Snapshot`: the replica's consistent views), and iterations of
//! everything.
//!
//! **Invariant:** a read's check costs one atomic load when no channel
//! record exists, and a lookup of the full prefix's prefix in the set of
//! prefixes this node does not serve all of otherwise: each state finds
//! its reading once ([`Mark`]), and a reading is rebuilt only when the
//! records' running sum or count (kept up to date by every write) differs
//! from the one it was made at.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use chorus_core::channels::{Channel, ChannelError, ChannelTable};
use chorus_core::{FullPrefix, NodeId};

use crate::index::{Index, Snapshot, State};
use crate::metadata::{Metadata, lww_bytes, new_object_bytes, tombstone_object_bytes};
use crate::store::Write;
use crate::{Error, Result};

/// The reserved full prefix of the channel records.
pub const PREFIX: &str = "$cluster";
/// Its subprefix.
pub const SUBPREFIX: &str = "channels";

/// The table read from the store, and what was wrong with records it
/// left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channels {
    /// The table.
    pub table: ChannelTable,
    /// Records left out, each with why (malformed, or overlapping a
    /// channel of an earlier name).
    pub problems: Vec<String>,
}

/// The full prefix of the channel records.
pub fn full_prefix() -> Result<FullPrefix> {
    FullPrefix::new(PREFIX, SUBPREFIX).map_err(|e| Error::Internal(e.to_string()))
}

/// What a state's channel records say (`None` when there is none), found
/// by the first check of the state. A state is never changed once
/// checked: a commit works on a clone, and a clone finds out again (the
/// engine checks a commit against its index, not its mark).
#[derive(Debug, Default)]
pub(crate) struct Mark(OnceLock<Option<Arc<Reading>>>);

impl Clone for Mark {
    fn clone(&self) -> Self {
        Mark::default()
    }
}

/// One reading of the records, for one node.
#[derive(Debug)]
pub(crate) struct Reading {
    /// The records' running sum and count when read.
    records: (u128, usize),
    /// The node it was read for.
    node: NodeId,
    channels: Arc<Channels>,
    /// Prefixes that a pattern of a channel `node` does not serve is under.
    unserved: BTreeSet<String>,
}

/// The last reading, shared by every handle of one open store.
#[derive(Debug)]
pub(crate) struct Cache {
    fp: FullPrefix,
    last: ArcSwapOption<Reading>,
}

impl Cache {
    /// An empty cache.
    pub(crate) fn new() -> Result<Cache> {
        Ok(Cache {
            fp: full_prefix()?,
            last: ArcSwapOption::empty(),
        })
    }

    /// The table `index` holds.
    pub(crate) fn table(&self, index: &Index, node: NodeId) -> Arc<Channels> {
        index.prefix_state(&self.fp).map_or_else(Arc::default, |r| {
            Arc::clone(&self.reading(r, index, node).channels)
        })
    }

    /// Refuses `fp` when `state`'s table puts it in a channel `node` does
    /// not serve. For states that no longer change (installed, or in a
    /// snapshot). Inlined: with no channel record, one atomic load.
    #[inline]
    pub(crate) fn refuse_unserved(
        &self,
        state: &State,
        node: NodeId,
        fp: &FullPrefix,
    ) -> Result<()> {
        match state.channels.0.get() {
            Some(None) => Ok(()),
            _ => self.refuse_unserved_read(state, node, fp),
        }
    }

    /// [`Cache::refuse_unserved`] past its first load.
    #[inline(never)]
    fn refuse_unserved_read(&self, state: &State, node: NodeId, fp: &FullPrefix) -> Result<()> {
        if fp.is_reserved() {
            return Ok(());
        }
        let found = state.channels.0.get_or_init(|| {
            state
                .index
                .prefix_state(&self.fp)
                .map(|r| self.reading(r, &state.index, node))
        });
        match found {
            None => Ok(()),
            Some(reading) if reading.node == node => refuse(reading, node, fp),
            Some(_) => self.refuse_unserved_in(&state.index, node, fp),
        }
    }

    /// [`Cache::refuse_unserved`] for an index that is being changed (a
    /// commit's work).
    pub(crate) fn refuse_unserved_in(
        &self,
        index: &Index,
        node: NodeId,
        fp: &FullPrefix,
    ) -> Result<()> {
        if fp.is_reserved() {
            return Ok(());
        }
        self.refuse(index.prefix_state(&self.fp), index, node, fp)
    }

    fn refuse(
        &self,
        records: Option<(u128, usize)>,
        index: &Index,
        node: NodeId,
        fp: &FullPrefix,
    ) -> Result<()> {
        match records {
            Some(r) => refuse(&self.reading(r, index, node), node, fp),
            None => Ok(()),
        }
    }

    /// Refuses a whole prefix (its listing, its hash) when a pattern of a
    /// channel `node` does not serve is under it: the answer would leave
    /// that channel out.
    pub(crate) fn refuse_unserved_prefix(
        &self,
        index: &Index,
        node: NodeId,
        prefix: &str,
    ) -> Result<()> {
        let Some(records) = index.prefix_state(&self.fp) else {
            return Ok(());
        };
        let reading = self.reading(records, index, node);
        if !reading.unserved.contains(prefix) {
            return Ok(());
        }
        for (name, c) in reading.channels.table.channels() {
            if c.nodes.contains(&node) {
                continue;
            }
            if let Some(p) = c.patterns.iter().find(|p| p.prefix() == prefix) {
                return Err(not_served(p.to_string(), name, c));
            }
        }
        Ok(())
    }

    /// The reading of `index`'s records (whose sum and count are
    /// `records`) for `node`.
    fn reading(&self, records: (u128, usize), index: &Index, node: NodeId) -> Arc<Reading> {
        if let Some(last) = self.last.load().as_ref()
            && last.records == records
            && last.node == node
        {
            return Arc::clone(last);
        }
        let channels = read_records(index, &self.fp);
        let unserved = channels
            .table
            .channels()
            .filter(|(_, c)| !c.nodes.contains(&node))
            .flat_map(|(_, c)| c.patterns.iter().map(|p| p.prefix().to_string()))
            .collect();
        let reading = Arc::new(Reading {
            records,
            node,
            channels: Arc::new(channels),
            unserved,
        });
        self.last.store(Some(Arc::clone(&reading)));
        reading
    }
}

/// Refuses `fp` when `reading` puts it in a channel `node` does not serve.
fn refuse(reading: &Reading, node: NodeId, fp: &FullPrefix) -> Result<()> {
    if reading.unserved.is_empty() || !reading.unserved.contains(fp.prefix()) {
        return Ok(());
    }
    match reading.channels.table.channel_of(fp) {
        Some((name, c)) if !c.nodes.contains(&node) => Err(not_served(fp.to_string(), name, c)),
        _ => Ok(()),
    }
}

fn not_served(what: String, name: &str, c: &Channel) -> Error {
    Error::NotServed {
        full_prefix: what,
        channel: name.to_string(),
        nodes: c.nodes.iter().copied().collect(),
    }
}

/// The table the records in `index` make (each settled by last write; a
/// deleted record is no channel).
fn read_records(index: &Index, fp: &FullPrefix) -> Channels {
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut problems = Vec::new();
    for (key, entry) in index.iter_prefix(fp) {
        let name = String::from_utf8_lossy(key).into_owned();
        match lww_bytes(fp, key, &entry.value) {
            Ok(Some(bytes)) => records.push((name, bytes)),
            Ok(None) => {}
            Err(e) => problems.push(format!("channel {name:?} left out: {e}")),
        }
    }
    let (table, more) =
        ChannelTable::from_records(records.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    problems.extend(more);
    Channels { table, problems }
}

/// A change to the table (`chorus channel add|rm|serve|leave`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new channel: its patterns and nodes.
    Add {
        /// Its name.
        name: String,
        /// Its patterns (`PREFIX/SUB` or `PREFIX/STEM*`).
        patterns: Vec<String>,
        /// The nodes that serve it.
        nodes: BTreeSet<NodeId>,
    },
    /// Remove a channel: its full prefixes are everyone's again.
    Remove {
        /// Its name.
        name: String,
    },
    /// A node also serves a channel.
    Serve {
        /// The channel.
        name: String,
        /// The node.
        node: NodeId,
    },
    /// A node no longer serves a channel.
    Leave {
        /// The channel.
        name: String,
        /// The node.
        node: NodeId,
    },
}

impl Change {
    /// The channel it changes.
    pub fn name(&self) -> &str {
        match self {
            Change::Add { name, .. }
            | Change::Remove { name }
            | Change::Serve { name, .. }
            | Change::Leave { name, .. } => name,
        }
    }

    /// The table after the change, or why it was refused.
    pub fn apply(
        &self,
        table: &ChannelTable,
        members: &BTreeSet<NodeId>,
    ) -> std::result::Result<ChannelTable, ChannelError> {
        match self {
            Change::Add {
                name,
                patterns,
                nodes,
            } => {
                let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
                table.add(name, &refs, nodes, members)
            }
            Change::Remove { name } => table.remove(name),
            Change::Serve { name, node } => table.serve(name, *node, members),
            Change::Leave { name, node } => table.leave(name, *node),
        }
    }
}

/// The store's error for a refused change: the table is unchanged.
pub fn refused(e: ChannelError) -> Error {
    match e {
        ChannelError::Invalid(m) => Error::InvalidInput(m),
        ChannelError::NotFound(m) => Error::NotFound(m),
        ChannelError::Conflict(m) => Error::Conflict(m),
    }
}

impl Metadata {
    /// The channel table as of the latest commit.
    pub fn channels(&self) -> Result<Arc<Channels>> {
        let snapshot = self.store().snapshot()?;
        Ok(self
            .store()
            .channel_cache()
            .table(&snapshot.state.index, self.store().node_id()))
    }

    /// Changes the channel table: under the writer lock, reads the table
    /// and the members from the latest state (`members` picks the node
    /// ids a channel may name from a snapshot), applies `change`, and
    /// writes the one record it touches (a tombstone for a removal). Two
    /// changes made at once are validated one after the other, never both
    /// against the same table. Returns the new table; a refused change
    /// writes nothing.
    pub fn change_channels(
        &self,
        change: Change,
        members: impl FnOnce(&Snapshot) -> Result<BTreeSet<NodeId>> + Send + 'static,
    ) -> Result<Arc<Channels>> {
        let fp = full_prefix()?;
        let cache = self.store().channel_cache();
        let node = self.store().node_id();
        let writer = self.writer();
        let (_, read) = self.store().update_returning(move |snap| {
            let current = cache.table(&snap.state.index, node);
            let allowed = members(snap)?;
            let key = change.name().as_bytes();
            let next = match change.apply(&current.table, &allowed) {
                Ok(next) => next,
                // A record every reader leaves out (malformed, or
                // overlapping an earlier channel) can still be removed.
                Err(_)
                    if matches!(change, Change::Remove { .. })
                        && snap
                            .get(&fp, key)
                            .is_some_and(|b| !matches!(lww_bytes(&fp, key, &b), Ok(None))) =>
                {
                    current.table.clone()
                }
                Err(e) => return Err(refused(e)),
            };
            let write = match next.record(change.name()) {
                Some(record) => {
                    let bytes = serde_json::to_vec(&record)
                        .map_err(|e| Error::Internal(format!("a channel record: {e}")))?;
                    Write::put(&fp, key, &new_object_bytes(snap, &fp, key, bytes, &writer)?)
                }
                None => Write::put(&fp, key, &tombstone_object_bytes(snap, &fp, key, &writer)?),
            };
            let problems = current
                .problems
                .iter()
                .filter(|p| !p.starts_with(&format!("channel {:?} ", change.name())))
                .cloned()
                .collect();
            Ok((
                vec![write],
                Channels {
                    table: next,
                    problems,
                },
            ))
        })?;
        Ok(Arc::new(read))
    }
}
