//! The channel table as a store holds it (issue 19, in progress: nothing
//! enforces it yet): one reserved key per channel under
//! `$cluster/channels`, each holding `ChannelTable::record`, read into a
//! `ChannelTable` the same way on every node
//! (`ChannelTable::from_records`). The table is rebuilt only when that
//! full prefix's hash (kept up to date by every write, read in O(1))
//! changed, so asking for it on every write costs one hash compare.

use std::sync::{Arc, Mutex, PoisonError};

use chorus_core::FullPrefix;
use chorus_core::channels::ChannelTable;

use crate::metadata::{IterOptions, Metadata, Resolver, Scope};
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

/// The last table read, by the hash of the records it was read from.
pub(crate) type Cache = Mutex<Option<([u8; 32], Arc<Channels>)>>;

/// The full prefix of the channel records.
pub fn full_prefix() -> Result<FullPrefix> {
    FullPrefix::new(PREFIX, SUBPREFIX).map_err(|e| Error::Internal(e.to_string()))
}

impl Metadata {
    /// The channel table as of the latest commit.
    pub fn channels(&self) -> Result<Arc<Channels>> {
        let fp = full_prefix()?;
        let hash = self.prefix_hash(&fp)?;
        let cache = self.channel_cache();
        if let Some((seen, table)) = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && *seen == hash
        {
            return Ok(Arc::clone(table));
        }
        let opts = IterOptions {
            resolver: Resolver::Lww,
            ..Default::default()
        };
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for item in self.iter(&Scope::FullPrefix(fp), &opts)? {
            let item = item?;
            let name = String::from_utf8_lossy(&item.key).into_owned();
            if let Some(bytes) = item.read.values.first().and_then(|v| v.bytes()) {
                records.push((name, bytes.to_vec()));
            }
        }
        let (table, problems) =
            ChannelTable::from_records(records.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
        let read = Arc::new(Channels { table, problems });
        *cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((hash, Arc::clone(&read)));
        Ok(read)
    }
}
