//! The Chorus embedded engine: one data directory shared by any number of
//! processes and threads on a machine, with no server.
//!
//! Every process keeps the whole store in memory and answers reads from it.
//! Writers append checksummed frames to a log under an OS lock held only
//! while writing; readers notice new frames through a shared memory page and
//! apply only those. See `docs/design.md` for the byte layout and the commit
//! protocol, and why it is crash safe.
//!
//! ```no_run
//! use chorus_core::FullPrefix;
//! use chorus_store::{Options, Store};
//!
//! let store = Store::open("/tmp/chorus-demo".as_ref(), Options { create: true, ..Options::default() })?;
//! let fp = FullPrefix::parse("config/web")?;
//! store.put(&fp, b"port", b"8080")?;
//! assert_eq!(store.get(&fp, b"port")?.as_deref(), Some(&b"8080"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

mod backend;
pub mod channels;
mod dirops;
pub mod docs;
mod error;
pub mod fault;
mod feed;
mod format;
mod hamt;
mod identity;
mod index;
mod key;
mod layout;
mod log;
pub mod mem;
mod metadata;
mod modes;
pub mod oplog;
pub mod script;
mod shm;
pub mod stage_request;
mod store;
mod sys;
mod tools;
pub mod watch;

pub use backend::{Backend, LogFile, StdBackend};
pub use chorus_core::NodeId;
pub use error::{ConflictKey, Error, LockHolder, Result};
pub use feed::{Change, ChangedKey, Cursor, EventId, Feed};
pub use format::Origin;
pub use hamt::{group_base, in_group};
pub use identity::{CONFLICTS_KEPT, Former, IDENTITIES, IdentityConflict};
pub use index::{Bytes, Entry, Snapshot};
pub use key::Key;
pub use mem::MemFs;
pub use metadata::{
    BatchPut, GetOptions, Incoming, Item, IterOptions, Match, MetaIter, MetaTransaction, Metadata,
    PutOptions, PutValue, Read, ResolveFn, Resolver, Scope, WriteFn, read_snapshot,
    refuse_reserved,
};
pub use store::{
    AutoCompact, CommitInfo, CompactReport, LIVE_BYTES_PER_KEY, Limits, Options, Status, Store,
    SyncMode, Transaction, UpdateFn, Write, WriteStats, expand_home, live_bytes,
};
pub use sys::Clock;
pub use tools::{CheckReport, Finding, RepairReport, check, repair};

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The document or operation log a record key belongs to, and the record's
/// name: `Some((base, name))` for `base\0name` when `name` has the form of
/// a document revision ([`names_a_revision`]) or of an operation
/// ([`names_an_operation`]); `None` for any other key, including a plain
/// key that happens to hold a zero byte.
pub fn split_record(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let base = group_base(key);
    let name = key.get(base.len() + 1..)?;
    (names_a_revision(name) || names_an_operation(name)).then_some((base, name))
}

/// True when a record's name has a document revision's form
/// (`NNNNNNNNNNNNNNNNNNNN-hash`: N padded to 20 digits).
pub fn names_a_revision(name: &[u8]) -> bool {
    name.len() > 21 && name[..20].iter().all(u8::is_ascii_digit) && name[20] == b'-'
}

/// True when a record's name has an operation's form
/// (`tttttttttttttttt.node.sha`: the timestamp as 16 hex digits).
pub fn names_an_operation(name: &[u8]) -> bool {
    name.len() > 17 && name[..16].iter().all(u8::is_ascii_hexdigit) && name[16] == b'.'
}
