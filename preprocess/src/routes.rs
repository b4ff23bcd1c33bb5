//! `PUT/GET /v1/datasets/{name}/pipeline` and `POST /v1/datasets/{name}/reprocess`.

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use serde_json::{Value, json};
use sluice_core::{Context, auth::Scope, domain::DatasetName, http::Caller, pipeline::PipelineSpec};

use crate::{error::PreprocessError, store};

/// Largest pipeline spec body accepted.
const MAX_SPEC_BYTES: usize = 64 * 1024;

pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/v1/datasets/{name}/pipeline", get(get_pipeline).put(put_pipeline))
        .route("/v1/datasets/{name}/reprocess", post(reprocess))
        .with_state(ctx)
}

fn dataset(name: &str) -> Result<DatasetName, PreprocessError> {
    DatasetName::parse(name).map_err(PreprocessError::Dataset)
}

fn describe(spec: &PipelineSpec) -> Json<Value> {
    Json(json!({"spec": spec, "spec_hash": spec.hash()}))
}

#[tracing::instrument(skip_all, fields(dataset = %name))]
async fn get_pipeline(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, PreprocessError> {
    caller.require_any(&[Scope::Ingest, Scope::Train])?;
    let name = dataset(&name)?;
    Ok(describe(&store::spec(&ctx, name.as_str()).await?))
}

/// Takes a partial spec: given fields replace the defaults (nested `video` fields too).
#[tracing::instrument(skip_all, fields(dataset = %name))]
async fn put_pipeline(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, PreprocessError> {
    caller.require(Scope::Ingest)?;
    let name = dataset(&name)?;
    let bytes = axum::body::to_bytes(body, MAX_SPEC_BYTES).await.map_err(|_| PreprocessError::TooLarge)?;
    let Ok(Value::Object(given)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(PreprocessError::NotAnObject);
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
    let spec: PipelineSpec = serde_json::from_value(merged).map_err(PreprocessError::Malformed)?;
    spec.validate().map_err(PreprocessError::InvalidSpec)?;
    store::put_spec(&ctx, name.as_str(), &spec).await?;
    Ok(describe(&spec))
}

#[tracing::instrument(skip_all, fields(dataset = %name))]
async fn reprocess(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), PreprocessError> {
    caller.require(Scope::Ingest)?;
    let name = dataset(&name)?;
    let items = store::reprocess(&ctx, name.as_str()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"dataset": name, "enqueued": items}))))
}
