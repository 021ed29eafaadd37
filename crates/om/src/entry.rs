//! OM's own semantics over the keys, for the Python `chorus.om` layer:
//! writes that keep history and move replaced entries to the trash,
//! reads, inheritance, listings, history and restore.
//!
//! As OM does on disk, the history and trash of an entry live beside it,
//! in its parent's folders: `<parent>/.history/<name>&<YYYYmmdd-HHMMSS>/`
//! (holding `user` and `value`) and `<parent>/.trash/<name>`, where
//! `<parent>` is the location's `.meta` for a top-level entry and the
//! group for an entry inside a group.

use std::collections::BTreeMap;
use std::time::SystemTime;

use chorus_core::FullPrefix;
use chorus_store::{MetaTransaction, Metadata};

use crate::error::OmError;
use crate::import::refuse_reserved;
use crate::keys::{
    check_component, check_entry_name, check_location, join, meta_key_unchecked, parent_location,
};
use crate::stamp::{format_stamp, is_stamp};
use crate::store_io::{get_entry, scan_prefix, tx_entry};
use crate::types::{OmType, check_raw, encode_value};
use crate::{MAX_ENTRIES, MAX_GROUP_KEYS, SPECIAL_FOLDERS};

/// An entry found by [`read_inherited`], and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inherited {
    /// The location whose `.meta` holds it (the nearest one).
    pub location: String,
    /// Its type.
    pub ty: OmType,
    /// Its content (`""` for a group).
    pub raw: String,
}

/// One earlier value of an entry, from its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was replaced, `YYYYmmdd-HHMMSS` in UTC.
    pub stamp: String,
    /// Who replaced it.
    pub user: String,
    /// Its type.
    pub ty: OmType,
    /// Its content.
    pub raw: String,
}

/// Writes an entry as OM does, in one transaction: `path` names its
/// groups then the entry itself, without suffixes. Missing groups (and
/// the location's `.meta`) are created as `dict`; a value in the way of a
/// group is replaced as below. If the entry holds a value, that value is
/// first copied to the history (`user` as a JSON string, `value` with its
/// old type); if it holds another type, the old entry (a group with its
/// children) is moved to the trash, replacing what the trash held under
/// that name. Writing the type and content it already holds changes
/// nothing. `ty` is a value type or `Dict`/`List` (an empty group; `raw`
/// must then be `""`); `raw` is the file's text: one JSON value, or `""`
/// for the type's default. A concurrent change to a key this write read
/// fails it with a conflict and writes nothing.
#[allow(clippy::too_many_arguments)]
pub fn write_entry(
    meta: &Metadata,
    fp: &FullPrefix,
    location: &str,
    path: &[&str],
    ty: OmType,
    raw: &str,
    user: &str,
    now_utc: SystemTime,
) -> Result<(), OmError> {
    refuse_reserved(fp)?;
    check_location(location)?;
    check_path(path)?;
    if !(ty.is_value() || matches!(ty, OmType::Dict | OmType::List)) {
        return Err(OmError::Invalid(format!(
            "write_entry writes values and dict or list groups, not a {ty}"
        )));
    }
    check_raw(ty, raw)
        .map_err(|why| OmError::Invalid(format!("the {ty} for {}: {why}", path.join("/"))))?;
    let stamp = format_stamp(now_utc)?;
    let mut plan = Plan::new(meta, fp)?;
    let base = meta_key_unchecked(location);
    if plan.get(&base)?.is_none() {
        plan.put(base.clone(), OmType::Meta, "")?;
    }
    let who = Who {
        user,
        stamp: &stamp,
    };
    for depth in 1..path.len() {
        let group = &path[..depth];
        let key = join(&base, group);
        match plan.get(&key)? {
            Some((t, _)) if t.is_group() => {}
            None => plan.put(key, OmType::Dict, "")?,
            Some(old) => {
                plan.replace(&base, group, old, OmType::Dict, &who)?;
                plan.put(key, OmType::Dict, "")?;
            }
        }
    }
    let key = join(&base, path);
    match plan.get(&key)? {
        Some((t, r)) if t == ty && (t.is_group() || r == raw) => {}
        Some(old) => {
            plan.replace(&base, path, old, ty, &who)?;
            plan.put(key, ty, raw)?;
        }
        None => plan.put(key, ty, raw)?,
    }
    plan.commit()
}

/// The entry at `path` of `location`: its type and content (`""` for a
/// group); `None` when there is none. An empty `path` reads the
/// location's `.meta` itself (type `meta`); names may include OM's own
/// folders (`[".history", "fps&20240102-030405", "value"]`). Siblings are
/// settled by last-writer-wins.
pub fn read_entry(
    meta: &Metadata,
    fp: &FullPrefix,
    location: &str,
    path: &[&str],
) -> Result<Option<(OmType, String)>, OmError> {
    check_location(location)?;
    check_read_path(path)?;
    get_entry(meta, fp, &join(&meta_key_unchecked(location), path))
}

/// The entry at `path` as `location` inherits it (OM's cascading): from
/// the location itself, else from the nearest parent location that has
/// it, up to the root `""`.
pub fn read_inherited(
    meta: &Metadata,
    fp: &FullPrefix,
    location: &str,
    path: &[&str],
) -> Result<Option<Inherited>, OmError> {
    check_location(location)?;
    check_read_path(path)?;
    let mut at = Some(location);
    while let Some(loc) = at {
        if let Some((ty, raw)) = get_entry(meta, fp, &join(&meta_key_unchecked(loc), path))? {
            return Ok(Some(Inherited {
                location: loc.to_string(),
                ty,
                raw,
            }));
        }
        at = parent_location(loc);
    }
    Ok(None)
}

/// The entries directly inside a group (`group_path` empty: the
/// location's `.meta`), sorted by name, without OM's own `.history`,
/// `.trash` and `.versions` folders. A location without metadata has
/// none; a group that does not exist is `NotFound`. The listing visits
/// every key of the full prefix once.
pub fn list_entries(
    meta: &Metadata,
    fp: &FullPrefix,
    location: &str,
    group_path: &[&str],
) -> Result<Vec<(String, OmType)>, OmError> {
    check_location(location)?;
    check_read_path(group_path)?;
    let key = join(&meta_key_unchecked(location), group_path);
    match get_entry(meta, fp, &key)? {
        None if group_path.is_empty() => return Ok(Vec::new()),
        None => {
            return Err(OmError::NotFound(format!(
                "{location:?} has no group {}: list an existing group (list_entries with no group lists the top level)",
                group_path.join("/")
            )));
        }
        Some((t, _)) if !t.is_group() && t != OmType::Meta => {
            return Err(OmError::Invalid(format!(
                "{} at {location:?} is a {t}, not a group: read it with read_entry",
                group_path.join("/")
            )));
        }
        Some(_) => {}
    }
    let prefix = format!("{key}/");
    let direct = |k: &str| {
        k.strip_prefix(&prefix)
            .is_some_and(|name| !name.contains('/') && !SPECIAL_FOLDERS.contains(&name))
    };
    let found = scan_prefix(meta, fp, &prefix, MAX_ENTRIES, &key, &direct)?;
    Ok(found
        .into_iter()
        .map(|(k, t, _)| (k[prefix.len()..].to_string(), t))
        .collect())
}

/// The earlier values of the entry at `path`, newest first (snapshots
/// without a value are skipped; a missing `user` reads as `""`). Two
/// writes in one second share a snapshot, as in OM: the later one's. The
/// call visits every key of the full prefix once.
pub fn history(
    meta: &Metadata,
    fp: &FullPrefix,
    location: &str,
    path: &[&str],
) -> Result<Vec<Snapshot>, OmError> {
    check_location(location)?;
    check_path(path)?;
    let (parent, name) = split(location, path);
    let prefix = format!("{parent}/.history/{name}&");
    let part = |k: &str| -> Option<(String, bool)> {
        let (stamp, file) = k.strip_prefix(&prefix)?.split_once('/')?;
        (is_stamp(stamp) && matches!(file, "user" | "value"))
            .then(|| (stamp.to_string(), file == "user"))
    };
    let found = scan_prefix(meta, fp, &prefix, MAX_ENTRIES, &prefix, &|k| {
        part(k).is_some()
    })?;
    let mut snaps: BTreeMap<String, (String, Option<(OmType, String)>)> = BTreeMap::new();
    for (k, ty, raw) in found {
        let Some((stamp, is_user)) = part(&k) else {
            continue;
        };
        let slot = snaps.entry(stamp).or_default();
        if is_user {
            slot.0 = serde_json::from_str::<String>(&raw).unwrap_or(raw);
        } else if ty.is_value() {
            slot.1 = Some((ty, raw));
        }
    }
    Ok(snaps
        .into_iter()
        .rev()
        .filter_map(|(stamp, (user, value))| {
            value.map(|(ty, raw)| Snapshot {
                stamp,
                user,
                ty,
                raw,
            })
        })
        .collect())
}

/// Writes the value of the snapshot `stamp` back to the entry at `path`,
/// as [`write_entry`] does (the value it replaces goes to the history).
#[allow(clippy::too_many_arguments)]
pub fn restore(
    meta: &Metadata,
    fp: &FullPrefix,
    location: &str,
    path: &[&str],
    stamp: &str,
    user: &str,
    now_utc: SystemTime,
) -> Result<(), OmError> {
    check_location(location)?;
    check_path(path)?;
    if !is_stamp(stamp) {
        return Err(OmError::Invalid(format!(
            "{stamp:?} is not a history stamp (YYYYmmdd-HHMMSS): take one from history()"
        )));
    }
    let (parent, name) = split(location, path);
    let key = format!("{parent}/.history/{name}&{stamp}/value");
    match get_entry(meta, fp, &key)? {
        None => Err(OmError::NotFound(format!(
            "{} at {location:?} has no snapshot {stamp}: list its snapshots with history()",
            path.join("/")
        ))),
        Some((ty, _)) if !ty.is_value() => Err(OmError::Invalid(format!(
            "the snapshot {stamp} of {} holds a {ty}, not a value: only values are restored",
            path.join("/")
        ))),
        Some((ty, raw)) => write_entry(meta, fp, location, path, ty, &raw, user, now_utc),
    }
}

/// Deletes the entry at `path` (a group with everything in it): to the
/// trash as OM's `remove` does, or for good with `permanent`. Returns
/// false when there was no such entry. A group of more than
/// [`MAX_GROUP_KEYS`] keys is refused (delete its groups one by one).
pub fn delete_entry(
    meta: &Metadata,
    fp: &FullPrefix,
    location: &str,
    path: &[&str],
    permanent: bool,
) -> Result<bool, OmError> {
    refuse_reserved(fp)?;
    check_location(location)?;
    check_path(path)?;
    let base = meta_key_unchecked(location);
    let key = join(&base, path);
    let mut plan = Plan::new(meta, fp)?;
    let Some(old) = plan.get(&key)? else {
        return Ok(false);
    };
    if permanent {
        for (child, _, _) in plan.subtree(&key)? {
            plan.delete(child);
        }
    } else {
        plan.trash(&base, path, old)?;
    }
    plan.delete(key);
    plan.commit()?;
    Ok(true)
}

/// An entry path a write names: at least one name, none of them OM's own
/// folders.
fn check_path(path: &[&str]) -> Result<(), OmError> {
    if path.is_empty() {
        return Err(OmError::Invalid(
            "the entry path is empty: name the entry (and the groups holding it)".into(),
        ));
    }
    path.iter().try_for_each(|n| check_entry_name(n))
}

/// A path a read names: any names, OM's own folders included.
fn check_read_path(path: &[&str]) -> Result<(), OmError> {
    path.iter()
        .try_for_each(|n| check_component(n).map_err(OmError::Invalid))
}

/// The key of an entry's parent (the group, or the location's `.meta`)
/// and the entry's own name.
fn split<'a>(location: &str, path: &[&'a str]) -> (String, &'a str) {
    let (name, groups) = path.split_last().map_or(("", &[][..]), |(n, g)| (*n, g));
    (join(&meta_key_unchecked(location), groups), name)
}

/// Who writes, and when: what a history snapshot records.
struct Who<'a> {
    user: &'a str,
    stamp: &'a str,
}

/// The writes of one transaction, planned before any is made: reads see
/// what the plan already wrote.
struct Plan<'a> {
    meta: &'a Metadata,
    fp: &'a FullPrefix,
    tx: MetaTransaction,
    writes: BTreeMap<String, Option<(OmType, String)>>,
    key_limit: usize,
}

impl<'a> Plan<'a> {
    fn new(meta: &'a Metadata, fp: &'a FullPrefix) -> Result<Self, OmError> {
        Ok(Plan {
            meta,
            fp,
            tx: meta.begin()?,
            writes: BTreeMap::new(),
            key_limit: meta.store().options().limits.max_key_bytes,
        })
    }

    fn get(&mut self, key: &str) -> Result<Option<(OmType, String)>, OmError> {
        match self.writes.get(key) {
            Some(w) => Ok(w.clone()),
            None => tx_entry(&mut self.tx, self.fp, key),
        }
    }

    fn put(&mut self, key: String, ty: OmType, raw: &str) -> Result<(), OmError> {
        if key.len() > self.key_limit {
            return Err(OmError::Invalid(format!(
                "the key {key} is {} bytes long, over the store's limit of {} bytes: use shorter names",
                key.len(),
                self.key_limit
            )));
        }
        if self.writes.len() >= MAX_GROUP_KEYS * 3 {
            return Err(OmError::Invalid(format!(
                "this write would change more than {} keys: delete the large group it replaces first",
                MAX_GROUP_KEYS * 3
            )));
        }
        self.writes.insert(key, Some((ty, raw.to_string())));
        Ok(())
    }

    fn delete(&mut self, key: String) {
        self.writes.insert(key, None);
    }

    /// Every key below `key` (its group's descendants), as the plan
    /// leaves them, sorted; each is read in the transaction.
    fn subtree(&mut self, key: &str) -> Result<Vec<(String, OmType, String)>, OmError> {
        let prefix = format!("{key}/");
        let stored = scan_prefix(self.meta, self.fp, &prefix, MAX_GROUP_KEYS, key, &|_| true)?;
        let mut all: BTreeMap<String, (OmType, String)> = BTreeMap::new();
        for (k, _, _) in stored {
            if let Some(entry) = tx_entry(&mut self.tx, self.fp, &k)? {
                all.insert(k, entry);
            }
        }
        for (k, w) in self.writes.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            match w {
                Some(entry) => all.insert(k.clone(), entry.clone()),
                None => all.remove(k),
            };
        }
        Ok(all.into_iter().map(|(k, (t, r))| (k, t, r)).collect())
    }

    /// What replacing the entry at `path` (holding `old`) by a `new`
    /// entry does first: a value goes to the history, and an entry of
    /// another type to the trash.
    fn replace(
        &mut self,
        base: &str,
        path: &[&str],
        old: (OmType, String),
        new: OmType,
        who: &Who<'_>,
    ) -> Result<(), OmError> {
        if old.0.is_value() {
            self.record_history(base, path, &old, who)?;
        }
        if old.0 != new {
            self.trash(base, path, old)?;
        }
        Ok(())
    }

    /// Copies a value to `<parent>/.history/<name>&<stamp>/`.
    fn record_history(
        &mut self,
        base: &str,
        path: &[&str],
        old: &(OmType, String),
        who: &Who<'_>,
    ) -> Result<(), OmError> {
        let (groups, name) = match path.split_last() {
            Some((name, groups)) => (groups, *name),
            None => return Ok(()),
        };
        let history = join(&join(base, groups), &[".history"]);
        self.ensure_folder(&history)?;
        let snapshot = format!("{history}/{name}&{}", who.stamp);
        if self.get(&snapshot)?.is_some() {
            // A second write in the same second replaces the snapshot.
            for (k, _, _) in self.subtree(&snapshot)? {
                self.delete(k);
            }
        }
        self.put(snapshot.clone(), OmType::Folder, "")?;
        let user = serde_json::Value::String(who.user.to_string()).to_string();
        self.put(format!("{snapshot}/user"), OmType::String, &user)?;
        self.put(format!("{snapshot}/value"), old.0, &old.1)
    }

    /// Moves the entry at `path` (holding `old`; a group with its
    /// children) to `<parent>/.trash/<name>`, replacing what was there.
    fn trash(&mut self, base: &str, path: &[&str], old: (OmType, String)) -> Result<(), OmError> {
        let (groups, name) = match path.split_last() {
            Some((name, groups)) => (groups, *name),
            None => return Ok(()),
        };
        let key = join(base, path);
        let trash = join(&join(base, groups), &[".trash"]);
        self.ensure_folder(&trash)?;
        let dest = format!("{trash}/{name}");
        if self.get(&dest)?.is_some() {
            for (k, _, _) in self.subtree(&dest)? {
                self.delete(k);
            }
        }
        let is_group = old.0.is_group();
        self.put(dest.clone(), old.0, &old.1)?;
        if is_group {
            for (k, t, r) in self.subtree(&key)? {
                let moved = format!("{dest}{}", &k[key.len()..]);
                self.put(moved, t, &r)?;
                self.delete(k);
            }
        }
        Ok(())
    }

    fn ensure_folder(&mut self, key: &str) -> Result<(), OmError> {
        match self.get(key)? {
            Some((t, _)) if t.is_group() => Ok(()),
            Some((t, _)) => Err(OmError::Invalid(format!(
                "{key} holds a {t} where OM keeps a folder: delete it first"
            ))),
            None => self.put(key.to_string(), OmType::Folder, ""),
        }
    }

    /// Makes the planned writes as one commit (deletes of keys that do
    /// not exist are dropped).
    fn commit(mut self) -> Result<(), OmError> {
        let writes = std::mem::take(&mut self.writes);
        for (key, w) in writes {
            match w {
                Some((ty, raw)) => {
                    self.tx
                        .put(self.fp, key.as_bytes(), &encode_value(ty, &raw), None)?
                }
                None => {
                    if tx_entry(&mut self.tx, self.fp, &key)?.is_some() {
                        self.tx.delete(self.fp, key.as_bytes(), None)?;
                    }
                }
            }
        }
        self.tx.commit()?;
        Ok(())
    }
}
