//! `PUT/GET /v1/datasets/{name}/pipeline` and `POST /v1/datasets/{name}/reprocess`.

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    domain::DatasetName,
    http::{ApiError, Caller},
    pipeline::PipelineSpec,
};

use crate::store;

pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/v1/datasets/{name}/pipeline", get(get_pipeline).put(put_pipeline))
        .route("/v1/datasets/{name}/reprocess", post(reprocess))
        .with_state(ctx)
}

fn dataset(name: &str) -> Result<DatasetName, ApiError> {
    DatasetName::parse(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("`dataset`: {}.", e.0)))
}

fn unavailable(err: store::StoreError) -> ApiError {
    tracing::warn!(error = %err, "pipeline store failed");
    ApiError::unavailable("The database is unreachable; retry shortly.")
}

fn describe(spec: &PipelineSpec) -> Value {
    json!({"spec": spec, "spec_hash": spec.hash()})
}

async fn get_pipeline(State(ctx): State<Context>, caller: Caller, Path(name): Path<String>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Ingest, Scope::Train]) {
        return err.into_response();
    }
    let name = match dataset(&name) {
        Ok(name) => name,
        Err(err) => return err.into_response(),
    };
    match store::spec(&ctx, name.as_str()).await {
        Ok(spec) => Json(describe(&spec)).into_response(),
        Err(err) => unavailable(err).into_response(),
    }
}

/// Takes a partial spec: given fields replace the defaults (nested `video` fields too).
async fn put_pipeline(State(ctx): State<Context>, caller: Caller, Path(name): Path<String>, body: Body) -> Response {
    if let Err(err) = caller.require(Scope::Ingest) {
        return err.into_response();
    }
    let name = match dataset(&name) {
        Ok(name) => name,
        Err(err) => return err.into_response(),
    };
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message).into_response();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return bad("The pipeline spec is too large.".into());
    };
    let Ok(Value::Object(given)) = serde_json::from_slice::<Value>(&bytes) else {
        return bad("Send the pipeline spec as a JSON object.".into());
    };
    let mut merged = serde_json::to_value(PipelineSpec::default()).expect("specs serialise");
    for (key, value) in given {
        match (merged.get_mut(&key), value) {
            (Some(Value::Object(target)), Value::Object(fields)) => target.extend(fields),
            (_, value) => {
                merged[key.as_str()] = value;
            }
        }
    }
    let spec: PipelineSpec = match serde_json::from_value(merged) {
        Ok(spec) => spec,
        Err(e) => return bad(format!("The pipeline spec is not valid: {e}.")),
    };
    if let Err(e) = spec.validate() {
        return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", format!("{}.", e.0)).into_response();
    }
    match store::put_spec(&ctx, name.as_str(), &spec).await {
        Ok(()) => Json(describe(&spec)).into_response(),
        Err(err) => unavailable(err).into_response(),
    }
}

async fn reprocess(State(ctx): State<Context>, caller: Caller, Path(name): Path<String>) -> Response {
    if let Err(err) = caller.require(Scope::Ingest) {
        return err.into_response();
    }
    let name = match dataset(&name) {
        Ok(name) => name,
        Err(err) => return err.into_response(),
    };
    match store::reprocess(&ctx, name.as_str()).await {
        Ok(items) => (StatusCode::ACCEPTED, Json(json!({"dataset": name, "enqueued": items}))).into_response(),
        Err(err) => unavailable(err).into_response(),
    }
}
