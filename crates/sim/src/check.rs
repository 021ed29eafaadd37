//! Checkers over the final states of replicas and the clients' [`History`]
//! (see [`crate::client`]), run after every replica has everything the
//! others have (a heal and full replication): each returns the
//! [`Violation`]s it found, empty when the run was correct.
//!
//! - [`plain_keys`]: every acknowledged write is current, or superseded,
//!   transitively, by writes that saw it, ending in a current value or in
//!   a delete (Jepsen's set-full check applied to siblings); every value
//!   present was written by a client; no value present was superseded by
//!   a write that was applied (acknowledged, present, or seen by another).
//! - [`convergence`]: every replica holds the same data (prefix hashes),
//!   naming the first key that differs.
//! - [`documents`]: every replica picks the same winner and conflicts.
//! - [`operation_logs`]: every replica has the same value for every log;
//!   every acknowledged push is in the log, folded into its checkpoint or
//!   reported late, and the counters add up to the acknowledged pushes
//!   (plus some of the unacknowledged ones).
//!
//! **Cost.** Linear in keys x replicas: replicas holding the same bytes
//! for a key are checked once, prefix hashes are compared before any key
//! is, and documents and logs are read once per replica. Work per key is
//! linear in the writes to it and what they superseded.

use std::collections::{BTreeMap, BTreeSet};

use chorus_core::FullPrefix;
use chorus_core::object::{Content, Object, Value};
use chorus_store::docs::{Docs, MAX_CONFLICTS_PAGE};
use chorus_store::oplog::Oplogs;
use chorus_store::{Bytes, Metadata, Snapshot};

use crate::client::{EventId, EventOp, History, KvWrite};

/// The checker that found a replica unreadable.
pub const READABLE: &str = "readable";
/// The acknowledged-writes checker.
pub const ACKNOWLEDGED: &str = "acknowledged writes";
/// The checker of values no client wrote.
pub const INVENTED: &str = "nothing invented";
/// The checker of superseded values back in a store.
pub const RESURRECTED: &str = "nothing resurrected";
/// The convergence checker.
pub const CONVERGENCE: &str = "convergence";
/// The documents checker.
pub const DOCUMENTS: &str = "documents";
/// The operation-logs checker.
pub const OPERATION_LOGS: &str = "operation logs";
/// The checker that a channel's data is only on its members.
pub const CHANNELS: &str = "channels";

/// Most replica numbers a violation lists.
const REPLICAS_LISTED: usize = 8;
/// Up to this many unacknowledged pushes to a log, the counter is checked
/// exactly (every subset sum); above, only within bounds.
const SUBSET_SUM_MAX: usize = 16;

/// Something a checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Which checker.
    pub checker: &'static str,
    /// The key, document or log (`prefix/subprefix/name`), or the replica.
    pub key: String,
    /// What is wrong, with the replicas and values involved.
    pub detail: String,
    /// The first event of the history that shows it (the write that was
    /// lost, the first write of the key that diverged, ...).
    pub first_event: Option<EventId>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", self.checker, self.key, self.detail)?;
        if let Some(e) = self.first_event {
            write!(f, " (from event {e})")?;
        }
        Ok(())
    }
}

/// Every checker; violations sorted (by checker, key, detail, first
/// event), each once.
pub fn check_all(replicas: &[Metadata], history: &History) -> Vec<Violation> {
    let mut out = plain_keys(replicas, history);
    out.extend(convergence(replicas, history));
    out.extend(documents(replicas, history));
    out.extend(operation_logs(replicas, history));
    out.sort();
    out.dedup();
    out
}

/// [`check_all`] for a cluster with channels: `serves(fp, r)` says
/// whether replica `r` serves plain-key full prefix `fp`. The plain-key
/// checks and convergence of each such full prefix run over the replicas
/// serving it (numbered among them); every other replica must hold
/// nothing of it ([`CHANNELS`]); the rest (documents, logs, reserved
/// prefixes) over every replica.
pub fn check_all_channels(
    replicas: &[Metadata],
    history: &History,
    serves: impl Fn(&FullPrefix, usize) -> bool,
) -> Vec<Violation> {
    let layout = history.layout();
    let mut out = Vec::new();
    for fp in &layout.kv {
        let members: Vec<Metadata> = (0..replicas.len())
            .filter(|r| serves(fp, *r))
            .filter_map(|r| replicas.get(r).cloned())
            .collect();
        out.extend(plain_keys_where(&members, history, |f| f == fp));
        out.extend(convergence_where(&members, history, |f| f == fp));
        for (r, meta) in replicas.iter().enumerate() {
            if serves(fp, r) {
                continue;
            }
            let held = match meta.store().snapshot() {
                Ok(s) => s.len_in(fp),
                Err(e) => {
                    out.push(unreadable(r, &e.to_string()));
                    continue;
                }
            };
            if held > 0 {
                out.push(Violation {
                    checker: CHANNELS,
                    key: fp.to_string(),
                    detail: format!("replica {r} does not serve {fp} but holds {held} keys of it"),
                    first_event: None,
                });
            }
        }
    }
    out.extend(convergence_where(replicas, history, |f| {
        !layout.kv.contains(f)
    }));
    out.extend(documents(replicas, history));
    out.extend(operation_logs(replicas, history));
    out.sort();
    out.dedup();
    out
}

/// The checks that hold at any moment of a run, replicated or not: every
/// value a replica holds was written by a client ([`INVENTED`]). The
/// others need every replica to have everything (run them after a heal).
pub fn during_run(replicas: &[Metadata], history: &History) -> Vec<Violation> {
    let mut out: Vec<Violation> = plain_keys(replicas, history)
        .into_iter()
        .filter(|v| v.checker == INVENTED || v.checker == READABLE)
        .collect();
    out.sort();
    out
}

/// A replica's snapshot, by replica number; unreadable ones are reported.
fn snapshots(replicas: &[Metadata], out: &mut Vec<Violation>) -> Vec<(usize, Snapshot)> {
    let mut snaps = Vec::with_capacity(replicas.len());
    for (r, meta) in replicas.iter().enumerate() {
        match meta.store().snapshot() {
            Ok(s) => snaps.push((r, s)),
            Err(e) => out.push(unreadable(r, &e.to_string())),
        }
    }
    snaps
}

fn unreadable(r: usize, e: &str) -> Violation {
    Violation {
        checker: READABLE,
        key: format!("replica {r}"),
        detail: format!("cannot read it: {e}"),
        first_event: None,
    }
}

fn key_name(fp: &FullPrefix, key: &[u8]) -> String {
    format!("{fp}/{}", String::from_utf8_lossy(key))
}

/// `replicas [0, 3, 4]`, the list cut after a few.
fn replica_list(replicas: &[usize]) -> String {
    let shown: Vec<String> = replicas
        .iter()
        .take(REPLICAS_LISTED)
        .map(usize::to_string)
        .collect();
    let more = replicas.len().saturating_sub(REPLICAS_LISTED);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let word = if replicas.len() == 1 {
        "replica"
    } else {
        "replicas"
    };
    format!("{word} {}{tail}", shown.join(", "))
}

fn describe_value(v: &Value) -> String {
    match &v.content {
        Content::Tombstone => format!("tombstone({}@{})", v.node, v.timestamp.0),
        Content::Data(b) => format!(
            "{:?}({}@{})",
            String::from_utf8_lossy(b),
            v.node,
            v.timestamp.0
        ),
    }
}

fn describe_bytes(bytes: Option<&Bytes>) -> String {
    match bytes {
        None => "nothing".into(),
        Some(b) => match Object::decode(b) {
            Ok(o) => {
                let values: Vec<String> = o.values().into_iter().map(describe_value).collect();
                format!("[{}]", values.join(", "))
            }
            Err(_) => format!("{} bytes that are not an object", b.len()),
        },
    }
}

// ---------------------------------------------------------------- plain keys

/// One distinct state of a key among the replicas.
struct State {
    bytes: Option<Bytes>,
    replicas: Vec<usize>,
}

/// What the writes of one key are to each other.
struct Writes<'a> {
    history: &'a History,
    /// Every write of the key.
    ids: &'a [EventId],
    /// Who superseded each write.
    seen_by: BTreeMap<EventId, Vec<EventId>>,
    /// Writes whose values some replica holds.
    present: BTreeSet<EventId>,
}

impl Writes<'_> {
    fn write(&self, id: EventId) -> Option<&KvWrite> {
        self.history.event(id).and_then(|e| e.write())
    }

    fn acknowledged(&self, id: EventId) -> bool {
        self.history
            .event(id)
            .is_some_and(|e| e.outcome.acknowledged())
    }

    /// The write was applied somewhere: acknowledged, held, or seen.
    fn applied(&self, id: EventId) -> bool {
        self.acknowledged(id) || self.present.contains(&id) || self.seen_by.contains_key(&id)
    }

    fn is_delete(&self, id: EventId) -> bool {
        self.write(id).is_some_and(KvWrite::is_delete)
    }

    fn saw(&self, id: EventId) -> &[EventId] {
        self.write(id).map_or(&[], |w| w.saw.as_slice())
    }
}

/// The acknowledged-writes, nothing-invented and nothing-resurrected
/// checks, over every plain key of the layout (those any replica holds
/// and those the history wrote).
pub fn plain_keys(replicas: &[Metadata], history: &History) -> Vec<Violation> {
    plain_keys_where(replicas, history, |_| true)
}

/// [`plain_keys`] over the layout's full prefixes `checked` selects.
pub fn plain_keys_where(
    replicas: &[Metadata],
    history: &History,
    checked: impl Fn(&FullPrefix) -> bool,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let snaps = snapshots(replicas, &mut out);
    let n = snaps.len();
    for fp in history.layout().kv.iter().filter(|fp| checked(fp)) {
        let mut keys: BTreeMap<Vec<u8>, Vec<Option<Bytes>>> = BTreeMap::new();
        for (i, (_, snap)) in snaps.iter().enumerate() {
            for (key, entry) in snap.iter_prefix(fp) {
                let held = keys
                    .entry(key.as_bytes().to_vec())
                    .or_insert_with(|| vec![None; n]);
                if let Some(slot) = held.get_mut(i) {
                    *slot = Some(entry.value.clone());
                }
            }
        }
        for ((f, key), _) in history.keys() {
            if f == fp {
                keys.entry(key.clone()).or_insert_with(|| vec![None; n]);
            }
        }
        for (key, held) in keys {
            let states = distinct(&held, &snaps);
            check_key(history, fp, &key, &states, &mut out);
        }
    }
    out
}

/// The replicas grouped by what they hold.
fn distinct(held: &[Option<Bytes>], snaps: &[(usize, Snapshot)]) -> Vec<State> {
    let mut states: Vec<State> = Vec::new();
    let mut index: BTreeMap<Option<&[u8]>, usize> = BTreeMap::new();
    for (bytes, (r, _)) in held.iter().zip(snaps) {
        let at = *index.entry(bytes.as_deref()).or_insert_with(|| {
            states.push(State {
                bytes: bytes.clone(),
                replicas: Vec::new(),
            });
            states.len() - 1
        });
        if let Some(s) = states.get_mut(at) {
            s.replicas.push(*r);
        }
    }
    states
}

/// The values of a state with the writes each may be; an undecodable
/// object is reported and holds nothing.
fn held_values(
    history: &History,
    fp: &FullPrefix,
    key: &[u8],
    state: &State,
    out: &mut Vec<Violation>,
) -> Vec<(Value, Vec<EventId>)> {
    let Some(bytes) = &state.bytes else {
        return Vec::new();
    };
    match Object::decode(bytes) {
        Ok(o) => o
            .values()
            .into_iter()
            .map(|v| (v.clone(), history.candidates(fp, key, v)))
            .collect(),
        Err(e) => {
            out.push(Violation {
                checker: INVENTED,
                key: key_name(fp, key),
                detail: format!(
                    "{} hold {} bytes that are not a metadata object ({e})",
                    replica_list(&state.replicas),
                    bytes.len()
                ),
                first_event: history.first_event_on(fp, key),
            });
            Vec::new()
        }
    }
}

fn check_key(
    history: &History,
    fp: &FullPrefix,
    key: &[u8],
    states: &[State],
    out: &mut Vec<Violation>,
) {
    let ids = history.writes_to(fp, key);
    let mut seen_by: BTreeMap<EventId, Vec<EventId>> = BTreeMap::new();
    for &w in ids {
        let saw = history
            .event(w)
            .and_then(|e| e.write())
            .map(|x| x.saw.as_slice());
        for &s in saw.unwrap_or(&[]) {
            seen_by.entry(s).or_default().push(w);
        }
    }
    let mut writes = Writes {
        history,
        ids,
        seen_by,
        present: BTreeSet::new(),
    };
    let held: Vec<Vec<(Value, Vec<EventId>)>> = states
        .iter()
        .map(|s| held_values(history, fp, key, s, out))
        .collect();
    for (_, cands) in held.iter().flatten() {
        writes.present.extend(cands.iter().copied());
    }
    for (state, values) in states.iter().zip(&held) {
        invented_or_resurrected(&writes, fp, key, state, values, out);
        acknowledged_writes(&writes, fp, key, state, values, out);
    }
}

fn invented_or_resurrected(
    writes: &Writes<'_>,
    fp: &FullPrefix,
    key: &[u8],
    state: &State,
    values: &[(Value, Vec<EventId>)],
    out: &mut Vec<Violation>,
) {
    for (value, cands) in values {
        if cands.is_empty() {
            out.push(Violation {
                checker: INVENTED,
                key: key_name(fp, key),
                detail: format!(
                    "{} hold {}, which no client wrote",
                    replica_list(&state.replicas),
                    describe_value(value)
                ),
                first_event: writes.history.first_event_on(fp, key),
            });
            continue;
        }
        // Resurrected when every write it may be was superseded by an
        // applied write (other than those it may be).
        let superseders: Vec<(EventId, EventId)> = cands
            .iter()
            .filter_map(|&c| {
                writes
                    .seen_by
                    .get(&c)?
                    .iter()
                    .find(|s| !cands.contains(s) && writes.applied(**s))
                    .map(|&s| (c, s))
            })
            .collect();
        if superseders.len() == cands.len()
            && let Some(&(c, s)) = superseders.first()
        {
            out.push(Violation {
                checker: RESURRECTED,
                key: key_name(fp, key),
                detail: format!(
                    "{} hold {} (event {c}), which event {s} superseded and was applied ({})",
                    replica_list(&state.replicas),
                    describe_value(value),
                    what_applied(writes, s)
                ),
                first_event: Some(c),
            });
        }
    }
}

fn what_applied(writes: &Writes<'_>, id: EventId) -> &'static str {
    if writes.acknowledged(id) {
        "acknowledged"
    } else if writes.present.contains(&id) {
        "held by a replica"
    } else {
        "seen by a later write"
    }
}

fn acknowledged_writes(
    writes: &Writes<'_>,
    fp: &FullPrefix,
    key: &[u8],
    state: &State,
    values: &[(Value, Vec<EventId>)],
    out: &mut Vec<Violation>,
) {
    // The writes a chain may end in: those held, and deletes (applied, or
    // any when the key is gone: its tombstone was collected).
    let absent = state.bytes.is_none();
    let mut justified: BTreeSet<EventId> =
        values.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    justified.extend(
        writes
            .ids
            .iter()
            .copied()
            .filter(|&w| writes.is_delete(w) && (absent || writes.applied(w))),
    );
    let mut stack: Vec<EventId> = justified.iter().copied().collect();
    while let Some(w) = stack.pop() {
        for &s in writes.saw(w) {
            if justified.insert(s) {
                stack.push(s);
            }
        }
    }
    for &w in writes.ids {
        if !writes.acknowledged(w) || writes.is_delete(w) || justified.contains(&w) {
            continue;
        }
        let held = if absent {
            "the key is absent".to_string()
        } else {
            let held: Vec<String> = values.iter().map(|(v, _)| describe_value(v)).collect();
            format!("they hold [{}]", held.join(", "))
        };
        let what = writes
            .write(w)
            .and_then(|x| x.bytes.as_deref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        out.push(Violation {
            checker: ACKNOWLEDGED,
            key: key_name(fp, key),
            detail: format!(
                "the acknowledged write {what:?} (event {w}) is lost on {}: not held, and no chain of writes that saw it ends in a held value or a delete; {held}",
                replica_list(&state.replicas),
            ),
            first_event: Some(w),
        });
    }
}

// --------------------------------------------------------------- convergence

/// Every replica holds what the first readable one holds: prefix hashes
/// compared per full prefix (every one any replica holds, reserved ones
/// included: replication carries everything), and where they differ, the
/// first differing key named.
pub fn convergence(replicas: &[Metadata], history: &History) -> Vec<Violation> {
    convergence_where(replicas, history, |_| true)
}

/// [`convergence`] over the full prefixes `compared` selects.
pub fn convergence_where(
    replicas: &[Metadata],
    history: &History,
    compared: impl Fn(&FullPrefix) -> bool,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let snaps = snapshots(replicas, &mut out);
    let Some(((r0, s0), rest)) = snaps.split_first() else {
        return out;
    };
    let prefixes: BTreeSet<FullPrefix> = snaps
        .iter()
        .flat_map(|(_, s)| s.prefixes().cloned())
        .filter(|fp| compared(fp))
        .collect();
    for fp in &prefixes {
        let h0 = s0.prefix_hash(fp);
        let differ: Vec<&(usize, Snapshot)> = rest
            .iter()
            .filter(|(_, s)| s.prefix_hash(fp) != h0)
            .collect();
        let Some((r, s)) = differ.first() else {
            continue;
        };
        let others: Vec<usize> = differ.iter().map(|(r, _)| *r).collect();
        let (key, mine, theirs) = first_difference(s0, s, fp);
        out.push(Violation {
            checker: CONVERGENCE,
            key: key.as_deref().map_or_else(|| fp.to_string(), |k| key_name(fp, k)),
            detail: format!(
                "{} differ from replica {r0} in {fp}; first differing key: replica {r0} holds {}, replica {r} holds {}",
                replica_list(&others),
                describe_bytes(mine.as_ref()),
                describe_bytes(theirs.as_ref())
            ),
            first_event: key.as_deref().and_then(|k| history.first_event_on(fp, k)),
        });
    }
    out
}

/// The first key (in key order) two snapshots hold differently in `fp`.
fn first_difference(
    a: &Snapshot,
    b: &Snapshot,
    fp: &FullPrefix,
) -> (Option<Vec<u8>>, Option<Bytes>, Option<Bytes>) {
    let sorted = |s: &Snapshot| -> BTreeMap<Vec<u8>, Bytes> {
        s.iter_prefix(fp)
            .map(|(k, e)| (k.as_bytes().to_vec(), e.value.clone()))
            .collect()
    };
    let (ka, kb) = (sorted(a), sorted(b));
    let keys: BTreeSet<&Vec<u8>> = ka.keys().chain(kb.keys()).collect();
    for k in keys {
        let (x, y) = (ka.get(k), kb.get(k));
        if x.map(|v| &v[..]) != y.map(|v| &v[..]) {
            return (Some(k.clone()), x.cloned(), y.cloned());
        }
    }
    (None, None, None)
}

// ----------------------------------------------------------------- documents

/// What a replica makes of one document.
#[derive(Debug, PartialEq, Eq)]
struct DocView {
    live: bool,
    winner: Option<String>,
    conflicts: Vec<String>,
}

impl std::fmt::Display for DocView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "winner {} ({}), conflicts [{}]",
            self.winner.as_deref().unwrap_or("none"),
            if self.live { "live" } else { "deleted" },
            self.conflicts.join(", ")
        )
    }
}

fn doc_view(docs: &Docs, id: &str) -> Result<DocView, String> {
    let tree = docs.tree(id).map_err(|e| e.to_string())?;
    let (conflicts, _) = tree.conflicts_page(None, MAX_CONFLICTS_PAGE);
    Ok(DocView {
        live: tree.is_live(),
        winner: tree.winner().map(ToString::to_string),
        conflicts: conflicts.iter().map(ToString::to_string).collect(),
    })
}

/// Every replica picks the same winner (and deleted state) and the same
/// conflicts for every document any replica holds or a client touched.
pub fn documents(replicas: &[Metadata], history: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    let layout = history.layout();
    let fp = match layout.docs_prefix() {
        Ok(fp) => fp,
        Err(e) => {
            out.push(Violation {
                checker: DOCUMENTS,
                key: layout.docs.clone(),
                detail: format!("the layout's document store name is not valid: {e}"),
                first_event: None,
            });
            return out;
        }
    };
    let snaps = snapshots(replicas, &mut out);
    let mut ids: BTreeSet<String> = (0..layout.doc_ids).map(|i| layout.doc_id(i)).collect();
    for (_, s) in &snaps {
        for (k, _) in s.iter_prefix(&fp) {
            let base = chorus_store::group_base(k.as_bytes());
            if let Ok(id) = std::str::from_utf8(base)
                && chorus_core::docs::validate_id(id).is_ok()
            {
                ids.insert(id.to_string());
            }
        }
    }
    let mut handles = Vec::with_capacity(snaps.len());
    for (r, _) in &snaps {
        let Some(meta) = replicas.get(*r) else {
            continue;
        };
        match Docs::open(meta, &layout.docs) {
            Ok(d) => handles.push((*r, d)),
            Err(e) => out.push(unreadable(*r, &e.to_string())),
        }
    }
    for id in &ids {
        compare_doc(history, &fp, id, &handles, &mut out);
    }
    out
}

fn compare_doc(
    history: &History,
    fp: &FullPrefix,
    id: &str,
    handles: &[(usize, Docs)],
    out: &mut Vec<Violation>,
) {
    let mut first: Option<(usize, DocView)> = None;
    let mut differ: Vec<(usize, DocView)> = Vec::new();
    for (r, docs) in handles {
        let view = match doc_view(docs, id) {
            Ok(v) => v,
            Err(e) => {
                out.push(Violation {
                    checker: DOCUMENTS,
                    key: key_name(fp, id.as_bytes()),
                    detail: format!("replica {r} cannot read the document: {e}"),
                    first_event: history.first_event_on(fp, id.as_bytes()),
                });
                continue;
            }
        };
        match &first {
            None => first = Some((*r, view)),
            Some((_, v0)) if *v0 == view => {}
            Some(_) => differ.push((*r, view)),
        }
    }
    if let (Some((r0, v0)), Some((r, v))) = (&first, differ.first()) {
        let others: Vec<usize> = differ.iter().map(|(r, _)| *r).collect();
        out.push(Violation {
            checker: DOCUMENTS,
            key: key_name(fp, id.as_bytes()),
            detail: format!(
                "{} see the document otherwise than replica {r0}: replica {r0}: {v0}; replica {r}: {v}",
                replica_list(&others)
            ),
            first_event: history.first_event_on(fp, id.as_bytes()),
        });
    }
}

// ------------------------------------------------------------ operation logs

/// One acknowledged or attempted push, as the checker needs it.
struct Pushed {
    event: EventId,
    writer: String,
    payload: u64,
    acknowledged: bool,
    stamp: Option<(u64, String)>,
}

/// Every replica has the same value for every log; every acknowledged
/// push is among the log's operations, folded into its checkpoint (at or
/// below its writer's frontier) or reported late, on every replica; and
/// each counter is the sum of the acknowledged pushes not reported late
/// plus some of the unacknowledged ones.
pub fn operation_logs(replicas: &[Metadata], history: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    let layout = history.layout();
    let fp = &layout.logs;
    let snaps = snapshots(replicas, &mut out);
    let mut paths: BTreeSet<String> = (0..layout.log_paths).map(|i| layout.log_path(i)).collect();
    for (_, s) in &snaps {
        for (k, _) in s.iter_prefix(fp) {
            if let Ok(p) = std::str::from_utf8(chorus_store::group_base(k.as_bytes())) {
                paths.insert(p.to_string());
            }
        }
    }
    let handles: Vec<(usize, Oplogs)> = snaps
        .iter()
        .filter_map(|(r, _)| replicas.get(*r).map(|m| (*r, Oplogs::new(m))))
        .collect();
    for path in &paths {
        let pushes = pushes_to(history, fp, path);
        check_log(fp, path, &pushes, &handles, &mut out);
    }
    out
}

fn pushes_to(history: &History, fp: &FullPrefix, path: &str) -> Vec<Pushed> {
    history
        .group_events(fp, path.as_bytes())
        .iter()
        .filter_map(|&id| {
            let e = history.event(id)?;
            let EventOp::Push(p) = &e.op else {
                return None;
            };
            Some(Pushed {
                event: id,
                writer: e.writer.to_string(),
                payload: p.payload,
                acknowledged: e.outcome.acknowledged(),
                stamp: p.stamp.clone(),
            })
        })
        .collect()
}

/// One replica's view of a log, indexed to find pushes in it.
struct LogIndex<'a> {
    checkpoint: Option<&'a chorus_core::oplog::Checkpoint>,
    /// (timestamp, sha) of every operation, and whether it is late.
    stamped: BTreeMap<(u64, &'a str), bool>,
    /// (node, payload) of every operation with a whole-number payload,
    /// and whether it is late.
    unstamped: BTreeMap<(&'a str, u64), bool>,
}

impl<'a> LogIndex<'a> {
    fn new(view: &'a chorus_store::oplog::LogView) -> LogIndex<'a> {
        let mut index = LogIndex {
            checkpoint: view.log.checkpoint(),
            stamped: BTreeMap::new(),
            unstamped: BTreeMap::new(),
        };
        let all = view.log.ops().map(|op| (op, false));
        for (op, late) in all.chain(view.late.iter().map(|op| (op, true))) {
            index.stamped.insert((op.timestamp, op.sha.as_str()), late);
            if let Some(n) = op.payload.as_u64() {
                index.unstamped.insert((op.node.as_str(), n), late);
            }
        }
        index
    }

    /// Whether the push is accounted for (in the log, reported late, or
    /// folded into the checkpoint), and whether it is late.
    fn standing(&self, p: &Pushed) -> (bool, bool) {
        let found = match &p.stamp {
            Some((ts, sha)) => self.stamped.get(&(*ts, sha.as_str())),
            None => self.unstamped.get(&(p.writer.as_str(), p.payload)),
        };
        if let Some(late) = found {
            return (true, *late);
        }
        let folded = match (&p.stamp, self.checkpoint) {
            (Some((ts, _)), Some(c)) => c.frontier.get(&p.writer).is_some_and(|t| t >= ts),
            // Not found after the push: folded if anything was.
            (None, Some(_)) => true,
            (_, None) => false,
        };
        (folded, false)
    }
}

fn check_log(
    fp: &FullPrefix,
    path: &str,
    pushes: &[Pushed],
    handles: &[(usize, Oplogs)],
    out: &mut Vec<Violation>,
) {
    let name = key_name(fp, path.as_bytes());
    let first_event = pushes.first().map(|p| p.event);
    let mut values: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut dropped: BTreeMap<EventId, Vec<usize>> = BTreeMap::new();
    let mut sums: Vec<(usize, String)> = Vec::new();
    let mut sum_memo: BTreeMap<(String, Vec<EventId>), Option<String>> = BTreeMap::new();
    for (r, oplogs) in handles {
        let read = oplogs
            .get(fp, path)
            .and_then(|v| Ok((v, oplogs.log(fp, path)?)));
        let (value, view) = match read {
            Ok(x) => x,
            Err(e) => {
                out.push(Violation {
                    checker: OPERATION_LOGS,
                    key: name.clone(),
                    detail: format!("replica {r} cannot read the log: {e}"),
                    first_event,
                });
                continue;
            }
        };
        let index = LogIndex::new(&view);
        let mut late: BTreeSet<EventId> = BTreeSet::new();
        for p in pushes.iter().filter(|p| p.acknowledged) {
            match index.standing(p) {
                (false, _) => dropped.entry(p.event).or_default().push(*r),
                (true, true) => {
                    late.insert(p.event);
                }
                (true, false) => {}
            }
        }
        // Replicas mostly agree: each (value, late pushes) is summed once.
        let why = sum_memo
            .entry((value.to_string(), late.iter().copied().collect()))
            .or_insert_with(|| counter_adds_up(&value, pushes, &late));
        if let Some(why) = why {
            sums.push((*r, why.clone()));
        }
        values.push((*r, value));
    }
    if let Some(((r0, v0), rest)) = values.split_first() {
        let differ: Vec<usize> = rest
            .iter()
            .filter(|(_, v)| v != v0)
            .map(|(r, _)| *r)
            .collect();
        if let Some(r) = differ.first() {
            let v = values
                .iter()
                .find(|(x, _)| x == r)
                .map_or(serde_json::Value::Null, |(_, v)| v.clone());
            out.push(Violation {
                checker: OPERATION_LOGS,
                key: name.clone(),
                detail: format!(
                    "{} have another value than replica {r0}: replica {r0} {v0}, replica {r} {v}",
                    replica_list(&differ)
                ),
                first_event,
            });
        }
    }
    for (event, rs) in dropped {
        out.push(Violation {
            checker: OPERATION_LOGS,
            key: name.clone(),
            detail: format!(
                "the acknowledged push of event {event} was silently dropped on {}: not in the log, not folded into its checkpoint, not reported late",
                replica_list(&rs)
            ),
            first_event: Some(event),
        });
    }
    if let Some((r, why)) = sums.first() {
        let rs: Vec<usize> = sums.iter().map(|(r, _)| *r).collect();
        out.push(Violation {
            checker: OPERATION_LOGS,
            key: name,
            detail: format!(
                "the counter does not add up on {} (replica {r}: {why})",
                replica_list(&rs)
            ),
            first_event,
        });
    }
}

/// `None` when `value` is the sum of the acknowledged pushes not reported
/// late plus a subset of the others (checked exactly up to
/// [`SUBSET_SUM_MAX`] of them, within bounds above); else why not.
fn counter_adds_up(
    value: &serde_json::Value,
    pushes: &[Pushed],
    late: &BTreeSet<EventId>,
) -> Option<String> {
    let total = match value {
        serde_json::Value::Null => 0,
        v => match v.as_u64() {
            Some(t) => t,
            None => return Some(format!("the value {v} is not a whole number")),
        },
    };
    let sure: u64 = pushes
        .iter()
        .filter(|p| p.acknowledged && p.stamp.is_some() && !late.contains(&p.event))
        .map(|p| p.payload)
        .sum();
    let maybe: Vec<u64> = pushes
        .iter()
        .filter(|p| !p.acknowledged || p.stamp.is_none())
        .map(|p| p.payload)
        .collect();
    let Some(rest) = total.checked_sub(sure) else {
        return Some(format!(
            "{total} is less than {sure}, the sum of the acknowledged pushes"
        ));
    };
    let fits = if maybe.len() <= SUBSET_SUM_MAX {
        let mut sums: BTreeSet<u64> = BTreeSet::from([0]);
        for m in &maybe {
            let next: Vec<u64> = sums.iter().map(|s| s + m).collect();
            sums.extend(next);
        }
        sums.contains(&rest)
    } else {
        rest <= maybe.iter().sum::<u64>()
    };
    (!fits).then(|| {
        format!(
            "{total} is not {sure} (the acknowledged pushes) plus some of the {} unacknowledged ones",
            maybe.len()
        )
    })
}
