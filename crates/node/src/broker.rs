//! The ZeroMQ broker: every key, document and operation-log operation over
//! a ROUTER socket, and change events on a PUB socket (docs/zeromq.md has
//! the wire protocol).
//!
//! One thread owns the sockets (ZeroMQ sockets are not thread-safe); only
//! this file knows ZeroMQ, behind the small [`Sockets`] trait. `ping` and
//! `get` are answered on that thread from the in-memory copy. Key writes
//! (`put`, `delete`) are parsed and their tokens checked there, then
//! handed to one committer thread, which takes every write waiting and
//! commits them with `Metadata::put_all`: one log append and one sync for
//! all (group commit). Document and operation-log requests and longer
//! reads go to a fixed pool of worker threads, whose writes share syncs
//! through the store's commit queue (`SyncMode::Batch`). A reply is sent
//! only after the sync of its commit. When as many requests are in flight
//! as the queues hold, the broker stops reading the request socket, so
//! ZeroMQ's high-water marks push back on clients: nothing grows without
//! bound.
//!
//! The same thread tails the directory's change feed and publishes every
//! change (local, from another process, or merged from a peer) on the PUB
//! socket, topic `PREFIX/SUBPREFIX/KEY`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chorus_core::FullPrefix;
use chorus_core::object::context_from_string;
use chorus_store::docs::Docs;
use chorus_store::{
    BatchPut, Cursor, Feed, GetOptions, IterOptions, Match, PutOptions, PutValue, Scope,
};
use serde_json::{Value, json};

use crate::auth::{Access, Grant};
use crate::http::{Api, ApiError};
use crate::json::read_json;

/// Largest request accepted (the HTTP API's body limit).
const REQUEST_MAX: usize = crate::http::BODY_MAX;
/// Messages above this size make ZeroMQ drop the connection that sent
/// them (a misbehaving peer); requests up to it get a clear error.
const MESSAGE_MAX: i64 = 4 << 20;
/// How often the change feed is read for the PUB socket.
const FEED_POLL: Duration = Duration::from_millis(20);
/// Feed batches published per loop turn at most.
const FEED_ROUNDS: usize = 4;
/// Commits read from the feed at a time.
const FEED_BATCH: usize = 256;
/// How often the socket thread looks for a stop request when idle.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Key writes committed together at most (one append, one sync).
const COMMIT_MAX: usize = 1024;
/// Requests taken from the socket per loop turn before replies are sent.
const DRAIN_MAX: usize = 512;

/// Where and how the broker serves.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The ROUTER endpoint: `tcp://IP:PORT` or `ipc://PATH`.
    pub endpoint: String,
    /// The PUB endpoint for change events, if any.
    pub publish: Option<String>,
    /// Worker threads for document and operation-log requests and longer
    /// reads (each may wait on the disk; key writes go to the committer).
    pub workers: usize,
}

impl BrokerConfig {
    /// The broker on `endpoint`, events on `publish`, 64 workers.
    pub fn new(endpoint: String, publish: Option<String>) -> BrokerConfig {
        BrokerConfig {
            endpoint,
            publish,
            workers: 64,
        }
    }
}

/// Whether an endpoint can be reached only from this machine.
pub fn endpoint_is_local(endpoint: &str) -> Result<bool, String> {
    if let Some(path) = endpoint.strip_prefix("ipc://") {
        if path.is_empty() || path.len() > 100 {
            return Err(format!(
                "{endpoint}: an ipc:// endpoint needs a socket path of 1 to 100 bytes"
            ));
        }
        return Ok(true);
    }
    if let Some(addr) = endpoint.strip_prefix("tcp://") {
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
            format!(
                "{endpoint}: give tcp://IP:PORT with a numeric address, e.g. tcp://127.0.0.1:7801"
            )
        })?;
        return Ok(addr.ip().is_loopback());
    }
    Err(format!(
        "{endpoint}: the broker serves tcp://IP:PORT or ipc://PATH endpoints"
    ))
}

/// The broker's counters, for /metrics.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    published: AtomicU64,
}

impl Stats {
    /// (name, kind, help, value) for every counter and gauge.
    pub(crate) fn metrics(&self) -> [(&'static str, &'static str, &'static str, u64); 5] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "zmq_requests_total",
                "counter",
                "requests the ZeroMQ broker answered",
                g(&self.requests),
            ),
            (
                "zmq_writes_total",
                "counter",
                "of them, writes (group-committed: compare store_syncs_total)",
                g(&self.writes),
            ),
            (
                "zmq_errors_total",
                "counter",
                "requests answered with an error",
                g(&self.errors),
            ),
            (
                "zmq_in_flight",
                "gauge",
                "requests queued or running on the broker's workers",
                g(&self.in_flight),
            ),
            (
                "zmq_events_published_total",
                "counter",
                "change events sent on the PUB socket",
                g(&self.published),
            ),
        ]
    }
}

/// What the broker needs of its sockets; [`ZmqSockets`] is the real one.
pub(crate) trait Sockets {
    /// Waits up to `timeout` until a request (when `requests`) or a
    /// worker's reply can be read.
    fn wait(&mut self, requests: bool, timeout: Duration) -> Result<(), String>;
    /// A request's frames, if one is waiting (never blocks).
    fn request(&mut self) -> Result<Option<Vec<Vec<u8>>>, String>;
    /// A worker's finished reply, if one is waiting (never blocks).
    fn finished(&mut self) -> Result<Option<Vec<Vec<u8>>>, String>;
    /// Sends a reply (the request's envelope, then the body).
    fn reply(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String>;
    /// Publishes an event, dropped if subscribers are too slow.
    fn publish(&mut self, topic: &[u8], body: &[u8]) -> Result<(), String>;
    /// A way for one worker thread to hand its replies back.
    fn port(&self) -> Result<Box<dyn ReplyPort>, String>;
}

/// A worker's way back to the socket thread.
pub(crate) trait ReplyPort: Send {
    /// Hands a finished reply to the socket thread.
    fn send(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String>;
}

/// The broker's ZeroMQ sockets.
pub(crate) struct ZmqSockets {
    context: zmq::Context,
    router: zmq::Socket,
    publish: Option<zmq::Socket>,
    replies: zmq::Socket,
    replies_at: String,
}

impl ZmqSockets {
    /// Binds the ROUTER (and PUB) endpoints; `capacity` bounds the replies
    /// in transit from the workers.
    pub(crate) fn bind(config: &BrokerConfig, capacity: usize) -> Result<ZmqSockets, String> {
        let context = zmq::Context::new();
        let fail = |what: &str, e: zmq::Error| format!("ZeroMQ {what}: {e}");
        let router = context.socket(zmq::ROUTER).map_err(|e| fail("socket", e))?;
        router.set_linger(0).map_err(|e| fail("linger", e))?;
        router
            .set_maxmsgsize(MESSAGE_MAX)
            .map_err(|e| fail("maxmsgsize", e))?;
        router
            .bind(&config.endpoint)
            .map_err(|e| format!("cannot bind the broker to {}: {e}", config.endpoint))?;
        let publish = match &config.publish {
            Some(endpoint) => {
                let s = context.socket(zmq::PUB).map_err(|e| fail("socket", e))?;
                s.set_linger(0).map_err(|e| fail("linger", e))?;
                s.bind(endpoint)
                    .map_err(|e| format!("cannot bind the event socket to {endpoint}: {e}"))?;
                Some(s)
            }
            None => None,
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let replies_at = format!(
            "inproc://chorus-broker-replies-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let replies = context.socket(zmq::PULL).map_err(|e| fail("socket", e))?;
        let hwm = i32::try_from(capacity.saturating_mul(2)).unwrap_or(i32::MAX);
        replies.set_rcvhwm(hwm).map_err(|e| fail("hwm", e))?;
        replies
            .bind(&replies_at)
            .map_err(|e| fail("inproc bind", e))?;
        Ok(ZmqSockets {
            context,
            router,
            publish,
            replies,
            replies_at,
        })
    }
}

fn nonblocking(r: Result<Vec<Vec<u8>>, zmq::Error>) -> Result<Option<Vec<Vec<u8>>>, String> {
    match r {
        Ok(frames) => Ok(Some(frames)),
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(e) => Err(format!("ZeroMQ receive: {e}")),
    }
}

impl Sockets for ZmqSockets {
    fn wait(&mut self, requests: bool, timeout: Duration) -> Result<(), String> {
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let mut items = vec![self.replies.as_poll_item(zmq::POLLIN)];
        if requests {
            items.push(self.router.as_poll_item(zmq::POLLIN));
        }
        match zmq::poll(&mut items, ms) {
            Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
            Err(e) => Err(format!("ZeroMQ poll: {e}")),
        }
    }

    fn request(&mut self) -> Result<Option<Vec<Vec<u8>>>, String> {
        nonblocking(self.router.recv_multipart(zmq::DONTWAIT))
    }

    fn finished(&mut self) -> Result<Option<Vec<Vec<u8>>>, String> {
        nonblocking(self.replies.recv_multipart(zmq::DONTWAIT))
    }

    fn reply(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
        // A client that went away (or is too slow to take its replies)
        // loses them; that must not stop the broker.
        match self.router.send_multipart(frames, zmq::DONTWAIT) {
            Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => Ok(()),
            Err(e) => Err(format!("ZeroMQ send: {e}")),
        }
    }

    fn publish(&mut self, topic: &[u8], body: &[u8]) -> Result<(), String> {
        let Some(s) = &self.publish else {
            return Ok(());
        };
        match s.send_multipart([topic, body], zmq::DONTWAIT) {
            Ok(()) | Err(zmq::Error::EAGAIN) => Ok(()),
            Err(e) => Err(format!("ZeroMQ publish: {e}")),
        }
    }

    fn port(&self) -> Result<Box<dyn ReplyPort>, String> {
        let s = self
            .context
            .socket(zmq::PUSH)
            .map_err(|e| format!("ZeroMQ socket: {e}"))?;
        s.connect(&self.replies_at)
            .map_err(|e| format!("ZeroMQ inproc connect: {e}"))?;
        Ok(Box::new(ZmqPort(s)))
    }
}

struct ZmqPort(zmq::Socket);

impl ReplyPort for ZmqPort {
    fn send(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
        self.0
            .send_multipart(frames, 0)
            .map_err(|e| format!("ZeroMQ inproc send: {e}"))
    }
}

/// A request taken off the socket: the envelope to answer to, and the
/// parsed body (or why it could not be parsed).
struct Job {
    envelope: Vec<Vec<u8>>,
    id: Value,
    request: Result<Request, ApiError>,
    /// Who the request's token says it comes from (nobody with auth off).
    grant: Grant,
    /// The full prefix it reaches, for the audit log (empty for ping).
    target: String,
}

/// A key write prepared on the socket thread for the committer.
struct KvWrite {
    envelope: Vec<Vec<u8>>,
    id: Value,
    put: BatchPut,
    grant: Grant,
    /// What the audit log names: the op and its target.
    op: String,
    target: String,
}

/// A parsed request body.
struct Request {
    op: String,
    /// The token, taken out of the body so it is never echoed or logged.
    token: Option<String>,
    body: serde_json::Map<String, Value>,
}

impl Request {
    fn parse(bytes: &[u8]) -> (Value, Result<Request, ApiError>) {
        if bytes.len() > REQUEST_MAX {
            return (
                Value::Null,
                Err(ApiError::bad(format!(
                    "the request is {} bytes, over the limit of {REQUEST_MAX}",
                    bytes.len()
                ))),
            );
        }
        let parsed: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                return (
                    Value::Null,
                    Err(ApiError::bad(format!(
                        "the request is not JSON ({e}): send {{\"id\": 1, \"op\": \"get\", \"prefix\": \"app\", \"sub\": \"cfg\", \"key\": \"color\"}}"
                    ))),
                );
            }
        };
        let Value::Object(mut body) = parsed else {
            return (
                Value::Null,
                Err(ApiError::bad(
                    "the request must be a JSON object with \"op\" (and \"id\" to match replies)",
                )),
            );
        };
        let id = body.remove("id").unwrap_or(Value::Null);
        let op = match body.remove("op") {
            Some(Value::String(op)) => op,
            _ => {
                return (
                    id,
                    Err(ApiError::bad(
                        "the request needs \"op\": get, put, delete, list, doc.*, op.* or ping (see docs/zeromq.md)",
                    )),
                );
            }
        };
        let token = match body.remove("token") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t),
            Some(_) => {
                return (
                    id,
                    Err(ApiError::bad(
                        "\"token\" must be a string: the token `chorus token create` printed",
                    )),
                );
            }
        };
        (id, Ok(Request { op, token, body }))
    }

    /// What the request reaches and how, for the token check; `None` for
    /// `ping`, which reads nothing.
    fn target(&self) -> Result<Option<(FullPrefix, Access)>, ApiError> {
        let access = if self.is_write() {
            Access::Write
        } else {
            Access::Read
        };
        if self.op == "ping" {
            return Ok(None);
        }
        let fp = if self.op.starts_with("doc.") {
            chorus_store::docs::store_prefix(self.str("store")?)?
        } else {
            self.full_prefix()?
        };
        Ok(Some((fp, access)))
    }

    /// Checks the token for this request (every request is granted, as
    /// nobody, with auth off); a refusal is audited.
    fn authorize(&self, api: &Api) -> Result<(Grant, String), ApiError> {
        let Some((fp, access)) = self.target()? else {
            return Ok((Grant::default(), String::new()));
        };
        let target = fp.to_string();
        match api.auth.check(self.token.as_deref(), &fp, access) {
            Ok(grant) => Ok((grant, target)),
            Err(e) => {
                api.auth
                    .audit_refused(self.token.as_deref(), "zmq", &self.op, &target, &e);
                Err(ApiError::from(e))
            }
        }
    }

    /// Answered on the socket thread: in-memory reads that take
    /// microseconds. Everything else goes to a worker.
    fn is_quick(&self) -> bool {
        // Not doc.get or op.get: a document tree or a script reducer over
        // a long log can take a while, and would hold up every client.
        matches!(self.op.as_str(), "ping" | "get")
    }

    fn is_write(&self) -> bool {
        matches!(
            self.op.as_str(),
            "put"
                | "delete"
                | "doc.create"
                | "doc.update"
                | "doc.upsert"
                | "doc.delete"
                | "doc.resolve"
                | "op.push"
        )
    }

    fn str(&self, name: &str) -> Result<&str, ApiError> {
        match self.body.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(ApiError::bad(format!(
                "\"{name}\" must be a string, not {other}"
            ))),
            None => Err(ApiError::bad(format!(
                "the {} request needs \"{name}\" (see docs/zeromq.md)",
                self.op
            ))),
        }
    }

    fn opt_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(name).map(Some),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::bad(format!(
                "\"{name}\" must be true or false, not {other}"
            ))),
        }
    }

    fn json(&self, name: &str) -> Result<Value, ApiError> {
        self.body.get(name).cloned().ok_or_else(|| {
            ApiError::bad(format!(
                "the {} request needs \"{name}\" (see docs/zeromq.md)",
                self.op
            ))
        })
    }

    /// `prefix` and `sub` as a full prefix; reserved (`$`) names refused.
    fn full_prefix(&self) -> Result<FullPrefix, ApiError> {
        let fp = FullPrefix::new(self.str("prefix")?, self.str("sub")?)?;
        if fp.is_reserved() {
            return Err(ApiError::bad(format!(
                "{fp} is reserved for Chorus itself (names starting with '$')"
            )));
        }
        Ok(fp)
    }

    fn docs(&self, api: &Api) -> Result<Docs, ApiError> {
        Ok(Docs::open(&api.meta, self.str("store")?)?)
    }

    fn put_options(&self) -> Result<PutOptions, ApiError> {
        let context = match self.opt_str("context")? {
            None => None,
            Some(text) => Some(context_from_string(text).map_err(|e| {
                ApiError::bad(format!(
                    "\"context\" is not a context ({e}): send the context a get returned"
                ))
            })?),
        };
        Ok(PutOptions { context })
    }

    /// A `put` or `delete` as one write of a group commit.
    fn batch_put(&self) -> Result<BatchPut, ApiError> {
        let fp = self.full_prefix()?;
        let key = self.str("key")?.as_bytes().to_vec();
        let value = if self.op == "put" {
            PutValue::Bytes(self.value()?)
        } else {
            PutValue::Tombstone
        };
        Ok(BatchPut {
            full_prefix: fp,
            key,
            value,
            options: self.put_options()?,
            meta: chorus_core::object::Meta::default(),
        })
    }

    fn value(&self) -> Result<Vec<u8>, ApiError> {
        match (self.body.get("value"), self.body.get("value_base64")) {
            (Some(Value::String(s)), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(Value::String(b))) => STANDARD
                .decode(b)
                .map_err(|e| ApiError::bad(format!("\"value_base64\" is not base64 ({e})"))),
            (Some(_), Some(_)) => Err(ApiError::bad(
                "give \"value\" (text) or \"value_base64\" (bytes), not both",
            )),
            _ => Err(ApiError::bad(
                "a put needs \"value\" (a string) or \"value_base64\" (bytes as base64)",
            )),
        }
    }
}

/// Runs one request against the store.
fn execute(api: &Api, r: &Request) -> Result<Value, ApiError> {
    match r.op.as_str() {
        "ping" => Ok(json!({"node": api.meta.store().node_id().to_string()})),
        "get" => {
            let fp = r.full_prefix()?;
            let key = r.str("key")?;
            let opts = GetOptions {
                resolver: crate::http::resolver(r.opt_str("resolve")?)?,
                ..GetOptions::default()
            };
            match api.meta.get(&fp, key.as_bytes(), &opts)? {
                Some(read) => Ok(read_json(&read)),
                None => Err(ApiError::not_found(format!(
                    "{fp}/{key} is absent or deleted"
                ))),
            }
        }
        "put" | "delete" => {
            let fp = r.full_prefix()?;
            let key = r.str("key")?;
            let value = if r.op == "put" {
                PutValue::Bytes(r.value()?)
            } else {
                PutValue::Tombstone
            };
            let info = api
                .meta
                .put(&fp, key.as_bytes(), value, &r.put_options()?)?;
            Ok(json!({"seq": info.seq}))
        }
        "list" => {
            let fp = r.full_prefix()?;
            let opts = IterOptions {
                matching: r
                    .opt_str("match")?
                    .map_or(Match::All, |m| Match::Glob(m.to_string())),
                ..IterOptions::default()
            };
            let items = api.meta.to_list(&Scope::FullPrefix(fp), &opts)?;
            Ok(crate::json::list_json(&items))
        }
        "doc.create" => Ok(r.docs(api)?.create(r.json("doc")?)?.to_json()),
        "doc.update" => Ok(r
            .docs(api)?
            .update(r.json("doc")?, r.flag("keep_both")?)?
            .to_json()),
        "doc.upsert" => Ok(r.docs(api)?.upsert(r.json("doc")?)?.to_json()),
        "doc.delete" => Ok(r
            .docs(api)?
            .delete(r.str("doc_id")?, r.str("rev")?)?
            .to_json()),
        "doc.resolve" => Ok(r
            .docs(api)?
            .resolve(r.str("doc_id")?, r.str("rev")?)?
            .to_json()),
        "doc.get" => {
            let d = r.docs(api)?;
            let id = r.str("doc_id")?;
            let doc = match (r.opt_str("rev")?, r.flag("conflicts")?) {
                (Some(_), true) => {
                    return Err(ApiError::bad(
                        "\"rev\" and \"conflicts\": true cannot be combined: ask for one",
                    ));
                }
                (Some(rev), false) => d.get_rev(id, rev)?,
                (None, true) => d.get_with_conflicts(id)?,
                (None, false) => d.get(id)?,
            };
            Ok(json!({ "doc": doc }))
        }
        "doc.conflicts" if r.body.get("limit").is_some_and(|v| !v.is_null()) => {
            let limit = match r.body.get("limit") {
                Some(Value::Number(n)) if n.is_u64() => {
                    usize::try_from(n.as_u64().unwrap_or_default()).unwrap_or(usize::MAX)
                }
                other => {
                    return Err(ApiError::bad(format!(
                        "\"limit\" must be a whole number from 1 to {}, not {}",
                        chorus_store::docs::MAX_CONFLICTS_PAGE,
                        other.cloned().unwrap_or(Value::Null)
                    )));
                }
            };
            let id = r.str("doc_id")?;
            let page = r
                .docs(api)?
                .conflicts_page(id, limit, r.opt_str("after")?)?;
            Ok(page.to_json(id))
        }
        "doc.conflicts" => {
            if r.opt_str("after")?.is_some() {
                return Err(ApiError::bad(format!(
                    "\"after\" pages conflicts: pass \"limit\" too (1 to {})",
                    chorus_store::docs::MAX_CONFLICTS_PAGE
                )));
            }
            let groups = r.docs(api)?.conflicts(r.str("doc_id")?)?;
            let groups: Vec<Vec<String>> = groups
                .iter()
                .map(|g| g.iter().map(ToString::to_string).collect())
                .collect();
            Ok(json!({ "conflicts": groups }))
        }
        "doc.all" => Ok(json!({ "docs": r.docs(api)?.all()? })),
        "op.push" => {
            let fp = r.full_prefix()?;
            let value = api
                .oplogs
                .push(&fp, r.str("path")?, r.str("type")?, r.json("payload")?)?;
            Ok(json!({ "value": value }))
        }
        "op.get" => {
            let fp = r.full_prefix()?;
            Ok(json!({ "value": api.oplogs.get(&fp, r.str("path")?)? }))
        }
        "op.log" => {
            let fp = r.full_prefix()?;
            Ok(api.oplogs.log(&fp, r.str("path")?)?.to_json())
        }
        other => Err(ApiError::bad(format!(
            "unknown op {other:?}: get, put, delete, list, doc.create, doc.get, doc.update, doc.upsert, doc.delete, doc.resolve, doc.conflicts, doc.all, op.push, op.get, op.log or ping"
        ))),
    }
}

/// Runs a request and makes its reply frames.
fn answer(stats: &Stats, job: Job, api: &Api) -> Vec<Vec<u8>> {
    let Job {
        envelope,
        id,
        request,
        grant,
        target,
    } = job;
    let mut write = false;
    let outcome = request.and_then(|r| {
        write = r.is_write();
        if !write {
            return execute(api, &r);
        }
        // The values written record the token's id.
        let meta = grant.meta();
        let stamped;
        let on = if meta.is_empty() {
            api
        } else {
            let mut a = api.clone();
            a.meta = a.meta.stamped(meta.clone());
            a.oplogs = a.oplogs.stamped(meta);
            stamped = a;
            &stamped
        };
        let out = execute(on, &r);
        api.auth.audit(&grant, "zmq", &r.op, &target, out.is_ok());
        out
    });
    if write && outcome.is_ok() {
        // The core reads the feed at once, so the write replicates.
        api.committed.notify_one();
    }
    finish(stats, envelope, id, outcome, write)
}

/// The reply frames: the request's envelope, then the JSON body.
fn finish(
    stats: &Stats,
    mut envelope: Vec<Vec<u8>>,
    id: Value,
    outcome: Result<Value, ApiError>,
    write: bool,
) -> Vec<Vec<u8>> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let body = match outcome {
        Ok(mut result) => {
            if write {
                stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            if let Value::Object(o) = &mut result {
                o.insert("id".into(), id);
                o.insert("ok".into(), Value::Bool(true));
            }
            result
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            json!({"id": id, "ok": false, "error": {"code": e.code(), "message": e.message()}})
        }
    };
    envelope.push(body.to_string().into_bytes());
    envelope
}

/// The committer: takes every key write waiting, commits them with one
/// log append and one sync, and hands back each reply.
fn commit(api: &Api, queue: &Receiver<KvWrite>, mut port: Box<dyn ReplyPort>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < COMMIT_MAX {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut heads = Vec::with_capacity(batch.len());
        let mut puts = Vec::with_capacity(batch.len());
        for w in batch {
            heads.push((w.envelope, w.id, w.grant, w.op, w.target));
            puts.push(w.put);
        }
        let outcomes = api.meta.put_all(puts);
        if outcomes.iter().any(Result::is_ok) {
            api.committed.notify_one();
        }
        for ((envelope, id, grant, op, target), outcome) in heads.into_iter().zip(outcomes) {
            api.auth.audit(&grant, "zmq", &op, &target, outcome.is_ok());
            let outcome = outcome
                .map(|info| json!({"seq": info.seq}))
                .map_err(ApiError::from);
            if let Err(e) = port.send(finish(&api.broker, envelope, id, outcome, true)) {
                eprintln!("chorus: the broker's committer stopped: {e}");
                return;
            }
        }
    }
}

/// A running broker; stops (and joins its threads) when dropped.
pub(crate) struct Broker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Broker {
    /// Binds the endpoints (errors here are the caller's to report) and
    /// starts the socket thread and its workers.
    pub(crate) fn start(config: &BrokerConfig, api: Api) -> Result<Broker, String> {
        let workers = config.workers.clamp(1, 1024);
        // Requests queued for workers beyond those running.
        let capacity = workers * 4;
        let sockets = ZmqSockets::bind(config, capacity)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (jobs, queue) = sync_channel::<Job>(capacity);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let mut pool = Vec::with_capacity(workers);
        for n in 0..workers {
            let port = sockets.port()?;
            let (api, queue) = (api.clone(), queue.clone());
            let handle = std::thread::Builder::new()
                .name(format!("chorus-broker-{n}"))
                .spawn(move || work(&api, &queue, port))
                .map_err(|e| format!("cannot start a broker worker: {e}"))?;
            pool.push(handle);
        }
        let (writes, pending) = sync_channel::<KvWrite>(capacity);
        {
            let (port, api) = (sockets.port()?, api.clone());
            let handle = std::thread::Builder::new()
                .name("chorus-committer".into())
                .spawn(move || commit(&api, &pending, port))
                .map_err(|e| format!("cannot start the broker's committer: {e}"))?;
            pool.push(handle);
        }
        let s = stop.clone();
        let publishing = config.publish.is_some();
        let thread = std::thread::Builder::new()
            .name("chorus-broker".into())
            .spawn(move || {
                let mut sockets = sockets;
                if let Err(e) = serve(
                    &mut sockets,
                    &api,
                    (&jobs, &writes),
                    capacity,
                    publishing,
                    &s,
                ) {
                    eprintln!("chorus: the ZeroMQ broker stopped: {e}");
                }
                // Workers finish what they hold, then see the queue closed.
                drop(jobs);
                drop(writes);
                for h in pool {
                    let _ = h.join();
                }
            })
            .map_err(|e| format!("cannot start the broker thread: {e}"))?;
        Ok(Broker {
            stop,
            thread: Some(thread),
        })
    }
}

fn work(api: &Api, queue: &std::sync::Mutex<Receiver<Job>>, mut port: Box<dyn ReplyPort>) {
    loop {
        let job = {
            let q = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.recv()
        };
        let Ok(job) = job else { return };
        let frames = answer(&api.broker, job, api);
        if let Err(e) = port.send(frames) {
            eprintln!("chorus: a broker worker stopped: {e}");
            return;
        }
    }
}

/// The socket thread's loop: take requests, answer quick ones, queue the
/// rest, forward the workers' replies, publish changes.
fn serve(
    sockets: &mut dyn Sockets,
    api: &Api,
    (jobs, writes): (&SyncSender<Job>, &SyncSender<KvWrite>),
    capacity: usize,
    publishing: bool,
    stop: &AtomicBool,
) -> Result<(), String> {
    let stats = &api.broker;
    let mut in_flight = 0usize;
    let mut feed = if publishing {
        Some(FeedTail::start(api)?)
    } else {
        None
    };
    while !stop.load(Ordering::Relaxed) {
        // Without events to publish, wake only to notice a stop request.
        let due = feed
            .as_ref()
            .map_or(Instant::now() + STOP_POLL, FeedTail::due);
        let timeout = due.saturating_duration_since(Instant::now());
        sockets.wait(in_flight < capacity, timeout.max(Duration::from_millis(1)))?;
        let mut wrote = false;
        while let Some(frames) = sockets.finished()? {
            sockets.reply(frames)?;
            in_flight = in_flight.saturating_sub(1);
            wrote = true;
        }
        let mut taken = 0;
        while in_flight < capacity && taken < DRAIN_MAX {
            let Some(mut frames) = sockets.request()? else {
                break;
            };
            taken += 1;
            let Some(body) = frames.pop() else { continue };
            if frames.is_empty() {
                continue; // ROUTER always puts the sender's identity first
            }
            let (id, request) = Request::parse(&body);
            let (request, grant, target) = match request {
                Ok(r) => match r.authorize(api) {
                    Ok((grant, target)) => (Ok(r), grant, target),
                    Err(e) => (Err(e), Grant::default(), String::new()),
                },
                Err(e) => (Err(e), Grant::default(), String::new()),
            };
            let job = Job {
                envelope: frames,
                id,
                request,
                grant,
                target,
            };
            let quick = job.request.as_ref().map_or(true, Request::is_quick);
            if quick {
                sockets.reply(answer(stats, job, api))?;
                continue;
            }
            if let Ok(r) = &job.request
                && matches!(r.op.as_str(), "put" | "delete")
            {
                // Prepared here (a bad one is answered at once), committed
                // with every other key write waiting.
                let put = match r.batch_put() {
                    Ok(mut put) => {
                        put.meta = job.grant.meta();
                        put
                    }
                    Err(e) => {
                        sockets.reply(finish(stats, job.envelope, job.id, Err(e), false))?;
                        continue;
                    }
                };
                let w = KvWrite {
                    envelope: job.envelope,
                    id: job.id,
                    put,
                    op: r.op.clone(),
                    grant: job.grant,
                    target: job.target,
                };
                match writes.try_send(w) {
                    Ok(()) => in_flight += 1,
                    Err(TrySendError::Full(w)) | Err(TrySendError::Disconnected(w)) => {
                        sockets.reply(busy(w.envelope, w.id))?;
                    }
                }
                continue;
            }
            match jobs.try_send(job) {
                Ok(()) => in_flight += 1,
                // Cannot happen while in_flight < capacity; answer rather
                // than drop if it ever does.
                Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                    sockets.reply(busy(job.envelope, job.id))?;
                }
            }
        }
        stats.in_flight.store(in_flight as u64, Ordering::Relaxed);
        if let Some(feed) = &mut feed
            && (wrote || Instant::now() >= feed.due())
            && let Err(e) = feed.publish(api, sockets)
        {
            // Requests are still served; the feed is tried again at its
            // next tick.
            eprintln!("chorus: the broker could not publish changes: {e}");
        }
    }
    Ok(())
}

/// The reply to a request that found every queue full.
fn busy(mut envelope: Vec<Vec<u8>>, id: Value) -> Vec<Vec<u8>> {
    envelope.push(
        json!({"id": id, "ok": false, "error": {"code": "busy", "message": "the broker is saturated: retry"}})
            .to_string()
            .into_bytes(),
    );
    envelope
}

/// The change feed, read from where the broker started.
struct FeedTail {
    cursor: Cursor,
    next: Instant,
}

impl FeedTail {
    fn start(api: &Api) -> Result<FeedTail, String> {
        let cursor = api
            .meta
            .store()
            .cursor()
            .map_err(|e| format!("cannot read the change feed: {e}"))?;
        Ok(FeedTail {
            cursor,
            next: Instant::now() + FEED_POLL,
        })
    }

    fn due(&self) -> Instant {
        self.next
    }

    fn publish(&mut self, api: &Api, sockets: &mut dyn Sockets) -> Result<(), String> {
        self.next = Instant::now() + FEED_POLL;
        let mut rounds = 0;
        loop {
            let feed = api
                .meta
                .store()
                .changes_since(&self.cursor, FEED_BATCH)
                .map_err(|e| format!("cannot read the change feed: {e}"))?;
            match feed {
                Feed::Changes { changes, next } => {
                    let more = changes.len() == FEED_BATCH;
                    for change in &changes {
                        let position = self.cursor.with_seq(change.seq).to_string();
                        // Chorus's own names (`$auth` holds secrets) are
                        // never published: no client may read them.
                        for k in change.keys.iter().filter(|k| !k.full_prefix.is_reserved()) {
                            let mut event = crate::http::change_json(&change.origin, k);
                            event["position"] = json!(position);
                            let base =
                                chorus_store::split_record(&k.key).map_or(&k.key[..], |(b, _)| b);
                            let topic =
                                format!("{}/{}", k.full_prefix, String::from_utf8_lossy(base));
                            sockets.publish(topic.as_bytes(), event.to_string().as_bytes())?;
                            api.broker.published.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    self.cursor = next;
                    // At most a few batches per turn, so that requests are
                    // served while a backlog is published.
                    rounds += 1;
                    if !more {
                        return Ok(());
                    }
                    if rounds >= FEED_ROUNDS {
                        self.next = Instant::now(); // the rest at once
                        return Ok(());
                    }
                }
                Feed::Gap { first_seq, resume } => {
                    // Compaction outran us (a burst bigger than the log
                    // keeps): tell subscribers, carry on from the new end.
                    let event = json!({"overflow": true, "message": format!(
                        "changes before seq {first_seq} were compacted before they were published: re-read the data you follow"
                    )});
                    sockets.publish(b"!overflow", event.to_string().as_bytes())?;
                    self.cursor = resume;
                }
            }
        }
    }
}
