//! Channels over HTTP (docs/channels.md): the `/v1/channels` routes, and
//! what the routes of one full prefix (`/v1/kv`, `/v1/hash`, `/v1/ops`,
//! `/v1/docs`) do when this node does not serve it: the store's 421
//! `not_served`, completed here with the serving nodes' addresses, or,
//! with `?forward=true` (or `chorus serve --forward`), the answer of a
//! node that serves it.
//!
//! Invariant: a request is forwarded at most once. The forwarded request
//! carries [`FORWARDED_BY`]; a node that receives one answers it itself,
//! whatever its table says. Forwarding is bounded: the request body by
//! the API's own limit, the answer by [`ANSWER_MAX`], the whole exchange
//! by [`FORWARD_TIMEOUT`]; a serving node that cannot be reached is tried
//! after the next, and when none answers the client gets 502
//! `unreachable` naming them.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chorus_core::{FullPrefix, NodeId};
use chorus_replica::members;
use chorus_store::channels::Change;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Kind};
use crate::service::{Reach, Service};

/// The header a forwarded request carries: the id of the node that
/// forwarded it. A node never forwards a request that has it.
pub(crate) const FORWARDED_BY: &str = "x-chorus-forwarded-by";
/// The header of a forwarded answer: the id of the node that answered.
pub(crate) const ANSWERED_BY: &str = "x-chorus-answered-by";
/// Longest wait for a connection to a serving node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a forwarded request's whole answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest forwarded answer (a page of keys is far smaller).
const ANSWER_MAX: usize = 16 << 20;
/// Headers of one connection, never passed on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The `/v1/channels` routes.
pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/channels", get(list))
        .route(
            "/v1/channels/{name}",
            axum::routing::put(add).delete(remove),
        )
        .route("/v1/channels/{name}/serve", post(serve))
        .route("/v1/channels/{name}/leave", post(leave))
}

/// The table with every node's addresses, and the records left out.
fn table_json(api: &Service) -> Result<Value, ApiError> {
    let channels = api.meta.channels()?;
    let addresses = members::addresses(&api.meta)?;
    Ok(members::channels_json(&channels, &addresses))
}

/// Checks a whole-node read-write token (as `/v1/cluster/join` does).
fn allowed(api: &Service, headers: &HeaderMap, op: &str) -> Result<crate::auth::Grant, ApiError> {
    let t = crate::http::bearer(headers)?.map(str::to_string);
    tokio::task::block_in_place(|| api.check(t.as_deref(), &Reach::All, true, "http", op))
}

async fn list(State(api): State<Service>, headers: HeaderMap) -> Result<Response, ApiError> {
    allowed(&api, &headers, "channel.list")?;
    let out = tokio::task::block_in_place(|| table_json(&api))?;
    Ok(axum::Json(out).into_response())
}

/// Applies `change` (validated under the writer lock) and answers the
/// new table; audits it as `op`.
async fn apply(
    api: Service,
    headers: &HeaderMap,
    op: &str,
    change: impl FnOnce(&Service) -> Result<Change, ApiError> + Send + 'static,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let grant = allowed(&api, headers, op)?;
    let api2 = api.clone();
    let op2 = op.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let outcome = change(&api2).and_then(|c| {
            let target = c.name().to_string();
            let done = members::change_channels(&api2.meta, c).map_err(ApiError::from);
            api2.auth.audit(&grant, "http", &op2, &target, done.is_ok());
            done
        });
        outcome.and_then(|_| table_json(&api2))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the request's task failed: {e}")))??;
    api.wrote();
    Ok((status, axum::Json(out)).into_response())
}

fn body_of<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not what this route takes ({e}): send JSON like {example}"
        ))
    })
}

fn path_name(
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    p.map(|Path(n)| n)
        .map_err(|e| ApiError::bad(format!("the path cannot be read: {e}")))
}

/// A node named by its id or a member's address.
fn node(api: &Service, text: &str) -> Result<NodeId, ApiError> {
    Ok(members::resolve_node(&api.meta, text)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    patterns: Vec<String>,
    nodes: Vec<String>,
}

async fn add(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = path_name(p)?;
    let b: AddBody = body_of(
        &body,
        r#"{"patterns": ["render/*"], "nodes": ["NODE_ID or HOST:PORT"]}"#,
    )?;
    let make = move |api: &Service| {
        let nodes = b
            .nodes
            .iter()
            .map(|n| node(api, n))
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Change::Add {
            name,
            patterns: b.patterns,
            nodes,
        })
    };
    apply(api, &headers, "channel.add", make, StatusCode::CREATED).await
}

async fn remove(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let name = path_name(p)?;
    apply(
        api,
        &headers,
        "channel.rm",
        move |_| Ok(Change::Remove { name }),
        StatusCode::OK,
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node: Option<String>,
}

/// The node a serve or leave names (this node when the body is empty or
/// names none).
fn named_node(api: &Service, body: &Bytes) -> Result<NodeId, ApiError> {
    let b: NodeBody = if body.is_empty() {
        NodeBody::default()
    } else {
        body_of(body, r#"{"node": "NODE_ID or HOST:PORT"}"#)?
    };
    match b.node {
        Some(text) => node(api, &text),
        None => Ok(api.meta.store().node_id()),
    }
}

async fn serve(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = path_name(p)?;
    let make = move |api: &Service| {
        Ok(Change::Serve {
            node: named_node(api, &body)?,
            name,
        })
    };
    apply(api, &headers, "channel.serve", make, StatusCode::OK).await
}

async fn leave(
    State(api): State<Service>,
    headers: HeaderMap,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = path_name(p)?;
    let make = move |api: &Service| {
        Ok(Change::Leave {
            node: named_node(api, &body)?,
            name,
        })
    };
    apply(api, &headers, "channel.leave", make, StatusCode::OK).await
}

// Requests for a full prefix this node does not serve.

/// The full prefix a route of one full prefix addresses, from its path
/// parameters (percent-decoded); `None` on other routes.
fn addressed(route: &str, params: &RawPathParams) -> Option<FullPrefix> {
    let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
    if route.starts_with("/v1/kv/{prefix}/{sub}")
        || route.starts_with("/v1/hash/{prefix}/{sub}")
        || route.starts_with("/v1/ops/{prefix}/{sub}")
    {
        return FullPrefix::new(param("prefix")?, param("sub")?).ok();
    }
    if route.starts_with("/v1/docs/{store}") {
        return chorus_store::docs::store_prefix(param("store")?).ok();
    }
    None
}

/// Takes `forward` out of a query string: its value, and the query
/// without it (the routes refuse parameters they do not know).
fn take_forward(query: &str) -> Result<(Option<bool>, String), ApiError> {
    let mut forward = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "forward" {
            rest.push(pair);
            continue;
        }
        forward = Some(match v {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::bad(format!(
                    "forward={other}: give forward=true (ask a node that serves the full prefix) or forward=false"
                )));
            }
        });
    }
    Ok((forward, rest.join("&")))
}

/// The middleware of the routes of one full prefix: takes `forward` out
/// of the query, forwards when asked and this node does not serve the
/// full prefix, and completes a `not_served` answer with the serving
/// nodes and their addresses.
pub(crate) async fn forwarding(
    State(api): State<Service>,
    route: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let fp = match (&route, &params) {
        (Some(r), Ok(p)) => addressed(r.as_str(), p),
        _ => None,
    };
    let Some(fp) = fp else {
        return next.run(request).await;
    };
    let query = request.uri().query().unwrap_or("").to_string();
    let (asked, rest) = match take_forward(&query) {
        Ok(taken) => taken,
        Err(e) => return e.into_response(),
    };
    if asked.is_some() {
        match without_query_param(request.uri(), &rest) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(e) => return e.into_response(),
        }
    }
    let forwarded = request.headers().contains_key(FORWARDED_BY);
    let channels = match tokio::task::block_in_place(|| api.meta.channels()) {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let me = api.meta.store().node_id();
    let elsewhere = channels
        .table
        .channel_of(&fp)
        .filter(|(_, c)| !c.nodes.contains(&me))
        .map(|(name, c)| (name.to_string(), c.nodes.clone()));
    if let Some((channel, nodes)) = elsewhere
        && !forwarded
        && asked.unwrap_or(api.forward)
    {
        return match forward(&api, request, &fp, &channel, &nodes).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let response = next.run(request).await;
    if response.status() != StatusCode::MISDIRECTED_REQUEST {
        return response;
    }
    complete_not_served(&api, response, &fp).await
}

/// `uri` with `query` as its query.
fn without_query_param(uri: &Uri, query: &str) -> Result<Uri, ApiError> {
    let path = uri.path();
    let text = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    text.parse()
        .map_err(|e| ApiError::bad(format!("the path and query cannot be read: {e}")))
}

/// The store's `not_served` answer with `"channel"` and `"nodes"` (ids
/// and addresses) added, and the addresses in the message.
async fn complete_not_served(api: &Service, response: Response, fp: &FullPrefix) -> Response {
    let status = response.status();
    let body = match axum::body::to_bytes(response.into_body(), 64 << 10).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(format!("cannot read an answer: {e}")).into_response(),
    };
    let mut json: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
    let found = tokio::task::block_in_place(|| {
        let channels = api.meta.channels()?;
        let addresses = members::addresses(&api.meta)?;
        Ok::<_, chorus_store::Error>(channels.table.channel_of(fp).map(|(name, c)| {
            let nodes: Vec<Value> = c
                .nodes
                .iter()
                .map(|id| members::node_json(*id, addresses.get(id)))
                .collect();
            let reach: Vec<String> = c
                .nodes
                .iter()
                .map(|id| match addresses.get(id).and_then(|a| a.http.as_ref()) {
                    Some(http) => format!("{id} at http://{http}"),
                    None => format!("{id} (no HTTP address known)"),
                })
                .collect();
            (name.to_string(), nodes, reach)
        }))
    });
    if let Ok(Some((channel, nodes, reach))) = found {
        json["channel"] = json!(channel);
        json["nodes"] = json!(nodes);
        if let Some(m) = json["message"].as_str() {
            json["message"] = json!(format!("{m} (serving: {})", reach.join(", ")));
        }
    }
    (status, axum::Json(json)).into_response()
}

/// Sends `request` to a node among `nodes` that serves `fp` (each in
/// turn until one answers) and returns its answer, named by
/// [`ANSWERED_BY`].
async fn forward(
    api: &Service,
    request: Request,
    fp: &FullPrefix,
    channel: &str,
    nodes: &BTreeSet<NodeId>,
) -> Result<Response, ApiError> {
    let addresses = tokio::task::block_in_place(|| members::addresses(&api.meta))?;
    let me = api.meta.store().node_id();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, crate::http::BODY_MAX)
        .await
        .map_err(|_| {
            ApiError::new(
                Kind::TooLarge,
                format!(
                    "the body is over the limit of {} bytes",
                    crate::http::BODY_MAX
                ),
            )
        })?;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let mut tried = Vec::new();
    for id in nodes {
        let target = addresses
            .get(id)
            .filter(|a| a.state.as_deref() != Some("left"))
            .and_then(|a| a.http.clone());
        let Some(http) = target else {
            tried.push(format!(
                "{id} (no HTTP address known: it announces one when it serves with --http)"
            ));
            continue;
        };
        match send(&http, &parts, &path, body.clone(), me).await {
            Ok(mut answer) => {
                if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                    answer.headers_mut().insert(ANSWERED_BY, v);
                }
                return Ok(answer);
            }
            Err(why) => {
                tracing::warn!("cannot forward a request for {fp} to {id} at {http}: {why}");
                tried.push(format!("{id} at http://{http} ({why})"));
            }
        }
    }
    Err(ApiError::new(
        Kind::Unreachable,
        format!(
            "{fp} is in the channel {channel:?}, which this node does not serve, and no node serving it answered: {}; retry, or ask one of them directly",
            tried.join("; ")
        ),
    ))
}

/// One forwarded exchange with the node at `http`.
async fn send(
    http: &str,
    parts: &axum::http::request::Parts,
    path: &str,
    body: Bytes,
    me: NodeId,
) -> Result<Response, String> {
    let exchange = async {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(http))
            .await
            .map_err(|_| format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| format!("no HTTP/1.1: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut req = axum::http::Request::builder()
            .method(parts.method.clone())
            .uri(path);
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
                req = req.header(name, value);
            }
        }
        let req = req
            .header(header::HOST, http)
            .header(FORWARDED_BY, me.to_string())
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let answer = sender
            .send_request(req)
            .await
            .map_err(|e| format!("the request failed: {e}"))?;
        let (head, incoming) = answer.into_parts();
        let bytes = Limited::new(incoming, ANSWER_MAX)
            .collect()
            .await
            .map_err(|e| format!("cannot read its answer (at most {ANSWER_MAX} bytes): {e}"))?
            .to_bytes();
        let mut out = Response::new(Body::from(bytes));
        *out.status_mut() = head.status;
        for (name, value) in &head.headers {
            if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
                out.headers_mut().append(name, value.clone());
            }
        }
        Ok(out)
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", FORWARD_TIMEOUT.as_secs()))?
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_is_taken_out_of_the_query_and_checked() -> Result<(), String> {
        let taken = |q: &str| take_forward(q).map_err(|e| e.message);
        assert_eq!(taken("")?, (None, String::new()));
        assert_eq!(taken("forward=true")?, (Some(true), String::new()));
        assert_eq!(
            taken("resolve=lww&forward=false&allow_put=true")?,
            (Some(false), "resolve=lww&allow_put=true".to_string())
        );
        assert_eq!(taken("limit=5")?, (None, "limit=5".to_string()));
        let Err(e) = take_forward("forward=yes") else {
            return Err("forward=yes was accepted".into());
        };
        assert_eq!(e.kind, Kind::BadRequest);
        Ok(())
    }
}
