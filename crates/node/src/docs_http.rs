//! The documents API: `/v1/docs/{store}` and `/v1/docs/{store}/{id}`, over
//! [`chorus_store::docs::Docs`]. A store name with a `/` (`PREFIX/NAME`)
//! is sent percent-encoded (`app%2Fusers`).

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_store::docs::Docs;
use serde::Deserialize;
use serde_json::Value;

use crate::http::{Api, ApiError, record};

/// The routes, to merge into the API's router.
pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/docs/{store}", get(all).post(create))
        .route(
            "/v1/docs/{store}/{id}",
            get(get_doc).put(put_doc).delete(delete_doc),
        )
        .route("/v1/docs/{store}/{id}/conflicts", get(conflicts))
        .route(
            "/v1/docs/{store}/{id}/resolve",
            axum::routing::post(resolve),
        )
}

fn docs(api: &Api, store: &str) -> Result<Docs, ApiError> {
    Ok(Docs::open(&api.meta, store)?)
}

fn parse(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not valid JSON ({e}): send a document like {{\"_id\": \"alice\", \"email\": \"alice@example.com\"}}"
        ))
    })
}

/// Runs a document edit on the blocking pool (it syncs), then wakes the
/// core so that the commit replicates at once.
async fn edit<F>(
    api: &Api,
    started: Instant,
    status: StatusCode,
    f: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Result<chorus_store::docs::Saved, chorus_store::Error> + Send + 'static,
{
    let saved = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the write task failed: {e}")))??;
    api.committed.notify_one();
    record(api, true, started);
    Ok((status, axum::Json(saved.to_json())).into_response())
}

async fn create(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path(store): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let d = docs(&api, &store)?;
    let doc = parse(&body)?;
    edit(&api, started, StatusCode::CREATED, move || d.create(doc)).await
}

async fn all(State(api): State<Api>, Path(store): Path<String>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let d = docs(&api, &store)?;
    let list = tokio::task::block_in_place(|| d.all())?;
    record(&api, false, started);
    Ok(axum::Json(Value::Array(list)).into_response())
}

#[derive(Deserialize)]
struct GetQuery {
    rev: Option<String>,
    conflicts: Option<bool>,
}

async fn get_doc(
    State(api): State<Api>,
    Path((store, id)): Path<(String, String)>,
    Query(q): Query<GetQuery>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let d = docs(&api, &store)?;
    let doc = match (q.rev, q.conflicts.unwrap_or(false)) {
        (Some(_), true) => {
            return Err(ApiError::bad(
                "rev and conflicts=true cannot be combined: ask for one",
            ));
        }
        (Some(rev), false) => tokio::task::block_in_place(|| d.get_rev(&id, &rev))?,
        (None, true) => tokio::task::block_in_place(|| d.get_with_conflicts(&id))?,
        (None, false) => tokio::task::block_in_place(|| d.get(&id))?,
    };
    record(&api, false, started);
    Ok(axum::Json(doc).into_response())
}

#[derive(Deserialize)]
struct PutQuery {
    keep_both: Option<bool>,
    upsert: Option<bool>,
}

/// With `_rev` in the body: an update of that revision (409 if it is not
/// current, unless `?keep_both=true`). Without: a create (409 if the
/// document exists), or with `?upsert=true` a write on top of the winner.
async fn put_doc(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path((store, id)): Path<(String, String)>,
    Query(q): Query<PutQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let d = docs(&api, &store)?;
    let mut doc = parse(&body)?;
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
    if upsert {
        return edit(&api, started, StatusCode::OK, move || d.upsert(doc)).await;
    }
    if has_rev {
        return edit(&api, started, StatusCode::OK, move || {
            d.update(doc, keep_both)
        })
        .await;
    }
    edit(&api, started, StatusCode::CREATED, move || d.create(doc)).await
}

#[derive(Deserialize)]
struct DeleteQuery {
    rev: Option<String>,
}

async fn delete_doc(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path((store, id)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let d = docs(&api, &store)?;
    let rev = q.rev.ok_or_else(|| {
        ApiError::bad("a delete needs ?rev=: the current revision, as _rev of a read")
    })?;
    edit(&api, started, StatusCode::OK, move || d.delete(&id, &rev)).await
}

#[derive(Deserialize)]
struct ConflictsQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// Without `?limit=`: the groups of revisions that collided. With it: one
/// page of the losing current revisions, greatest first, `?after=` the
/// `next` of the previous page.
async fn conflicts(
    State(api): State<Api>,
    Path((store, id)): Path<(String, String)>,
    Query(q): Query<ConflictsQuery>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let d = docs(&api, &store)?;
    if let Some(limit) = q.limit.as_deref() {
        let limit: usize = limit.parse().map_err(|_| {
            ApiError::bad(format!(
                "limit={limit:?} is not a number: ask for 1 to {} conflicts per page",
                chorus_store::docs::MAX_CONFLICTS_PAGE
            ))
        })?;
        let page =
            tokio::task::block_in_place(|| d.conflicts_page(&id, limit, q.after.as_deref()))?;
        record(&api, false, started);
        return Ok(axum::Json(page.to_json(&id)).into_response());
    }
    if q.after.is_some() {
        return Err(ApiError::bad(format!(
            "after= pages conflicts: pass limit= too (1 to {})",
            chorus_store::docs::MAX_CONFLICTS_PAGE
        )));
    }
    let groups = tokio::task::block_in_place(|| d.conflicts(&id))?;
    record(&api, false, started);
    let groups: Vec<Vec<String>> = groups
        .iter()
        .map(|g| g.iter().map(ToString::to_string).collect())
        .collect();
    Ok(axum::Json(groups).into_response())
}

/// Keeps `?rev=` and deletes every other current revision.
async fn resolve(
    crate::auth_http::Writer(api): crate::auth_http::Writer,
    Path((store, id)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let d = docs(&api, &store)?;
    let rev = q
        .rev
        .ok_or_else(|| ApiError::bad("resolve needs ?rev=: the current revision to keep"))?;
    edit(&api, started, StatusCode::OK, move || d.resolve(&id, &rev)).await
}
