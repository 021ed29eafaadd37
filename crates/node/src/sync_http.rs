//! The staging API, what `chorus stage` talks to (docs/staging.md):
//!
//! - `POST /v1/sync/push`: a stage's objects, merged in one commit (DVV
//!   merge: nothing is lost), with near-simultaneous writes reported and,
//!   between different priorities, settled;
//! - `GET /v1/sync/pull`: the changes of a prefix since a feed cursor, or
//!   (without a cursor) everything under it, page by page.
//!
//! A push's commit is recorded as local to this node, not as the stage's:
//! the daemon broadcasts only local commits, and the stage is a client, not
//! a member that would carry them on; recorded as local, the objects reach
//! the rest of the cluster at once instead of at the next anti-entropy
//! exchange.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chorus_core::object::{Hlc, Meta, Object, Value};
use chorus_core::{FullPrefix, NodeId};
use chorus_store::{Cursor, Feed, Snapshot, Write};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Access, AuthError, Grant, Target};
use crate::error::{ApiError, Kind};
use crate::http::bearer;
use crate::json::{Viewer, value_json};
use crate::service::Service;
use crate::validate::{Clock, Pusher, Refusal, check_pushed, check_pusher};

/// Largest push body: 8 MiB of objects, base64-encoded, with room to spare.
pub(crate) const PUSH_BODY_MAX: usize = 16 << 20;
/// Most objects in one push: half the engine's writes per commit, so that
/// the push's commit has room for a report record per key.
pub(crate) const PUSH_OBJECTS_MAX: usize = 50_000;
/// Largest window a push may ask for (one day).
pub(crate) const WINDOW_MS_MAX: u32 = 86_400_000;
/// Most bytes of objects in one pull answer (one object larger goes alone).
pub(crate) const PULL_BYTES_MAX: usize = 8 << 20;
/// Most keys in one pull answer.
pub(crate) const PULL_KEYS_MAX: usize = 10_000;
/// Commits read from the feed at a time by a pull.
const PULL_FEED_BATCH: usize = 256;
/// Most commits one pull with a cursor reads, in scope or not: past them
/// it answers what it found (perhaps nothing) with `more` and the cursor
/// to go on from, so a narrow scope on a long log costs each request a
/// bounded scan.
pub(crate) const PULL_SCAN_COMMITS_MAX: usize = 10_000;
/// Most bytes of keys and values one pull with a cursor reads, in scope
/// or not (one commit larger is read whole).
pub(crate) const PULL_SCAN_BYTES_MAX: usize = 64 << 20;
/// Where near-simultaneous writes are recorded, upstream and in a stage.
pub(crate) const REPORTS: (&str, &str) = ("$stage", "reports");

/// The routes, to merge into the API's router.
pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route(
            "/v1/sync/push",
            post(push).layer(DefaultBodyLimit::max(PUSH_BODY_MAX)),
        )
        .route("/v1/sync/pull", get(pull))
}

/// One object on the wire: its address and its encoding in base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireObject {
    /// The prefix.
    pub(crate) prefix: String,
    /// The subprefix.
    pub(crate) sub: String,
    /// The key: UTF-8 text, or base64 with `key_encoding: "base64"`.
    pub(crate) key: String,
    /// `"base64"` when the key is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key_encoding: Option<String>,
    /// [`Object::encode`], base64 (standard alphabet, padded).
    pub(crate) object: String,
}

impl WireObject {
    /// The wire form of an encoded object.
    pub(crate) fn new(fp: &FullPrefix, key: &[u8], encoded: &[u8]) -> WireObject {
        let (key, key_encoding) = key_text(key);
        WireObject {
            prefix: fp.prefix().to_string(),
            sub: fp.subprefix().to_string(),
            key,
            key_encoding,
            object: STANDARD.encode(encoded),
        }
    }

    /// Checks and decodes it: a full prefix applications may write, a key
    /// within `max_key`, an object with at least one value.
    pub(crate) fn decode(&self, max_key: usize) -> Result<(FullPrefix, Vec<u8>, Object), String> {
        let fp = FullPrefix::new(&self.prefix, &self.sub).map_err(|e| e.to_string())?;
        if fp.is_reserved() {
            return Err(format!(
                "{fp} is reserved for Chorus itself (names starting with '$'): it is never synced"
            ));
        }
        let key = match self.key_encoding.as_deref() {
            None => self.key.as_bytes().to_vec(),
            Some("base64") => STANDARD
                .decode(&self.key)
                .map_err(|e| format!("key {:?} is not base64 ({e})", self.key))?,
            Some(other) => {
                return Err(format!(
                    "key_encoding {other:?}: leave it out for a UTF-8 key, or give \"base64\""
                ));
            }
        };
        if key.is_empty() {
            return Err("the key is empty: keys are non-empty byte strings".into());
        }
        if key.len() > max_key {
            return Err(format!(
                "the key is {} bytes long; the limit is {max_key}",
                key.len()
            ));
        }
        let bytes = STANDARD
            .decode(&self.object)
            .map_err(|e| format!("{fp}/{}: object is not base64 ({e})", self.key))?;
        let object = Object::decode(&bytes)
            .map_err(|e| format!("{fp}/{}: object is not an object encoding ({e})", self.key))?;
        if object.value_count() == 0 {
            return Err(format!("{fp}/{}: the object holds no value", self.key));
        }
        // An operation log's or a document's record must be the operation
        // or revision its key names.
        chorus_store::oplog::validate_record(&key, &object)
            .and_then(|()| chorus_store::docs::validate_record(&key, &object))
            .map_err(|e| format!("{fp}/{}: {e}", self.key))?;
        Ok((fp, key, object))
    }
}

/// A key as JSON text: itself if UTF-8, else base64 with its encoding.
pub(crate) fn key_text(key: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(key) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (STANDARD.encode(key), Some("base64".into())),
    }
}

/// A push: the stage's node id, its priority and window, its objects.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PushBody {
    /// The stage's node id (32 hex digits).
    pub(crate) node: String,
    /// 0-255: on a near-simultaneous write, the higher priority wins.
    #[serde(default, deserialize_with = "crate::json::whole::de")]
    pub(crate) priority: u8,
    /// How close (ms) two writes' timestamps must be to count as
    /// near-simultaneous.
    #[serde(default, deserialize_with = "crate::json::whole::de")]
    pub(crate) window_ms: u32,
    /// The objects.
    pub(crate) objects: Vec<WireObject>,
}

/// What a push asks of the merge.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PushRule {
    pub(crate) stage: NodeId,
    pub(crate) priority: u8,
    pub(crate) window_ms: u32,
}

/// How a near-simultaneous write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Both values kept as siblings (equal priorities, or a sibling
    /// outside the window).
    Siblings,
    /// The pushed value won (higher priority); the others are superseded.
    PushedWon,
    /// An upstream value won (higher priority); the pushed one is
    /// superseded.
    UpstreamWon,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Siblings => "siblings",
            Outcome::PushedWon => "pushed_won",
            Outcome::UpstreamWon => "upstream_won",
        }
    }
}

/// A near-simultaneous write found while merging one key.
#[derive(Debug, Clone)]
pub(crate) struct Near {
    /// The values the push brought that the upstream did not have.
    pub(crate) pushed: Vec<Value>,
    /// The upstream values the stage's object did not cover.
    pub(crate) concurrent: Vec<Value>,
    pub(crate) outcome: Outcome,
    /// The value written to settle the siblings, if any.
    pub(crate) winner: Option<Value>,
    /// Why the outcome is what it is, for people.
    pub(crate) detail: String,
}

/// The priority and window a value records (0, 0 when none). A value
/// pushed with a window beyond [`WINDOW_MS_MAX`] (its meta is the pusher's
/// to set) is held to that limit, so that no value can claim a key for
/// longer than a day.
fn claim(v: &Value) -> (u8, u32) {
    let m = v.meta();
    (m.priority, m.window_ms.min(WINDOW_MS_MAX))
}

/// Merges a pushed object into the local one (the DVV merge: nothing is
/// lost), then looks for near-simultaneous writes and applies the
/// priority rule (docs/staging.md):
///
/// - the values the push brings (`pushed`) meet the local values the
///   stage's object did not cover (`others`);
/// - a pair is near-simultaneous when their timestamps are at most the
///   larger of the push's window and the window the local value records
///   apart;
/// - when every other value is near-simultaneous with a pushed one, the
///   higher priority wins: the siblings are settled, in the same commit,
///   to a value with the winner's bytes, written by this node at `ts`
///   with a context covering them all, recording the winner's priority
///   and window; equal priorities stay siblings.
///
/// Returns the object to store (`None` when the push brings nothing new)
/// and the near-simultaneous write, if any.
pub(crate) fn merge_pushed(
    local: Option<&Object>,
    remote: &Object,
    rule: &PushRule,
    ts: Hlc,
    me: NodeId,
) -> Option<(Object, Option<Near>)> {
    let merged = Object::reconcile(remote, local)?;
    let local_values: Vec<&Value> = local.map(Object::values).unwrap_or_default();
    let remote_values = remote.values();
    let all = merged.values();
    let pushed: Vec<&Value> = all
        .iter()
        .filter(|v| remote_values.contains(v) && !local_values.contains(v))
        .copied()
        .collect();
    let others: Vec<&Value> = all
        .iter()
        .filter(|v| !pushed.contains(v))
        .copied()
        .collect();
    let close = |p: &Value, o: &Value| {
        let window = u64::from(rule.window_ms.max(claim(o).1));
        p.timestamp.ms().abs_diff(o.timestamp.ms()) <= window
    };
    let near: Vec<&Value> = others
        .iter()
        .filter(|o| pushed.iter().any(|p| close(p, o)))
        .copied()
        .collect();
    if pushed.is_empty() || near.is_empty() {
        return Some((merged, None));
    }
    let theirs = near.iter().map(|o| claim(o).0).max().unwrap_or(0);
    let ours = rule.priority;
    let (outcome, winner, detail) = if near.len() < others.len() {
        (
            Outcome::Siblings,
            None,
            format!(
                "{} other sibling(s) lie outside the window: priorities apply only when every sibling is near-simultaneous",
                others.len() - near.len()
            ),
        )
    } else if ours > theirs {
        let best = pushed.iter().max().copied();
        (
            Outcome::PushedWon,
            best.map(|b| (b, ours)),
            format!("the pushed value's priority {ours} beats {theirs}"),
        )
    } else if ours < theirs {
        let best = near.iter().filter(|o| claim(o).0 == theirs).max().copied();
        (
            Outcome::UpstreamWon,
            best.map(|b| (b, theirs)),
            format!("the upstream value's priority {theirs} beats the pushed {ours}"),
        )
    } else {
        (
            Outcome::Siblings,
            None,
            format!("equal priorities ({ours}): both kept as siblings"),
        )
    };
    let near_report = |winner: Option<Value>| Near {
        pushed: pushed.iter().map(|v| (*v).clone()).collect(),
        concurrent: near.iter().map(|v| (*v).clone()).collect(),
        outcome,
        winner,
        detail: detail.clone(),
    };
    let Some((best, priority)) = winner else {
        let report = near_report(None);
        return Some((merged, Some(report)));
    };
    let window_ms = rule.window_ms.max(claim(best).1);
    let meta = Meta {
        token: best.meta().token.clone(),
        priority,
        window_ms,
    };
    let value = match best.bytes() {
        Some(b) => Value::data(b, ts, me),
        None => Value::tombstone(ts, me),
    }
    .with_meta(meta);
    let settled = Object::modify(Some(&merged), &merged.context(), value.clone(), me);
    let report = near_report(Some(value));
    Some((settled, Some(report)))
}

/// A value of `fp` in a report: [`value_json`] plus the priority it was
/// judged with.
fn report_value(v: &Value, fp: &FullPrefix, priority: u8, viewer: &Viewer) -> serde_json::Value {
    let mut o = value_json(v, fp, viewer);
    o["priority"] = json!(priority);
    o
}

/// The JSON record of a near-simultaneous write, its values' writers as
/// the pushing token may see them.
pub(crate) fn report_json(
    fp: &FullPrefix,
    key: &[u8],
    near: &Near,
    rule: &PushRule,
    (me, ts): (NodeId, Hlc),
    viewer: &Viewer,
) -> serde_json::Value {
    let (key_text, key_encoding) = key_text(key);
    let mut o = json!({
        "time_ms": ts.ms(),
        "full_prefix": fp.to_string(),
        "key": key_text,
        "window_ms": rule.window_ms,
        "stage_node": rule.stage.to_string(),
        "upstream_node": me.to_string(),
        "pushed": near.pushed.iter().map(|v| report_value(v, fp, rule.priority, viewer)).collect::<Vec<_>>(),
        "concurrent": near.concurrent.iter().map(|v| report_value(v, fp, claim(v).0, viewer)).collect::<Vec<_>>(),
        "outcome": near.outcome.name(),
        "detail": near.detail,
    });
    if let Some(enc) = key_encoding {
        o["key_encoding"] = json!(enc);
    }
    if let Some(w) = &near.winner {
        o["winner"] = value_json(w, fp, viewer);
    }
    o
}

/// The key of a report record: the commit's timestamp (unique per commit
/// on a node, and sorting by time), then the address.
pub(crate) fn report_key(ts: Hlc, fp: &FullPrefix, key: &[u8]) -> Vec<u8> {
    let mut out = format!("{:013}.{:05}-{fp}/", ts.ms(), ts.0 & 0xffff).into_bytes();
    out.extend_from_slice(key);
    out
}

/// A new object holding `bytes` under a key, superseding what is there.
pub(crate) fn record_object(current: Option<&Object>, bytes: &[u8], ts: Hlc, me: NodeId) -> Object {
    let context = current.map(Object::context).unwrap_or_default();
    Object::modify(current, &context, Value::data(bytes, ts, me), me)
}

fn decode_at(snap: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Result<Option<Object>, String> {
    match snap.get(fp, key) {
        None => Ok(None),
        Some(bytes) => Object::decode(&bytes).map(Some).map_err(|e| {
            format!(
                "{fp}/{} does not hold a metadata object ({e})",
                String::from_utf8_lossy(key)
            )
        }),
    }
}

/// What a push did.
struct Pushed {
    changed: usize,
    reports: Vec<serde_json::Value>,
}

/// A sync route's failure, as the response that says so: an API error or
/// an auth refusal.
struct Failed(Box<Response>);

impl Failed {
    fn bad(message: impl Into<String>) -> Failed {
        ApiError::bad(message).into()
    }
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed(Box::new(e.into_response()))
    }
}

impl From<chorus_store::Error> for Failed {
    fn from(e: chorus_store::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// With auth on: a request without a token is refused before its body is
/// read (401).
fn require_token(api: &Service, headers: &HeaderMap, op: &str, target: &str) -> Result<(), Failed> {
    if !api.auth.enabled() {
        return Ok(());
    }
    let refused = match bearer(headers) {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => AuthError::missing(),
        Err(e) => e,
    };
    tokio::task::block_in_place(|| api.auth.audit_refused(None, "http", op, target, &refused));
    Err(Failed(Box::new(ApiError::from(refused).into_response())))
}

/// With auth on: the request's token must allow `access` to every target
/// (a push writes to each full prefix it names); refusals are audited.
/// The grant names the token for the audit line of a write.
fn authorize(
    api: &Service,
    headers: &HeaderMap,
    op: &str,
    target: &str,
    targets: &[Target<'_>],
    access: Access,
) -> Result<Grant, Failed> {
    if !api.auth.enabled() {
        return Ok(Grant::default());
    }
    let token = bearer(headers).ok().flatten();
    let checked = tokio::task::block_in_place(|| -> Result<Grant, AuthError> {
        let mut grant = Grant::default();
        if targets.is_empty() {
            api.auth.verify(token.ok_or_else(AuthError::missing)?)?;
        }
        for t in targets {
            grant = api.auth.check_target(token, *t, access)?;
        }
        Ok(grant)
    });
    checked.map_err(|e| {
        tokio::task::block_in_place(|| api.auth.audit_refused(token, "http", op, target, &e));
        Failed(Box::new(ApiError::from(e).into_response()))
    })
}

/// Names for an audit line: the first few full prefixes, and how many more.
fn targets_text(fps: &[FullPrefix]) -> String {
    let mut names: Vec<String> = fps.iter().take(8).map(ToString::to_string).collect();
    if fps.len() > 8 {
        names.push(format!("and {} more", fps.len() - 8));
    }
    names.join(", ")
}

async fn push(State(api): State<Service>, headers: HeaderMap, body: Bytes) -> Response {
    push_checked(api, headers, body)
        .await
        .unwrap_or_else(|failed| *failed.0)
}

async fn push_checked(api: Service, headers: HeaderMap, body: Bytes) -> Result<Response, Failed> {
    require_token(&api, &headers, "sync.push", "/v1/sync/push")?;
    let body: PushBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not a push ({e}): send {{\"node\": \"<32 hex digits>\", \"priority\": 0, \"window_ms\": 1000, \"objects\": [{{\"prefix\", \"sub\", \"key\", \"object\": \"<base64>\"}}]}}"
        ))
    })?;
    let exact = body.node.len() == 32 && body.node.bytes().all(|b| b.is_ascii_hexdigit());
    let stage = NodeId::parse_hex(&body.node)
        .filter(|_| exact)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "node {:?} is not a node id: give the stage's 32 hex digits",
                body.node
            ))
        })?;
    if body.window_ms > WINDOW_MS_MAX {
        return Err(Failed::bad(format!(
            "window_ms {} is over the limit of {WINDOW_MS_MAX} (one day)",
            body.window_ms
        )));
    }
    if body.objects.len() > PUSH_OBJECTS_MAX {
        return Err(Failed::bad(format!(
            "{} objects in one push; the limit is {PUSH_OBJECTS_MAX}: split the push",
            body.objects.len()
        )));
    }
    let max_key = api.meta.store().options().limits.max_key_bytes;
    let mut objects = Vec::with_capacity(body.objects.len());
    for (i, o) in body.objects.iter().enumerate() {
        let decoded = o
            .decode(max_key)
            .map_err(|e| ApiError::bad(format!("objects[{i}]: {e}")))?;
        objects.push(decoded);
    }
    let mut fps: Vec<FullPrefix> = objects.iter().map(|(fp, _, _)| fp.clone()).collect();
    fps.sort();
    fps.dedup();
    let target = targets_text(&fps);
    let targets: Vec<Target<'_>> = fps.iter().map(Target::FullPrefix).collect();
    let grant = authorize(
        &api,
        &headers,
        "sync.push",
        &target,
        &targets,
        Access::Write,
    )?;
    // After the token check: who is a member is not told to anyone.
    let me = api.meta.store().node_id();
    let members = tokio::task::block_in_place(|| crate::members::read_all(&api.meta))?;
    let members = members.values().filter_map(|m| NodeId::parse_hex(&m.node));
    check_pusher(stage, me, members).map_err(|r| ApiError::new(Kind::Conflict, r.to_string()))?;
    let rule = PushRule {
        stage,
        priority: body.priority,
        window_ms: body.window_ms,
    };
    let keys = objects.len();
    let store = api.meta.store().clone();
    let clock = Clock::of(crate::unix_ms(), api.max_clock_skew);
    let token = grant.token_id.clone();
    let viewer = tokio::task::block_in_place(|| api.viewer(&grant));
    let outcome = tokio::task::spawn_blocking(move || {
        store.update_returning(move |snap| {
            let pusher = Pusher {
                node: rule.stage,
                token: token.as_deref(),
                priority: rule.priority,
                window_ms: rule.window_ms,
            };
            merge_push(snap, objects, &rule, (&pusher, clock), &viewer, me)
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("the push task failed: {e}")))?;
    let ok = outcome.is_ok();
    tokio::task::block_in_place(|| api.auth.audit(&grant, "http", "sync.push", &target, ok));
    let (info, pushed) = outcome.map_err(ApiError::from)?;
    api.wrote();
    for r in &pushed.reports {
        tracing::warn!(
            "near-simultaneous write on {}/{} from stage {}: {} ({})",
            r["full_prefix"].as_str().unwrap_or(""),
            r["key"].as_str().unwrap_or(""),
            stage,
            r["outcome"].as_str().unwrap_or(""),
            r["detail"].as_str().unwrap_or("")
        );
    }
    Ok(axum::Json(json!({
        "node": me.to_string(),
        "keys": keys,
        "changed": pushed.changed,
        "seq": info.map(|i| i.seq),
        "reports": pushed.reports,
    }))
    .into_response())
}

/// The writes of a push, under the writer lock: every object checked
/// against this node's copy (`validate::check_pushed`: a refusal fails the
/// whole push, nothing written) and merged, the priority rule applied, a
/// report record per near-simultaneous write.
fn merge_push(
    snap: &Snapshot,
    objects: Vec<(FullPrefix, Vec<u8>, Object)>,
    rule: &PushRule,
    (pusher, clock): (&Pusher<'_>, Clock),
    viewer: &Viewer,
    me: NodeId,
) -> chorus_store::Result<(Vec<Write>, Pushed)> {
    let ts = Hlc(snap.commit_ts().unwrap_or_else(|| snap.last_ts()));
    let bad = chorus_store::Error::InvalidInput;
    let mut merged: BTreeMap<(FullPrefix, Vec<u8>), Object> = BTreeMap::new();
    let mut reports = Vec::new();
    for (i, (fp, key, remote)) in objects.into_iter().enumerate() {
        let slot = (fp, key);
        let local = match merged.get(&slot) {
            Some(pending) => Some(pending.clone()),
            None => decode_at(snap, &slot.0, &slot.1).map_err(bad)?,
        };
        let remote = check_pushed(&remote, local.as_ref(), pusher, clock)
            .map_err(|r| refused(i, &slot.0, &slot.1, &r))?;
        if let Some((object, near)) = merge_pushed(local.as_ref(), &remote, rule, ts, me) {
            if let Some(near) = near {
                let report = report_json(&slot.0, &slot.1, &near, rule, (me, ts), viewer);
                reports.push((slot.0.clone(), slot.1.clone(), report));
            }
            merged.insert(slot, object);
        }
    }
    let mut writes: Vec<Write> = merged
        .iter()
        .map(|((fp, key), object)| Write::put(fp, key, &object.encode()))
        .collect();
    let changed = writes.len();
    let reports_fp = FullPrefix::new(REPORTS.0, REPORTS.1).map_err(|e| bad(e.to_string()))?;
    for (fp, key, report) in &reports {
        let record_key = report_key(ts, fp, key);
        let current = decode_at(snap, &reports_fp, &record_key).map_err(bad)?;
        let object = record_object(current.as_ref(), report.to_string().as_bytes(), ts, me);
        writes.push(Write::put(&reports_fp, &record_key, &object.encode()));
    }
    let reports = reports.into_iter().map(|(_, _, r)| r).collect();
    Ok((writes, Pushed { changed, reports }))
}

/// The error of a push refused for one object: 409 when it conflicts with
/// this node's state (its clock, what it has seen), else 400.
fn refused(i: usize, fp: &FullPrefix, key: &[u8], r: &Refusal) -> chorus_store::Error {
    let message = format!(
        "objects[{i}] {fp}/{}: {r}; nothing of the push was written",
        key_text(key).0
    );
    if r.is_conflict() {
        chorus_store::Error::Conflict(message)
    } else {
        chorus_store::Error::InvalidInput(message)
    }
}

#[derive(Deserialize)]
struct PullQuery {
    prefix: Option<String>,
    sub: Option<String>,
    cursor: Option<String>,
    after: Option<String>,
}

/// Which full prefixes a pull covers: one, or every subprefix of a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PullScope {
    pub(crate) prefix: String,
    pub(crate) sub: Option<String>,
}

impl PullScope {
    /// Checks the names: valid, and not reserved.
    pub(crate) fn new(prefix: &str, sub: Option<&str>) -> Result<PullScope, String> {
        let fp = FullPrefix::new(prefix, sub.unwrap_or("x")).map_err(|e| e.to_string())?;
        if fp.is_reserved() {
            return Err(format!(
                "{}: names starting with '$' are reserved for Chorus itself and never synced",
                sub.map_or_else(|| prefix.to_string(), |s| format!("{prefix}/{s}"))
            ));
        }
        Ok(PullScope {
            prefix: prefix.to_string(),
            sub: sub.map(str::to_string),
        })
    }

    pub(crate) fn covers(&self, fp: &FullPrefix) -> bool {
        fp.prefix() == self.prefix && self.sub.as_deref().is_none_or(|s| fp.subprefix() == s)
    }
}

impl std::fmt::Display for PullScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sub {
            Some(s) => write!(f, "{}/{s}", self.prefix),
            None => f.write_str(&self.prefix),
        }
    }
}

/// The `after` token of a full pull: the last (subprefix, key) sent.
pub(crate) fn after_token(sub: &str, key: &[u8]) -> String {
    let mut raw = sub.as_bytes().to_vec();
    raw.push(0);
    raw.extend_from_slice(key);
    URL_SAFE_NO_PAD.encode(raw)
}

fn parse_after(text: &str) -> Result<(String, Vec<u8>), ApiError> {
    let bad = || ApiError::bad(format!("after={text:?} is not a token a pull returned"));
    let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let split = raw.iter().position(|b| *b == 0).ok_or_else(bad)?;
    let sub = String::from_utf8(raw[..split].to_vec()).map_err(|_| bad())?;
    Ok((sub, raw[split + 1..].to_vec()))
}

/// Changes of a prefix since a cursor, or everything under it.
///
/// - with `cursor`: the objects the commits after it wrote (each key once,
///   as it is now in the feed's order), at most [`PULL_KEYS_MAX`] keys and
///   [`PULL_BYTES_MAX`] bytes, from at most [`PULL_SCAN_COMMITS_MAX`]
///   commits and [`PULL_SCAN_BYTES_MAX`] bytes read (in scope or not),
///   and the cursor to continue from, which moves past every commit read
///   even when none was in scope; `more` says whether to ask again at
///   once. A cursor compaction outran gets 410 (`cursor_compacted`): pull
///   everything again.
/// - without: every object under the prefix, in (subprefix, key) order,
///   a page at a time (`after` = the previous page's `after`), and the
///   feed cursor taken before the first page's read: continue from the
///   first page's cursor once every page is read.
async fn pull(
    State(api): State<Service>,
    headers: HeaderMap,
    Query(q): Query<PullQuery>,
) -> Response {
    pull_checked(api, headers, q)
        .await
        .unwrap_or_else(|failed| *failed.0)
}

async fn pull_checked(api: Service, headers: HeaderMap, q: PullQuery) -> Result<Response, Failed> {
    require_token(&api, &headers, "sync.pull", "/v1/sync/pull")?;
    let prefix = q.prefix.as_deref().ok_or_else(|| {
        ApiError::bad("pull needs ?prefix=PREFIX (and &sub=SUBPREFIX for one full prefix)")
    })?;
    let scope = PullScope::new(prefix, q.sub.as_deref()).map_err(ApiError::bad)?;
    let fp = match &scope.sub {
        Some(sub) => Some(FullPrefix::new(&scope.prefix, sub).map_err(ApiError::from)?),
        None => None,
    };
    let target = match &fp {
        Some(fp) => Target::FullPrefix(fp),
        None => Target::Prefix(&scope.prefix),
    };
    authorize(
        &api,
        &headers,
        "sync.pull",
        &scope.to_string(),
        &[target],
        Access::Read,
    )?;
    let me = api.meta.store().node_id().to_string();
    let store = api.meta.store().clone();
    let out = match q.cursor.as_deref() {
        Some(text) => {
            if q.after.is_some() {
                return Err(Failed::bad(
                    "give cursor (changes since) or after (the next page of a full pull), not both",
                ));
            }
            let cursor = Cursor::parse(text)?;
            tokio::task::block_in_place(|| pull_changes(&store, &scope, cursor))?
        }
        None => {
            let after = q.after.as_deref().map(parse_after).transpose()?;
            tokio::task::block_in_place(|| pull_all(&store, &scope, after))?
        }
    };
    match out {
        Pulled::Gap(first_seq) => {
            let message = format!(
                "changes before seq {first_seq} were compacted since this cursor: pull again without a cursor"
            );
            let body = json!({"code": "cursor_compacted", "message": message});
            Ok((StatusCode::GONE, axum::Json(body)).into_response())
        }
        Pulled::Page {
            objects,
            cursor,
            more,
            after,
        } => {
            let mut body = json!({
                "node": me, "objects": objects, "cursor": cursor.to_string(), "more": more,
            });
            if let Some(a) = after {
                body["after"] = json!(a);
            }
            Ok(axum::Json(body).into_response())
        }
    }
}

enum Pulled {
    Gap(u64),
    Page {
        objects: Vec<WireObject>,
        cursor: Cursor,
        more: bool,
        after: Option<String>,
    },
}

fn pull_changes(
    store: &chorus_store::Store,
    scope: &PullScope,
    from: Cursor,
) -> chorus_store::Result<Pulled> {
    // Latest bytes per key, in the order keys first changed.
    let mut order: Vec<(FullPrefix, Vec<u8>)> = Vec::new();
    let mut latest: BTreeMap<(FullPrefix, Vec<u8>), Option<chorus_store::Bytes>> = BTreeMap::new();
    let mut bytes = 0usize;
    let (mut scanned, mut scanned_bytes) = (0usize, 0usize);
    let mut cursor = from;
    loop {
        let (changes, next) = match store.changes_since(&cursor, PULL_FEED_BATCH)? {
            Feed::Gap { first_seq, .. } => return Ok(Pulled::Gap(first_seq)),
            Feed::Changes { changes, next } => (changes, next),
        };
        if changes.is_empty() {
            break;
        }
        for change in changes {
            for k in change.keys {
                let size = k.value.as_ref().map_or(0, |v| v.len()) + k.key.len();
                scanned_bytes = scanned_bytes.saturating_add(size);
                if !scope.covers(&k.full_prefix) {
                    continue;
                }
                let slot = (k.full_prefix, k.key);
                match latest.get_mut(&slot) {
                    Some(v) => *v = k.value,
                    None => {
                        order.push(slot.clone());
                        latest.insert(slot, k.value);
                    }
                }
                bytes += size;
            }
            scanned += 1;
            // A commit's own position is a cursor just after it.
            cursor = change.position;
            if bytes >= PULL_BYTES_MAX
                || latest.len() >= PULL_KEYS_MAX
                || scanned >= PULL_SCAN_COMMITS_MAX
                || scanned_bytes >= PULL_SCAN_BYTES_MAX
            {
                return Ok(page(order, latest, cursor, true));
            }
        }
        cursor = next;
    }
    Ok(page(order, latest, cursor, false))
}

fn page(
    order: Vec<(FullPrefix, Vec<u8>)>,
    mut latest: BTreeMap<(FullPrefix, Vec<u8>), Option<chorus_store::Bytes>>,
    cursor: Cursor,
    more: bool,
) -> Pulled {
    let objects = order
        .into_iter()
        .filter_map(|slot| {
            let value = latest.remove(&slot).flatten()?;
            Some(WireObject::new(&slot.0, &slot.1, &value))
        })
        .collect();
    Pulled::Page {
        objects,
        cursor,
        more,
        after: None,
    }
}

fn pull_all(
    store: &chorus_store::Store,
    scope: &PullScope,
    after: Option<(String, Vec<u8>)>,
) -> chorus_store::Result<Pulled> {
    // The cursor first: whatever commits between it and the snapshot is
    // read twice, never missed.
    let cursor = store.cursor()?;
    let snap = store.snapshot()?;
    let mut prefixes: Vec<&FullPrefix> = snap.prefixes().filter(|fp| scope.covers(fp)).collect();
    prefixes.sort_by(|a, b| a.subprefix().cmp(b.subprefix()));
    let mut objects = Vec::new();
    let (mut bytes, mut more, mut last) = (0usize, false, None);
    'prefixes: for fp in prefixes {
        if let Some((sub, _)) = &after
            && fp.subprefix() < sub.as_str()
        {
            continue;
        }
        // Only the keys this page can hold, and one more to tell whether
        // more follow: memory in proportion to the page, not the prefix.
        let room = PULL_KEYS_MAX.saturating_sub(objects.len()) + 1;
        let keys = smallest(
            snap.iter_prefix(fp)
                .map(|(k, e)| (k.as_bytes(), e))
                .filter(|(k, _)| match &after {
                    Some((sub, key)) if fp.subprefix() == sub.as_str() => *k > key.as_slice(),
                    _ => true,
                }),
            room,
        );
        for (key, entry) in keys {
            if objects.len() >= PULL_KEYS_MAX || (bytes >= PULL_BYTES_MAX && !objects.is_empty()) {
                more = true;
                break 'prefixes;
            }
            bytes += entry.value.len() + key.len();
            objects.push(WireObject::new(fp, key, &entry.value));
            last = Some(after_token(fp.subprefix(), key));
        }
    }
    Ok(Pulled::Page {
        objects,
        cursor,
        more,
        after: if more { last } else { None },
    })
}

/// The `n` smallest keys of `keys`, in order, holding at most `n` at once.
fn smallest<'a>(
    keys: impl Iterator<Item = (&'a [u8], &'a chorus_store::Entry)>,
    n: usize,
) -> Vec<(&'a [u8], &'a chorus_store::Entry)> {
    struct ByKey<'a>(&'a [u8], &'a chorus_store::Entry);
    impl PartialEq for ByKey<'_> {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }
    impl Eq for ByKey<'_> {}
    impl PartialOrd for ByKey<'_> {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for ByKey<'_> {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.cmp(other.0)
        }
    }
    let mut heap = std::collections::BinaryHeap::with_capacity(n.min(PULL_KEYS_MAX) + 1);
    for (k, e) in keys {
        if heap.len() < n {
            heap.push(ByKey(k, e));
        } else if heap.peek().is_some_and(|top| k < top.0) {
            heap.pop();
            heap.push(ByKey(k, e));
        }
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|b| (b.0, b.1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    /// A value written by node `n` at `ms`.
    fn v(text: &str, ms: u64, n: u8) -> Value {
        Value::data(text.as_bytes(), Hlc(ms << 16), node(n))
    }

    /// A fresh object holding one value.
    fn one(value: Value) -> Object {
        let n = value.node;
        Object::modify(None, &Object::empty_context(), value, n)
    }

    fn texts(o: &Object) -> Vec<String> {
        let mut t: Vec<String> = o
            .values()
            .iter()
            .map(|v| String::from_utf8_lossy(v.bytes().unwrap_or(b"<deleted>")).into_owned())
            .collect();
        t.sort();
        t
    }

    const UP: u8 = 9;

    fn rule(priority: u8, window_ms: u32) -> PushRule {
        PushRule {
            stage: node(1),
            priority,
            window_ms,
        }
    }

    fn push(
        local: Option<&Object>,
        remote: &Object,
        r: PushRule,
    ) -> Option<(Object, Option<Near>)> {
        merge_pushed(local, remote, &r, Hlc(10_000 << 16), node(UP))
    }

    #[test]
    fn a_push_that_meets_nothing_concurrent_is_a_plain_merge() {
        let remote = one(v("staged", 1000, 1));
        let (o, near) = push(None, &remote, rule(0, 1000)).expect("new key");
        assert_eq!(texts(&o), ["staged"]);
        assert!(near.is_none());
        // The stage saw the upstream value and superseded it: no report.
        let up = one(v("up", 1000, UP));
        let over = Object::modify(Some(&up), &up.context(), v("staged", 1001, 1), node(1));
        let (o, near) = push(Some(&up), &over, rule(0, 1000)).expect("newer");
        assert_eq!(texts(&o), ["staged"]);
        assert!(near.is_none());
        // The same push again changes nothing and reports nothing.
        assert!(push(Some(&o), &over, rule(0, 1000)).is_none());
    }

    #[test]
    fn concurrent_writes_within_the_window_are_reported_and_equal_priorities_stay_siblings() {
        let up = one(v("up", 1000, UP));
        let remote = one(v("staged", 1400, 1));
        let (o, near) = push(Some(&up), &remote, rule(0, 500)).expect("merged");
        assert_eq!(texts(&o), ["staged", "up"]);
        let near = near.expect("reported");
        assert_eq!(near.outcome, Outcome::Siblings);
        assert!(near.winner.is_none());
        assert_eq!(near.concurrent, vec![v("up", 1000, UP)]);
        assert_eq!(near.pushed, vec![v("staged", 1400, 1)]);
        // Outside the window: siblings, not reported.
        let (o, near) = push(Some(&up), &remote, rule(3, 399)).expect("merged");
        assert_eq!(texts(&o), ["staged", "up"]);
        assert!(near.is_none());
    }

    #[test]
    fn a_higher_priority_settles_the_siblings_in_the_push() {
        let up = one(v("up", 1000, UP));
        let remote = one(v("staged", 1200, 1));
        let (o, near) = push(Some(&up), &remote, rule(4, 1000)).expect("merged");
        assert_eq!(texts(&o), ["staged"], "one value, superseding both");
        let won = o.value().expect("one value");
        assert_eq!((won.meta().priority, won.meta().window_ms), (4, 1000));
        assert_eq!(won.node, node(UP));
        assert_eq!(won.timestamp, Hlc(10_000 << 16));
        let near = near.expect("reported");
        assert_eq!(near.outcome, Outcome::PushedWon);
        assert_eq!(
            near.concurrent,
            vec![v("up", 1000, UP)],
            "the loser is kept"
        );
        // Both values are covered: replaying either against it is stale.
        assert!(Object::reconcile(&up, Some(&o)).is_none());
        assert!(Object::reconcile(&remote, Some(&o)).is_none());
    }

    #[test]
    fn a_recorded_priority_beats_a_lower_push_within_its_own_window() {
        let prior = Meta {
            token: Some("tok-1".into()),
            priority: 7,
            window_ms: 5000,
        };
        let up = one(v("important", 1000, UP).with_meta(prior));
        // The push's own window (10 ms) is shorter than the recorded one.
        let remote = one(v("ordinary", 4000, 1));
        let (o, near) = push(Some(&up), &remote, rule(2, 10)).expect("merged");
        assert_eq!(texts(&o), ["important"]);
        let kept = o.value().expect("one value");
        assert_eq!(kept.meta().priority, 7);
        assert_eq!(kept.meta().window_ms, 5000);
        assert_eq!(kept.meta().token.as_deref(), Some("tok-1"));
        let near = near.expect("reported");
        assert_eq!(near.outcome, Outcome::UpstreamWon);
        assert_eq!(
            near.pushed,
            vec![v("ordinary", 4000, 1)],
            "the loser is kept"
        );
    }

    #[test]
    fn priorities_apply_only_when_every_sibling_is_near() {
        // Two upstream siblings, one near the push and one long before.
        let a = one(v("old", 100, UP));
        let b = one(v("recent", 5000, 8));
        let up = Object::reconcile(&b, Some(&a)).expect("siblings");
        let remote = one(v("staged", 5100, 1));
        let (o, near) = push(Some(&up), &remote, rule(9, 1000)).expect("merged");
        assert_eq!(texts(&o), ["old", "recent", "staged"]);
        let near = near.expect("reported");
        assert_eq!(near.outcome, Outcome::Siblings);
        assert_eq!(near.concurrent, vec![v("recent", 5000, 8)]);
        assert!(
            near.detail.contains("outside the window"),
            "{}",
            near.detail
        );
    }

    #[test]
    fn a_pushed_delete_can_win() {
        let up = one(v("up", 1000, UP));
        let remote = one(Value::tombstone(Hlc(1100 << 16), node(1)));
        let (o, near) = push(Some(&up), &remote, rule(1, 1000)).expect("merged");
        assert!(o.is_tombstone());
        assert_eq!(near.map(|n| n.outcome), Some(Outcome::PushedWon));
    }

    #[test]
    fn report_keys_sort_by_time_and_name_the_key() {
        let fp = FullPrefix::new("app", "cfg").expect("fp");
        let a = report_key(Hlc((1000 << 16) | 2), &fp, b"k");
        let b = report_key(Hlc(1001 << 16), &fp, b"k");
        assert!(a < b);
        assert_eq!(a, b"0000000001000.00002-app/cfg/k".to_vec());
    }

    #[test]
    fn after_tokens_round_trip() {
        let t = after_token("sub", b"a\xffb");
        let (sub, key) = parse_after(&t).map_err(|_| "bad").expect("token");
        assert_eq!((sub.as_str(), key.as_slice()), ("sub", &b"a\xffb"[..]));
        assert!(parse_after("!!").is_err());
    }
}
