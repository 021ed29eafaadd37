//! The `/v1/auth/...` routes: sessions opened with a user's master
//! secret, listed and revoked; tokens derived from a session, created and
//! revoked. Every other route's token check is the service's
//! ([`Service::authorize`](crate::service::Service::authorize)).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{
    Auth, AuthError, AuthErrorKind, Claims, Grant, SESSION_TTL_DEFAULT_MS, TOKEN_TTL_DEFAULT_MS,
    TokenAccess, utc,
};
use crate::error::ApiError;
use crate::http::bearer;
use crate::service::Service;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad(message)
}

/// The `/v1/auth/...` routes.
pub(crate) fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/auth/sessions", get(list_sessions).post(create_session))
        .route("/v1/auth/sessions/{id}", delete(revoke_session))
        .route("/v1/auth/tokens", axum::routing::post(create_token))
        .route("/v1/auth/tokens/{id}", delete(revoke_token))
}

/// The auth of a node that has it on; a 404 that says so otherwise.
fn enabled(api: &Service) -> Result<&Auth, ApiError> {
    if api.auth.enabled() {
        Ok(&api.auth)
    } else {
        Err(ApiError::from(AuthError::new(
            AuthErrorKind::Disabled,
            "authentication is off on this node: start it with `chorus serve --auth` (see docs/auth.md)",
        )))
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, ApiError> {
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
fn session_of(
    auth: &Auth,
    headers: &HeaderMap,
    op: &str,
    target: &str,
) -> Result<Claims, ApiError> {
    let token = bearer(headers).ok().flatten();
    let checked =
        bearer(headers).and_then(|t| tokio::task::block_in_place(|| auth.verify_session(t)));
    checked.map_err(|e| {
        tokio::task::block_in_place(|| auth.audit_refused(token, "http", op, target, &e));
        ApiError::from(e)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSessionBody {
    user: String,
    secret: String,
    #[serde(default)]
    description: String,
    #[serde(default, deserialize_with = "crate::json::whole::opt")]
    ttl_secs: Option<u64>,
}

async fn create_session(State(api): State<Service>, body: Bytes) -> Result<Response, ApiError> {
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
        ApiError::from(AuthError::new(
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
        ApiError::from(AuthError::new(
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
            return Err(ApiError::from(e));
        }
    };
    api.wrote();
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

async fn list_sessions(
    State(api): State<Service>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let auth = enabled(&api)?;
    let claims = session_of(auth, &headers, "session.list", "/v1/auth/sessions")?;
    let list = tokio::task::block_in_place(|| auth.sessions(Some(&claims.sub)))?;
    let sessions: Vec<serde_json::Value> = list.iter().map(|s| s.to_json()).collect();
    Ok(axum::Json(json!({"user": claims.sub, "sessions": sessions})).into_response())
}

async fn revoke_session(
    State(api): State<Service>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
    api: &Service,
    auth: &Auth,
    claims: &Claims,
    op: &str,
    id: &str,
    result: Result<T, AuthError>,
) -> Result<Response, ApiError> {
    let grant = Grant {
        token_id: Some(claims.tid.clone()),
        user: Some(claims.sub.clone()),
    };
    tokio::task::block_in_place(|| match &result {
        Ok(_) => auth.audit(&grant, "http", op, id, true),
        Err(e) => auth.audit_refused(None, "http", op, id, e),
    });
    result?;
    api.wrote();
    Ok(axum::Json(json!({"revoked": id})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    scope: Vec<String>,
    access: String,
    #[serde(default, deserialize_with = "crate::json::whole::opt")]
    ttl_secs: Option<u64>,
}

async fn create_token(
    State(api): State<Service>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let auth = enabled(&api)?;
    let claims = session_of(auth, &headers, "token.create", "/v1/auth/tokens")?;
    let b: NewTokenBody = parse(
        &body,
        r#"{"scope": ["app/*"], "access": "read", "ttl_secs": 3600}"#,
    )?;
    let access = TokenAccess::parse(&b.access)?;
    let ttl = ttl_ms(b.ttl_secs, TOKEN_TTL_DEFAULT_MS);
    let t = tokio::task::block_in_place(|| auth.create_token(&claims, b.scope, access, ttl))?;
    api.wrote();
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
    State(api): State<Service>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
