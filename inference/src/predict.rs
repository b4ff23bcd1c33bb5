//! `POST /v1/models/{name}/predict`: a raw image body, or multipart with several `file` parts.
//!
//! Each image goes through the preprocessing the version was trained with (`sluice-media`, driven
//! by the version's input spec), then the version's micro-batcher. Every prediction gets an id,
//! is recorded asynchronously, feeds the version's drift window and the per-class and confidence
//! metrics. Without `alias` or `version`, the model's routing may send the request to a canary
//! alias, and a shadow alias scores it too (its answer is recorded, never returned).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Multipart, Path, Query, Request, State, multipart::MultipartError},
    http::{StatusCode, header},
};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    auth::Scope,
    http::Caller,
    models::{AliasName, ModelName},
    reference::{image_stats, sharpness, softmax},
};
use sluice_media::ImageError;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState,
    drift::Observation,
    error::InferenceError,
    recorder::Record,
    serving::{Captured, LoadedVersion, Target},
};

#[derive(Debug, Deserialize)]
pub struct PredictQuery {
    alias: Option<String>,
    version: Option<i32>,
    top_k: Option<usize>,
}

/// Which version the request names, or the default route (`production`, maybe a canary).
pub fn target(alias: Option<&str>, version: Option<i32>) -> Result<Option<Target>, InferenceError> {
    match (alias, version) {
        (Some(_), Some(_)) => Err(InferenceError::invalid("Give `alias` or `version`, not both.")),
        (Some(alias), None) => AliasName::parse(alias)
            .map(|a| Some(Target::Alias(a)))
            .map_err(|e| InferenceError::invalid(format!("`alias`: {e}."))),
        (None, Some(version)) if version >= 1 => Ok(Some(Target::Version(version))),
        (None, Some(_)) => Err(InferenceError::invalid("`version` must be 1 or more.")),
        (None, None) => Ok(None),
    }
}

pub fn model_name(raw: &str) -> Result<ModelName, InferenceError> {
    ModelName::parse(raw).map_err(|e| InferenceError::invalid(format!("`model`: {e}.")))
}

async fn images(request: Request, max_images: usize) -> Result<Vec<Bytes>, InferenceError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let unreadable =
        |e: &dyn std::fmt::Display| InferenceError::invalid(format!("The request body could not be read: {e}."));
    let mut found = Vec::new();
    if multipart {
        let too_many = || {
            InferenceError::refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_images",
                format!("At most {max_images} `file` parts (and nothing else) per request."),
            )
        };
        // Bounds what the parser buffers outside part data (a header block that never ends).
        let (request, framing) =
            sluice_core::multipart::guard(request).map_err(|m| InferenceError::invalid(format!("{m}.")))?;
        let unreadable_part = |e: &MultipartError| {
            if framing.tripped() {
                InferenceError::invalid(format!("{}.", sluice_core::multipart::FRAMING_MESSAGE))
            } else {
                unreadable_part(e)
            }
        };
        let mut form = Multipart::from_request(request, &()).await.map_err(|e| unreadable_body(&e))?;
        let mut parts = 0usize;
        while let Some(field) = form.next_field().await.map_err(|e| unreadable_part(&e))? {
            parts += 1;
            if parts > max_images {
                return Err(too_many());
            }
            if field.name() != Some("file") {
                return Err(InferenceError::invalid("Predict takes multipart `file` parts only."));
            }
            found.push(field.bytes().await.map_err(|e| unreadable_part(&e))?);
        }
    } else {
        let body = Bytes::from_request(request, &()).await.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            _ => unreadable(&e),
        })?;
        found.push(body);
    }
    if found.is_empty() || found.iter().any(Bytes::is_empty) {
        return Err(InferenceError::refused(
            StatusCode::BAD_REQUEST,
            "empty_upload",
            "Send an image as the body, or multipart `file` parts.",
        ));
    }
    Ok(found)
}

fn too_large() -> InferenceError {
    InferenceError::refused(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "The request body is over `inference.max_predict_bytes`; send fewer or smaller images per request.",
    )
}

fn unreadable_part(err: &MultipartError) -> InferenceError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    InferenceError::invalid(format!("The multipart body could not be read: {}.", err.body_text()))
}

fn unreadable_body(err: &axum::extract::multipart::MultipartRejection) -> InferenceError {
    InferenceError::invalid(format!("The multipart body could not be read: {}.", err.body_text()))
}

/// Decodes and prepares one image exactly as the version's training data was prepared.
fn prepare(bytes: &[u8], loaded: &LoadedVersion, max_pixels: u64) -> Result<Vec<u8>, InferenceError> {
    if image::guess_format(bytes).is_err() {
        return Err(InferenceError::refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "The body is not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF).",
        ));
    }
    sluice_media::prepare(bytes, &loaded.version.input_spec, max_pixels).map_err(|err| match err {
        ImageError::Oversize(_) => {
            InferenceError::refused(StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels", format!("{err}."))
        }
        other => InferenceError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_image",
            format!("The image cannot be used: {other}."),
        ),
    })
}

/// Counts a refused or failed request in `sluice_inference_errors_total` (by the answer's code),
/// under `model` once it names a served model, else `unknown`: a name from the URL becomes a
/// metric label only once it resolves. Returns the answer, rendered (and a 5xx logged) once.
fn counted(err: InferenceError, model: Option<&ModelName>) -> InferenceError {
    let answer = err.to_api();
    let model = model.map_or_else(|| "unknown".to_owned(), ToString::to_string);
    metrics::counter!("sluice_inference_errors_total", "model" => model, "reason" => answer.code).increment(1);
    answer.into()
}

/// An encoded image, as the body or as one multipart `file` part.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct EncodedImage(Vec<u8>);

/// Several images in one request: `file` parts only.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
struct PredictForm {
    /// Encoded images (JPEG, PNG, WebP, GIF, BMP, TIFF), one per `file` part, at most `http.max_parts`.
    file: Vec<EncodedImage>,
}

/// Scores images with a model version.
///
/// Each image is prepared exactly as the version's training data was, then scored through the
/// version's micro-batcher; every prediction gets an id (for `POST /v1/feedback`), is recorded and
/// feeds the version's drift window. Without `alias` or `version`, the model's routing answers
/// (`production`, or a canary share of requests) and a shadow alias scores the same images.
#[utoipa::path(post, path = "/v1/models/{name}/predict", tag = "inference",
    security(("bearer" = ["predict"])),
    params(
        ("name" = String, Path, description = "The model's name."),
        ("alias" = Option<String>, Query, description = "Score with the version this alias points at (not with `version`); default: the model's routing (`production`, maybe a canary)."),
        ("version" = Option<i32>, Query, minimum = 1, description = "Score with this version (not with `alias`)."),
        ("top_k" = Option<usize>, Query, minimum = 1, description = "Classes listed per image, best first (default 3)."),
    ),
    request_body(description = "One image as the whole body, or `multipart/form-data` with one or more `file` parts; at most `inference.max_predict_bytes` in all.",
        content((EncodedImage = "image/*"), (PredictForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "`{\"model\", \"version\", \"alias\", \"predictions\": [{\"id\", \"top\": [{\"label\", \"score\"}]}]}`, one prediction per image in order; scores are calibrated.", body = Object),
        (status = 400, description = "A malformed model name or query (`alias` and `version` together, `version` or `top_k` below 1), an unreadable or empty body, or a multipart part not named `file`.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No such model, alias or version.", body = sluice_core::api_doc::ErrorBody),
        (status = 413, description = "The body is over `inference.max_predict_bytes` (`too_large`), has more than `http.max_parts` parts (`too_many_images`), or its images claim more than `inference.max_request_pixels` together (`request_too_large`).", body = sluice_core::api_doc::ErrorBody),
        (status = 415, description = "An image is not JPEG, PNG, WebP, GIF, BMP or TIFF.", body = sluice_core::api_doc::ErrorBody),
        (status = 422, description = "An image cannot be decoded or prepared (`invalid_image`), is over `inference.max_image_pixels` (`too_many_pixels`), or the version's artifact cannot be loaded (`model_unloadable`).", body = sluice_core::api_doc::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name))]
pub async fn predict(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<PredictQuery>,
    request: Request,
) -> Result<Json<Value>, InferenceError> {
    let started = Instant::now();
    let (model, routed, bodies, top_k) =
        accept(&state, &caller, &name, &query, request).await.map_err(|e| counted(e, None))?;
    let answer = serve(&state, &model, routed, Inputs::Encoded(bodies), top_k, started)
        .await
        .map_err(|e| counted(e, Some(&model)))?;
    Ok(Json(json!({"model": model.to_string(), "version": answer.loaded.version.version, "alias": answer.alias,
                   "predictions": answer.predictions})))
}

/// Checks a predict request, reads its images and resolves the version that will score them.
async fn accept(
    state: &AppState,
    caller: &Caller,
    name: &str,
    query: &PredictQuery,
    request: Request,
) -> Result<(ModelName, Routed, Vec<Bytes>, usize), InferenceError> {
    caller.require(Scope::Predict)?;
    let model = model_name(name)?;
    let top_k = query.top_k.unwrap_or(3);
    if top_k == 0 {
        return Err(InferenceError::invalid("`top_k` must be 1 or more."));
    }
    let explicit = target(query.alias.as_deref(), query.version)?;
    let bodies = images(request, state.served.ctx.config.http.max_parts).await?;
    let routed = route(state, &model, explicit).await?;
    Ok((model, routed, bodies, top_k))
}

/// What a predict request scores: encoded images (decoded and prepared as the version's training
/// data was), or pixels already prepared (`u8` CHW, one image after another) with the per-image
/// shape the client declared, checked against the version's once it is resolved.
pub(crate) enum Inputs {
    Encoded(Vec<Bytes>),
    Prepared { pixels: Vec<u8>, shape: [usize; 3] },
}

/// A version's input per image: channels, height, width.
pub(crate) fn input_shape(loaded: &LoadedVersion) -> [usize; 3] {
    let spec = &loaded.version.input_spec;
    let (height, width) = (spec.height as usize, spec.width as usize);
    [loaded.batcher.frame() / (height * width), height, width]
}

/// A request's answer: the version that scored it, the alias it was routed to, and each image's
/// prediction (`{"id", "top"}`).
pub(crate) struct Answer {
    pub loaded: Arc<LoadedVersion>,
    pub alias: Option<String>,
    pub predictions: Vec<Value>,
    /// Each image's calibrated probabilities, in label order.
    pub probabilities: Vec<Vec<f64>>,
}

/// Where a request goes: the loaded version, the alias it was routed to, and the shadow alias
/// that scores the same inputs (from the model's routing, when the request named no target).
pub(crate) struct Routed {
    loaded: Arc<LoadedVersion>,
    alias: Option<String>,
    shadow: Option<String>,
}

/// Resolves the request's target, or the model's routing (production, maybe a canary), to a
/// loaded version.
pub(crate) async fn route(
    state: &AppState,
    model: &ModelName,
    explicit: Option<Target>,
) -> Result<Routed, InferenceError> {
    let (target, alias, routing) = match explicit {
        Some(Target::Alias(a)) => {
            let alias = a.to_string();
            (Target::Alias(a), Some(alias), None)
        }
        Some(target) => (target, None, None),
        None => {
            let routing = state.served.routing(model).await;
            let canary =
                routing.canary_alias.as_ref().filter(|_| rand::rng().random::<f64>() * 100.0 < routing.canary_percent);
            let alias = canary.cloned().unwrap_or_else(|| AliasName::PRODUCTION.to_owned());
            (Target::Alias(AliasName::parse(&alias).expect("stored aliases are valid")), Some(alias), Some(routing))
        }
    };
    let loaded = state.served.resolve(model, &target).await?;
    let shadow = routing.and_then(|r| r.shadow_alias).filter(|s| Some(s) != alias.as_ref());
    Ok(Routed { loaded, alias, shadow })
}

/// Serves one routed request, whatever protocol it came in: prepares and scores the inputs
/// through the version's micro-batcher, records and observes each prediction, applies the
/// capture policy, has the shadow alias score the same inputs, and counts the request.
pub(crate) async fn serve(
    state: &AppState,
    model: &ModelName,
    routed: Routed,
    inputs: Inputs,
    top_k: usize,
    started: Instant,
) -> Result<Answer, InferenceError> {
    let Routed { loaded, alias, shadow } = routed;
    let limits = PixelLimits::of(&state.served.ctx.config.inference);
    let (prepared, bodies) = match inputs {
        Inputs::Encoded(bodies) => (prepare_all(bodies.clone(), loaded.clone(), limits).await?, Some(bodies)),
        Inputs::Prepared { pixels, shape } => {
            // The same number of values in another shape is another image: refused, not reshaped.
            let expected = input_shape(&loaded);
            if shape != expected || pixels.is_empty() || pixels.len() % loaded.batcher.frame() != 0 {
                let [c, h, w] = expected;
                return Err(InferenceError::invalid(format!(
                    "Prepared pixels of version {} take the shape [n, {c}, {h}, {w}] (channels, height, width); \
                     got [n, {}, {}, {}].",
                    loaded.version.version, shape[0], shape[1], shape[2]
                )));
            }
            (pixels, None)
        }
    };
    let (predictions, probabilities) = score(state, &loaded, &prepared, top_k, alias.as_deref(), None).await?;
    // Capture and shadow scoring need the encoded images (a shadow version may prepare them
    // differently): prepared pixels are only answered, recorded and observed.
    if let Some(bodies) = bodies {
        capture(state, model, &loaded, &bodies, &predictions).await;
        if let Some(shadow) = shadow {
            match state.shadows.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (state, model) = (state.clone(), model.clone());
                    let answered: Vec<Uuid> =
                        predictions.iter().filter_map(|p| p["id"].as_str()?.parse().ok()).collect();
                    tokio::spawn(async move {
                        shadow_score(&state, &model, &shadow, bodies, top_k, answered).await;
                        drop(permit);
                    });
                }
                Err(_) => metrics::counter!("sluice_inference_shadow_skipped_total", "model" => model.to_string())
                    .increment(1),
            }
        }
    }
    let label = model.to_string();
    let version = loaded.version.version;
    metrics::counter!("sluice_inference_requests_total", "model" => label.clone(), "version" => version.to_string(),
        "alias" => alias.clone().unwrap_or_default(), "status" => "ok")
    .increment(1);
    metrics::histogram!("sluice_inference_request_duration_seconds", "model" => label, "alias" => alias.clone().unwrap_or_default())
        .record(started.elapsed().as_secs_f64());
    Ok(Answer { loaded, alias, predictions, probabilities })
}

/// Keeps the inputs the model's capture policy selects ([`sluice_core::capture`]); in the
/// background, so the answer never waits on it.
async fn capture(state: &AppState, model: &ModelName, loaded: &LoadedVersion, bodies: &[Bytes], predictions: &[Value]) {
    let Some(policy) = state.served.capture_policy(model).await else { return };
    let drifting = policy.during_drift_rate > 0.0
        && state.served.drifting(loaded.version.model.as_str(), loaded.version.version).await;
    let mut rng = rand::rng();
    let kept: Vec<Captured> = bodies
        .iter()
        .zip(predictions)
        .filter_map(|(bytes, prediction)| {
            let confidence = prediction["top"][0]["score"].as_f64()?;
            let why = policy.keeps(confidence, drifting, rng.random::<f64>())?;
            Some(Captured {
                prediction_id: prediction["id"].as_str()?.parse().ok()?,
                version: loaded.version.version,
                bytes: bytes.clone(),
                predicted: prediction["top"][0]["label"].as_str()?.to_owned(),
                confidence,
                why,
            })
        })
        .collect();
    if !kept.is_empty() {
        state.served.capture(model, &policy.dataset, kept);
    }
}

/// Shadow scorings one process runs at once; requests past it are answered without one.
pub const SHADOWS_IN_FLIGHT: usize = 4;

/// The pixels a request may ask to decode: each image, and all of them together.
#[derive(Debug, Clone, Copy)]
struct PixelLimits {
    image: u64,
    request: u64,
}

impl PixelLimits {
    fn of(config: &sluice_core::config::InferenceConfig) -> Self {
        PixelLimits { image: config.max_image_pixels, request: config.max_request_pixels }
    }
}

/// Sets its flag when dropped: the request it belongs to is over (answered, timed out, or its
/// client went away), so work done for it off the runtime can stop.
struct Gone(Arc<AtomicBool>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decodes and prepares a request's images off the runtime. Their headers are read first and
/// the request refused (413) if they claim more than `limits.request` pixels together, so a
/// request of many large images costs no decoding at all; each image is still held to
/// `limits.image`. The decoding stops between images once the request is gone: a deadline or a
/// client that left ends the work, not only the wait for it.
async fn prepare_all(
    bodies: Vec<Bytes>,
    loaded: Arc<LoadedVersion>,
    limits: PixelLimits,
) -> Result<Vec<u8>, InferenceError> {
    let gone = Gone(Arc::new(AtomicBool::new(false)));
    let stop = gone.0.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let claimed: u64 = bodies.iter().map(|body| header_pixels(body)).fold(0, u64::saturating_add);
        if claimed > limits.request {
            return Err(InferenceError::refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!(
                    "The request's images claim {claimed} pixels together, over inference.max_request_pixels ({}); send fewer or smaller images per request.",
                    limits.request
                ),
            ));
        }
        let mut all = Vec::with_capacity(bodies.len() * loaded.batcher.frame());
        for body in &bodies {
            if stop.load(Ordering::Relaxed) {
                return Err(InferenceError::refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "The request ended before its images were prepared.",
                ));
            }
            all.extend(prepare(body, &loaded, limits.image)?);
        }
        Ok(all)
    })
    .await;
    drop(gone);
    prepared?
}

/// The pixels an image's header claims (0 when it has no header the decoders read, which they
/// then refuse without decoding).
fn header_pixels(bytes: &[u8]) -> u64 {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|reader| reader.into_dimensions().ok())
        .map_or(0, |(width, height)| u64::from(width) * u64::from(height))
}

/// One scored image: its best class and confidence, input brightness, and the prediction record
/// (top classes with calibrated scores, input statistics) with no alias, shadow or batch set.
pub(crate) struct Ranked {
    /// Calibrated probabilities in label order.
    pub probabilities: Vec<f64>,
    pub class: usize,
    pub confidence: f64,
    pub brightness: f64,
    pub sharpness: f64,
    pub record: Record,
}

/// Ranks one image's logits by calibrated score and describes its prepared pixels.
pub(crate) fn rank(loaded: &LoadedVersion, logits: &[f32], pixels: &[u8], top_k: usize, id: Uuid) -> Ranked {
    let version = &loaded.version;
    let probabilities = softmax(logits, loaded.temperature);
    let mut ranked: Vec<(usize, f64)> = probabilities.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<Value> = ranked
        .iter()
        .take(top_k)
        .map(|&(class, score)| json!({"label": version.labels[class], "score": score}))
        .collect();
    let (class, confidence) = ranked[0];
    let channels = pixels.len() / (version.input_spec.width * version.input_spec.height) as usize;
    let (brightness, channel_means) = image_stats(pixels, channels);
    let sharpness = sharpness(pixels, channels);
    let record = Record {
        id,
        model: version.model.to_string(),
        version: version.version,
        alias: None,
        label: version.labels[class].clone(),
        confidence,
        top: Value::from(top),
        stats: json!({"brightness": brightness, "channel_means": channel_means, "sharpness": sharpness}),
        shadow: false,
        shadow_of: None,
        batch: None,
    };
    Ranked { probabilities, class, confidence, brightness, sharpness, record }
}

/// Runs prepared images through the version; records and observes each prediction. Returns each
/// image's answer (`{"id", "top"}`) and its calibrated probabilities.
async fn score(
    state: &AppState,
    loaded: &LoadedVersion,
    prepared: &[u8],
    top_k: usize,
    alias: Option<&str>,
    shadow_of: Option<&[Uuid]>,
) -> Result<(Vec<Value>, Vec<Vec<f64>>), InferenceError> {
    let shadow = shadow_of.is_some();
    let frame = loaded.batcher.frame();
    let count = prepared.len() / frame;
    let scored = loaded.batcher.score(prepared.to_vec(), count).await.map_err(InferenceError::Scoring)?;
    let model = loaded.version.model.to_string();
    let version_label = loaded.version.version.to_string();
    let mut out = Vec::with_capacity(count);
    let mut observations = Vec::with_capacity(count);
    let mut all = Vec::with_capacity(count);
    for (i, row) in scored.iter().enumerate() {
        let id = Uuid::now_v7();
        let Ranked { probabilities, class, confidence, brightness, sharpness, mut record } =
            rank(loaded, &row.logits, &prepared[i * frame..(i + 1) * frame], top_k, id);
        record.alias = alias.map(str::to_owned);
        record.shadow = shadow;
        record.shadow_of = shadow_of.and_then(|ids| ids.get(i).copied());
        let top = record.top.clone();
        metrics::counter!("sluice_inference_predictions_total", "model" => model.clone(), "version" => version_label.clone(), "class" => record.label.clone())
            .increment(1);
        metrics::histogram!("sluice_inference_confidence", "model" => model.clone(), "version" => version_label.clone())
            .record(confidence);
        state.recorder.record(record);
        let embedding = sluice_core::reference::sketch(&row.embedding);
        observations.push(Observation { class, confidence, brightness, sharpness, embedding: Some(embedding) });
        out.push(json!({"id": id, "top": top}));
        all.push(probabilities);
    }
    // The request is one unit of the drift window: its images may all show one thing.
    if !shadow {
        crate::monitor::publish(&state.served, loaded, &observations);
    }
    Ok((out, all))
}

async fn shadow_score(
    state: &AppState,
    model: &ModelName,
    alias: &str,
    bodies: Vec<Bytes>,
    top_k: usize,
    answered: Vec<Uuid>,
) {
    let Ok(alias_name) = AliasName::parse(alias) else { return };
    let result = async {
        let loaded = state.served.resolve(model, &Target::Alias(alias_name)).await?;
        let prepared = prepare_all(bodies, loaded.clone(), PixelLimits::of(&state.served.ctx.config.inference)).await?;
        score(state, &loaded, &prepared, top_k, Some(alias), Some(&answered)).await.map(|_| ())
    }
    .await;
    if let Err(err) = result {
        metrics::counter!("sluice_inference_errors_total", "model" => model.to_string(), "reason" => "shadow_failed")
            .increment(1);
        tracing::debug!(model = %model, alias, error = %sluice_core::error_chain(&err), "shadow scoring failed");
    }
}
