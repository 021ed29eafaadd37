//! What an object from outside this node may claim: checks on the objects
//! a stage pushes (`/v1/sync/push`) and on those peers send (gossip and
//! anti-entropy merges). docs/auth.md, "What a pushed object may claim",
//! states the rules for people.
//!
//! Pure functions: no IO, no clock, no randomness. The caller passes the
//! wall-clock time and the bounds, and decides what a refusal does (a
//! push is refused whole; a peer's object is skipped and counted).
//!
//! Why each rule, in one line each:
//! - a timestamp far ahead wins last-writer-wins resolution (and the
//!   near-simultaneous rule's comparisons) until the clocks catch up;
//! - a counter of a node beyond what that node made makes its later,
//!   genuine writes look already seen: they are dropped by every merge;
//! - a recorded token id or priority is what reads and the priority rule
//!   believe, so only the node that checked the token may set it.

use chorus_core::NodeId;
use chorus_core::dvvset::{Dvvs, Entry};
use chorus_core::object::{Meta, Object, Value};

/// The highest counter an object from outside may carry for any node:
/// a node numbers a key's first dot above its hybrid timestamp (see
/// `Object::modify`; about 2^57 today), so the ceiling is 2^61, which no
/// genuine counter reaches before the year 3000 (the encoding allows 2^62).
pub const COUNTER_MAX: u64 = 1 << 61;

/// `--max-clock-skew`'s default: how far ahead of this node's clock a
/// value's timestamp may be (5 minutes).
pub const MAX_CLOCK_SKEW_DEFAULT_MS: u64 = 5 * 60 * 1000;

/// The time of a check: this node's wall clock and how far ahead of it a
/// timestamp may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// This node's wall clock, unix milliseconds.
    pub now_ms: u64,
    /// How far ahead of `now_ms` a value's timestamp may be.
    pub max_skew_ms: u64,
}

impl Clock {
    /// The clock at `now_ms` with `max_skew`.
    pub fn of(now_ms: u64, max_skew: std::time::Duration) -> Clock {
        Clock {
            now_ms,
            max_skew_ms: u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The latest timestamp accepted, in milliseconds.
    fn latest_ms(self) -> u64 {
        self.now_ms.saturating_add(self.max_skew_ms)
    }
}

/// Who pushes, and what the push may record on the values it brings.
#[derive(Debug, Clone, Copy)]
pub struct Pusher<'a> {
    /// The stage's node id (the push's `node`): the only id under which
    /// the push may bring new dots.
    pub node: NodeId,
    /// The pushing token's id (auth on), recorded on every new value;
    /// `None` records none.
    pub token: Option<&'a str>,
    /// The push's priority: the most a new value may record.
    pub priority: u8,
    /// The push's window: the most a new value may record.
    pub window_ms: u32,
}

/// Why an object was refused (the fields name what the message says).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each variant's doc and Display say what its fields are"
)]
pub enum Refusal {
    /// A value's timestamp is further ahead of this node's clock than the
    /// skew allows.
    Future {
        writer: NodeId,
        timestamp_ms: u64,
        now_ms: u64,
        max_skew_ms: u64,
    },
    /// A counter above [`COUNTER_MAX`].
    Counter { node: NodeId, counter: u64 },
    /// A pushed value under a dot of another node than the pusher's, which
    /// this node has not seen.
    Unseen {
        node: NodeId,
        counter: u64,
        seen: u64,
    },
    /// A pushed value under the pusher's new dot that names another writer.
    Writer { pusher: NodeId, writer: NodeId },
    /// Values without a dot: no node stores such an object.
    Anonymous(usize),
    /// The push names this node, or a member of its cluster, as the stage.
    Impersonation { node: NodeId, whose: &'static str },
    /// What the checks made is not an object (a bug, not the caller's).
    Malformed(String),
    /// A peer's bytes that are not an object encoding.
    Undecodable(String),
}

impl Refusal {
    /// The metric label (`chorus_merge_refused_total{reason}`): a fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Future { .. } => "future_timestamp",
            Refusal::Counter { .. } => "counter_ceiling",
            Refusal::Unseen { .. } => "unseen_dot",
            Refusal::Writer { .. } => "foreign_writer",
            Refusal::Anonymous(_) => "anonymous_value",
            Refusal::Impersonation { .. } => "impersonation",
            Refusal::Malformed(_) => "malformed",
            Refusal::Undecodable(_) => "undecodable",
        }
    }

    /// True when the object is well formed but conflicts with this node's
    /// state (HTTP 409): its clock or what it has seen, which may catch
    /// up, or its cluster's ids. Otherwise the object itself is wrong (400).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Refusal::Future { .. } | Refusal::Unseen { .. } | Refusal::Impersonation { .. }
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Future {
                writer,
                timestamp_ms,
                now_ms,
                max_skew_ms,
            } => write!(
                f,
                "a value written by {writer} has timestamp {timestamp_ms} ms, {} ms ahead of this node's clock ({now_ms}); at most {max_skew_ms} ms ahead is accepted (--max-clock-skew): fix the writer's clock, or retry once this clock has caught up",
                timestamp_ms.saturating_sub(*now_ms)
            ),
            Refusal::Counter { node, counter } => write!(
                f,
                "node {node}'s counter is {counter}, above the ceiling of {COUNTER_MAX}: no node's counter reaches it, so the object was forged or corrupted"
            ),
            Refusal::Unseen {
                node,
                counter,
                seen,
            } => write!(
                f,
                "it carries a value of node {node} (write {counter}) that this node has not seen (it has seen {seen} of that node's writes to this key): a push brings new writes of its own node only; if the stage pulled this value from another node, retry once replication has brought it here"
            ),
            Refusal::Writer { pusher, writer } => write!(
                f,
                "a new value under the pushing node {pusher}'s dot names {writer} as its writer: a stage's new values are its own"
            ),
            Refusal::Anonymous(n) => write!(
                f,
                "{n} value(s) without a dot: objects are stored with every value dotted; push the object as the stage's store holds it"
            ),
            Refusal::Impersonation { node, whose } => write!(
                f,
                "node {node} is {whose}: a stage pushes under its own node id (the id of its directory)"
            ),
            Refusal::Malformed(why) => write!(f, "the checked object is malformed ({why})"),
            Refusal::Undecodable(why) => write!(f, "not an object ({why})"),
        }
    }
}

/// The pushing stage's id must not be this node's or a member's: a push
/// may bring new dots under its id, and those of a node of the cluster
/// would make that node's later writes look already seen.
pub fn check_pusher(
    pusher: NodeId,
    me: NodeId,
    mut members: impl Iterator<Item = NodeId>,
) -> Result<(), Refusal> {
    if pusher == me {
        return Err(Refusal::Impersonation {
            node: pusher,
            whose: "this node's own id",
        });
    }
    if members.any(|m| m == pusher) {
        return Err(Refusal::Impersonation {
            node: pusher,
            whose: "a member of this cluster ($cluster/members)",
        });
    }
    Ok(())
}

/// Checks a pushed object against this node's copy of the key (`local`)
/// and returns what may be merged (docs/auth.md states the same rules):
///
/// - no anonymous value, no counter above [`COUNTER_MAX`];
/// - new dots (a counter above this node's for that node) only under the
///   pusher's id. Another node's entry whose counter is above this node's
///   is refused when it holds a value this node has not seen, and lowered
///   to this node's counter (dropped at 0) when it holds none: the pushed
///   values then do not supersede that node's writes this node has not
///   seen; those become siblings when they arrive, nothing is lost;
/// - each new value names the pusher as its writer, is at most
///   `clock.max_skew_ms` ahead of `clock.now_ms`, records the pushing
///   token's id (not the one it came with; none without a token) and a
///   priority and window no higher than the push's own;
/// - a value under a dot this node already has is replaced by this node's
///   copy, so the push cannot alter a value it did not write (nor keep a
///   recorded token id it set in the stage); one under a dot this node
///   has already superseded is left out, as the merge would drop it.
pub fn check_pushed(
    remote: &Object,
    local: Option<&Object>,
    pusher: &Pusher<'_>,
    clock: Clock,
) -> Result<Object, Refusal> {
    let dvv = remote.clock();
    if !dvv.anonymous().is_empty() {
        return Err(Refusal::Anonymous(dvv.anonymous().len()));
    }
    let local_entries = local.map_or(&[][..], |o| o.clock().entries());
    let mut entries = Vec::with_capacity(dvv.entries().len());
    for e in dvv.entries() {
        if e.counter > COUNTER_MAX {
            return Err(Refusal::Counter {
                node: e.id,
                counter: e.counter,
            });
        }
        let held = local_entries
            .binary_search_by(|l| l.id.cmp(&e.id))
            .ok()
            .map(|at| &local_entries[at]);
        let seen = held.map_or(0, |h| h.counter);
        if e.id != pusher.node && e.counter > seen {
            if !e.values.is_empty() {
                return Err(Refusal::Unseen {
                    node: e.id,
                    counter: e.counter,
                    seen,
                });
            }
            if seen > 0 {
                entries.push(Entry {
                    id: e.id,
                    counter: seen,
                    values: Vec::new(),
                });
            }
            continue;
        }
        let mut values = Vec::with_capacity(e.values.len());
        for (i, v) in e.values.iter().enumerate() {
            let dot = e.counter - i as u64;
            if dot > seen {
                values.push(new_value(v, pusher, clock)?);
            } else if let Some(mine) = held.and_then(|h| value_at(h, dot)) {
                values.push(mine.clone());
            } else {
                // This dot and every older one are superseded here.
                break;
            }
        }
        entries.push(Entry {
            id: e.id,
            counter: e.counter,
            values,
        });
    }
    // Built from a decoded object's entries (sorted, one per node, values
    // within their dots), so only a bug makes this fail.
    Object::from_clock(Dvvs::from_parts(entries, Vec::new()))
        .map_err(|e| Refusal::Malformed(e.to_string()))
}

/// Checks an object a peer sent: every counter at most [`COUNTER_MAX`],
/// every value's timestamp at most `clock.max_skew_ms` ahead. Peers relay
/// each other's writes, so dots of any node are expected; what a member
/// may write at all is the membership's rule (docs/auth.md).
pub fn check_merged(object: &Object, clock: Clock) -> Result<(), Refusal> {
    let dvv = object.clock();
    for e in dvv.entries() {
        if e.counter > COUNTER_MAX {
            return Err(Refusal::Counter {
                node: e.id,
                counter: e.counter,
            });
        }
    }
    object
        .values()
        .into_iter()
        .try_for_each(|v| check_timestamp(v, clock))
}

/// Decodes an object a peer sent and checks it ([`check_merged`]).
pub fn decode_merged(bytes: &[u8], clock: Clock) -> Result<Object, Refusal> {
    let object = Object::decode(bytes).map_err(|e| Refusal::Undecodable(e.to_string()))?;
    check_merged(&object, clock)?;
    Ok(object)
}

/// The value a local entry holds under `dot`, if it still holds it.
fn value_at(entry: &Entry<NodeId, Value>, dot: u64) -> Option<&Value> {
    let back = entry.counter.checked_sub(dot)?;
    entry.values.get(usize::try_from(back).ok()?)
}

/// A value under a new dot of the pusher: checked, and recording what the
/// push may record.
fn new_value(v: &Value, pusher: &Pusher<'_>, clock: Clock) -> Result<Value, Refusal> {
    if v.node != pusher.node {
        return Err(Refusal::Writer {
            pusher: pusher.node,
            writer: v.node,
        });
    }
    check_timestamp(v, clock)?;
    let claimed = v.meta();
    let meta = Meta {
        token: pusher.token.map(str::to_string),
        priority: claimed.priority.min(pusher.priority),
        window_ms: claimed.window_ms.min(pusher.window_ms),
    };
    Ok(v.clone().with_meta(meta))
}

fn check_timestamp(v: &Value, clock: Clock) -> Result<(), Refusal> {
    let ms = v.timestamp.ms();
    if ms > clock.latest_ms() {
        return Err(Refusal::Future {
            writer: v.node,
            timestamp_ms: ms,
            now_ms: clock.now_ms,
            max_skew_ms: clock.max_skew_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
