//! Reading OM keys from the store: siblings settled by last-writer-wins.

use chorus_core::FullPrefix;
use chorus_store::{IterOptions, Match, MetaTransaction, Metadata, Read, Resolver, Scope};

use crate::error::OmError;
use crate::types::{OmType, decode_value};

/// The newest of a read's values by the last-writer-wins order
/// (timestamp, node id, bytes); `None` when it is a tombstone.
pub(crate) fn newest(read: Option<Read>) -> Option<Vec<u8>> {
    let read = read?;
    read.values.into_iter().max()?.bytes().map(<[u8]>::to_vec)
}

/// The entry a key holds, read in a transaction (so that a change to it
/// before the commit fails the commit).
pub(crate) fn tx_entry(
    tx: &mut MetaTransaction,
    fp: &FullPrefix,
    key: &str,
) -> Result<Option<(OmType, String)>, OmError> {
    match newest(tx.get(fp, key.as_bytes())?) {
        Some(bytes) => decode_value(&bytes)
            .map(Some)
            .map_err(|e| in_key(fp, key, e)),
        None => Ok(None),
    }
}

/// The entry a key holds now.
pub(crate) fn get_entry(
    meta: &Metadata,
    fp: &FullPrefix,
    key: &str,
) -> Result<Option<(OmType, String)>, OmError> {
    let opts = chorus_store::GetOptions {
        resolver: Resolver::Lww,
        ..Default::default()
    };
    match meta.get(fp, key.as_bytes(), &opts)? {
        Some(read) => match newest(Some(read)) {
            Some(bytes) => decode_value(&bytes)
                .map(Some)
                .map_err(|e| in_key(fp, key, e)),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

/// Names the key an undecodable value was found under.
pub(crate) fn in_key(fp: &FullPrefix, key: &str, e: OmError) -> OmError {
    match e {
        OmError::Invalid(m) => OmError::Invalid(format!("{fp}/{key}: {m}")),
        other => other,
    }
}

/// Every live key starting with `prefix` that `keep` accepts, and its
/// entry, sorted by key; at most `cap` of them (more is an error naming
/// `what`). The scan visits every key of the full prefix once.
pub(crate) fn scan_prefix(
    meta: &Metadata,
    fp: &FullPrefix,
    prefix: &str,
    cap: usize,
    what: &str,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, OmType, String)>, OmError> {
    let opts = IterOptions {
        matching: Match::Prefix(prefix.as_bytes().to_vec()),
        resolver: Resolver::Lww,
        ..Default::default()
    };
    let mut out = Vec::new();
    for item in meta.iter(&Scope::FullPrefix(fp.clone()), &opts)? {
        let item = item?;
        let key = String::from_utf8_lossy(&item.key).into_owned();
        if !keep(&key) {
            continue;
        }
        let Some(bytes) = newest(Some(item.read)) else {
            continue;
        };
        let (ty, raw) = decode_value(&bytes).map_err(|e| in_key(fp, &key, e))?;
        if out.len() >= cap {
            return Err(OmError::Invalid(format!(
                "{what} holds more than {cap} entries, more than one call handles: work on smaller groups"
            )));
        }
        out.push((key, ty, raw));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
