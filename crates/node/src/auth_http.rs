//! Authentication over HTTP: the guard every route passes, the
//! `/v1/auth/...` routes, and [`Writer`], the extractor of write handlers
//! whose values then record the token that made them.
//!
//! The guard works out what a request reaches (the route's full prefix, a
//! whole prefix, or the whole node) and whether it may write, then, when
//! auth is on, checks the `Authorization: Bearer TOKEN` header with
//! [`Auth::check_target`], audits refusals and writes, and hands the
//! [`Grant`] to the handler. `/health`, `/metrics` and `/openapi.json`
//! stay open. Whether auth is on or not, `$auth` (users, sessions, the
//! cluster key) is never served.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use chorus_core::FullPrefix;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{
    AUTH_PREFIX, Access, Auth, AuthError, AuthErrorKind, Claims, Grant, SESSION_TTL_DEFAULT_MS,
    TOKEN_TTL_DEFAULT_MS, Target, TokenAccess, utc,
};
use crate::http::Api;

/// An [`AuthError`] as an HTTP response: `{code, message}` with its
/// status, and `WWW-Authenticate: Bearer` on a 401.
pub(crate) struct Refusal(pub(crate) AuthError);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"code": self.0.kind.code(), "message": self.0.message});
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal(e)
    }
}

/// The API's state for a write handler, its store handles stamped with
/// the token that makes the write (unchanged when auth is off).
pub(crate) struct Writer(pub(crate) Api);

impl FromRequestParts<Api> for Writer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let mut api = api.clone();
        if let Some(grant) = parts.extensions.get::<Grant>() {
            let meta = grant.meta();
            if !meta.is_empty() {
                api.meta = api.meta.stamped(meta.clone());
                api.oplogs = api.oplogs.stamped(meta);
            }
        }
        Ok(Writer(api))
    }
}

/// Whether a watch leaves out changes of `fp`: `$auth` always, every
/// reserved name when `reserved` (auth on).
pub(crate) fn hidden(fp: &FullPrefix, reserved: bool) -> bool {
    fp.prefix() == AUTH_PREFIX || (reserved && fp.is_reserved())
}

/// What a request reaches, owned.
enum Reach {
    FullPrefix(FullPrefix),
    Prefix(String),
    All,
}

impl Reach {
    fn target(&self) -> Target<'_> {
        match self {
            Reach::FullPrefix(fp) => Target::FullPrefix(fp),
            Reach::Prefix(p) => Target::Prefix(p),
            Reach::All => Target::All,
        }
    }

    fn prefix(&self) -> Option<&str> {
        match self {
            Reach::FullPrefix(fp) => Some(fp.prefix()),
            Reach::Prefix(p) => Some(p),
            Reach::All => None,
        }
    }
}

#[derive(Deserialize)]
struct GuardQuery {
    prefix: Option<String>,
    allow_put: Option<bool>,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal(AuthError::new(AuthErrorKind::BadInput, message))
}

/// What the route at `path` reaches, and with which access; `None` for
/// the open routes and `/v1/auth/...` (which check tokens themselves).
fn reach(
    method: &Method,
    uri: &axum::http::Uri,
    params: &RawPathParams,
) -> Result<Option<(Reach, Access, String)>, Refusal> {
    let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
    let mut parts = uri.path().split('/').skip(1);
    if parts.next() != Some("v1") {
        return Ok(None);
    }
    let area = parts.next().unwrap_or_default();
    // Fail closed: a query the guard cannot read (a repeated field, a
    // malformed value) is refused rather than read as "no allow_put".
    let query = match uri.query() {
        None => GuardQuery {
            prefix: None,
            allow_put: None,
        },
        Some(_) => Query::<GuardQuery>::try_from_uri(uri)
            .map(|q| q.0)
            .map_err(|e| {
                bad(format!(
                    "the query string cannot be read ({e}): send each parameter once"
                ))
            })?,
    };
    let full = |p: Option<&str>, s: Option<&str>| {
        FullPrefix::new(p.unwrap_or_default(), s.unwrap_or_default())
            .map(Reach::FullPrefix)
            .map_err(|e| bad(e.to_string()))
    };
    let reach = match area {
        "kv" | "ops" => full(param("prefix"), param("sub"))?,
        "hash" => match param("sub") {
            Some(s) => full(param("prefix"), Some(s))?,
            None => {
                let p = param("prefix").unwrap_or_default();
                FullPrefix::new(p, "x").map_err(|e| bad(e.to_string()))?;
                Reach::Prefix(p.to_string())
            }
        },
        "docs" => {
            let store = param("store").unwrap_or_default();
            Reach::FullPrefix(
                chorus_store::docs::store_prefix(store).map_err(|e| bad(e.to_string()))?,
            )
        }
        "watch" => match query.prefix.as_deref() {
            None => Reach::All,
            Some(text) => match text.split_once('/') {
                Some((p, s)) => full(Some(p), Some(s))?,
                None => {
                    FullPrefix::new(text, "x").map_err(|e| bad(e.to_string()))?;
                    Reach::Prefix(text.to_string())
                }
            },
        },
        // The cluster's view and membership: a read-write token for the
        // whole node, even to read.
        "cluster" => return Ok(Some((Reach::All, Access::Write, op(area, method)))),
        _ => return Ok(None),
    };
    let reads = matches!(*method, Method::GET | Method::HEAD);
    // A read with allow_put may write the resolved value back.
    let access = if reads && query.allow_put != Some(true) {
        Access::Read
    } else {
        Access::Write
    };
    Ok(Some((reach, access, op(area, method))))
}

fn op(area: &str, method: &Method) -> String {
    format!("{area}.{}", method.as_str().to_ascii_lowercase())
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

/// The guard in front of every route but the fallback.
pub(crate) async fn guard(
    State(api): State<Api>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let Ok(params) = params else {
        return next.run(request).await;
    };
    let (reach, access, op) = match reach(request.method(), request.uri(), &params) {
        Ok(Some(r)) => r,
        Ok(None) => {
            // The sync routes check each full prefix of their body
            // themselves; the token itself is verified here, before a
            // body of up to 16 MiB is read for someone without one.
            if api.auth.enabled() && request.uri().path().starts_with("/v1/sync/") {
                let verified = bearer(request.headers()).and_then(|t| {
                    let t = t.ok_or_else(AuthError::missing)?;
                    tokio::task::block_in_place(|| api.auth.verify(t)).map(|_| ())
                });
                if let Err(e) = verified {
                    return Refusal(e).into_response();
                }
            }
            return next.run(request).await;
        }
        Err(refusal) => return refusal.into_response(),
    };
    if reach.prefix() == Some(AUTH_PREFIX) {
        return Refusal(AuthError::new(
            AuthErrorKind::Forbidden,
            format!(
                "{AUTH_PREFIX} holds users, sessions and the cluster key: it is not served over HTTP; use `chorus user`, `chorus session` and `chorus token` (see docs/auth.md)"
            ),
        ))
        .into_response();
    }
    let auth = api.auth.clone();
    if !auth.enabled() {
        return next.run(request).await;
    }
    let target = request.uri().path().to_string();
    let token = match bearer(request.headers()) {
        Ok(t) => t.map(str::to_string),
        Err(e) => {
            tokio::task::block_in_place(|| auth.audit_refused(None, "http", &op, &target, &e));
            return Refusal(e).into_response();
        }
    };
    let checked =
        tokio::task::block_in_place(|| auth.check_target(token.as_deref(), reach.target(), access));
    let grant = match checked {
        Ok(grant) => grant,
        Err(e) => {
            tokio::task::block_in_place(|| {
                auth.audit_refused(token.as_deref(), "http", &op, &target, &e);
            });
            return Refusal(e).into_response();
        }
    };
    request.extensions_mut().insert(grant.clone());
    let response = next.run(request).await;
    if access == Access::Write {
        let ok = response.status().is_success();
        tokio::task::block_in_place(|| auth.audit(&grant, "http", &op, &target, ok));
    }
    response
}

/// The `/v1/auth/...` routes.
pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/auth/sessions", get(list_sessions).post(create_session))
        .route("/v1/auth/sessions/{id}", delete(revoke_session))
        .route("/v1/auth/tokens", axum::routing::post(create_token))
        .route("/v1/auth/tokens/{id}", delete(revoke_token))
}

/// The auth of a node that has it on; a 404 that says so otherwise.
fn enabled(api: &Api) -> Result<&Auth, Refusal> {
    if api.auth.enabled() {
        Ok(&api.auth)
    } else {
        Err(Refusal(AuthError::new(
            AuthErrorKind::Disabled,
            "authentication is off on this node: start it with `chorus serve --auth` (see docs/auth.md)",
        )))
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not what this route takes ({e}): send {example}"
        ))
    })
}

fn ttl_ms(ttl_secs: Option<u64>, default_ms: u64) -> u64 {
    ttl_secs.map_or(default_ms, |s| s.saturating_mul(1000))
}

/// The session token of the request, verified; a refusal is audited
/// under `op` and `target`.
fn session_of(auth: &Auth, headers: &HeaderMap, op: &str, target: &str) -> Result<Claims, Refusal> {
    let token = bearer(headers).ok().flatten();
    let checked =
        bearer(headers).and_then(|t| tokio::task::block_in_place(|| auth.verify_session(t)));
    checked.map_err(|e| {
        tokio::task::block_in_place(|| auth.audit_refused(token, "http", op, target, &e));
        Refusal(e)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSessionBody {
    user: String,
    secret: String,
    #[serde(default)]
    description: String,
    ttl_secs: Option<u64>,
}

async fn create_session(State(api): State<Api>, body: Bytes) -> Result<Response, Refusal> {
    let auth = enabled(&api)?.clone();
    // Not serde's message: it may quote the body, and the body holds a secret.
    let b: NewSessionBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body is not {{\"user\": NAME, \"secret\": SECRET, \"description\": TEXT, \"ttl_secs\": SECONDS}} with only those fields, strings and a whole number (line {}, column {}); description and ttl_secs are optional",
            e.line(),
            e.column()
        ))
    })?;
    // Hashing costs memory and time: two at once, a bounded number waiting.
    let busy = || {
        Refusal(AuthError::new(
            AuthErrorKind::Busy,
            "too many logins at once: retry in a moment",
        ))
    };
    let _waiting = auth.logins.waiting.try_acquire().map_err(|_| busy())?;
    let _running = auth.logins.running.acquire().await.map_err(|_| busy())?;
    let a = auth.clone();
    let ttl = ttl_ms(b.ttl_secs, SESSION_TTL_DEFAULT_MS);
    let user = b.user.clone();
    let made = tokio::task::spawn_blocking(move || {
        a.create_session(&b.user, &b.secret, &b.description, ttl)
    })
    .await
    .map_err(|e| {
        Refusal(AuthError::new(
            AuthErrorKind::Storage,
            format!("the login task failed: {e}"),
        ))
    })?;
    let s = match made {
        Ok(s) => s,
        Err(e) => {
            tokio::task::block_in_place(|| {
                auth.audit_refused(None, "http", "session.create", &user, &e);
            });
            return Err(Refusal(e));
        }
    };
    api.committed.notify_one();
    let grant = Grant {
        token_id: Some(s.record.id.clone()),
        user: Some(s.record.user.clone()),
    };
    tokio::task::block_in_place(|| {
        auth.audit(&grant, "http", "session.create", &s.record.id, true);
    });
    let r = &s.record;
    let body = json!({
        "session": r.id, "user": r.user, "description": r.description,
        "token": s.token, "expires": r.expires_ms, "expires_utc": utc(r.expires_ms),
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn list_sessions(State(api): State<Api>, headers: HeaderMap) -> Result<Response, Refusal> {
    let auth = enabled(&api)?;
    let claims = session_of(auth, &headers, "session.list", "/v1/auth/sessions")?;
    let list = tokio::task::block_in_place(|| auth.sessions(Some(&claims.sub)))?;
    let sessions: Vec<serde_json::Value> = list.iter().map(|s| s.to_json()).collect();
    Ok(axum::Json(json!({"user": claims.sub, "sessions": sessions})).into_response())
}

async fn revoke_session(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let auth = enabled(&api)?;
    let claims = session_of(auth, &headers, "session.revoke", &id)?;
    let result = tokio::task::block_in_place(|| {
        let info = auth.session(&id)?.ok_or_else(|| {
            AuthError::new(
                AuthErrorKind::NotFound,
                format!("no session {id} here (GET /v1/auth/sessions lists yours)"),
            )
        })?;
        if info.record.user != claims.sub {
            return Err(AuthError::new(
                AuthErrorKind::Forbidden,
                format!("session {id} is not one of {}'s sessions", claims.sub),
            ));
        }
        auth.revoke_session(&id, &format!("revoked over HTTP by session {}", claims.sid))
    });
    revoked(&api, auth, &claims, "session.revoke", &id, result)
}

fn revoked<T>(
    api: &Api,
    auth: &Auth,
    claims: &Claims,
    op: &str,
    id: &str,
    result: Result<T, AuthError>,
) -> Result<Response, Refusal> {
    let grant = Grant {
        token_id: Some(claims.tid.clone()),
        user: Some(claims.sub.clone()),
    };
    tokio::task::block_in_place(|| match &result {
        Ok(_) => auth.audit(&grant, "http", op, id, true),
        Err(e) => auth.audit_refused(None, "http", op, id, e),
    });
    result?;
    api.committed.notify_one();
    Ok(axum::Json(json!({"revoked": id})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    scope: Vec<String>,
    access: String,
    ttl_secs: Option<u64>,
}

async fn create_token(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let auth = enabled(&api)?;
    let claims = session_of(auth, &headers, "token.create", "/v1/auth/tokens")?;
    let b: NewTokenBody = parse(
        &body,
        r#"{"scope": ["app/*"], "access": "read", "ttl_secs": 3600}"#,
    )?;
    let access = TokenAccess::parse(&b.access)?;
    let ttl = ttl_ms(b.ttl_secs, TOKEN_TTL_DEFAULT_MS);
    let t = tokio::task::block_in_place(|| auth.create_token(&claims, b.scope, access, ttl))?;
    api.committed.notify_one();
    let grant = Grant {
        token_id: Some(claims.tid.clone()),
        user: Some(claims.sub.clone()),
    };
    tokio::task::block_in_place(|| auth.audit(&grant, "http", "token.create", &t.record.id, true));
    let r = &t.record;
    let body = json!({
        "id": r.id, "token": t.token, "scope": r.scope, "access": r.access.as_str(),
        "expires": r.expires_ms, "expires_utc": utc(r.expires_ms),
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn revoke_token(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let auth = enabled(&api)?;
    let claims = session_of(auth, &headers, "token.revoke", &id)?;
    let result = tokio::task::block_in_place(|| {
        let record = auth.token(&id)?.ok_or_else(|| {
            AuthError::new(
                AuthErrorKind::NotFound,
                format!("no token {id} here (one made on another node is here once replicated)"),
            )
        })?;
        if record.user != claims.sub {
            return Err(AuthError::new(
                AuthErrorKind::Forbidden,
                format!("token {id} is not one of {}'s tokens", claims.sub),
            ));
        }
        auth.revoke_token(&id, &format!("revoked over HTTP by session {}", claims.sid))
    });
    revoked(&api, auth, &claims, "token.revoke", &id, result)
}
