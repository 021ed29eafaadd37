//! Open Metadata (OM) in Chorus: `.meta` folders imported into one full
//! prefix and exported back byte for byte, and OM's own entry semantics
//! (history, trash, inheritance) over the keys.
//!
//! # The mapping
//!
//! A *location* is a directory that holds a `.meta/` folder, named by its
//! path relative to the tree's root (`/` between folders, `""` for the
//! root itself). Every file or folder inside a `.meta/` folder is one key
//! of the full prefix the caller picks:
//!
//! - key `<loc>/.meta/<p1>/.../<pn>` (for the root location
//!   `.meta/<p1>/.../<pn>`), each `pi` the file or folder name without its
//!   OM suffix (`bool`, `int`, `float`, `string`, `text`, `null`, `tuple`,
//!   `date` for files, `dict`, `list` for groups). Folders without a
//!   suffix are allowed only as `.history` and `.trash` (and OM's
//!   `.versions`) and anywhere inside those (history snapshots are named
//!   `<name>&<YYYYmmdd-HHMMSS>`): they keep their whole name.
//! - value: compact JSON, `{"type":"int","raw":"5"}` for a file (`raw` is
//!   the file's exact text, `""` for an empty file), `{"type":"dict"}`,
//!   `{"type":"list"}` or `{"type":"folder"}` for a folder, and
//!   `{"type":"meta"}` under `<loc>/.meta` for the `.meta` folder itself
//!   (written for every location, so empty ones come back too).
//!
//! Files outside `.meta` folders are neither imported nor exported.
//!
//! # Reads
//!
//! Keys can hold concurrent values (siblings, see `chorus_store::Metadata`).
//! Every read here settles them by last-writer-wins (the newest timestamp,
//! then node id, then bytes): the same value on every node.

mod entry;
mod error;
mod export;
mod import;
mod keys;
mod stamp;
mod store_io;
mod tree;
mod types;

pub use entry::{
    Inherited, Snapshot, delete_entry, history, list_entries, read_entry, read_inherited, restore,
    write_entry,
};
pub use error::OmError;
pub use export::{ExportReport, export_tree};
pub use import::{ImportReport, import_tree};
pub use keys::{entry_key, meta_key};
pub use stamp::format_stamp;
pub use types::{OmType, decode_value, encode_value};

/// The largest `.meta` file import reads (1 MiB): OM values are small.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The deepest folder (counted from the tree's root) import walks into.
pub const MAX_DEPTH: usize = 64;

/// The most keys one import or export handles.
pub const MAX_ENTRIES: usize = 1_000_000;

/// The most bytes of file contents one import holds.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;

/// The most keys one commit of an import writes.
pub const BATCH_KEYS: usize = 1_000;

/// The most keys one entry operation (a write that moves a group to the
/// trash, a listing, a history) touches.
pub const MAX_GROUP_KEYS: usize = 1_000;

/// The names of the folders OM keeps beside entries, without a suffix.
pub const SPECIAL_FOLDERS: [&str; 3] = [".history", ".trash", ".versions"];

/// Which part of an import or export is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the tree (import) or the keys (export); the total is not
    /// known yet.
    Scanning,
    /// Writing keys (import) or files (export).
    Writing,
}

/// How far an import or export got: reported every few hundred entries
/// and at the end of each phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is running.
    pub phase: Phase,
    /// Entries done so far in this phase.
    pub done: u64,
    /// Entries this phase will do, when known.
    pub total: Option<u64>,
}

/// How often (in entries) progress is reported.
pub(crate) const PROGRESS_EVERY: u64 = 256;
