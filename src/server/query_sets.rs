//! `/v1/query-sets` handlers (Unix socket only): list, get (no image bytes), put (checked by the
//! service, then saved) and delete saved query sets. The registry is `service::query_sets`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Response};
use serde::Deserialize;
use serde_json::json;

use super::body::Body;
use super::error::ApiError;
use super::request::{
    blocking, error_response, json_response, read_body, ready_service, require_json, JsonExemplar,
    Resp,
};
use super::state::AppState;
use crate::service::query_sets::{check_name, QuerySetError};
use crate::service::QuerySet;

/// A `PUT /v1/query-sets/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    #[serde(default)]
    queries: Vec<String>,
    #[serde(default)]
    query_images: Vec<JsonExemplar>,
}

/// Routes one `/v1/query-sets…` request.
pub(crate) async fn route(req: &Parts, body: &mut Option<Incoming>, st: &Arc<AppState>) -> Resp {
    match handle(req, body, st).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn registry_error(e: &QuerySetError) -> ApiError {
    let status = match e {
        QuerySetError::Name(_) => 400,
        QuerySetError::Full(_) | QuerySetError::OverBudget { .. } => 409,
        QuerySetError::Persist { .. } => 500,
    };
    ApiError::new(status, e.kind(), e.to_string())
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(404, "not_found", format!("no query set named {name:?}"))
}

async fn handle(
    req: &Parts,
    body: &mut Option<Incoming>,
    st: &Arc<AppState>,
) -> Result<Resp, ApiError> {
    let path = req.uri.path();
    let rest = path.strip_prefix("/v1/query-sets").unwrap_or("");
    let name = match rest {
        "" | "/" => None,
        r => match r.strip_prefix('/') {
            Some(n) if !n.contains('/') => Some(n),
            _ => {
                return Err(ApiError::new(
                    404,
                    "not_found",
                    format!("no route for {path}"),
                ));
            }
        },
    };
    let sets = &st.query_sets;
    match (name, &req.method) {
        (None, &Method::GET) => Ok(json_response(
            200,
            json!({"query_sets": sets.list()}).to_string(),
        )),
        (Some(n), &Method::GET) => {
            let s = sets.summary(n).ok_or_else(|| not_found(n))?;
            Ok(json_response(200, json!(s).to_string()))
        }
        (Some(n), &Method::PUT) => put(req, body, st, n).await,
        (Some(n), &Method::DELETE) => {
            let (owned, name) = (sets.clone(), n.to_string());
            let deleted = blocking("deleting the query set", move || owned.delete(&name))
                .await?
                .map_err(|e| registry_error(&e))?;
            if !deleted {
                return Err(not_found(n));
            }
            let mut r = Response::new(Body::full(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::NO_CONTENT;
            Ok(r)
        }
        _ => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method),
        )),
    }
}

async fn put(
    req: &Parts,
    body: &mut Option<Incoming>,
    st: &Arc<AppState>,
    name: &str,
) -> Result<Resp, ApiError> {
    check_name(name).map_err(|e| registry_error(&e))?;
    let service = ready_service(st)?;
    require_json(req)?;
    let bytes = read_body(&req.headers, body, st.config.max_body_bytes).await?;
    let b: SetBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed query set: {e}")))?;
    let exemplars = b
        .query_images
        .into_iter()
        .enumerate()
        .map(|(n, e)| e.into_input(n))
        .collect::<Result<Vec<_>, _>>()?;
    let queries = b.queries;
    let set = blocking("hashing the query set", move || {
        QuerySet::new(queries, exemplars)
    })
    .await?;
    service
        .check_query_set(&set)
        .await
        .map_err(|e| ApiError::from(&e))?;
    let summary = set.summary(name);
    let (sets, owned) = (st.query_sets.clone(), name.to_string());
    let created = blocking("saving the query set", move || sets.put(&owned, set))
        .await?
        .map_err(|e| registry_error(&e))?;
    Ok(json_response(
        if created { 201 } else { 200 },
        json!(summary).to_string(),
    ))
}
