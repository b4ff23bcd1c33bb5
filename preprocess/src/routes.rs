//! `PUT/GET /v1/datasets/{name}/pipeline` and `POST /v1/datasets/{name}/reprocess`.

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
};
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    domain::DatasetName,
    http::{self, ApiError, Caller},
    pipeline::PipelineSpec,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::PreprocessError, store};

/// Largest pipeline spec body accepted.
const MAX_SPEC_BYTES: usize = 64 * 1024;

pub fn router(ctx: Context) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(get_pipeline, put_pipeline)).routes(routes!(reprocess)).with_state(ctx)
}

/// A pipeline spec in which every field may be left out (it keeps its default).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PartialSpec {
    /// Output width in pixels, 1 to 4096 (default 64).
    width: Option<u32>,
    /// Output height in pixels, 1 to 4096 (default 64).
    height: Option<u32>,
    /// Default `cover`.
    fit: Option<sluice_core::pipeline::Fit>,
    /// Default `rgb`.
    color: Option<sluice_core::pipeline::Color>,
    /// Default `png`.
    format: Option<sluice_core::pipeline::OutputFormat>,
    /// Video frame sampling (default 1 fps, at most 32 frames).
    video: Option<PartialVideo>,
}

/// Video sampling in which every field may be left out.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PartialVideo {
    fps: Option<f64>,
    max_frames: Option<u32>,
    keyframes: Option<bool>,
}

fn dataset(name: &str) -> Result<DatasetName, PreprocessError> {
    DatasetName::parse(name).map_err(PreprocessError::Dataset)
}

fn describe(spec: &PipelineSpec) -> Json<Value> {
    Json(json!({"spec": spec, "spec_hash": spec.hash()}))
}

/// The dataset's pipeline spec (the default until one is set) and its hash.
#[utoipa::path(get, path = "/v1/datasets/{name}/pipeline", tag = "preprocess",
    security(("bearer" = ["ingest"]), ("bearer" = ["train"])), params(("name" = String, Path, description = "The dataset's name.")),
    responses((status = 200, description = "`{\"spec\", \"spec_hash\"}`", body = Object), (status = 400, description = "A malformed dataset name or body.", body = sluice_core::api_doc::ErrorBody)))]
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
#[utoipa::path(put, path = "/v1/datasets/{name}/pipeline", tag = "preprocess", security(("bearer" = ["ingest"])), params(("name" = String, Path, description = "The dataset's name.")),
    request_body(content = PartialSpec, description = "A partial spec: the fields given replace the defaults (nested `video` fields too)."),
    responses((status = 200, description = "`{\"spec\", \"spec_hash\"}`: the spec now.", body = Object), (status = 400, description = "A malformed dataset name or body.", body = sluice_core::api_doc::ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = sluice_core::api_doc::ErrorBody),
        (status = 422, description = "The spec is out of range (sizes, frame budget).", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(dataset = %name))]
async fn put_pipeline(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, PreprocessError> {
    caller.require(Scope::Ingest)?;
    let name = dataset(&name)?;
    let bytes = http::read_body(body, MAX_SPEC_BYTES).await.map_err(ApiError::from)?;
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

/// Re-runs the dataset's current spec over every item not processed under it.
#[utoipa::path(post, path = "/v1/datasets/{name}/reprocess", tag = "preprocess", security(("bearer" = ["ingest"])), params(("name" = String, Path, description = "The dataset's name.")),
    responses((status = 202, description = "`{\"dataset\", \"enqueued\"}`: the items queued again.", body = Object), (status = 400, description = "A malformed dataset name or body.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No dataset of this name.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(dataset = %name))]
async fn reprocess(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), PreprocessError> {
    caller.require(Scope::Ingest)?;
    let name = dataset(&name)?;
    let items = store::reprocess(&ctx, name.as_str()).await?;
    if items == 0 && !store::dataset_exists(&ctx, name.as_str()).await? {
        return Err(PreprocessError::UnknownDataset(name.to_string()));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"dataset": name, "enqueued": items}))))
}
