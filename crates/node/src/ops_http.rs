//! The operation-log API: `/v1/ops/{prefix}/{subprefix}/{path}` (POST an
//! operation `{"type", "payload"}`, GET the value, GET `?log=true` the log).

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_core::FullPrefix;
use serde::Deserialize;
use serde_json::Value;

use crate::http::{Api, ApiError, record};

/// The routes, to merge into the API's router.
pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/ops/{prefix}/{sub}/{*path}", get(get_op).post(push))
}

fn full_prefix(prefix: &str, sub: &str) -> Result<FullPrefix, ApiError> {
    let fp = FullPrefix::new(prefix, sub)?;
    if fp.is_reserved() {
        return Err(ApiError::bad(format!(
            "{fp} is reserved for Chorus itself (names starting with '$')"
        )));
    }
    Ok(fp)
}

async fn push(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path((prefix, sub, path)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let fp = full_prefix(&prefix, &sub)?;
    let op: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not valid JSON ({e}): send {{\"type\": \"counter\", \"payload\": 1}}"
        ))
    })?;
    let kind = op
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad("the body needs \"type\": the log's type (counter, set, ...)")
        })?
        .to_string();
    let payload = op
        .get("payload")
        .cloned()
        .ok_or_else(|| ApiError::bad("the body needs \"payload\": the operation's JSON"))?;
    let ops = api.oplogs.clone();
    let value = tokio::task::spawn_blocking(move || ops.push(&fp, &path, &kind, payload))
        .await
        .map_err(|e| ApiError::internal(format!("the write task failed: {e}")))??;
    api.committed.notify_one();
    record(&api, true, started);
    Ok(axum::Json(serde_json::json!({"value": value})).into_response())
}

#[derive(Deserialize)]
struct GetQuery {
    log: Option<bool>,
}

async fn get_op(
    State(api): State<Api>,
    Path((prefix, sub, path)): Path<(String, String, String)>,
    Query(q): Query<GetQuery>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let fp = full_prefix(&prefix, &sub)?;
    let ops = &api.oplogs;
    // Reducing can take a while (a script, a long log): off the async
    // workers' hands.
    let out = tokio::task::block_in_place(|| -> Result<serde_json::Value, ApiError> {
        Ok(if q.log.unwrap_or(false) {
            ops.log(&fp, &path)?.to_json()
        } else {
            serde_json::json!({"value": ops.get(&fp, &path)?})
        })
    })?;
    record(&api, false, started);
    Ok(axum::Json(out).into_response())
}
