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
//!
//! Limits: requests over the rate of their connection (routing id) or of
//! the whole broker are answered `rate_limited` before any work; messages
//! over [`MESSAGE_MAX`] drop their connection (ZeroMQ's own check). A
//! ROUTER socket has no hook to refuse a connection, so their number is
//! only counted (a socket monitor), not capped (docs/auth.md, "Limits").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chorus_core::FullPrefix;
use chorus_core::object::context_from_string;
use chorus_store::{EventId, Match};
use serde_json::{Value, json};

use crate::auth::Grant;
use crate::error::{ApiError, Kind};
use crate::events::{Follower, Item, Scope, overflow_json};
use crate::limits::{Limits, Rate, Throttled};
use crate::service::{Op, Page, Service, resolver};

/// Largest request accepted (the same as an HTTP body).
const REQUEST_MAX: usize = crate::service::REQUEST_MAX;
/// Messages above this size make ZeroMQ drop the connection that sent
/// them (a misbehaving peer); requests up to it get a clear error.
const MESSAGE_MAX: i64 = 4 << 20;
/// How often the change feed is read for the PUB socket.
const FEED_POLL: Duration = Duration::from_millis(20);
/// Feed batches published per loop turn at most.
const FEED_ROUNDS: usize = 4;
/// How often the socket thread looks for a stop request when idle.
const STOP_POLL: Duration = Duration::from_millis(100);
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
    /// A way for any thread to hand a reply back (the committing thread
    /// answers key writes with it, with no thread in between).
    fn answerer(&self) -> Result<Answer, String>;
}

/// Hands a finished reply back to the socket thread, from any thread.
pub(crate) type Answer = Arc<dyn Fn(Vec<Vec<u8>>) + Send + Sync>;

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
    /// The ROUTER's connection events (accepted, disconnected).
    monitor: zmq::Socket,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ZmqSockets {
    /// Binds the ROUTER (and PUB) endpoints; `capacity` bounds the replies
    /// in transit from the workers.
    pub(crate) fn bind(
        config: &BrokerConfig,
        capacity: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<ZmqSockets, String> {
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
        // Counts the ROUTER's connections: ZeroMQ has no way to refuse one.
        let monitor_at = format!("{replies_at}-monitor");
        let events = i32::from(zmq::SocketEvent::ACCEPTED.to_raw())
            | i32::from(zmq::SocketEvent::DISCONNECTED.to_raw());
        router
            .monitor(&monitor_at, events)
            .map_err(|e| fail("monitor", e))?;
        let monitor = context.socket(zmq::PAIR).map_err(|e| fail("socket", e))?;
        monitor
            .connect(&monitor_at)
            .map_err(|e| fail("monitor connect", e))?;
        Ok(ZmqSockets {
            context,
            router,
            publish,
            replies,
            replies_at,
            monitor,
            metrics,
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
        let mut items = vec![
            self.replies.as_poll_item(zmq::POLLIN),
            self.monitor.as_poll_item(zmq::POLLIN),
        ];
        if requests {
            items.push(self.router.as_poll_item(zmq::POLLIN));
        }
        match zmq::poll(&mut items, ms) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(format!("ZeroMQ poll: {e}")),
        }
        self.count_connections();
        Ok(())
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

    fn answerer(&self) -> Result<Answer, String> {
        let (context, at) = (self.context.clone(), self.replies_at.clone());
        Ok(Arc::new(move |frames| {
            // A ZeroMQ socket belongs to one thread: each thread that
            // answers keeps its own PUSH socket to the socket thread.
            thread_local! {
                static PORTS: std::cell::RefCell<std::collections::HashMap<String, zmq::Socket>> =
                    std::cell::RefCell::new(std::collections::HashMap::new());
            }
            PORTS.with(|ports| {
                let mut ports = ports.borrow_mut();
                if !ports.contains_key(&at) {
                    let made = context.socket(zmq::PUSH).and_then(|s| {
                        s.connect(&at)?;
                        Ok(s)
                    });
                    match made {
                        Ok(s) => {
                            ports.insert(at.clone(), s);
                        }
                        Err(e) => {
                            tracing::error!("a broker reply is lost: ZeroMQ inproc socket: {e}");
                            return;
                        }
                    }
                }
                if let Some(s) = ports.get(&at)
                    && let Err(e) = s.send_multipart(frames, 0)
                {
                    tracing::error!("a broker reply is lost: ZeroMQ inproc send: {e}");
                }
            });
        }))
    }
}

impl ZmqSockets {
    /// Takes the monitor's events: each is a frame of the event number
    /// (u16) and a value (u32), then a frame with the endpoint.
    fn count_connections(&mut self) {
        let gauge = &self.metrics.zmq_connections;
        for _ in 0..DRAIN_MAX {
            let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) else {
                return;
            };
            let Some(event) = frames
                .first()
                .and_then(|f| f.get(..2))
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(u16::from_ne_bytes)
            else {
                continue;
            };
            if event == zmq::SocketEvent::ACCEPTED.to_raw() {
                gauge.fetch_add(1, Ordering::Relaxed);
            } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            }
        }
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

/// A request taken off the socket: the envelope to answer to, its id, and
/// the operation with its grant (or why it was refused).
struct Job {
    envelope: Vec<Vec<u8>>,
    id: Value,
    op: Result<(Op, Grant), ApiError>,
    started: Instant,
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
                Err(ApiError::new(
                    Kind::TooLarge,
                    format!(
                        "the request is {} bytes, over the limit of {REQUEST_MAX}",
                        bytes.len()
                    ),
                )),
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

    fn string(&self, name: &str) -> Result<String, ApiError> {
        self.str(name).map(str::to_string)
    }

    fn opt_string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(name).map(Some),
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

    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
            Some(other) => Err(ApiError::bad(format!(
                "\"{name}\" must be a whole number, not {other}"
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

    fn full_prefix(&self) -> Result<FullPrefix, ApiError> {
        Ok(FullPrefix::new(self.str("prefix")?, self.str("sub")?)?)
    }

    fn page(&self) -> Result<Page, ApiError> {
        Page::new(self.number("limit")?, self.opt_string("after")?)
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

    /// The service operation this request asks for.
    fn to_op(&self) -> Result<Op, ApiError> {
        Ok(match self.op.as_str() {
            "ping" => Op::Ping,
            "get" => Op::Get {
                fp: self.full_prefix()?,
                key: self.string("key")?,
                resolver: resolver(self.opt_string("resolve")?.as_deref())?,
                allow_put: self.flag("allow_put")?,
            },
            "put" | "delete" => {
                let context = match self.opt_string("context")? {
                    None => None,
                    Some(text) => Some(context_from_string(&text).map_err(|e| {
                        ApiError::bad(format!(
                            "\"context\" is not a context ({e}): send the context a get returned (a not_found carries the empty one)"
                        ))
                    })?),
                };
                let if_absent = self.flag("if_absent")?;
                if if_absent && context.is_some() {
                    return Err(ApiError::bad(
                        "\"if_absent\" and \"context\" cannot be combined: a create has no context",
                    ));
                }
                Op::Put {
                    fp: self.full_prefix()?,
                    key: self.string("key")?,
                    value: if self.op == "put" {
                        Some(self.value()?)
                    } else {
                        None
                    },
                    context,
                    if_absent,
                }
            }
            "list" => Op::List {
                fp: self.full_prefix()?,
                matching: self.opt_string("match")?.map_or(Match::All, Match::Glob),
                page: self.page()?,
            },
            "prefixes" => Op::Prefixes { page: self.page()? },
            "subprefixes" => {
                let prefix = self.string("prefix")?;
                FullPrefix::new(&prefix, "x")?;
                Op::Subprefixes {
                    prefix,
                    page: self.page()?,
                }
            }
            "hash" => match self.opt_string("sub")? {
                Some(_) => Op::Hash {
                    fp: self.full_prefix()?,
                },
                None => {
                    let prefix = self.string("prefix")?;
                    FullPrefix::new(&prefix, "x")?;
                    Op::HashPrefix { prefix }
                }
            },
            "doc.create" => Op::DocCreate {
                store: self.string("store")?,
                doc: self.json("doc")?,
            },
            "doc.update" => Op::DocUpdate {
                store: self.string("store")?,
                doc: self.json("doc")?,
                keep_both: self.flag("keep_both")?,
            },
            "doc.upsert" => Op::DocUpsert {
                store: self.string("store")?,
                doc: self.json("doc")?,
            },
            "doc.delete" => Op::DocDelete {
                store: self.string("store")?,
                id: self.string("doc_id")?,
                rev: self.string("rev")?,
            },
            "doc.resolve" => Op::DocResolve {
                store: self.string("store")?,
                id: self.string("doc_id")?,
                rev: self.string("rev")?,
            },
            "doc.get" => Op::DocGet {
                store: self.string("store")?,
                id: self.string("doc_id")?,
                rev: self.opt_string("rev")?,
                conflicts: self.flag("conflicts")?,
            },
            "doc.conflicts" => {
                let page = crate::service::conflicts_page(
                    self.number("limit")?,
                    self.opt_string("after")?,
                )?;
                Op::DocConflicts {
                    store: self.string("store")?,
                    id: self.string("doc_id")?,
                    page,
                }
            }
            "doc.all" => Op::DocAll {
                store: self.string("store")?,
                page: self.page()?,
            },
            "op.push" => Op::LogPush {
                fp: self.full_prefix()?,
                path: self.string("path")?,
                kind: self.string("type")?,
                payload: self.json("payload")?,
            },
            "op.get" => Op::LogGet {
                fp: self.full_prefix()?,
                path: self.string("path")?,
            },
            "op.log" => Op::LogOps {
                fp: self.full_prefix()?,
                path: self.string("path")?,
            },
            other => {
                return Err(ApiError::bad(format!(
                    "unknown op {other:?}: get, put, delete, list, prefixes, subprefixes, hash, doc.create, doc.get, doc.update, doc.upsert, doc.delete, doc.resolve, doc.conflicts, doc.all, op.push, op.get, op.log or ping"
                )));
            }
        })
    }
}

/// Runs a job that is not a key write and makes its reply frames.
fn answer(api: &Service, job: Job) -> Vec<Vec<u8>> {
    let Job {
        envelope,
        id,
        op,
        started,
    } = job;
    let (name, outcome) = match op {
        Ok((op, grant)) => {
            let (name, writes) = (op.name(), op.writes());
            let line = op.audit_line();
            let out = api.run(&grant, op);
            crate::auth::with_source(peer(&envelope), || {
                api.audit(&grant, "zmq", line.as_ref(), out.is_ok());
            });
            if writes && out.is_ok() {
                api.wrote();
                api.metrics.zmq_writes.fetch_add(1, Ordering::Relaxed);
            }
            // A document is the body of an HTTP answer; a ZeroMQ reply's
            // top level holds "id" and "ok", so it comes under "doc".
            let out = if name == "doc.get" {
                out.map(|doc| json!({ "doc": doc }))
            } else {
                out
            };
            (name, out)
        }
        Err(e) => ("invalid", Err(e)),
    };
    finish(&api.metrics, name, started, envelope, id, outcome)
}

/// How the audit log names the peer of a request: `zmq:` and its routing
/// id (the envelope's first frame, up to 32 bytes) in hex.
fn peer(envelope: &[Vec<u8>]) -> String {
    let id = envelope.first().map_or(&[][..], |f| &f[..f.len().min(32)]);
    let mut text = String::from("zmq:");
    for b in id {
        text.push_str(&format!("{b:02x}"));
    }
    text
}

/// The reply frames: the request's envelope, then the JSON body (the
/// result's fields with `"id"` and `"ok": true`, or `"ok": false` and the
/// error).
fn finish(
    metrics: &crate::metrics::Metrics,
    op: &str,
    started: Instant,
    mut envelope: Vec<Vec<u8>>,
    id: Value,
    outcome: Result<Value, ApiError>,
) -> Vec<Vec<u8>> {
    let body = match outcome {
        Ok(mut result) => {
            metrics.zmq(op, "ok", started.elapsed());
            if let Value::Object(o) = &mut result {
                o.insert("id".into(), id);
                o.insert("ok".into(), Value::Bool(true));
            }
            result
        }
        Err(e) => {
            metrics.zmq(op, e.code(), started.elapsed());
            json!({"id": id, "ok": false, "error": e.to_json()})
        }
    };
    envelope.push(body.to_string().into_bytes());
    envelope
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
    pub(crate) fn start(
        config: &BrokerConfig,
        api: Service,
        limits: &Limits,
    ) -> Result<Broker, String> {
        let workers = config.workers.clamp(1, 1024);
        // Requests queued for workers beyond those running.
        let capacity = workers * 4;
        let sockets =
            ZmqSockets::bind(config, capacity + crate::commit::QUEUE, api.metrics.clone())?;
        let rates = Rates::new(limits.zmq_rate, limits.zmq_rate_total);
        let stop = Arc::new(AtomicBool::new(false));
        let (jobs, queue) = sync_channel::<Job>(capacity);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let mut pool = Vec::with_capacity(workers + 1);
        for n in 0..workers {
            let port = sockets.port()?;
            let (api, queue) = (api.clone(), queue.clone());
            let handle = std::thread::Builder::new()
                .name(format!("chorus-broker-{n}"))
                .spawn(move || work(&api, &queue, port))
                .map_err(|e| format!("cannot start a broker worker: {e}"))?;
            pool.push(handle);
        }
        // Key writes are answered from the service's committing thread.
        let answer = sockets.answerer()?;
        let s = stop.clone();
        let publishing = config.publish.is_some();
        let thread = std::thread::Builder::new()
            .name("chorus-broker".into())
            .spawn(move || {
                let mut sockets = sockets;
                if let Err(e) = serve(
                    &mut sockets,
                    &api,
                    (&jobs, &answer),
                    (capacity, &rates),
                    publishing,
                    &s,
                ) {
                    tracing::error!("the ZeroMQ broker stopped: {e}");
                }
                // Workers finish what they hold, then see the queue closed.
                drop(jobs);
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

fn work(api: &Service, queue: &std::sync::Mutex<Receiver<Job>>, mut port: Box<dyn ReplyPort>) {
    loop {
        let job = {
            let q = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.recv()
        };
        let Ok(job) = job else { return };
        let frames = answer(api, job);
        if let Err(e) = port.send(frames) {
            tracing::error!("a broker worker stopped: {e}");
            return;
        }
    }
}

/// The request rates allowed: per connection (routing id) and in all.
pub(crate) struct Rates {
    per_peer: Rate<Vec<u8>>,
    total: Rate<()>,
    per_peer_max: u32,
    total_max: u32,
}

static RATE_REFUSALS_LOGGED: Throttled = Throttled::new(crate::limits::LOG_EVERY);

impl Rates {
    /// `per_peer` requests per second per connection, `total` in all (0:
    /// no limit).
    pub(crate) fn new(per_peer: u32, total: u32) -> Rates {
        Rates {
            per_peer: Rate::new(per_peer),
            total: Rate::new(total),
            per_peer_max: per_peer,
            total_max: total,
        }
    }

    /// Why a request from `peer` is refused now, if it is: counted and
    /// logged at a bounded rate.
    fn check(&self, peer: &[u8], metrics: &crate::metrics::Metrics) -> Option<ApiError> {
        let now = Instant::now();
        let (wait, counter, what) = if let Err(wait) = self.total.take(&(), now) {
            (
                wait,
                &metrics.zmq_refused_total_rate,
                format!(
                    "the broker takes {} requests per second in all (--zmq-rate-total)",
                    self.total_max
                ),
            )
        } else if let Err(wait) = self.per_peer.take(&peer.to_vec(), now) {
            (
                wait,
                &metrics.zmq_refused_peer_rate,
                format!(
                    "the broker takes {} requests per second per connection (--zmq-rate)",
                    self.per_peer_max
                ),
            )
        } else {
            return None;
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = RATE_REFUSALS_LOGGED.hit() {
            tracing::warn!(
                "ZeroMQ: a request answered rate_limited: {what} ({held} more not logged since the last line)"
            );
        }
        Some(ApiError::new(
            Kind::RateLimited,
            format!(
                "{what}: retry after {} ms",
                wait.as_millis().saturating_add(1)
            ),
        ))
    }
}

/// The socket thread's loop: take requests, answer quick ones, queue the
/// rest, forward the workers' replies, publish changes.
fn serve(
    sockets: &mut dyn Sockets,
    api: &Service,
    (jobs, answer_from): (&SyncSender<Job>, &Answer),
    (capacity, rates): (usize, &Rates),
    publishing: bool,
    stop: &AtomicBool,
) -> Result<(), String> {
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
            let started = Instant::now();
            let (id, request) = Request::parse(&body);
            if let Some(refused) = rates.check(&frames[0], &api.metrics) {
                sockets.reply(finish(
                    &api.metrics,
                    "rate_limited",
                    started,
                    frames,
                    id,
                    Err(refused),
                ))?;
                continue;
            }
            let op = request.and_then(|r| {
                let op = r.to_op()?;
                let grant = crate::auth::with_source(peer(&frames), || {
                    api.authorize(r.token.as_deref(), &op, "zmq")
                })?;
                Ok((op, grant))
            });
            let job = Job {
                envelope: frames,
                id,
                op,
                started,
            };
            let quick = job.op.as_ref().map_or(true, |(op, _)| op.is_quick());
            if quick {
                sockets.reply(answer(api, job))?;
                continue;
            }
            if let Ok((op @ Op::Put { .. }, _)) = &job.op {
                // Committed with every other key write waiting, from any
                // interface.
                let name = op.name();
                let Job {
                    envelope,
                    id,
                    op,
                    started,
                } = job;
                let Ok((op, grant)) = op else { continue };
                let fp_key = match &op {
                    Op::Put { fp, key, value, .. } => (fp.clone(), key.clone(), value.is_none()),
                    _ => continue,
                };
                // The audit line is kept only when auth is on.
                let audit = api
                    .auth
                    .enabled()
                    .then(|| (api.clone(), grant.clone(), op.audit_line(), peer(&envelope)));
                let put = match Service::batch_put(&grant, op) {
                    Ok(p) => p,
                    Err(e) => {
                        sockets.reply(finish(&api.metrics, name, started, envelope, id, Err(e)))?;
                        continue;
                    }
                };
                let metrics = api.metrics.clone();
                let reply = answer_from.clone();
                api.writes.submit(
                    put,
                    Box::new(move |outcome| {
                        if let Some((service, grant, line, source)) = audit {
                            crate::auth::with_source(source, || {
                                service.audit(&grant, "zmq", line.as_ref(), outcome.is_ok());
                            });
                        }
                        if outcome.is_ok() {
                            metrics.zmq_writes.fetch_add(1, Ordering::Relaxed);
                        }
                        let outcome = outcome
                            .map(|info| Service::put_json(&fp_key.0, &fp_key.1, fp_key.2, &info));
                        reply(finish(&metrics, name, started, envelope, id, outcome));
                    }),
                );
                in_flight += 1;
                continue;
            }
            match jobs.try_send(job) {
                Ok(()) => in_flight += 1,
                // Cannot happen while in_flight < capacity; answer rather
                // than drop if it ever does.
                Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                    let e = ApiError::busy("the broker is saturated: retry");
                    sockets.reply(finish(
                        &api.metrics,
                        "busy",
                        job.started,
                        job.envelope,
                        job.id,
                        Err(e),
                    ))?;
                }
            }
        }
        api.metrics
            .zmq_in_flight
            .store(in_flight as u64, Ordering::Relaxed);
        if let Some(feed) = &mut feed
            && (wrote || Instant::now() >= feed.due())
            && let Err(e) = feed.publish(api, sockets)
        {
            // Requests are still served; the feed is tried again at its
            // next tick.
            tracing::warn!("the broker could not publish changes: {e}");
        }
    }
    Ok(())
}

/// The change events the PUB socket sends: the hub's batches, and the
/// feed read directly when it missed some.
struct FeedTail {
    follower: Follower,
    rx: tokio::sync::broadcast::Receiver<Arc<crate::events::Batch>>,
    behind: bool,
    next: Instant,
}

impl FeedTail {
    fn start(api: &Service) -> Result<FeedTail, String> {
        let rx = api.hub.subscribe();
        let cursor = api
            .meta
            .store()
            .cursor()
            .map_err(|e| format!("cannot read the change feed: {e}"))?;
        Ok(FeedTail {
            follower: Follower::new(EventId::after(cursor), Scope::default()),
            rx,
            behind: false,
            next: Instant::now() + FEED_POLL,
        })
    }

    fn due(&self) -> Instant {
        self.next
    }

    fn publish(&mut self, api: &Service, sockets: &mut dyn Sockets) -> Result<(), String> {
        use tokio::sync::broadcast::error::TryRecvError;
        self.next = Instant::now() + FEED_POLL;
        let mut items = Vec::new();
        for _ in 0..FEED_ROUNDS {
            if self.behind {
                let done = self
                    .follower
                    .read(api.meta.store(), &mut items)
                    .map_err(|e| format!("cannot read the change feed: {e}"))?;
                self.behind = !done;
            } else {
                match self.rx.try_recv() {
                    Ok(batch) => {
                        if !self.follower.take(&batch, &mut items) {
                            self.behind = true;
                        }
                    }
                    Err(TryRecvError::Lagged(_)) => self.behind = true,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
                }
            }
        }
        if self.behind || !self.rx.is_empty() {
            self.next = Instant::now(); // the rest at once
        }
        for item in items {
            match item {
                Item::Event(e) => {
                    sockets.publish(e.topic.as_bytes(), e.json.as_bytes())?;
                    api.metrics.zmq_published.fetch_add(1, Ordering::Relaxed);
                }
                Item::Overflow(first_seq) => {
                    // Compaction outran us (a burst bigger than the log
                    // keeps): tell subscribers, carry on from the new end.
                    sockets.publish(
                        b"!overflow",
                        overflow_json(first_seq).to_string().as_bytes(),
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The broker's loop against a test double of its sockets: requests
    //! in, replies out, no ZeroMQ.

    use std::collections::VecDeque;
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

    use super::*;

    /// Requests queued up front; replies collected; workers' and the
    /// committer's replies come back through a channel, as through the
    /// inproc socket.
    struct Fake {
        requests: VecDeque<Vec<Vec<u8>>>,
        replies: Vec<Value>,
        finished: Receiver<Vec<Vec<u8>>>,
        expected: usize,
        stop: Arc<AtomicBool>,
        deadline: Instant,
    }

    struct Port(SyncSender<Vec<Vec<u8>>>);

    impl ReplyPort for Port {
        fn send(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
            self.0.send(frames).map_err(|e| e.to_string())
        }
    }

    impl Sockets for Fake {
        fn wait(&mut self, _requests: bool, _timeout: Duration) -> Result<(), String> {
            if self.replies.len() >= self.expected || Instant::now() > self.deadline {
                self.stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        }
        fn request(&mut self) -> Result<Option<Vec<Vec<u8>>>, String> {
            Ok(self.requests.pop_front())
        }
        fn finished(&mut self) -> Result<Option<Vec<Vec<u8>>>, String> {
            Ok(self.finished.try_recv().ok())
        }
        fn reply(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
            assert_eq!(frames.len(), 2, "the envelope, then the body");
            assert_eq!(frames[0], b"client".to_vec(), "sent back to its sender");
            let body: Value = serde_json::from_slice(&frames[1]).map_err(|e| e.to_string())?;
            self.replies.push(body);
            Ok(())
        }
        fn publish(&mut self, _topic: &[u8], _body: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn port(&self) -> Result<Box<dyn ReplyPort>, String> {
            Err("not used".into())
        }
        fn answerer(&self) -> Result<Answer, String> {
            Err("not used".into())
        }
    }

    /// Runs the broker's loop over `queue` (all from "client") with a
    /// worker, and returns the replies.
    fn run_fake(queue: VecDeque<Vec<Vec<u8>>>, rates: &Rates) -> Vec<Value> {
        let dir = tempfile::tempdir().expect("tmp");
        let store = chorus_store::Store::open(
            dir.path(),
            chorus_store::Options {
                create: true,
                sync: chorus_store::SyncMode::Batch,
                ..chorus_store::Options::default()
            },
        )
        .expect("store");
        let (commands, _inbox) = tokio::sync::mpsc::channel(1);
        let api =
            Service::new(chorus_store::Metadata::new(store), false, commands).expect("service");
        let expected = queue.len();
        let (tx, rx) = sync_channel(64);
        let stop = Arc::new(AtomicBool::new(false));
        let mut fake = Fake {
            requests: queue,
            replies: Vec::new(),
            finished: rx,
            expected,
            stop: stop.clone(),
            deadline: Instant::now() + Duration::from_secs(30),
        };
        let (jobs, queue) = sync_channel::<Job>(4);
        let queue = std::sync::Mutex::new(queue);
        let worker_api = api.clone();
        let port_tx = tx.clone();
        std::thread::scope(|s| {
            s.spawn(|| work(&worker_api, &queue, Box::new(Port(port_tx))));
            let answer: Answer = Arc::new(move |frames| {
                let _ = tx.send(frames);
            });
            serve(&mut fake, &api, (&jobs, &answer), (4, rates), false, &stop).expect("serve");
            drop(jobs);
        });
        assert_eq!(fake.replies.len(), expected, "{:?}", fake.replies);
        fake.replies
    }

    #[test]
    fn requests_over_a_connections_rate_are_answered_rate_limited() {
        let queue: VecDeque<Vec<Vec<u8>>> = (0..12)
            .map(|i| {
                let r = json!({"id": i, "op": "ping"});
                vec![b"client".to_vec(), r.to_string().into_bytes()]
            })
            .collect();
        let replies = run_fake(queue, &Rates::new(3, 0));
        let limited: Vec<&Value> = replies
            .iter()
            .filter(|r| r["error"]["code"] == "rate_limited")
            .collect();
        let ok = replies.iter().filter(|r| r["ok"] == true).count();
        // 3 at once, then 3 a second: the loop takes far less than 3 s.
        assert!((3..12).contains(&ok), "{replies:?}");
        assert_eq!(ok + limited.len(), 12, "{replies:?}");
        assert!(
            limited[0]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("--zmq-rate")),
            "{limited:?}"
        );
        // The same flood with a total rate: refused under it too.
        let queue: VecDeque<Vec<Vec<u8>>> = (0..12)
            .map(|i| {
                let r = json!({"id": i, "op": "ping"});
                vec![b"client".to_vec(), r.to_string().into_bytes()]
            })
            .collect();
        let replies = run_fake(queue, &Rates::new(0, 2));
        let limited = replies
            .iter()
            .filter(|r| r["error"]["code"] == "rate_limited")
            .count();
        assert!((1..=10).contains(&limited), "{replies:?}");
    }

    #[test]
    fn every_request_gets_one_reply_with_its_id_in_the_services_shape() {
        let requests: Vec<Value> = vec![
            json!({"id": 1, "op": "ping"}),
            json!({"id": 2, "op": "get", "prefix": "app", "sub": "cfg", "key": "k"}),
            json!({"id": 3, "op": "put", "prefix": "app", "sub": "cfg", "key": "k", "value": "v"}),
            json!({"id": 4, "op": "doc.create", "store": "users", "doc": {"_id": "a"}}),
            json!({"id": 5, "op": "put", "prefix": "$cluster", "sub": "x", "key": "k", "value": "v"}),
            json!({"id": 6, "op": "nonsense"}),
            json!({"id": 7, "op": "list", "prefix": "app", "sub": "cfg", "limit": 0}),
        ];
        let mut queue: VecDeque<Vec<Vec<u8>>> = requests
            .iter()
            .map(|r| vec![b"client".to_vec(), r.to_string().into_bytes()])
            .collect();
        queue.push_back(vec![b"client".to_vec(), b"not json".to_vec()]);
        let replies = run_fake(queue, &Rates::new(0, 0));
        let by_id = |id: i64| {
            replies
                .iter()
                .find(|r| r["id"] == id)
                .cloned()
                .unwrap_or_else(|| panic!("no reply to {id}: {replies:?}"))
        };
        assert_eq!(by_id(1)["ok"], true);
        let absent = by_id(2);
        assert_eq!(absent["error"]["code"], "not_found", "{absent}");
        assert!(
            absent["error"]["context"].is_string(),
            "the empty context: {absent}"
        );
        let put = by_id(3);
        assert_eq!(
            (put["ok"].clone(), put["key"].clone()),
            (json!(true), json!("k")),
            "{put}"
        );
        assert_eq!(by_id(4)["_id"], "a");
        assert_eq!(by_id(5)["error"]["code"], "bad_request");
        assert_eq!(by_id(6)["error"]["code"], "bad_request");
        assert_eq!(by_id(7)["error"]["code"], "bad_request");
        let garbled = replies
            .iter()
            .find(|r| r["id"].is_null())
            .expect("a reply to the message that is not JSON");
        assert_eq!(garbled["error"]["code"], "bad_request");
    }
}
