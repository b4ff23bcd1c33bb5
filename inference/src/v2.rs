//! The Open Inference Protocol, V2 REST (KServe's "V2 protocol", Triton's HTTP API), beside
//! `/v1`: existing clients (`tritonclient.http`, the KServe SDK) call Sluice unchanged.
//!
//! - `GET /v2`, `/v2/health/live`, `/v2/health/ready`: server metadata and health (no token).
//! - `GET /v2/models/{name}[/versions/{v}]`: the version's metadata, built from its input spec
//!   and labels; `…/ready`: 200 once the version loads. Without a version, the version
//!   `production` points at.
//! - `POST /v2/models/{name}[/versions/{v}]/infer`: one input tensor, either
//!   - `BYTES` `[n]` (or `[n, 1]`): encoded images, decoded and prepared exactly as the version's
//!     training data was (in JSON each element is the image in base64; in the binary extension,
//!     each is a 4-byte little-endian length and the bytes), or
//!   - `FP32` `[n, C, H, W]` in [0, 1] (or `UINT8` in [0, 255]): pixels already in the model's
//!     input shape.
//!
//!   Outputs: `probabilities` (`FP32 [n, classes]`, calibrated, label order; with the
//!   classification extension's `classification: k` parameter, `BYTES [n, k]` of
//!   `score:index:label` instead), `labels` (`BYTES [n, k]`, best first; `k` from its
//!   `classification` or `top_k` parameter, default 1) and `prediction_ids` (`BYTES [n]`, for
//!   `POST /v1/feedback`). `binary_data` is honoured per output (and `binary_data_output` for all).
//!   `parameters.alias` picks an alias (default: the model's routing, production or a canary);
//!   canary and shadow routing, micro-batching, recording and drift apply exactly as on `/v1`
//!   (prepared pixels are not captured nor shadow-scored: both need the encoded image).
//! - Errors are `{"error": "..."}` with the status `/v1` would answer.

use std::time::Instant;

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_core::{
    api_doc::V2ErrorBody,
    auth::Scope,
    db::DbError,
    http::{ApiError, AuthRejection, Caller},
    models::{self, AliasName, ModelName},
};
use utoipa::ToSchema;

use crate::{
    AppState,
    error::InferenceError,
    predict::{self, Inputs},
    serving::{LoadedVersion, Target},
};

/// The binary extension's header: the length of the JSON part before the binary data.
const HEADER_LENGTH: &str = "inference-header-content-length";
/// Output names.
const PROBABILITIES: &str = "probabilities";
const LABELS: &str = "labels";
const PREDICTION_IDS: &str = "prediction_ids";

/// A V2 error: an [`InferenceError`] answered as `{"error": "..."}` with the status (and
/// `Retry-After`) `/v1` would answer, or an authentication answer that is not an error body (too
/// many failed attempts: 429 with `Retry-After`), passed on as it is.
#[derive(Debug)]
pub enum V2Error {
    Failed(InferenceError),
    /// An answer made elsewhere, sent as it is: the auth limiter's 429, the framework's 413.
    Throttled(Box<Response>),
}

impl From<InferenceError> for V2Error {
    fn from(err: InferenceError) -> Self {
        Self::Failed(err)
    }
}

impl From<ApiError> for V2Error {
    fn from(err: ApiError) -> Self {
        Self::Failed(err.into())
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let answer = match self {
            Self::Failed(err) => err.to_api(),
            Self::Throttled(response) => return *response,
        };
        let mut response = (answer.status, Json(json!({"error": answer.message}))).into_response();
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// Gives every V2 error answer the protocol's shape, `{"error": "..."}`, keeping its status and
/// headers (`Retry-After`): the answers made before a handler runs (the auth limiter's 429, the
/// body limit's 413) came in `/v1`'s shape or as plain text.
pub async fn protocol_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    if parsed.as_ref().is_some_and(|v| v["error"].is_string()) {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "The request body is larger than inference.max_predict_bytes; send fewer or smaller inputs.".to_owned()
    } else if let Some(message) = parsed.as_ref().and_then(|v| v["error"]["message"].as_str()) {
        message.to_owned()
    } else {
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(json!({"error": message}).to_string()))
}

/// The caller, if authenticated and holding the `predict` scope.
fn predictor(caller: Result<Caller, AuthRejection>) -> Result<Caller, V2Error> {
    let caller = match caller {
        Ok(caller) => caller,
        Err(AuthRejection::Api(err)) => return Err(err.into()),
        Err(AuthRejection::Response(response)) => return Err(V2Error::Throttled(response)),
    };
    caller.require(Scope::Predict)?;
    Ok(caller)
}

/// Server metadata: name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "`{\"name\": \"sluice\", \"version\", \"extensions\": [\"binary_tensor_data\", \"classification\"]}`", body = Object)))]
#[tracing::instrument]
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "sluice",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification"],
    }))
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/v2/health/live", tag = "v2",
    responses((status = 200, description = "`{\"live\": true}`", body = Object)))]
#[tracing::instrument]
pub async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// Readiness: PostgreSQL, S3 and Kafka answer.
#[utoipa::path(get, path = "/v2/health/ready", tag = "v2",
    responses(
        (status = 200, description = "`{\"ready\": true, \"failing\": {...}}`: every dependency answers.", body = Object),
        (status = 503, description = "`{\"ready\": false, \"failing\": {\"<dependency>\": \"<why>\" | null}}`: a dependency is unreachable (no `Retry-After`).", body = Object),
    ))]
#[tracing::instrument(skip_all)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let readiness = sluice_core::http::probe(&state.served.ctx).await;
    let ready = readiness.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let dependencies: Map<String, Value> =
        readiness.checks.into_iter().map(|(name, result)| (name.to_owned(), json!(result.err()))).collect();
    (status, Json(json!({"ready": ready, "failing": dependencies})))
}

#[derive(Debug, Deserialize)]
pub struct ModelPath {
    name: String,
    version: Option<String>,
}

/// The version a path names (the one `production` points at without `/versions/{v}`), unless
/// the request's `parameters.alias` names another alias.
fn path_target(path: &ModelPath, alias: Option<&str>) -> Result<(ModelName, Option<Target>), InferenceError> {
    let model = ModelName::parse(&path.name).map_err(|e| InferenceError::invalid(format!("model name: {e}")))?;
    let version = match &path.version {
        None => None,
        Some(raw) => match raw.parse::<i32>() {
            Ok(v) if v >= 1 => Some(v),
            _ => return Err(InferenceError::invalid(format!("model version must be a number from 1, got {raw:?}"))),
        },
    };
    let target = match (version, alias) {
        (Some(_), Some(_)) => {
            return Err(InferenceError::invalid("give a version in the path or `parameters.alias`, not both"));
        }
        (Some(v), None) => Some(Target::Version(v)),
        (None, Some(alias)) => Some(Target::Alias(
            AliasName::parse(alias).map_err(|e| InferenceError::invalid(format!("`parameters.alias`: {e}")))?,
        )),
        (None, None) => None,
    };
    Ok((model, target))
}

fn production() -> Target {
    Target::Alias(AliasName::parse(AliasName::PRODUCTION).expect("a valid alias"))
}

/// The input tensor's shape for a version: `[-1, C, H, W]`.
fn pixel_shape(loaded: &LoadedVersion) -> [i64; 4] {
    let [c, h, w] = predict::input_shape(loaded);
    [-1, c as i64, h as i64, w as i64]
}

/// The caller's right to it checked, the model and the version a model path names, loaded.
async fn resolved(
    state: &AppState,
    caller: Result<Caller, AuthRejection>,
    path: &ModelPath,
) -> Result<(ModelName, std::sync::Arc<LoadedVersion>), V2Error> {
    predictor(caller)?;
    let (model, target) = path_target(path, None)?;
    let loaded =
        state.served.resolve(&model, &target.unwrap_or_else(production)).await.map_err(InferenceError::from)?;
    Ok((model, loaded))
}

/// The metadata of the version `production` points at.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "v2",
    security(("bearer" = ["predict"])),
    params(("name" = String, Path, description = "The model's name.")),
    responses(
        (status = 200, description = "`{\"name\", \"versions\", \"platform\", \"inputs\", \"outputs\", \"parameters\": {\"version\", \"labels\", \"input_spec\"}}`: the inputs (`image` BYTES, `pixels` FP32 `[-1, C, H, W]`) and outputs (`probabilities`, `labels`, `prediction_ids`) it takes and answers.", body = Object),
        (status = 400, description = "A malformed model name.", body = V2ErrorBody),
        (status = 404, description = "No such model, or it has no `production` alias.", body = V2ErrorBody),
        (status = 422, description = "The version's artifact cannot be loaded.", body = V2ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; retry after `Retry-After` seconds.", body = V2ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn model_metadata(
    State(state): State<AppState>,
    caller: Result<Caller, AuthRejection>,
    Path(name): Path<String>,
) -> Result<Json<Value>, V2Error> {
    metadata(state, caller, ModelPath { name, version: None }).await
}

/// A version's metadata.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "v2",
    security(("bearer" = ["predict"])),
    params(
        ("name" = String, Path, description = "The model's name."),
        ("version" = String, Path, description = "The version number (1 or more)."),
    ),
    responses(
        (status = 200, description = "`{\"name\", \"versions\", \"platform\", \"inputs\", \"outputs\", \"parameters\": {\"version\", \"labels\", \"input_spec\"}}`: the inputs (`image` BYTES, `pixels` FP32 `[-1, C, H, W]`) and outputs (`probabilities`, `labels`, `prediction_ids`) it takes and answers.", body = Object),
        (status = 400, description = "A malformed model name or version.", body = V2ErrorBody),
        (status = 404, description = "No such model or version.", body = V2ErrorBody),
        (status = 422, description = "The version's artifact cannot be loaded.", body = V2ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; retry after `Retry-After` seconds.", body = V2ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn version_metadata(
    State(state): State<AppState>,
    caller: Result<Caller, AuthRejection>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, V2Error> {
    metadata(state, caller, ModelPath { name, version: Some(version) }).await
}

/// `GET /v2/models/{name}[/versions/{v}]`.
#[tracing::instrument(name = "model_metadata", skip_all, fields(model = %path.name, version = ?path.version))]
async fn metadata(
    state: AppState,
    caller: Result<Caller, AuthRejection>,
    path: ModelPath,
) -> Result<Json<Value>, V2Error> {
    let (model, loaded) = resolved(&state, caller, &path).await?;
    let client = state.served.ctx.db.get().await.map_err(|e| InferenceError::Registry(DbError::from(e).into()))?;
    let versions = models::version_numbers(&client, &model).await.map_err(InferenceError::from)?;
    drop(client);
    let classes = loaded.version.labels.len();
    Ok(Json(json!({
        "name": model.to_string(),
        "versions": versions.iter().map(i32::to_string).collect::<Vec<_>>(),
        "platform": "sluice_candle",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1],
             "parameters": {"content": "an encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF), prepared as training was"}},
            {"name": "pixels", "datatype": "FP32", "shape": pixel_shape(&loaded),
             "parameters": {"content": "prepared pixels in [0, 1], channels first (UINT8 in [0, 255] also taken)"}},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, classes]},
            {"name": LABELS, "datatype": "BYTES", "shape": [-1, -1]},
            {"name": PREDICTION_IDS, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "version": loaded.version.version,
            "labels": loaded.version.labels,
            "input_spec": loaded.version.input_spec,
        },
    })))
}

/// 200 once the version `production` points at is loaded.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "v2",
    security(("bearer" = ["predict"])),
    params(("name" = String, Path, description = "The model's name.")),
    responses(
        (status = 200, description = "`{\"name\", \"version\", \"ready\": true}`: the version is loaded (this request loads it if needed).", body = Object),
        (status = 400, description = "A malformed model name.", body = V2ErrorBody),
        (status = 404, description = "No such model, or it has no `production` alias.", body = V2ErrorBody),
        (status = 422, description = "The version's artifact cannot be loaded.", body = V2ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; retry after `Retry-After` seconds.", body = V2ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn model_ready(
    State(state): State<AppState>,
    caller: Result<Caller, AuthRejection>,
    Path(name): Path<String>,
) -> Result<Json<Value>, V2Error> {
    readiness(state, caller, ModelPath { name, version: None }).await
}

/// 200 once the version is loaded.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "v2",
    security(("bearer" = ["predict"])),
    params(
        ("name" = String, Path, description = "The model's name."),
        ("version" = String, Path, description = "The version number (1 or more)."),
    ),
    responses(
        (status = 200, description = "`{\"name\", \"version\", \"ready\": true}`: the version is loaded (this request loads it if needed).", body = Object),
        (status = 400, description = "A malformed model name or version.", body = V2ErrorBody),
        (status = 404, description = "No such model or version.", body = V2ErrorBody),
        (status = 422, description = "The version's artifact cannot be loaded.", body = V2ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; retry after `Retry-After` seconds.", body = V2ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn version_ready(
    State(state): State<AppState>,
    caller: Result<Caller, AuthRejection>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, V2Error> {
    readiness(state, caller, ModelPath { name, version: Some(version) }).await
}

/// `GET /v2/models/{name}[/versions/{v}]/ready`: 200 once the version is loaded.
#[tracing::instrument(name = "model_ready", skip_all, fields(model = %path.name, version = ?path.version))]
async fn readiness(
    state: AppState,
    caller: Result<Caller, AuthRejection>,
    path: ModelPath,
) -> Result<Json<Value>, V2Error> {
    let (model, loaded) = resolved(&state, caller, &path).await?;
    Ok(Json(json!({"name": model.to_string(), "version": loaded.version.version.to_string(), "ready": true})))
}

/// An inference request (the JSON part, with the binary extension).
#[derive(Debug, Deserialize, ToSchema)]
struct InferRequest {
    /// Echoed in the response.
    id: Option<String>,
    /// `alias` (a string: score with the version this alias points at; not with a version in the
    /// path) and `binary_data_output` (a boolean: every output as binary data).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    /// Exactly one input tensor.
    inputs: Vec<InputTensor>,
    /// The outputs to answer (1 to 3); default all three.
    outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor: `BYTES` `[n]` or `[n, 1]` of encoded images (base64 in JSON), or `FP32`
/// `[n, C, H, W]` pixels in [0, 1] (`UINT8` in [0, 255]) in the model's input shape.
#[derive(Debug, Deserialize, ToSchema)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    /// `BYTES`, `FP32` or `UINT8`.
    datatype: String,
    /// `binary_data_size`: the tensor's bytes in the binary part, instead of `data`.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    /// The elements, flat or nested row-major.
    #[schema(value_type = Option<Value>)]
    data: Option<TensorData>,
}

/// Most numbers one input's JSON `data` may hold (16 MiB as `f32`): 256 images of 3×64×64 fit;
/// larger tensors go through the binary extension.
const MAX_DATA_VALUES: usize = 1 << 22;
/// Most strings (base64 images) one input's JSON `data` may hold.
const MAX_DATA_STRINGS: usize = 1 << 16;
/// Deepest nesting of arrays in `data` (a `[n, C, H, W]` tensor nests four).
const MAX_DATA_DEPTH: usize = 5;

/// An input's JSON `data`, read as it is parsed (never as a JSON tree, which would take about
/// 16 times the body: a 32-byte value for each `0,`) and bounded while it is read: numbers
/// (`FP32`/`UINT8` pixels, as `f32`) or strings (`BYTES`), flat or nested row-major.
#[derive(Debug, Default, PartialEq)]
enum TensorData {
    #[default]
    Empty,
    Numbers(Vec<f32>),
    Strings(Vec<String>),
}

impl TensorData {
    fn number(&mut self, value: f64) -> Result<(), String> {
        if matches!(self, TensorData::Empty) {
            *self = TensorData::Numbers(Vec::new());
        }
        match self {
            TensorData::Numbers(values) if values.len() < MAX_DATA_VALUES => {
                values.push(value as f32);
                Ok(())
            }
            TensorData::Numbers(_) => Err(format!(
                "`data` holds over {MAX_DATA_VALUES} numbers; send larger tensors with the binary extension"
            )),
            _ => Err("`data` mixes numbers and strings".to_owned()),
        }
    }

    fn string(&mut self, value: String) -> Result<(), String> {
        if matches!(self, TensorData::Empty) {
            *self = TensorData::Strings(Vec::new());
        }
        match self {
            TensorData::Strings(values) if values.len() < MAX_DATA_STRINGS => {
                values.push(value);
                Ok(())
            }
            TensorData::Strings(_) => Err(format!("`data` holds over {MAX_DATA_STRINGS} strings")),
            _ => Err("`data` mixes numbers and strings".to_owned()),
        }
    }
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut data = TensorData::Empty;
        serde::de::DeserializeSeed::deserialize(Collect { into: &mut data, depth: 0 }, deserializer)?;
        Ok(data)
    }
}

/// Reads one element of `data` into the same place (an array element by element).
struct Collect<'a> {
    into: &'a mut TensorData,
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Collect<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Collect<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers or base64 strings, in a flat or nested array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DATA_DEPTH {
            return Err(serde::de::Error::custom(format!("`data` nests arrays over {MAX_DATA_DEPTH} deep")));
        }
        while seq.next_element_seed(Collect { into: &mut *self.into, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<(), E> {
        self.into.number(value).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<(), E> {
        self.into.number(value as f64).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<(), E> {
        self.into.number(value as f64).map_err(E::custom)
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<(), E> {
        self.into.string(value.to_owned()).map_err(E::custom)
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<(), E> {
        self.into.string(value).map_err(E::custom)
    }
}

/// An output to answer: `probabilities`, `labels` or `prediction_ids`.
#[derive(Debug, Deserialize, ToSchema)]
struct RequestedOutput {
    name: String,
    /// `binary_data` (a boolean), `classification` (1 to 1000: `probabilities` as `BYTES` `[n, k]`
    /// of `score:index:label`; `labels` with `k` classes) and `top_k` (1 to 1000, for `labels`).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
}

/// The binary extension's body: the JSON request (`Inference-Header-Content-Length` bytes), then
/// each binary tensor's bytes in input order.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct BinaryBody(Vec<u8>);

/// One output to answer: which, how many classes (`labels` and classification), binary or not.
struct Wanted {
    name: String,
    k: Option<usize>,
    binary: bool,
}

/// Scores images, or prepared pixels, with the version the model's routing picks.
///
/// The routing picks `production`, or a canary for a share of requests; `parameters.alias` picks
/// another alias. Shadow scoring, micro-batching, recording and drift apply as on `/v1` predict.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "v2",
    security(("bearer" = ["predict"])),
    params(
        ("name" = String, Path, description = "The model's name."),
        ("Inference-Header-Content-Length" = Option<usize>, Header, description = "Binary extension: the length of the JSON part; the rest of the body is binary tensor data."),
    ),
    request_body(description = "The inference request in JSON, or (binary extension) its JSON part followed by binary tensor data. At most `inference.max_predict_bytes`.",
        content((InferRequest = "application/json"), (BinaryBody = "application/octet-stream"))),
    responses(
        (status = 200, description = "`{\"model_name\", \"model_version\", \"id\", \"outputs\": [...], \"parameters\": {\"alias\"}}`; with binary outputs, that JSON followed by their bytes (`application/octet-stream`).",
            content((Object = "application/json"), (BinaryBody = "application/octet-stream")),
            headers(("Inference-Header-Content-Length" = usize, description = "With binary outputs: the length of the JSON part."))),
        (status = 400, description = "A malformed request: model name, JSON, `Inference-Header-Content-Length`, input tensor (count, datatype, shape, data, binary sizes), outputs or parameters.", body = V2ErrorBody),
        (status = 404, description = "No such model or alias.", body = V2ErrorBody),
        (status = 413, description = "The body is over `inference.max_predict_bytes`.", body = V2ErrorBody),
        (status = 415, description = "An image is not JPEG, PNG, WebP, GIF, BMP or TIFF.", body = V2ErrorBody),
        (status = 422, description = "An image cannot be decoded or prepared, or is over `inference.max_image_pixels`, or the version's artifact cannot be loaded.", body = V2ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; retry after `Retry-After` seconds.", body = V2ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn infer(
    State(state): State<AppState>,
    caller: Result<Caller, AuthRejection>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, V2Error> {
    infer_at(state, caller, ModelPath { name, version: None }, headers, request).await
}

/// Scores images, or prepared pixels, with a version.
///
/// Micro-batching, recording and drift apply as on `/v1` predict.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "v2",
    security(("bearer" = ["predict"])),
    params(
        ("name" = String, Path, description = "The model's name."),
        ("version" = String, Path, description = "The version number (1 or more); not with `parameters.alias`."),
        ("Inference-Header-Content-Length" = Option<usize>, Header, description = "Binary extension: the length of the JSON part; the rest of the body is binary tensor data."),
    ),
    request_body(description = "The inference request in JSON, or (binary extension) its JSON part followed by binary tensor data. At most `inference.max_predict_bytes`.",
        content((InferRequest = "application/json"), (BinaryBody = "application/octet-stream"))),
    responses(
        (status = 200, description = "`{\"model_name\", \"model_version\", \"id\", \"outputs\": [...], \"parameters\": {\"alias\"}}`; with binary outputs, that JSON followed by their bytes (`application/octet-stream`).",
            content((Object = "application/json"), (BinaryBody = "application/octet-stream")),
            headers(("Inference-Header-Content-Length" = usize, description = "With binary outputs: the length of the JSON part."))),
        (status = 400, description = "A malformed request: model name, version, JSON, `Inference-Header-Content-Length`, input tensor (count, datatype, shape, data, binary sizes), outputs or parameters (`parameters.alias` with a version).", body = V2ErrorBody),
        (status = 404, description = "No such model or version.", body = V2ErrorBody),
        (status = 413, description = "The body is over `inference.max_predict_bytes`.", body = V2ErrorBody),
        (status = 415, description = "An image is not JPEG, PNG, WebP, GIF, BMP or TIFF.", body = V2ErrorBody),
        (status = 422, description = "An image cannot be decoded or prepared, or is over `inference.max_image_pixels`, or the version's artifact cannot be loaded.", body = V2ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; retry after `Retry-After` seconds.", body = V2ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ))]
pub async fn version_infer(
    State(state): State<AppState>,
    caller: Result<Caller, AuthRejection>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, V2Error> {
    infer_at(state, caller, ModelPath { name, version: Some(version) }, headers, request).await
}

/// `POST /v2/models/{name}[/versions/{v}]/infer`.
#[tracing::instrument(name = "infer", skip_all, fields(model = %path.name, version = ?path.version))]
async fn infer_at(
    state: AppState,
    caller: Result<Caller, AuthRejection>,
    path: ModelPath,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, V2Error> {
    let started = Instant::now();
    // The caller first: an unauthenticated or throttled client's body is never read.
    predictor(caller)?;
    let body = Bytes::from_request(request, &()).await.map_err(|e| V2Error::Throttled(Box::new(e.into_response())))?;
    let accepted = accept(&state, &path, &headers, &body).await.map_err(|e| counted(e, None))?;
    let Accepted { model, routed, inputs, request, wanted, top_k } = accepted;
    let answer =
        predict::serve(&state, &model, routed, inputs, top_k, started).await.map_err(|e| counted(e, Some(&model)))?;
    Ok(respond(&request, &answer, &wanted))
}

/// Counts a refused or failed request in `sluice_inference_errors_total` (by its status), under
/// `model` once it names a served model, else `unknown`. Returns the answer, rendered (and a 5xx
/// logged) once.
fn counted(err: InferenceError, model: Option<&ModelName>) -> V2Error {
    let answer = err.to_api();
    let reason = match answer.status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "invalid_request",
    };
    let model = model.map_or_else(|| "unknown".to_owned(), ToString::to_string);
    metrics::counter!("sluice_inference_errors_total", "model" => model, "reason" => reason).increment(1);
    answer.into()
}

/// An inference request decoded and routed, ready to score.
struct Accepted {
    model: ModelName,
    routed: predict::Routed,
    inputs: Inputs,
    request: InferRequest,
    wanted: Vec<Wanted>,
    top_k: usize,
}

/// Decodes an inference request (JSON, or JSON and binary data) and resolves the version that
/// will score it.
async fn accept(
    state: &AppState,
    path: &ModelPath,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Accepted, InferenceError> {
    let (header, mut binary) = split(headers, body)?;
    let request: InferRequest = serde_json::from_slice(header)
        .map_err(|e| InferenceError::invalid(format!("malformed inference request: {e}")))?;
    let alias = match request.parameters.get("alias") {
        None | Some(Value::Null) => None,
        Some(Value::String(alias)) => Some(alias.as_str()),
        Some(_) => return Err(InferenceError::invalid("`parameters.alias` must be a string")),
    };
    let (model, target) = path_target(path, alias)?;
    let [input] = request.inputs.as_slice() else {
        return Err(InferenceError::invalid(format!(
            "send exactly one input tensor (BYTES images or FP32 pixels), got {}",
            request.inputs.len()
        )));
    };
    let max_images = state.served.ctx.config.http.max_parts;
    let inputs = decode_input(input, &mut binary, body, max_images)?;
    if !binary.is_empty() {
        return Err(InferenceError::invalid(format!(
            "{} bytes of binary data are not claimed by any input",
            binary.len()
        )));
    }
    let wanted = outputs(&request)?;
    let top_k = wanted.iter().filter_map(|w| w.k).max().unwrap_or(1);
    let routed = predict::route(state, &model, target).await?;
    Ok(Accepted { model, routed, inputs, request, wanted, top_k })
}

/// The JSON part and the binary part of a request body.
fn split<'a>(headers: &HeaderMap, body: &'a Bytes) -> Result<(&'a [u8], &'a [u8]), InferenceError> {
    let Some(value) = headers.get(HEADER_LENGTH) else { return Ok((body, &[])) };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| InferenceError::invalid(format!("{HEADER_LENGTH} must be a number of bytes")))?;
    if length > body.len() {
        return Err(InferenceError::invalid(format!(
            "{HEADER_LENGTH} is {length} but the body has {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

/// Takes `size` bytes off the front of the binary part.
fn take<'a>(binary: &mut &'a [u8], size: usize, name: &str) -> Result<&'a [u8], InferenceError> {
    if size > binary.len() {
        return Err(InferenceError::invalid(format!(
            "input {name:?} claims {size} bytes of binary data, {} are left",
            binary.len()
        )));
    }
    let (taken, rest) = binary.split_at(size);
    *binary = rest;
    Ok(taken)
}

/// The number of elements a shape holds, refusing negative or overflowing dimensions.
fn elements(shape: &[i64], name: &str) -> Result<usize, InferenceError> {
    shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| n.checked_mul(d))
            .ok_or_else(|| InferenceError::invalid(format!("input {name:?} has an invalid shape {shape:?}")))
    })
}

/// The input tensor as what `serve` takes; images are sliced out of `body` (the whole request
/// body), not copied.
fn decode_input(
    input: &InputTensor,
    binary: &mut &[u8],
    body: &Bytes,
    max_images: usize,
) -> Result<Inputs, InferenceError> {
    let name = input.name.as_str();
    let raw = match input.parameters.get("binary_data_size") {
        None => None,
        Some(size) => {
            let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                InferenceError::invalid(format!("input {name:?}: `binary_data_size` must be a number of bytes"))
            })?;
            Some(take(binary, size, name)?)
        }
    };
    if raw.is_some() && input.data.is_some() {
        return Err(InferenceError::invalid(format!("input {name:?} has both `data` and binary data")));
    }
    let count = elements(&input.shape, name)?;
    match input.datatype.as_str() {
        "BYTES" => {
            let images = input.shape.first().copied().unwrap_or(0);
            if input.shape.len() > 2 || (input.shape.len() == 2 && input.shape[1] != 1) {
                return Err(InferenceError::invalid(format!(
                    "input {name:?}: BYTES images take the shape [n] or [n, 1], got {:?}",
                    input.shape
                )));
            }
            if images < 1 || images as usize > max_images {
                return Err(InferenceError::invalid(format!(
                    "input {name:?}: send 1 to {max_images} images, got {images}"
                )));
            }
            let items = match raw {
                Some(raw) => length_prefixed(body.slice_ref(raw), name)?,
                None => base64_elements(input.data.as_ref(), name)?,
            };
            if items.len() != count {
                return Err(InferenceError::invalid(format!(
                    "input {name:?} has shape {:?} but holds {} elements",
                    input.shape,
                    items.len()
                )));
            }
            if items.iter().any(Bytes::is_empty) {
                return Err(InferenceError::invalid(format!("input {name:?} holds an empty image")));
            }
            Ok(Inputs::Encoded(items))
        }
        datatype @ ("FP32" | "UINT8") => {
            if input.shape.len() != 4 {
                return Err(InferenceError::invalid(format!(
                    "input {name:?}: {datatype} pixels take the shape [n, channels, height, width], got {:?}",
                    input.shape
                )));
            }
            let images = input.shape[0];
            if images < 1 || images as usize > max_images {
                return Err(InferenceError::invalid(format!(
                    "input {name:?}: send 1 to {max_images} images, got {images}"
                )));
            }
            if count == 0 {
                return Err(InferenceError::invalid(format!(
                    "input {name:?}: the shape {:?} holds no pixels",
                    input.shape
                )));
            }
            // Every value takes at least one byte of the request, however it is encoded: a shape
            // claiming more is refused before anything is allocated for it.
            if count > body.len() {
                return Err(InferenceError::invalid(format!(
                    "input {name:?}: the shape {:?} holds more values than the request carries",
                    input.shape
                )));
            }
            let pixels = match (datatype, raw) {
                ("FP32", Some(raw)) => {
                    if raw.len() != count * 4 {
                        return Err(InferenceError::invalid(format!(
                            "input {name:?}: {count} FP32 values take {} bytes, got {}",
                            count * 4,
                            raw.len()
                        )));
                    }
                    raw.chunks_exact(4)
                        .map(|b| unit_to_byte(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])), name))
                        .collect::<Result<Vec<u8>, _>>()?
                }
                (_, Some(raw)) => {
                    if raw.len() != count {
                        return Err(InferenceError::invalid(format!(
                            "input {name:?}: {count} UINT8 values, got {} bytes",
                            raw.len()
                        )));
                    }
                    raw.to_vec()
                }
                (datatype, None) => {
                    let values = numbers(input.data.as_ref(), count, name)?;
                    if values.len() != count {
                        return Err(InferenceError::invalid(format!(
                            "input {name:?} has shape {:?} but holds {} values",
                            input.shape,
                            values.len()
                        )));
                    }
                    if datatype == "FP32" {
                        values.iter().map(|&v| unit_to_byte(f64::from(v), name)).collect::<Result<Vec<u8>, _>>()?
                    } else {
                        values
                            .iter()
                            .map(|&v| {
                                (v.fract() == 0.0 && (0.0..=255.0).contains(&v)).then_some(v as u8).ok_or_else(|| {
                                    InferenceError::invalid(format!(
                                        "input {name:?}: UINT8 values are whole numbers in [0, 255]"
                                    ))
                                })
                            })
                            .collect::<Result<Vec<u8>, _>>()?
                    }
                }
            };
            // Each dimension is at least 1 and their product at most the body's length (checked above).
            let shape = [input.shape[1] as usize, input.shape[2] as usize, input.shape[3] as usize];
            Ok(Inputs::Prepared { pixels, shape })
        }
        other => Err(InferenceError::invalid(format!(
            "input {name:?}: datatype {other} is not taken; send BYTES (encoded images) or FP32 (pixels)"
        ))),
    }
}

/// A pixel in [0, 1] as the byte the network reads.
fn unit_to_byte(value: f64, name: &str) -> Result<u8, InferenceError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(InferenceError::invalid(format!("input {name:?}: FP32 pixels are in [0, 1], got {value}")));
    }
    Ok((value * 255.0).round() as u8)
}

/// The binary extension's BYTES elements: each a 4-byte little-endian length, then the bytes
/// (slices of `raw`, not copies).
fn length_prefixed(mut raw: Bytes, name: &str) -> Result<Vec<Bytes>, InferenceError> {
    let mut items = Vec::new();
    while !raw.is_empty() {
        let Some(length) = raw.first_chunk::<4>() else {
            return Err(InferenceError::invalid(format!("input {name:?}: truncated BYTES element length")));
        };
        let length = u32::from_le_bytes(*length) as usize;
        let left = raw.len() - 4;
        if length > left {
            return Err(InferenceError::invalid(format!(
                "input {name:?}: a BYTES element claims {length} bytes, {left} are left"
            )));
        }
        items.push(raw.slice(4..4 + length));
        raw = raw.slice(4 + length..);
    }
    Ok(items)
}

/// JSON BYTES elements: base64 strings (an image is not text), in a flat or nested array.
fn base64_elements(data: Option<&TensorData>, name: &str) -> Result<Vec<Bytes>, InferenceError> {
    match data {
        None => Err(InferenceError::invalid(format!("input {name:?} has no `data` and no binary data"))),
        Some(TensorData::Strings(texts)) => texts
            .iter()
            .map(|text| {
                base64::engine::general_purpose::STANDARD.decode(text.trim()).map(Bytes::from).map_err(|_| {
                    InferenceError::invalid(format!(
                        "input {name:?}: BYTES elements in JSON are base64-encoded images (or use the binary extension)"
                    ))
                })
            })
            .collect(),
        Some(TensorData::Empty) => Ok(Vec::new()),
        Some(TensorData::Numbers(_)) => {
            Err(InferenceError::invalid(format!("input {name:?}: BYTES `data` is an array of base64 strings")))
        }
    }
}

/// The numbers of a flat or nested (row-major) array; refused past `limit` of them.
fn numbers<'a>(data: Option<&'a TensorData>, limit: usize, name: &str) -> Result<&'a [f32], InferenceError> {
    let values = match data {
        None => return Err(InferenceError::invalid(format!("input {name:?} has no `data` and no binary data"))),
        Some(TensorData::Numbers(values)) => values.as_slice(),
        Some(TensorData::Empty) => &[],
        Some(TensorData::Strings(_)) => {
            return Err(InferenceError::invalid(format!("input {name:?}: `data` is an array of numbers")));
        }
    };
    if values.len() > limit {
        return Err(InferenceError::invalid(format!("input {name:?} holds more values than its shape")));
    }
    Ok(values)
}

/// The outputs to answer: those requested, or all of them.
fn outputs(request: &InferRequest) -> Result<Vec<Wanted>, InferenceError> {
    let all_binary = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let count = |parameters: &Map<String, Value>, key: &str| -> Result<Option<usize>, InferenceError> {
        match parameters.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_u64() {
                Some(k) if (1..=1000).contains(&k) => Ok(Some(k as usize)),
                _ => Err(InferenceError::invalid(format!("`{key}` must be a number from 1 to 1000"))),
            },
        }
    };
    let Some(requested) = &request.outputs else {
        return Ok([PROBABILITIES, LABELS, PREDICTION_IDS]
            .into_iter()
            .map(|name| Wanted { name: name.to_owned(), k: (name == LABELS).then_some(1), binary: all_binary })
            .collect());
    };
    if requested.is_empty() || requested.len() > 3 {
        return Err(InferenceError::invalid("request 1 to 3 outputs: probabilities, labels, prediction_ids"));
    }
    requested
        .iter()
        .map(|output| {
            let binary = output.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(all_binary);
            let classification = count(&output.parameters, "classification")?;
            let k = match output.name.as_str() {
                PROBABILITIES => classification,
                LABELS => Some(classification.or(count(&output.parameters, "top_k")?).unwrap_or(1)),
                PREDICTION_IDS => None,
                other => {
                    return Err(InferenceError::invalid(format!(
                        "no output named {other:?}; the outputs are probabilities, labels and prediction_ids"
                    )));
                }
            };
            Ok(Wanted { name: output.name.clone(), k, binary })
        })
        .collect()
}

/// Builds the response: JSON, or a JSON header followed by the binary outputs.
fn respond(request: &InferRequest, answer: &predict::Answer, wanted: &[Wanted]) -> Response {
    let labels = &answer.loaded.version.labels;
    let n = answer.predictions.len();
    let ranked: Vec<Vec<(usize, f64)>> = answer
        .probabilities
        .iter()
        .map(|p| {
            let mut ranked: Vec<(usize, f64)> = p.iter().copied().enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked
        })
        .collect();
    let mut binary: Vec<u8> = Vec::new();
    let mut tensors = Vec::with_capacity(wanted.len());
    for output in wanted {
        // Each output as (shape, datatype, JSON data, binary bytes).
        let (shape, datatype, data, bytes): (Vec<usize>, &str, Value, Vec<u8>) = match (output.name.as_str(), output.k)
        {
            (PROBABILITIES, None) => {
                let values: Vec<f32> = answer.probabilities.iter().flatten().map(|&p| p as f32).collect();
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (vec![n, labels.len()], "FP32", json!(values), bytes)
            }
            (PROBABILITIES, Some(k)) => {
                let k = k.min(labels.len());
                let items: Vec<String> = ranked
                    .iter()
                    .flat_map(|r| r.iter().take(k).map(|&(class, p)| format!("{p}:{class}:{}", labels[class])))
                    .collect();
                (vec![n, k], "BYTES", json!(items), length_prefix(&items))
            }
            (LABELS, k) => {
                let k = k.unwrap_or(1).min(labels.len());
                let items: Vec<String> =
                    ranked.iter().flat_map(|r| r.iter().take(k).map(|&(class, _)| labels[class].clone())).collect();
                (vec![n, k], "BYTES", json!(items), length_prefix(&items))
            }
            _ => {
                let items: Vec<String> =
                    answer.predictions.iter().map(|p| p["id"].as_str().unwrap_or_default().to_owned()).collect();
                (vec![n], "BYTES", json!(items), length_prefix(&items))
            }
        };
        let mut tensor = json!({"name": output.name, "shape": shape, "datatype": datatype});
        if output.binary {
            tensor["parameters"] = json!({"binary_data_size": bytes.len()});
            binary.extend(bytes);
        } else {
            tensor["data"] = data;
        }
        tensors.push(tensor);
    }
    let mut body = json!({
        "model_name": answer.loaded.version.model.to_string(),
        "model_version": answer.loaded.version.version.to_string(),
        "outputs": tensors,
        "parameters": {"alias": answer.alias},
    });
    if let Some(id) = &request.id {
        body["id"] = json!(id);
    }
    let header = serde_json::to_vec(&body).unwrap_or_default();
    if wanted.iter().all(|w| !w.binary) {
        return ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], header).into_response();
    }
    let length = header.len();
    let mut all = header;
    all.extend(binary);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(length)),
        ],
        all,
    )
        .into_response()
}

/// BYTES elements in the binary extension's layout.
fn length_prefix(items: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|s| s.len() + 4).sum());
    for item in items {
        out.extend((item.len() as u32).to_le_bytes());
        out.extend(item.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_bytes_round_trip_and_truncation_is_refused() {
        let items = vec!["ab".to_owned(), String::new(), "xyz".to_owned()];
        let encoded = length_prefix(&items);
        let encoded = Bytes::from(encoded);
        let decoded = length_prefixed(encoded.clone(), "x").expect("decodes");
        assert_eq!(decoded, vec![Bytes::from("ab"), Bytes::new(), Bytes::from("xyz")]);
        assert!(length_prefixed(encoded.slice(..encoded.len() - 1), "x").is_err());
        assert!(length_prefixed(Bytes::from_static(&[1, 0]), "x").is_err());
    }

    fn tensor(data: Value) -> TensorData {
        serde_json::from_value(data).expect("tensor data")
    }

    /// `data` as JSON again.
    fn shown(data: Option<&TensorData>) -> Value {
        match data {
            None => Value::Null,
            Some(TensorData::Empty) => json!([]),
            Some(TensorData::Numbers(values)) => json!(values),
            Some(TensorData::Strings(values)) => json!(values),
        }
    }

    #[test]
    fn tensor_data_is_read_flat_or_nested_and_bounded_while_it_is_read() {
        assert_eq!(tensor(json!([[0.5, 1], [2]])), TensorData::Numbers(vec![0.5, 1.0, 2.0]));
        assert_eq!(tensor(json!([["aGk="], ["aGk="]])), TensorData::Strings(vec!["aGk=".into(), "aGk=".into()]));
        assert_eq!(tensor(json!([[], []])), TensorData::Empty);
        let refused = |data: &str| serde_json::from_str::<TensorData>(data).is_err();
        assert!(refused(r#"[1, "aGk="]"#), "mixed");
        assert!(refused(r#"[1, null]"#) && refused(r#"[{"a": 1}]"#) && refused("[true]"), "not numbers nor strings");
        assert!(refused("[[[[[[1]]]]]]") && !refused("[[[[[1]]]]]"), "five arrays deep at most");
        // Past the bound the read stops with an error: nothing is kept for the rest of the body.
        let over = format!("[{}0]", "0,".repeat(MAX_DATA_VALUES));
        let err = serde_json::from_str::<TensorData>(&over).expect_err("too many values");
        assert!(err.to_string().contains("binary extension"), "{err}");
        let within = format!("[{}0]", "0,".repeat(MAX_DATA_VALUES - 1));
        assert!(
            matches!(serde_json::from_str::<TensorData>(&within), Ok(TensorData::Numbers(v)) if v.len() == MAX_DATA_VALUES)
        );
    }

    #[test]
    fn shapes_must_be_non_negative_and_not_overflow() {
        assert_eq!(elements(&[2, 3, 4], "x").expect("24"), 24);
        assert!(elements(&[-1, 3], "x").is_err());
        assert!(elements(&[i64::MAX, i64::MAX], "x").is_err());
    }

    /// Random and half-valid tensors (shapes with huge, negative and zero dimensions, every
    /// datatype, JSON and binary data of random sizes): decoding never panics, never allocates
    /// for more values than the body holds, and whatever it accepts is within the limits.
    #[test]
    fn random_tensors_are_refused_or_bounded_never_a_panic() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(17);
        let dims = [-1i64, 0, 1, 2, 3, 24, 255, 256, 257, 1 << 20, 1 << 40, i64::MAX];
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let rank = rng.random_range(0..6);
            let shape: Vec<i64> = (0..rank).map(|_| dims[rng.random_range(0..dims.len())]).collect();
            let datatype = ["BYTES", "FP32", "UINT8", "INT64", ""][rng.random_range(0..5)];
            let binary: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
            let use_binary = rng.random_bool(0.5);
            let data = match rng.random_range(0..4) {
                0 => Value::Null,
                1 => json!((0..rng.random_range(0..8)).map(|_| rng.random::<f64>() * 2.0).collect::<Vec<_>>()),
                2 => json!(["aGVsbG8=", "%%%", ""]),
                _ => json!([[0.5, 0.25], [1.0]]),
            };
            let mut parameters = Map::new();
            if use_binary {
                let claimed = if rng.random_bool(0.8) { binary.len() as u64 } else { rng.random_range(0..1 << 40) };
                parameters.insert("binary_data_size".into(), json!(claimed));
            }
            let mut input = InputTensor {
                name: "x".into(),
                shape,
                datatype: datatype.into(),
                parameters,
                data: (!data.is_null()).then(|| tensor(data)),
            };
            // A third are well formed, so the accepting paths run too.
            match rng.random_range(0..9) {
                0 => {
                    let n = rng.random_range(1..4);
                    input = InputTensor {
                        name: "image".into(),
                        shape: vec![n],
                        datatype: "BYTES".into(),
                        parameters: Map::new(),
                        data: Some(tensor(json!(vec!["aGVsbG8="; n as usize]))),
                    };
                }
                1 => {
                    let n = rng.random_range(1..6);
                    input = InputTensor {
                        name: "pixels".into(),
                        shape: vec![1, 1, 1, n],
                        datatype: "FP32".into(),
                        parameters: Map::new(),
                        data: Some(tensor(json!((0..n).map(|_| rng.random::<f64>()).collect::<Vec<_>>()))),
                    };
                }
                2 if !binary.is_empty() => {
                    input = InputTensor {
                        name: "pixels".into(),
                        shape: vec![1, 1, 1, binary.len() as i64],
                        datatype: "UINT8".into(),
                        parameters: [("binary_data_size".to_owned(), json!(binary.len()))].into_iter().collect(),
                        data: None,
                    };
                }
                _ => {}
            }
            // The JSON part stands in for the request's header: the data lies within it.
            let header = json!({"inputs": [shown(input.data.as_ref())]}).to_string().into_bytes();
            let body = Bytes::from([header.clone(), binary.clone()].concat());
            let mut rest: &[u8] = &body[header.len()..];
            match decode_input(&input, &mut rest, &body, 256) {
                Ok(Inputs::Prepared { pixels, .. }) => {
                    accepted += 1;
                    assert!(!pixels.is_empty() && pixels.len() <= body.len(), "{input:?}");
                }
                Ok(Inputs::Encoded(images)) => {
                    accepted += 1;
                    assert!((1..=256).contains(&images.len()), "{input:?}");
                    assert!(images.iter().map(Bytes::len).sum::<usize>() <= body.len(), "{input:?}");
                }
                Err(err) => {
                    refused += 1;
                    let answer = err.to_api();
                    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
                    assert!(!answer.message.is_empty());
                }
            }
        }
        assert!(accepted > 0 && refused > 0, "accepted {accepted}, refused {refused}");
    }

    #[test]
    fn pixels_outside_the_unit_range_are_refused() {
        assert_eq!(unit_to_byte(1.0, "x").expect("255"), 255);
        assert_eq!(unit_to_byte(0.5, "x").expect("128"), 128);
        assert!(unit_to_byte(1.5, "x").is_err());
        assert!(unit_to_byte(f64::NAN, "x").is_err());
    }
}
