//! The HTTP/JSON API: keys, hashes, a change stream, the cluster view,
//! metrics, health and an OpenAPI document.
//!
//! Every error is `{"code": ..., "message": ...}` with a status that says
//! what kind it is; request bodies are limited to [`BODY_MAX`] bytes.
//! Reads are answered from this process's copy of the store; writes commit
//! locally and are acknowledged before they replicate.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_core::FullPrefix;
use chorus_core::object::{context_from_string, context_to_string};
use chorus_store::{
    Cursor, Feed, GetOptions, IterOptions, Match, Metadata, Origin, PutOptions, PutValue, Resolver,
    Scope,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::json::{read_json, value_json};

/// Largest request body accepted.
pub const BODY_MAX: usize = 1 << 20;
/// Commits a watch reads per poll, and how often it polls.
const WATCH_BATCH: usize = 256;
const WATCH_POLL: Duration = Duration::from_millis(25);
/// The header that carries a context.
const CONTEXT_HEADER: &str = "x-chorus-context";

/// What the core shares with the API: its view of the cluster and its
/// counters, refreshed as it runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterView {
    /// This node's id.
    pub node: String,
    /// Where it listens for peers.
    pub gossip: String,
    /// HyParView's active view.
    pub active: Vec<String>,
    /// HyParView's passive view.
    pub passive: Vec<String>,
    /// Plumtree's eager links.
    pub eager: Vec<String>,
    /// Plumtree's lazy links.
    pub lazy: Vec<String>,
    /// Seconds since the last finished exchange with each peer.
    pub last_exchange: Vec<(String, f64)>,
    /// Every member this node knows of, and its state (`up`, `left`).
    pub members: Vec<(String, &'static str)>,
    /// Counters (name, value) for /metrics.
    pub counters: Vec<(&'static str, u64)>,
}

/// What the API asks of the core.
#[derive(Debug)]
pub(crate) enum Command {
    /// Join the cluster through this peer.
    Join(String),
}

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) committed: Arc<tokio::sync::Notify>,
    pub(crate) commands: tokio::sync::mpsc::Sender<Command>,
    pub(crate) meta: Metadata,
    pub(crate) view: Arc<Mutex<ClusterView>>,
    pub(crate) requests: Arc<Mutex<RequestStats>>,
    /// Operation logs, shared so that compiled script reducers are kept.
    pub(crate) oplogs: chorus_store::oplog::Oplogs,
    /// The ZeroMQ broker's counters (zero when it is not running).
    pub(crate) broker: Arc<crate::broker::Stats>,
    /// Token checks and the audit log (see `auth_http.rs`).
    pub(crate) auth: crate::auth::Auth,
}

/// Request counts and latencies by operation.
#[derive(Debug, Default)]
pub(crate) struct RequestStats {
    reads: (u64, f64),
    writes: (u64, f64),
}

/// An API error: a status, a stable code and a message for people.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
    /// The stable code (`bad_request`, `not_found`, ...), the same over
    /// HTTP and ZeroMQ.
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }
    /// What happened and what to do, for people.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<chorus_store::Error> for ApiError {
    fn from(e: chorus_store::Error) -> Self {
        use chorus_store::Error as E;
        let (status, code) = match &e {
            E::NotInitialized { .. } | E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            E::InvalidInput(_) | E::NetworkFilesystem { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            E::WriteConflict { .. } => (StatusCode::CONFLICT, "conflict"),
            E::LockTimeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "lock_timeout"),
            E::Corruption { .. } | E::Io { .. } | E::Poisoned(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.kind.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.kind.code(),
            message: e.message,
        }
    }
}

impl From<chorus_core::NameError> for ApiError {
    fn from(e: chorus_core::NameError) -> Self {
        ApiError::bad(e.to_string())
    }
}

/// The routes.
pub(crate) fn router(api: Api) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/join", axum::routing::post(cluster_join))
        .route(
            "/v1/kv/{prefix}/{sub}/{*key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route("/v1/kv/{prefix}/{sub}", get(kv_list))
        .route("/v1/hash/{prefix}", get(hash_prefix))
        .route("/v1/hash/{prefix}/{sub}", get(hash_full))
        .route("/v1/watch", get(watch))
        .merge(crate::docs_http::routes())
        .merge(crate::ops_http::routes())
        .merge(crate::sync_http::routes())
        .merge(crate::auth_http::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            crate::auth_http::guard,
        ))
        .fallback(|| async { ApiError::not_found("no such route: see /openapi.json") })
        .layer(DefaultBodyLimit::max(BODY_MAX))
        .with_state(api)
}

async fn health(State(api): State<Api>) -> Response {
    let node = api.meta.store().node_id().to_string();
    axum::Json(json!({"status": "ok", "node": node})).into_response()
}

async fn cluster(State(api): State<Api>) -> Response {
    let view = api
        .view
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    axum::Json(view).into_response()
}

#[derive(Deserialize)]
struct JoinBody {
    peer: String,
}

async fn cluster_join(
    State(api): State<Api>,
    body: Result<axum::Json<JoinBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let axum::Json(body) = body.map_err(|e| {
        ApiError::bad(format!(
            "the body must be JSON like {{\"peer\": \"127.0.0.1:7900\"}}: {e}"
        ))
    })?;
    let addr: std::net::SocketAddr = body.peer.parse().map_err(|_| {
        ApiError::bad(format!(
            "peer {:?} is not HOST:PORT with a numeric address",
            body.peer
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(ApiError::bad(format!(
            "peer {addr}: plaintext gossip reaches loopback addresses only"
        )));
    }
    api.commands
        .try_send(Command::Join(addr.to_string()))
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "busy",
            message: "the node is busy: try again".into(),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"joining": addr.to_string()})),
    )
        .into_response())
}

async fn metrics(State(api): State<Api>) -> Response {
    let view = api
        .view
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut out = String::new();
    for (name, value) in &view.counters {
        out.push_str(&format!(
            "# TYPE chorus_{name} counter\nchorus_{name} {value}\n"
        ));
    }
    let gauges = [
        ("active_peers", view.active.len()),
        ("passive_peers", view.passive.len()),
        ("eager_links", view.eager.len()),
        ("lazy_links", view.lazy.len()),
    ];
    for (name, value) in gauges {
        out.push_str(&format!(
            "# TYPE chorus_{name} gauge\nchorus_{name} {value}\n"
        ));
    }
    let w = api.meta.store().write_stats();
    for (name, value, help) in [
        (
            "store_commits_total",
            w.commits,
            "commits this daemon appended (local writes and merges)",
        ),
        ("store_frames_total", w.frames, "log frames they took"),
        (
            "store_syncs_total",
            w.syncs,
            "fdatasyncs they took: below commits when writes arrive together",
        ),
    ] {
        out.push_str(&format!(
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} counter\nchorus_{name} {value}\n"
        ));
    }
    for (name, kind, help, value) in api.broker.metrics() {
        out.push_str(&format!(
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} {kind}\nchorus_{name} {value}\n"
        ));
    }
    let r = api
        .requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (name, (count, secs)) in [("read", r.reads), ("write", r.writes)] {
        out.push_str(&format!(
            "# TYPE chorus_http_{name}_seconds summary\nchorus_http_{name}_seconds_count {count}\nchorus_http_{name}_seconds_sum {secs}\n"
        ));
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

async fn openapi() -> Response {
    (
        [("content-type", "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct GetQuery {
    resolve: Option<String>,
    allow_put: Option<bool>,
}

fn full_prefix(prefix: &str, sub: &str) -> Result<FullPrefix, ApiError> {
    Ok(FullPrefix::new(prefix, sub)?)
}

fn context_header(headers: &HeaderMap) -> Result<Option<chorus_core::object::Context>, ApiError> {
    let Some(raw) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
    let text = raw.to_str().map_err(|_| {
        ApiError::bad("X-Chorus-Context is not ASCII: send the context a read returned")
    })?;
    context_from_string(text).map(Some).map_err(|e| {
        ApiError::bad(format!(
            "X-Chorus-Context is not a context ({e}): send the context a read returned"
        ))
    })
}

pub(crate) fn record(api: &Api, write: bool, started: Instant) {
    let mut r = api
        .requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let slot = if write { &mut r.writes } else { &mut r.reads };
    slot.0 += 1;
    slot.1 += started.elapsed().as_secs_f64();
}

/// The resolver a client names (HTTP `?resolve=`, ZeroMQ `"resolve"`):
/// none, or `lww`.
pub(crate) fn resolver(name: Option<&str>) -> Result<Resolver, ApiError> {
    match name {
        None => Ok(Resolver::None),
        Some("lww") => Ok(Resolver::Lww),
        Some(other) => Err(ApiError::bad(format!(
            "resolve {other:?}: the only resolver a client can name is lww (leave it out to get every sibling)"
        ))),
    }
}

// A Writer: with allow_put a read may write the resolved value back.
async fn kv_get(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path((prefix, sub, key)): Path<(String, String, String)>,
    Query(q): Query<GetQuery>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let fp = full_prefix(&prefix, &sub)?;
    let opts = GetOptions {
        resolver: resolver(q.resolve.as_deref())?,
        allow_put: q.allow_put.unwrap_or(false),
        ..GetOptions::default()
    };
    let meta = api.meta.clone();
    let k = key.clone();
    let read = tokio::task::block_in_place(|| meta.get(&fp, k.as_bytes(), &opts))?;
    record(&api, false, started);
    let Some(read) = read else {
        return Err(ApiError::not_found(format!(
            "{fp}/{key} is absent or deleted"
        )));
    };
    let mut response = axum::Json(read_json(&read)).into_response();
    if let Ok(h) = HeaderValue::from_str(&context_to_string(&read.context)) {
        response.headers_mut().insert(CONTEXT_HEADER, h);
    }
    Ok(response)
}

async fn kv_put(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path((prefix, sub, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(
        api,
        prefix,
        sub,
        key,
        headers,
        PutValue::Bytes(body.to_vec()),
    )
    .await
}

async fn kv_delete(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path((prefix, sub, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write(api, prefix, sub, key, headers, PutValue::Tombstone).await
}

async fn write(
    api: Api,
    prefix: String,
    sub: String,
    key: String,
    headers: HeaderMap,
    value: PutValue,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let fp = full_prefix(&prefix, &sub)?;
    let context = context_header(&headers)?;
    let deleted = matches!(value, PutValue::Tombstone);
    let meta = api.meta.clone();
    let (k, f) = (key.clone(), fp.clone());
    // On the blocking pool, not in place: concurrent writes then wait in
    // the store's commit queue together and share one sync.
    let info = tokio::task::spawn_blocking(move || {
        meta.put(&f, k.as_bytes(), value, &PutOptions { context })
    })
    .await
    .map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: format!("the write task failed: {e}"),
    })??;
    // The core reads the feed now instead of at its next tick, so the
    // write starts replicating at once.
    api.committed.notify_one();
    record(&api, true, started);
    Ok(axum::Json(json!({
        "full_prefix": fp.to_string(), "key": key, "seq": info.seq, "deleted": deleted
    }))
    .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(rename = "match")]
    pattern: Option<String>,
}

async fn kv_list(
    State(api): State<Api>,
    Path((prefix, sub)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let fp = full_prefix(&prefix, &sub)?;
    let opts = IterOptions {
        matching: q.pattern.map_or(Match::All, Match::Glob),
        ..IterOptions::default()
    };
    let meta = api.meta.clone();
    let items = tokio::task::block_in_place(|| meta.to_list(&Scope::FullPrefix(fp), &opts))?;
    Ok(axum::Json(crate::json::list_json(&items)).into_response())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn hash_prefix(
    State(api): State<Api>,
    Path(prefix): Path<String>,
) -> Result<Response, ApiError> {
    FullPrefix::new(&prefix, "x")?;
    let hash = tokio::task::block_in_place(|| api.meta.prefix_hash_all(&prefix))?;
    Ok(axum::Json(json!({"prefix": prefix, "hash": hex(&hash)})).into_response())
}

async fn hash_full(
    State(api): State<Api>,
    Path((prefix, sub)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let fp = full_prefix(&prefix, &sub)?;
    let hash = tokio::task::block_in_place(|| api.meta.prefix_hash(&fp))?;
    Ok(axum::Json(json!({"full_prefix": fp.to_string(), "hash": hex(&hash)})).into_response())
}

#[derive(Deserialize)]
struct WatchQuery {
    prefix: Option<String>,
}

/// Which keys a watch reports: a prefix, or a full prefix.
fn watch_scope(text: Option<&str>) -> Result<Option<(String, Option<String>)>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    match text.split_once('/') {
        Some((p, s)) => {
            FullPrefix::new(p, s)?;
            Ok(Some((p.to_string(), Some(s.to_string()))))
        }
        None => {
            FullPrefix::new(text, "x")?;
            Ok(Some((text.to_string(), None)))
        }
    }
}

/// Server-sent events for every change, local or from a peer, from now or
/// from `Last-Event-ID`. Each event's id is a feed position; a client that
/// falls so far behind that compaction dropped what it had not read is
/// sent an `overflow` event and the stream ends: nothing is buffered for
/// it, it reads the log at its own pace.
async fn watch(
    State(api): State<Api>,
    Query(q): Query<WatchQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let scope = watch_scope(q.prefix.as_deref())?;
    let cursor = match headers.get("last-event-id") {
        Some(raw) => {
            let text = raw
                .to_str()
                .map_err(|_| ApiError::bad("Last-Event-ID is not ASCII"))?;
            Cursor::parse(text)?
        }
        None => tokio::task::block_in_place(|| api.meta.store().cursor())?,
    };
    // With auth on, the token that opened the stream is checked again
    // while it runs: a revoked or expired token ends it.
    let recheck = if api.auth.enabled() {
        let token = crate::auth_http::bearer(&headers)
            .ok()
            .flatten()
            .map(str::to_string)
            .unwrap_or_default();
        Some(Recheck {
            auth: api.auth.clone(),
            token,
            last: Instant::now(),
        })
    } else {
        None
    };
    let state = WatchState {
        meta: api.meta.clone(),
        cursor,
        scope,
        pending: std::collections::VecDeque::new(),
        ended: false,
        hide_reserved: api.auth.enabled(),
        recheck,
    };
    let stream = futures_util::stream::unfold(state, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct WatchState {
    meta: Metadata,
    cursor: Cursor,
    scope: Option<(String, Option<String>)>,
    pending: std::collections::VecDeque<SseEvent>,
    ended: bool,
    /// With auth on, no token reaches reserved names: their changes are
    /// not shown. `$auth` (secrets) is never shown.
    hide_reserved: bool,
    /// With auth on: the stream's token, checked again every
    /// [`RECHECK`].
    recheck: Option<Recheck>,
}

/// How often an open watch checks its token again.
const RECHECK: Duration = Duration::from_secs(1);

struct Recheck {
    auth: crate::auth::Auth,
    token: String,
    last: Instant,
}

impl WatchState {
    /// Whether the stream's token still allows it (always, with auth off).
    fn allowed(&mut self) -> Result<(), String> {
        let Some(r) = &mut self.recheck else {
            return Ok(());
        };
        if r.last.elapsed() < RECHECK {
            return Ok(());
        }
        r.last = Instant::now();
        let fp = match &self.scope {
            Some((p, Some(sub))) => Some(FullPrefix::new(p, sub).map_err(|e| e.to_string())?),
            _ => None,
        };
        let target = match (&self.scope, &fp) {
            (_, Some(fp)) => crate::auth::Target::FullPrefix(fp),
            (Some((p, None)), None) => crate::auth::Target::Prefix(p),
            _ => crate::auth::Target::All,
        };
        r.auth
            .check_target(Some(&r.token), target, crate::auth::Access::Read)
            .map(|_| ())
            .map_err(|e| e.message)
    }
}

async fn next_event(mut s: WatchState) -> Option<(Result<SseEvent, Infallible>, WatchState)> {
    loop {
        if let Some(ev) = s.pending.pop_front() {
            return Some((Ok(ev), s));
        }
        if s.ended {
            return None;
        }
        if let Err(why) = s.allowed() {
            s.pending.push_back(
                SseEvent::default()
                    .event("error")
                    .data(json!({"message": format!("the stream ends: {why}")}).to_string()),
            );
            s.ended = true;
            continue;
        }
        let store = s.meta.store().clone();
        let cursor = s.cursor;
        let feed =
            tokio::task::spawn_blocking(move || store.changes_since(&cursor, WATCH_BATCH)).await;
        match feed {
            Ok(Ok(Feed::Changes { changes, next })) => {
                if changes.is_empty() {
                    tokio::time::sleep(WATCH_POLL).await;
                    continue;
                }
                for change in changes {
                    let position = cursor.with_seq(change.seq).to_string();
                    let keys: Vec<_> = change
                        .keys
                        .iter()
                        .filter(|k| in_scope(&s.scope, &k.full_prefix))
                        .filter(|k| !crate::auth_http::hidden(&k.full_prefix, s.hide_reserved))
                        .collect();
                    // Only a commit's last event carries the position: a
                    // client that reconnects after part of a commit gets
                    // the whole commit again rather than losing its rest.
                    for (i, k) in keys.iter().enumerate() {
                        let id = (i + 1 == keys.len()).then_some(position.as_str());
                        s.pending.push_back(change_event(&change.origin, k, id));
                    }
                }
                s.cursor = next;
            }
            Ok(Ok(Feed::Gap { first_seq, .. })) => {
                s.pending.push_back(SseEvent::default().event("overflow").data(format!(
                    "{{\"message\":\"changes before seq {first_seq} were compacted before this stream read them: re-read the data, then watch again\"}}"
                )));
                s.ended = true;
            }
            Ok(Err(e)) => {
                s.pending.push_back(
                    SseEvent::default()
                        .event("error")
                        .data(json!({"message": e.to_string()}).to_string()),
                );
                s.ended = true;
            }
            Err(_) => return None,
        }
    }
}

fn in_scope(scope: &Option<(String, Option<String>)>, fp: &FullPrefix) -> bool {
    match scope {
        None => true,
        Some((p, None)) => fp.prefix() == p,
        Some((p, Some(s))) => fp.prefix() == p && fp.subprefix() == s,
    }
}

fn change_event(origin: &Origin, k: &chorus_store::ChangedKey, position: Option<&str>) -> SseEvent {
    let data = change_json(origin, k);
    // The id goes first, so a client that reads line by line knows it
    // before the data it numbers.
    let event = match position {
        Some(p) => SseEvent::default().id(p),
        None => SseEvent::default(),
    };
    event.event("change").data(data.to_string())
}

/// One changed key as JSON, the same on the SSE stream and the ZeroMQ
/// PUB socket: its full prefix and key, whether a peer sent it, and its
/// values (or `"removed": true` once a tombstone was collected). A
/// document's or an operation log's record (`KEY\0RECORD`) is shown under
/// its document's or log's key, with `"record"` naming it.
pub(crate) fn change_json(origin: &Origin, k: &chorus_store::ChangedKey) -> Value {
    let object = k
        .value
        .as_deref()
        .and_then(|b| chorus_core::object::Object::decode(b).ok());
    let (base, record) = match chorus_store::split_record(&k.key) {
        Some((base, name)) => (base, Some(name)),
        None => (&k.key[..], None),
    };
    let mut data = json!({
        "full_prefix": k.full_prefix.to_string(),
        "key": String::from_utf8_lossy(base),
        "from_peer": matches!(origin, Origin::Peer(_)),
    });
    if let Some(name) = record {
        data["record"] = json!(String::from_utf8_lossy(name));
    }
    match object {
        Some(o) => {
            data["values"] = json!(o.values().into_iter().map(value_json).collect::<Vec<_>>());
            data["context"] = json!(context_to_string(&o.context()));
            data["tombstone"] = json!(o.is_tombstone());
        }
        None => data["removed"] = json!(true),
    }
    data
}
