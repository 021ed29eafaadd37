//! The HTTP/JSON adapter: parses a request into a service operation,
//! runs it, renders the answer. Keys, documents, operation logs, hashes,
//! lists, a change stream (SSE), the cluster view, metrics, health and an
//! OpenAPI document.
//!
//! Every error is the service's `{"code", "message"}` with the status the
//! error table gives, including those the framework makes (a wrong method,
//! a body or URI over the limit, a path that is not UTF-8, a query that
//! cannot be read): [`json_errors`] rewrites them. Request bodies are
//! limited to [`BODY_MAX`] bytes, paths and queries to [`URI_MAX`].
//!
//! [`serve`] is the server: its own accept loop caps connections in total
//! and per source, closes those whose request head is late or that stay
//! idle, and rate-limits requests per source (docs/auth.md, "Limits").

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chorus_core::FullPrefix;
use chorus_core::object::context_from_string;
use chorus_store::{EventId, Match};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{AuthError, AuthErrorKind};
use crate::error::{ApiError, Kind};
use crate::events::{Follower, Item, Scope, overflow_json};
use crate::limits::{ConnGate, ConnPermit, Limits, Rate, Refusal, Throttled};
use crate::metrics::Metrics;
use crate::service::{Command, Op, Page, Reach, Service, resolver};

/// Largest request body accepted (the sync routes allow more).
pub const BODY_MAX: usize = crate::service::REQUEST_MAX;
/// Longest path and query accepted.
pub const URI_MAX: usize = 8 << 10;
/// The most of an oversized body read (and dropped) before it is refused.
const DRAIN_MAX: u64 = 64 << 20;
/// The header that carries a context.
const CONTEXT_HEADER: &str = "x-chorus-context";
/// How often an open watch checks its token again (auth on).
const RECHECK: Duration = Duration::from_secs(1);
/// Longest glob a watch takes.
const MATCH_MAX: usize = 4096;
/// How long a quiet watch waits before it sends a comment line.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Bytes of events sent as one chunk at most.
const CHUNK_BYTES: usize = 64 << 10;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let context = self.context.clone();
        let mut response = (status, axum::Json(self.to_json())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(h) = context.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(CONTEXT_HEADER, h);
        }
        response
    }
}

/// Serves the API on `listener` until the process ends, under `limits`.
/// A connection over a cap is answered 503 `busy` and closed at once; a
/// request over its source's rate is answered 429 `rate_limited` with
/// Retry-After; a connection is closed when a request head takes longer
/// than the header timeout (an idle kept-alive connection too), or when
/// no byte moves either way for the idle timeout. Handlers can take the
/// client's address (`ConnectInfo<SocketAddr>`).
pub(crate) async fn serve(listener: tokio::net::TcpListener, api: Service, limits: Limits) {
    use tower_service::Service as _;
    let metrics = api.metrics.clone();
    let limiter = Arc::new(Limiter {
        rate: Rate::new(limits.http_rate),
        per_second: limits.http_rate,
        metrics: metrics.clone(),
    });
    let app = router(api).layer(axum::middleware::from_fn_with_state(limiter, rate_limit));
    let mut make = app.into_make_service_with_connect_info::<SocketAddr>();
    let gate = ConnGate::new(limits.http_connections, limits.http_connections_per_source);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.http_header_timeout);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                if let Some(held) = ACCEPT_FAILURES_LOGGED.hit() {
                    tracing::warn!(
                        "HTTP: cannot accept a connection: {e} ({held} more not logged since the last line)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = match gate.admit(remote.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                refuse(&stream, remote, why, &metrics, &limits);
                continue;
            }
        };
        let Ok(()) = std::future::poll_fn(|cx| {
            tower_service::Service::<SocketAddr>::poll_ready(&mut make, cx)
        })
        .await;
        let Ok(service) = make.call(remote).await;
        let conn = Conn {
            builder: builder.clone(),
            admitted,
            idle: limits.http_idle,
            metrics: metrics.clone(),
        };
        tokio::spawn(conn.run(stream, service));
    }
}

static ACCEPT_FAILURES_LOGGED: Throttled = Throttled::new(crate::limits::LOG_EVERY);
static REFUSALS_LOGGED: Throttled = Throttled::new(crate::limits::LOG_EVERY);

/// Answers a connection over a cap with 503 `busy` if its socket takes
/// the bytes at once, and closes it (never waits on it).
fn refuse(
    stream: &tokio::net::TcpStream,
    remote: SocketAddr,
    why: Refusal,
    metrics: &Metrics,
    limits: &Limits,
) {
    let (counter, cap) = match why {
        Refusal::Total => (
            &metrics.http_refused_total,
            format!(
                "the node serves {} HTTP connections at most (--http-max-connections)",
                limits.http_connections
            ),
        ),
        Refusal::PerSource => (
            &metrics.http_refused_per_source,
            format!(
                "the node serves {} HTTP connections from one address at most (--http-max-connections-per-source)",
                limits.http_connections_per_source
            ),
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(held) = REFUSALS_LOGGED.hit() {
        tracing::warn!(
            "HTTP: refused a connection from {remote}: {cap} ({held} more refusals not logged since the last line)"
        );
    }
    let body = ApiError::busy(format!(
        "{cap}: close idle connections, or retry in a moment"
    ))
    .to_json()
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// What the rate limit layer holds.
struct Limiter {
    rate: Rate<std::net::IpAddr>,
    per_second: u32,
    metrics: Arc<Metrics>,
}

static RATE_REFUSALS_LOGGED: Throttled = Throttled::new(crate::limits::LOG_EVERY);

/// Refuses a request over its source's rate with 429 `rate_limited` and
/// Retry-After (whole seconds, at least 1).
async fn rate_limit(State(limiter): State<Arc<Limiter>>, request: Request, next: Next) -> Response {
    let from = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(from) = from else {
        return next.run(request).await;
    };
    let Err(wait) = limiter
        .rate
        .take(&crate::limits::source(from), Instant::now())
    else {
        return next.run(request).await;
    };
    limiter
        .metrics
        .http_refused_rate
        .fetch_add(1, Ordering::Relaxed);
    if let Some(held) = RATE_REFUSALS_LOGGED.hit() {
        tracing::warn!(
            "HTTP: {from} is over {} requests per second (--http-rate): answered 429 ({held} more not logged since the last line)",
            limiter.per_second
        );
    }
    let secs = wait.as_secs().saturating_add(1);
    let mut response = ApiError::new(
        Kind::RateLimited,
        format!(
            "more than {} requests per second from {from}: retry after {secs} s",
            limiter.per_second
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// One admitted connection.
struct Conn {
    builder: hyper::server::conn::http1::Builder,
    /// Its place under the caps, freed when it ends.
    admitted: ConnPermit,
    idle: Duration,
    metrics: Arc<Metrics>,
}

impl Conn {
    async fn run<S>(self, stream: tokio::net::TcpStream, service: S)
    where
        S: tower_service::Service<
                axum::http::Request<hyper::body::Incoming>,
                Response = Response,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let Conn {
            builder,
            admitted: _admitted,
            idle,
            metrics,
        } = self;
        metrics.http_connections.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let moved = Arc::new(AtomicU64::new(0));
        let io = hyper_util::rt::TokioIo::new(Watched {
            inner: stream,
            started,
            moved: moved.clone(),
        });
        let conn =
            builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
        tokio::pin!(conn);
        let check = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done && e.is_timeout() {
                        metrics.http_closed_header_timeout.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                () = tokio::time::sleep(check) => {
                    let last = Duration::from_millis(moved.load(Ordering::Relaxed));
                    if started.elapsed().saturating_sub(last) >= idle {
                        // Dropping the connection closes it.
                        metrics.http_closed_idle.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        metrics.http_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that notes when a byte last moved either way (milliseconds
/// since `started`).
struct Watched {
    inner: tokio::net::TcpStream,
    started: Instant,
    moved: Arc<AtomicU64>,
}

impl Watched {
    fn note(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved.store(ms, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.note();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.note();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.note();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The routes.
pub(crate) fn router(api: Service) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/join", post(cluster_join))
        .route("/v1/kv", get(prefixes))
        .route("/v1/kv/{prefix}", get(subprefixes))
        .route("/v1/kv/{prefix}/{sub}", get(kv_list))
        .route(
            "/v1/kv/{prefix}/{sub}/{*key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route("/v1/hash/{prefix}", get(hash_prefix))
        .route("/v1/hash/{prefix}/{sub}", get(hash_full))
        .route("/v1/watch", get(watch))
        .route("/v1/docs/{store}", get(doc_all).post(doc_create))
        .route(
            "/v1/docs/{store}/{id}",
            get(doc_get).put(doc_put).delete(doc_delete),
        )
        .route("/v1/docs/{store}/{id}/conflicts", get(doc_conflicts))
        .route("/v1/docs/{store}/{id}/resolve", post(doc_resolve))
        .route("/v1/ops/{prefix}/{sub}/{*path}", get(op_get).post(op_push))
        .merge(crate::sync_http::routes())
        .merge(crate::auth_http::routes())
        .merge(crate::channels_http::routes())
        .fallback(|| async { ApiError::not_found("no such route: see /openapi.json") })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            crate::channels_http::forwarding,
        ))
        .layer(DefaultBodyLimit::max(BODY_MAX))
        .layer(axum::middleware::from_fn_with_state(api.clone(), measure))
        .layer(axum::middleware::from_fn(audit_source))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(api)
}

/// Makes every error `{code, message}`: the framework's own refusals
/// (405, 413, a path or query it could not read) come as text or empty,
/// and a URI over [`URI_MAX`] is refused here.
async fn json_errors(request: Request, next: Next) -> Response {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > URI_MAX {
        return ApiError::new(
            Kind::UriTooLong,
            format!("the path and query are {uri_len} bytes; the limit is {URI_MAX}"),
        )
        .into_response();
    }
    // A body announced over the limit is refused before it is read (and
    // before a client waiting for 100 Continue sends it).
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if announced > BODY_MAX as u64 && !request.uri().path().starts_with("/v1/sync/") {
        let refusal = ApiError::new(
            Kind::TooLarge,
            format!("the body is {announced} bytes, over the limit of {BODY_MAX}"),
        );
        // A client that did not wait for 100 Continue is sending the body
        // now: read and drop it (up to a bound) so that it reads the
        // answer instead of a reset connection.
        let waits = request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits && announced <= DRAIN_MAX {
            let mut body = request.into_body().into_data_stream();
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut body).await {}
        }
        return refusal.into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    let allow = response.headers().get(header::ALLOW).cloned();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (kind, message) = match status.as_u16() {
        405 => (
            Kind::MethodNotAllowed,
            "this route does not take that method: see /openapi.json".to_string(),
        ),
        413 => (
            Kind::TooLarge,
            format!("the body is over the limit of {BODY_MAX} bytes"),
        ),
        414 => (
            Kind::UriTooLong,
            format!("the path and query are over the limit of {URI_MAX} bytes"),
        ),
        s if s >= 500 => (Kind::Internal, format!("the server failed ({status})")),
        _ => {
            // The framework's message says what it could not read.
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            (
                Kind::BadRequest,
                format!("the request cannot be read: {}", text.trim()),
            )
        }
    };
    let mut e = ApiError::new(kind, message);
    if kind == Kind::BadRequest && status.as_u16() != 400 {
        e.message = format!("{} ({status})", e.message);
    }
    let mut response = e.into_response();
    if let Some(allow) = allow {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// Names the client (its IP address) in the audit lines the request
/// writes. Inside [`json_errors`]: a URI over the limit is refused before
/// any token check or audit.
async fn audit_source(request: Request, next: Next) -> Response {
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(
            || "http".to_string(),
            |c| c.0.ip().to_canonical().to_string(),
        );
    crate::auth::in_source(source, next.run(request)).await
}

/// Counts every request by route template and status.
async fn measure(State(api): State<Service>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let response = next.run(request).await;
    api.metrics
        .http(&route, response.status().as_u16(), started.elapsed());
    response
}

/// The token of `Authorization: Bearer TOKEN`, if the header is there.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| AuthError::invalid())?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(AuthError::new(
            AuthErrorKind::Missing,
            "the Authorization header is not a bearer token: send Authorization: Bearer TOKEN (see docs/auth.md)",
        )),
    }
}

fn token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    Ok(bearer(headers)?.map(str::to_string))
}

/// Authorizes and runs an operation that is not a key write, on a thread
/// that may block; audits writes.
async fn run(api: &Service, headers: &HeaderMap, op: Op) -> Result<Value, ApiError> {
    let token = token(headers)?;
    let api2 = api.clone();
    let writes = op.writes();
    let work = crate::auth::carry_source(move || {
        let grant = api2.authorize(token.as_deref(), &op, "http")?;
        let line = op.audit_line();
        let out = api2.run(&grant, op);
        api2.audit(&grant, "http", line.as_ref(), out.is_ok());
        out
    });
    let out = if writes {
        // On the blocking pool: it syncs.
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::internal(format!("the request's task failed: {e}")))?
    } else {
        tokio::task::block_in_place(work)
    };
    if writes && out.is_ok() {
        api.wrote();
    }
    out
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::bad(format!("the path cannot be read: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::bad(format!(
            "the query string cannot be read ({e}): send each parameter once, with a value of its type (see /openapi.json)"
        ))
    })
}

fn full_prefix(prefix: &str, sub: &str) -> Result<FullPrefix, ApiError> {
    Ok(FullPrefix::new(prefix, sub)?)
}

fn json_body(body: &Bytes, example: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not valid JSON ({e}): send something like {example}"
        ))
    })
}

async fn health(State(api): State<Service>) -> Response {
    let node = api.meta.store().node_id().to_string();
    axum::Json(json!({"status": "ok", "node": node})).into_response()
}

async fn cluster(State(api): State<Service>, headers: HeaderMap) -> Result<Response, ApiError> {
    // The cluster's view and membership: a read-write token for the
    // whole node, even to read.
    let t = token(&headers)?;
    tokio::task::block_in_place(|| {
        api.check(t.as_deref(), &Reach::All, true, "http", "cluster.get")
    })?;
    let view = api
        .view
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(axum::Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    peer: String,
}

async fn cluster_join(
    State(api): State<Service>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = token(&headers)?;
    let grant = tokio::task::block_in_place(|| {
        api.check(t.as_deref(), &Reach::All, true, "http", "cluster.join")
    })?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return Err(ApiError::bad(
            "the body must be JSON, sent with Content-Type: application/json, like {\"peer\": \"127.0.0.1:PORT\"} (a peer's --gossip address)",
        ));
    }
    let body: JoinBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "the body must be JSON like {{\"peer\": \"127.0.0.1:PORT\"}} (a peer's --gossip address): {e}"
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
    if addr.port() == 0 {
        return Err(ApiError::bad(format!("peer {addr}: port 0 is not a port")));
    }
    api.commands
        .try_send(Command::Join(addr.to_string()))
        .map_err(|_| ApiError::busy("the node is busy: try again"))?;
    api.auth
        .audit(&grant, "http", "cluster.join", &addr.to_string(), true);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"joining": addr.to_string()})),
    )
        .into_response())
}

async fn metrics(State(api): State<Service>) -> Response {
    let view = api
        .view
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let levels = crate::metrics::Levels {
        active_peers: view.active.len(),
        passive_peers: view.passive.len(),
        eager_links: view.eager.len(),
        lazy_links: view.lazy.len(),
        open_watches: api.hub.streams(),
    };
    let status = tokio::task::block_in_place(|| api.meta.store().status()).ok();
    let writes = api.meta.store().write_stats();
    let text = crate::metrics::render(
        &api.metrics,
        &view.counters,
        &levels,
        status.as_ref(),
        &writes,
    );
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [("content-type", "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<u64>,
    after: Option<String>,
}

async fn prefixes(
    State(api): State<Service>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let op = Op::Prefixes {
        page: Page::new(q.limit, q.after)?,
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

async fn subprefixes(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let prefix = path(p)?;
    FullPrefix::new(&prefix, "x")?;
    let q = query(q)?;
    let op = Op::Subprefixes {
        prefix,
        page: Page::new(q.limit, q.after)?,
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    resolve: Option<String>,
    allow_put: Option<bool>,
}

async fn kv_get(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (prefix, sub, key) = path(p)?;
    let q = query(q)?;
    let op = Op::Get {
        fp: full_prefix(&prefix, &sub)?,
        key,
        resolver: resolver(q.resolve.as_deref())?,
        allow_put: q.allow_put.unwrap_or(false),
    };
    let read = run(&api, &headers, op).await?;
    let context = read["context"].as_str().map(str::to_string);
    let mut response = axum::Json(read).into_response();
    if let Some(h) = context.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(CONTEXT_HEADER, h);
    }
    Ok(response)
}

/// `X-Chorus-Context` and `If-None-Match: *`.
fn write_conditions(
    headers: &HeaderMap,
) -> Result<(Option<chorus_core::object::Context>, bool), ApiError> {
    let context = match headers.get(CONTEXT_HEADER) {
        None => None,
        Some(raw) => {
            let text = raw.to_str().map_err(|_| {
                ApiError::bad("X-Chorus-Context is not ASCII: send the context a read returned")
            })?;
            Some(context_from_string(text).map_err(|e| {
                ApiError::bad(format!(
                    "X-Chorus-Context is not a context ({e}): send the context a read returned (a 404 carries the empty one)"
                ))
            })?)
        }
    };
    let if_absent = match headers.get(header::IF_NONE_MATCH) {
        None => false,
        Some(v) if v.as_bytes() == b"*" => true,
        Some(_) => {
            return Err(ApiError::bad(
                "If-None-Match: only * is understood (write only if the key is absent)",
            ));
        }
    };
    if if_absent && context.is_some() {
        return Err(ApiError::bad(
            "If-None-Match: * and X-Chorus-Context cannot be combined: a create has no context",
        ));
    }
    Ok((context, if_absent))
}

async fn kv_put(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (prefix, sub, key) = path(p)?;
    kv_write(api, headers, (prefix, sub, key), Some(body.to_vec())).await
}

async fn kv_delete(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (prefix, sub, key) = path(p)?;
    kv_write(api, headers, (prefix, sub, key), None).await
}

async fn kv_write(
    api: Service,
    headers: HeaderMap,
    (prefix, sub, key): (String, String, String),
    value: Option<Vec<u8>>,
) -> Result<Response, ApiError> {
    let (context, if_absent) = write_conditions(&headers)?;
    let op = Op::Put {
        fp: full_prefix(&prefix, &sub)?,
        key,
        value,
        context,
        if_absent,
    };
    let t = token(&headers)?;
    let grant = tokio::task::block_in_place(|| api.authorize(t.as_deref(), &op, "http"))?;
    let line = op.audit_line();
    let out = api.put(&grant, op).await;
    tokio::task::block_in_place(|| api.audit(&grant, "http", line.as_ref(), out.is_ok()));
    let status = if if_absent {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(out?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(rename = "match")]
    pattern: Option<String>,
    limit: Option<u64>,
    after: Option<String>,
}

async fn kv_list(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (prefix, sub) = path(p)?;
    let q = query(q)?;
    let op = Op::List {
        fp: full_prefix(&prefix, &sub)?,
        matching: q.pattern.map_or(Match::All, Match::Glob),
        page: Page::new(q.limit, q.after)?,
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

async fn hash_prefix(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let prefix = path(p)?;
    FullPrefix::new(&prefix, "x")?;
    let op = Op::HashPrefix { prefix };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

async fn hash_full(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (prefix, sub) = path(p)?;
    let op = Op::Hash {
        fp: full_prefix(&prefix, &sub)?,
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    prefix: Option<String>,
    #[serde(rename = "match")]
    pattern: Option<String>,
    /// An event id (or cursor) to resume after, like `Last-Event-ID`.
    from: Option<String>,
}

/// Server-sent events for every change, local or from a peer, from now or
/// after `Last-Event-ID` (or `?from=`). Every event has its own id; a
/// client that reconnects with the last id it saw is sent each later
/// event once. A client so far behind that compaction dropped what it had
/// not read is sent an `overflow` event and the stream ends.
async fn watch(
    State(api): State<Service>,
    headers: HeaderMap,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let mut scope = Scope::parse(q.prefix.as_deref())?;
    match q.pattern.as_deref() {
        Some("") => {
            return Err(ApiError::bad(
                "match is empty: it would match no key; leave it out to see every key",
            ));
        }
        Some(p) if p.len() > MATCH_MAX => {
            return Err(ApiError::bad(format!(
                "match is {} bytes; the limit is {MATCH_MAX}",
                p.len()
            )));
        }
        _ => {}
    }
    scope.matching = q.pattern.map(Match::Glob);
    let reach = match (&scope.prefix, &scope.sub) {
        (Some(p), Some(s)) => Reach::FullPrefix(full_prefix(p, s)?),
        (Some(p), None) => Reach::Prefix(p.clone()),
        _ => Reach::All,
    };
    crate::service::reserved_rule(scope.prefix.as_deref(), false)?;
    let t = token(&headers)?;
    let grant =
        tokio::task::block_in_place(|| api.check(t.as_deref(), &reach, false, "http", "watch"))?;
    // Whether the stream shows token ids or opaque writer ids.
    let admin =
        tokio::task::block_in_place(|| matches!(api.viewer(&grant), crate::json::Viewer::Admin));
    // An EventSource that began with ?from= sends Last-Event-ID when it
    // reconnects, with the same URL: the header is the newer position.
    // Both are checked.
    if let Some(f) = q.from.as_deref() {
        EventId::parse(f)?;
    }
    let from = match headers.get("last-event-id") {
        Some(raw) => Some(
            raw.to_str()
                .map_err(|_| ApiError::bad("Last-Event-ID is not ASCII"))?
                .to_string(),
        ),
        None => q.from,
    };
    let after = match from {
        Some(text) => EventId::parse(&text)?,
        None => EventId::after(tokio::task::block_in_place(|| api.meta.store().cursor())?),
    };
    // Subscribed before the first read of the feed: no batch is missed
    // between the two.
    let rx = api.hub.subscribe();
    let recheck = api.auth.enabled().then(|| Recheck {
        token: t.unwrap_or_default(),
        reach,
        last: Instant::now(),
    });
    let state = WatchState {
        api,
        follower: Follower::new(after, scope),
        rx,
        pending: std::collections::VecDeque::new(),
        behind: true,
        last_sent: Instant::now(),
        ended: false,
        recheck,
        admin,
    };
    let stream = futures_util::stream::unfold(state, next_event);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

struct WatchState {
    api: Service,
    follower: Follower,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::events::Batch>>,
    pending: std::collections::VecDeque<Item>,
    /// The follower reads the feed itself until it is at the end.
    behind: bool,
    /// When the stream last sent its keep-alive comment.
    last_sent: Instant,
    ended: bool,
    recheck: Option<Recheck>,
    /// The reader sees token ids (docs/auth.md, "Writer identity on values").
    admin: bool,
}

struct Recheck {
    token: String,
    reach: Reach,
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
        self.api
            .auth
            .check_target(Some(&r.token), r.reach.target(), crate::auth::Access::Read)
            .map(|_| ())
            .map_err(|e| e.message)
    }
}

/// An SSE frame of a named event with one JSON data line.
fn sse_frame(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The next chunk of the stream: every event waiting (each frame rendered
/// once by the hub and shared), a comment to keep an idle connection
/// open, or the frame that ends the stream.
async fn next_event(mut s: WatchState) -> Option<(Result<Bytes, Infallible>, WatchState)> {
    loop {
        if !s.pending.is_empty() {
            let mut chunk = Vec::new();
            while let Some(item) = s.pending.pop_front() {
                match item {
                    Item::Event(e) => chunk.extend_from_slice(e.sse_for(s.admin)),
                    Item::Overflow(first_seq) => {
                        s.pending.clear();
                        s.ended = true;
                        chunk.extend_from_slice(&sse_frame("overflow", &overflow_json(first_seq)));
                    }
                }
                if chunk.len() >= CHUNK_BYTES {
                    break;
                }
            }
            return Some((Ok(Bytes::from(chunk)), s));
        }
        if s.ended {
            return None;
        }
        if let Err(why) = s.allowed() {
            s.ended = true;
            let data =
                json!({"code": "unauthorized", "message": format!("the stream ends: {why}")});
            return Some((Ok(sse_frame("error", &data)), s));
        }
        let mut out = Vec::new();
        if s.behind {
            let store = s.api.meta.store().clone();
            match tokio::task::block_in_place(|| s.follower.read(&store, &mut out)) {
                Ok(done) => s.behind = !done,
                Err(e) => {
                    s.ended = true;
                    return Some((Ok(sse_frame("error", &ApiError::from(e).to_json())), s));
                }
            }
            s.pending.extend(out);
            continue;
        }
        let wait = if s.recheck.is_some() {
            RECHECK
        } else {
            KEEP_ALIVE
        };
        match tokio::time::timeout(wait, s.rx.recv()).await {
            Ok(Ok(batch)) => {
                if !s.follower.take(&batch, &mut out) {
                    s.behind = true;
                }
                s.pending.extend(out);
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => s.behind = true,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            Err(_) => {
                // Quiet: a comment keeps proxies from closing the stream
                // (and, with auth on, the token is checked again first).
                if s.recheck.is_none() || s.last_sent.elapsed() >= KEEP_ALIVE {
                    s.last_sent = Instant::now();
                    return Some((Ok(Bytes::from_static(b":\n\n")), s));
                }
            }
        }
    }
}

// Documents.

const DOC_EXAMPLE: &str = "{\"_id\": \"alice\", \"email\": \"alice@example.com\"}";

async fn doc_all(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let store = path(p)?;
    let q = query(q)?;
    let op = Op::DocAll {
        store,
        page: Page::new(q.limit, q.after)?,
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

async fn doc_create(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let store = path(p)?;
    let doc = json_body(&body, DOC_EXAMPLE)?;
    let out = run(&api, &headers, Op::DocCreate { store, doc }).await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocGetQuery {
    rev: Option<String>,
    conflicts: Option<bool>,
}

async fn doc_get(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DocGetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (store, id) = path(p)?;
    let q = query(q)?;
    let op = Op::DocGet {
        store,
        id,
        rev: q.rev,
        conflicts: q.conflicts.unwrap_or(false),
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocPutQuery {
    keep_both: Option<bool>,
    upsert: Option<bool>,
}

/// With `_rev` in the body: an update of that revision (409 if it is not
/// current, unless `?keep_both=true`). Without: a create (409 if the
/// document exists), or with `?upsert=true` a write on top of the winner.
async fn doc_put(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DocPutQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (store, id) = path(p)?;
    let q = query(q)?;
    let mut doc = json_body(&body, DOC_EXAMPLE)?;
    let Value::Object(fields) = &mut doc else {
        return Err(ApiError::bad("a document must be a JSON object"));
    };
    match fields.get("_id") {
        None => {
            fields.insert("_id".into(), Value::String(id.clone()));
        }
        Some(Value::String(given)) if *given == id => {}
        Some(other) => {
            return Err(ApiError::bad(format!(
                "the body's _id ({other}) differs from the URL's ({id:?}): leave it out or make them equal"
            )));
        }
    }
    let has_rev = fields.contains_key("_rev");
    let (keep_both, upsert) = (q.keep_both.unwrap_or(false), q.upsert.unwrap_or(false));
    let (op, status) = if upsert {
        (Op::DocUpsert { store, doc }, StatusCode::OK)
    } else if has_rev {
        (
            Op::DocUpdate {
                store,
                doc,
                keep_both,
            },
            StatusCode::OK,
        )
    } else {
        (Op::DocCreate { store, doc }, StatusCode::CREATED)
    };
    let out = run(&api, &headers, op).await?;
    Ok((status, axum::Json(out)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevQuery {
    rev: Option<String>,
}

async fn doc_delete(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<RevQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (store, id) = path(p)?;
    let rev = query(q)?.rev.ok_or_else(|| {
        ApiError::bad("a delete needs ?rev=: the current revision, as _rev of a read")
    })?;
    let out = run(&api, &headers, Op::DocDelete { store, id, rev }).await?;
    Ok(axum::Json(out).into_response())
}

/// Keeps `?rev=` and deletes every other current revision.
async fn doc_resolve(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<RevQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (store, id) = path(p)?;
    let rev = query(q)?
        .rev
        .ok_or_else(|| ApiError::bad("resolve needs ?rev=: the current revision to keep"))?;
    let out = run(&api, &headers, Op::DocResolve { store, id, rev }).await?;
    Ok(axum::Json(out).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictsQuery {
    limit: Option<u64>,
    after: Option<String>,
}

/// Without `?limit=`: `{"conflicts": [groups]}`, the groups of revisions
/// that collided. With it: one page of the losing current revisions,
/// greatest first, `?after=` the `next` of the previous page.
async fn doc_conflicts(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ConflictsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (store, id) = path(p)?;
    let q = query(q)?;
    let page = crate::service::conflicts_page(q.limit, q.after)?;
    let out = run(&api, &headers, Op::DocConflicts { store, id, page }).await?;
    Ok(axum::Json(out).into_response())
}

// Operation logs.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    #[serde(rename = "type")]
    kind: String,
    payload: Value,
}

async fn op_push(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (prefix, sub, path_text) = path(p)?;
    let b: PushBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "the body must be JSON like {{\"type\": \"counter\", \"payload\": 1}}: {e}"
        ))
    })?;
    let op = Op::LogPush {
        fp: full_prefix(&prefix, &sub)?,
        path: path_text,
        kind: b.kind,
        payload: b.payload,
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpGetQuery {
    log: Option<bool>,
}

async fn op_get(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<OpGetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (prefix, sub, path_text) = path(p)?;
    let q = query(q)?;
    let fp = full_prefix(&prefix, &sub)?;
    let op = if q.log.unwrap_or(false) {
        Op::LogOps {
            fp,
            path: path_text,
        }
    } else {
        Op::LogGet {
            fp,
            path: path_text,
        }
    };
    Ok(axum::Json(run(&api, &headers, op).await?).into_response())
}
