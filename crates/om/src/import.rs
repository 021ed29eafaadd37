//! `import_tree`: every `.meta` folder of a tree into one full prefix.

use std::path::Path;

use chorus_core::FullPrefix;
use chorus_store::Metadata;

use crate::error::OmError;
use crate::store_io::newest;
use crate::tree::{self, Found, Limits, OBJECT_OVERHEAD};
use crate::types::{decode_value, encode_value};
use crate::{BATCH_KEYS, Phase, Progress};

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// `.meta` folders found.
    pub locations: u64,
    /// Files and folders inside them (one key each).
    pub entries: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Keys written (new or changed), `.meta` keys included.
    pub written: u64,
    /// Keys skipped because they already held the same entry.
    pub unchanged: u64,
    /// Commits made.
    pub commits: u64,
}

/// Imports every `.meta` folder under `root` into `fp` (see the crate's
/// documentation for the keys). The whole tree is read and checked first:
/// a bad tree writes nothing and the error lists what is wrong. Then keys
/// are written in commits of at most [`BATCH_KEYS`] keys (and half the
/// store's commit size), skipping keys that already hold the same entry,
/// so importing the same tree again writes nothing. Keys of `fp` that the
/// tree does not hold are left as they are. A store failure part way
/// leaves the commits made so far; importing again finishes the job.
pub fn import_tree(
    meta: &Metadata,
    fp: &FullPrefix,
    root: &Path,
    progress: &mut dyn FnMut(Progress) -> Result<(), OmError>,
) -> Result<ImportReport, OmError> {
    refuse_reserved(fp)?;
    let limits = meta.store().options().limits;
    let scanned = tree::scan(
        root,
        Limits {
            key_bytes: limits.max_key_bytes,
            value_bytes: limits.max_value_bytes,
        },
        progress,
    )?;
    let mut report = ImportReport {
        locations: scanned.locations,
        entries: scanned.entries,
        bytes: scanned.bytes,
        ..Default::default()
    };
    let batch_bytes = (limits.max_commit_bytes / 2).max(1);
    let total = scanned.keys.len() as u64;
    let mut rest: &[Found] = &scanned.keys;
    while !rest.is_empty() {
        let n = batch_len(rest, batch_bytes);
        write_batch(meta, fp, &rest[..n], &mut report)?;
        rest = &rest[n..];
        progress(Progress {
            phase: Phase::Writing,
            done: total - rest.len() as u64,
            total: Some(total),
        })?;
    }
    Ok(report)
}

pub(crate) fn refuse_reserved(fp: &FullPrefix) -> Result<(), OmError> {
    chorus_store::refuse_reserved(fp).map_err(OmError::Store)
}

/// How many of `keys` fit one commit (at least one).
fn batch_len(keys: &[Found], batch_bytes: usize) -> usize {
    let mut bytes = 0;
    for (i, f) in keys.iter().enumerate().take(BATCH_KEYS) {
        bytes += f.key.len() + f.raw.len() + OBJECT_OVERHEAD;
        if i > 0 && bytes > batch_bytes {
            return i;
        }
    }
    keys.len().min(BATCH_KEYS)
}

/// Writes the keys whose entry differs, in one commit.
fn write_batch(
    meta: &Metadata,
    fp: &FullPrefix,
    keys: &[Found],
    report: &mut ImportReport,
) -> Result<(), OmError> {
    let mut tx = meta.begin()?;
    for f in keys {
        let current = newest(tx.get(fp, f.key.as_bytes())?);
        let same = current
            .and_then(|bytes| decode_value(&bytes).ok())
            .is_some_and(|(ty, raw)| ty == f.ty && raw == f.raw);
        if same {
            report.unchanged += 1;
        } else {
            tx.put(fp, f.key.as_bytes(), &encode_value(f.ty, &f.raw), None)?;
            report.written += 1;
        }
    }
    if tx.commit()?.is_some() {
        report.commits += 1;
    }
    Ok(())
}
