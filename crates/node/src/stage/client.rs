//! A small blocking HTTP/1.1 client for the stage: hyper on a
//! current-thread runtime the client owns, one kept-alive connection to
//! the upstream, re-dialled when it drops.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::Upstream;

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a whole request and its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer read (a pull page is at most 8 MiB of objects, base64).
const RESPONSE_MAX: usize = 32 << 20;

/// An answer: the status and the body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The error message of a JSON error answer, or the body as text.
    pub(crate) fn message(&self) -> String {
        let text = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(300)
                    .collect()
            });
        format!("HTTP {}: {text}", self.status)
    }
}

pub(crate) struct Client {
    rt: tokio::runtime::Runtime,
    upstream: Upstream,
    authorization: Option<String>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub(crate) fn new(upstream: Upstream, token: Option<&str>) -> Result<Client, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the HTTP client's runtime: {e}"))?;
        Ok(Client {
            rt,
            upstream,
            authorization: token.map(|t| format!("Bearer {t}")),
            conn: None,
        })
    }

    pub(crate) fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.request(Method::GET, path, Vec::new())
    }

    pub(crate) fn post(&mut self, path: &str, body: Vec<u8>) -> Result<Reply, String> {
        self.request(Method::POST, path, body)
    }

    /// Sends a request on the kept connection; if that connection turns out
    /// dead before an answer, once more on a new one (every request the
    /// stage makes can be repeated safely).
    fn request(&mut self, method: Method, path: &str, body: Vec<u8>) -> Result<Reply, String> {
        let body = Bytes::from(body);
        let reused = self.conn.is_some();
        match self.attempt(method.clone(), path, body.clone()) {
            Err(_) if reused => self.attempt(method, path, body),
            other => other,
        }
    }

    fn attempt(&mut self, method: Method, path: &str, body: Bytes) -> Result<Reply, String> {
        let Client {
            rt,
            upstream,
            authorization,
            conn,
        } = self;
        let uri = format!("{}{path}", upstream.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::HOST, upstream.authority())
            .header(header::USER_AGENT, "chorus-stage")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = authorization.as_deref() {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request for {uri}: {e}"))?;
        let taken = conn.take();
        let target = upstream.to_string();
        let (reply, sender) = rt.block_on(async move {
            let exchange = async {
                let mut sender = match taken {
                    Some(mut s) => match s.ready().await {
                        Ok(()) => s,
                        Err(_) => dial(upstream).await?,
                    },
                    None => dial(upstream).await?,
                };
                let response = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("the request to {target}{uri} failed: {e}"))?;
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), RESPONSE_MAX)
                    .collect()
                    .await
                    .map_err(|e| format!("cannot read the answer of {target}{uri}: {e}"))?
                    .to_bytes();
                Ok::<_, String>((
                    Reply {
                        status,
                        body: body.to_vec(),
                    },
                    sender,
                ))
            };
            tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| {
                    format!(
                        "the upstream {target} did not answer within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    )
                })?
        })?;
        *conn = Some(sender);
        Ok(reply)
    }
}

async fn dial(upstream: &Upstream) -> Result<SendRequest<Full<Bytes>>, String> {
    let addr = (upstream.host.as_str(), upstream.port);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            format!(
                "cannot reach the upstream {upstream}: no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot reach the upstream {upstream}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot talk HTTP/1.1 to the upstream {upstream}: {e}"))?;
    // Drives the connection while the runtime runs (during requests); it
    // ends when the sender is dropped or the upstream closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
