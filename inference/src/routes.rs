//! Feedback, drift, routing and capture routes (predict is in [`crate::predict`]).

use std::time::Duration;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    api_doc::ErrorBody,
    auth::Scope,
    capture::{self, CapturePolicy},
    domain::Label,
    http::{Caller, Page},
    models::{AliasName, ModelName},
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState,
    drift::{DriftKind, DriftState},
    error::InferenceError,
    monitor,
    predict::{model_name, target},
    serving::{Routing, Target},
    store::{self, Answered},
};

/// The true class of a served prediction.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Feedback {
    /// The prediction's id, from the predict (or V2 `prediction_ids`) answer.
    prediction_id: Uuid,
    /// One of the version's classes.
    label: String,
}

/// Ground truth for a served prediction: `{"prediction_id", "label"}`.
///
/// Feeds the version's live accuracy (and `if_better_live` promotions), and labels the input if a
/// capture policy kept it.
#[utoipa::path(post, path = "/v1/feedback", tag = "inference",
    security(("bearer" = ["predict"])),
    request_body = Feedback,
    responses(
        (status = 200, description = "`{\"prediction_id\", \"label\", \"model\", \"version\", \"labelled_captured_input\"}`", body = Object),
        (status = 400, description = "A malformed body or label.", body = ErrorBody),
        (status = 404, description = "No prediction has this id (yet: one served by another replica may be written within a second; retry shortly).", body = ErrorBody),
        (status = 413, description = "The body is over `http.max_request_bytes`.", body = ErrorBody),
        (status = 422, description = "The label is not one of the version's classes (`unknown_label`).", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(prediction_id = tracing::field::Empty))]
pub async fn feedback(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Value>, InferenceError> {
    caller.require(Scope::Predict)?;
    let feedback: Feedback =
        serde_json::from_slice(&body).map_err(|err| InferenceError::invalid(format!("Malformed feedback: {err}.")))?;
    let id = feedback.prediction_id;
    tracing::Span::current().record("prediction_id", tracing::field::display(id));
    let label = Label::parse(&feedback.label).map_err(|err| InferenceError::invalid(format!("`label`: {err}.")))?;
    let not_found = || {
        InferenceError::not_found(
            "No prediction has this id. Predictions are recorded within a second of being served; one served by \
             another replica may not be written yet, so retry shortly.",
        )
    };
    let Answered { model, version } = answered(&state, id).await?.ok_or_else(not_found)?;
    // Recorded from a served version's name, so valid; otherwise no version has it.
    let name = ModelName::parse(&model).map_err(|_| not_found())?;
    let labels = state.served.labels(&name, version).await?.ok_or_else(not_found)?;
    if !labels.iter().any(|l| l == label.as_str()) {
        return Err(InferenceError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_label",
            format!("{:?} is not a class of {model} version {version}; its classes are {labels:?}.", label.as_str()),
        ));
    }
    let client = state.served.ctx.db.get().await?;
    store::record_feedback(&client, id, label.as_str()).await?;
    // Ground truth for the input too, if a capture policy kept it (a capture not stored yet takes
    // the label when it is).
    let labelled = capture::label_captured(&client, id, label.as_str()).await?;
    drop(client);
    monitor::after_feedback(&state, &name, version).await;
    Ok(Json(json!({"prediction_id": id, "label": label.as_str(), "model": model, "version": version,
                   "labelled_captured_input": labelled})))
}

/// The answered prediction `id`. Predictions are written in batches a moment after they are
/// served: when this process holds `id` unwritten, the writer is asked to write now and the
/// lookup waits for it (at most twice `record_interval_ms`, and half a second); an id this
/// process does not hold is looked up once. No pooled connection is held while waiting.
async fn answered(state: &AppState, id: Uuid) -> Result<Option<Answered>, InferenceError> {
    let interval = state.served.ctx.config.inference.record_interval_ms;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(interval * 2 + 500);
    let lookup = || async {
        let client = state.served.ctx.db.get().await?;
        Ok::<_, InferenceError>(store::answered(&client, id).await?)
    };
    if let Some(found) = lookup().await? {
        return Ok(Some(found));
    }
    if !state.recorder.holds(id) {
        return Ok(None);
    }
    state.recorder.written(id, deadline).await;
    lookup().await
}

#[derive(Debug, Deserialize)]
pub struct RecentQuery {
    limit: Option<String>,
    before: Option<String>,
}

/// The model's newest served predictions (not shadow scores or batch jobs), with the feedback
/// each got and, where a capture policy kept the input, the media item holding it (its bytes:
/// `GET /v1/media/{id}/content`).
#[utoipa::path(get, path = "/v1/models/{name}/predictions", tag = "inference",
    security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    params(("name" = String, Path, description = "The model's name."),
        ("limit" = Option<i64>, Query, description = "At most this many, 1 to 200 (default 50)."),
        ("before" = Option<String>, Query, description = "The next page: predictions older than this prediction id.")),
    responses(
        (status = 200, description = "`{\"model\", \"predictions\": [{\"id\", \"version\", \"alias\", \"label\", \"confidence\", \"top\", \"feedback_label\", \"captured_media_id\", \"created_at\"}], \"next_before\"}`, newest first; `next_before` (the last id, when the page is full) asks for the next page.", body = Object),
        (status = 400, description = "A malformed model name, limit or `before`.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name))]
pub async fn recent_predictions(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<RecentQuery>,
) -> Result<Json<Value>, InferenceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let model = model_name(&name)?;
    let page = Page::parse(query.limit.as_deref(), query.before.as_deref(), 50, 200)?;
    let client = state.served.ctx.db.get().await?;
    let predictions = store::recent_predictions(&client, model.as_str(), page.before, page.limit).await?;
    let ids: Vec<Uuid> = predictions.iter().map(|p| p.id).collect();
    let captured = capture::captured_media(&client, &ids).await?;
    let predictions: Vec<Value> = predictions
        .iter()
        .map(|p| {
            json!({
                "id": p.id, "version": p.version, "alias": p.alias, "label": p.label,
                "confidence": p.confidence, "top": p.top, "feedback_label": p.feedback_label,
                "captured_media_id": captured.get(&p.id),
                "created_at": p.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
        })
        .collect();
    // A full page may have more behind it: the cursor of the next one, as the media list gives.
    let next_before = (ids.len() as i64 == page.limit).then(|| ids.last().copied()).flatten();
    Ok(Json(json!({"model": model.as_str(), "predictions": predictions, "next_before": next_before})))
}

/// The model's capture policy, or `null`.
#[utoipa::path(get, path = "/v1/models/{name}/capture", tag = "inference",
    security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    params(("name" = String, Path, description = "The model's name.")),
    responses(
        (status = 200, description = "`{\"model\", \"capture\"}`: the policy, or `null` when none is set (or no such model).", body = Object),
        (status = 400, description = "A malformed model name.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name))]
pub async fn get_capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, InferenceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let model = model_name(&name)?;
    let client = state.served.ctx.db.get().await?;
    let policy = capture::policy(&client, model.as_str()).await?;
    Ok(Json(json!({"model": model.as_str(), "capture": policy})))
}

/// Sets or stops the model's capture policy.
///
/// `{"dataset", "random_rate", "below_confidence", "during_drift_rate"}`, or `null` to stop
/// (scope `admin`): which served inputs are stored into a dataset as unlabelled media, for
/// labelling and the next retrain.
#[utoipa::path(put, path = "/v1/models/{name}/capture", tag = "inference",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name.")),
    request_body(content = Option<CaptureBody>, description = "The policy, or `null` to stop capturing."),
    responses(
        (status = 200, description = "`{\"model\", \"capture\"}`: the policy now.", body = Object),
        (status = 400, description = "A malformed model name or policy (a bad dataset name, a rate outside [0, 1]).", body = ErrorBody),
        (status = 404, description = "No such model.", body = ErrorBody),
        (status = 413, description = "The body is over `http.max_request_bytes`.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name))]
pub async fn put_capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, InferenceError> {
    caller.require(Scope::Admin)?;
    let model = model_name(&name)?;
    let policy: Option<CapturePolicy> = serde_json::from_slice(&body)
        .map_err(|err| InferenceError::invalid(format!("Malformed capture policy: {err}.")))?;
    if let Some(Err(err)) = policy.as_ref().map(CapturePolicy::validate) {
        return Err(InferenceError::invalid(format!("{err}.")));
    }
    let client = state.served.ctx.db.get().await?;
    if !sluice_core::models::exists(&client, &model).await? {
        return Err(InferenceError::unknown_model(&model));
    }
    capture::set_policy(&client, model.as_str(), policy.as_ref(), &caller.0.name).await?;
    state.served.forget_capture(&model);
    Ok(Json(json!({"model": model.as_str(), "capture": policy})))
}

/// The capture policy `PUT /v1/models/{name}/capture` takes (`sluice_core::capture::CapturePolicy`),
/// described for the OpenAPI document only.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
struct CaptureBody {
    /// The dataset captured inputs go to (created on first use).
    dataset: String,
    /// Fraction of all predictions kept, at random, 0 to 1 (default 0).
    #[schema(minimum = 0.0, maximum = 1.0)]
    random_rate: Option<f64>,
    /// Every prediction whose calibrated confidence is below this is kept, 0 to 1 (default 0: off).
    #[schema(minimum = 0.0, maximum = 1.0)]
    below_confidence: Option<f64>,
    /// While the model's drift verdict is `drift`, this fraction is kept too, 0 to 1 (default 0).
    #[schema(minimum = 0.0, maximum = 1.0)]
    during_drift_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct DriftQuery {
    alias: Option<String>,
    version: Option<i32>,
}

/// The served version's drift verdict and live accuracy.
///
/// Cluster-wide: the monitor's last check of the version across all replicas (statistics, levels,
/// kind of shift, label-free accuracy estimate), and its accuracy on the latest feedback.
#[utoipa::path(get, path = "/v1/models/{name}/drift", tag = "inference",
    security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    params(
        ("name" = String, Path, description = "The model's name."),
        ("alias" = Option<String>, Query, description = "The version this alias points at (not with `version`); default `production`."),
        ("version" = Option<i32>, Query, minimum = 1, description = "This version (not with `alias`)."),
    ),
    responses(
        (status = 200, description = "The verdict (`state`, `kind`, `fired`, `statistics`, `window`, `checks`, expected accuracy), the served version, its live accuracy and the window settings. `state` is `insufficient_data` before the version's first check.", body = Object),
        (status = 400, description = "A malformed model name or query (`alias` and `version` together, `version` below 1).", body = ErrorBody),
        (status = 404, description = "No such model, alias or version.", body = ErrorBody),
        (status = 422, description = "The version's artifact cannot be loaded (`model_unloadable`).", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name, alias = ?query.alias, version = ?query.version))]
pub async fn drift(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<DriftQuery>,
) -> Result<Json<Value>, InferenceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let model = model_name(&name)?;
    let target = target(query.alias.as_deref(), query.version)?
        .unwrap_or_else(|| Target::Alias(AliasName::parse(AliasName::PRODUCTION).expect("a valid alias")));
    let loaded = state.served.resolve(&model, &target).await?;
    let config = &state.served.ctx.config.inference;
    let version = loaded.version.version;
    let verdict = monitor::verdict(&state, model.as_str(), version).await?;
    let live = monitor::live_accuracy(&state, model.as_str(), version).await.ok().flatten();
    // Before the first check of this version: nothing to say yet.
    let mut answer = verdict.unwrap_or_else(|| {
        json!({"state": DriftState::InsufficientData, "kind": DriftKind::None, "fired": [], "statistics": [], "window": 0, "checks": 0,
               "consecutive": 0, "expected_accuracy": null, "expected_accuracy_interval": null,
               "expected_accuracy_reliable": true})
    });
    let extra = json!({
        "model": model.as_str(),
        "version": version,
        "alias": match &target { Target::Alias(a) => Some(a.to_string()), Target::Version(_) => None },
        "window_size": config.drift_window,
        "sustain_checks": config.drift_sustain_checks,
        "consecutive_drift_checks": answer["consecutive"].clone(),
        "live_accuracy": live.map(|live| live.accuracy),
        "live_accuracy_answers": live.map(|live| live.answers).unwrap_or(0),
        "scope": "cluster: one verdict per model version across all inference replicas",
    });
    if let (Some(answer), Some(extra)) = (answer.as_object_mut(), extra.as_object()) {
        answer.extend(extra.clone());
    }
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
pub struct DriftHistoryQuery {
    alias: Option<String>,
    version: Option<i32>,
    limit: Option<String>,
    before: Option<String>,
}

/// A served version's drift checks over time, newest first: each check's verdict, statistics,
/// expected (label-free) and live (feedback) accuracy.
///
/// The monitor records one row per check (every `inference.drift_window` predictions) and keeps
/// the newest 1,000 of each version. Reading the history does not load the version.
#[utoipa::path(get, path = "/v1/models/{name}/drift/history", tag = "inference",
    security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    params(
        ("name" = String, Path, description = "The model's name."),
        ("alias" = Option<String>, Query, description = "The version this alias points at (not with `version`); default `production`."),
        ("version" = Option<i32>, Query, minimum = 1, description = "This version (not with `alias`)."),
        ("limit" = Option<i64>, Query, description = "At most this many checks, 1 to 1000 (default 200)."),
        ("before" = Option<i64>, Query, description = "The next page: checks numbered below this one."),
    ),
    responses(
        (status = 200, description = "`{\"model\", \"version\", \"checks\": [{\"check\", \"checked_at\", \"state\", \"kind\", \"expected_accuracy\", \"live_accuracy\", \"live_accuracy_answers\", \"statistics\"}]}`, newest first.", body = Object),
        (status = 400, description = "A malformed model name or query (`alias` and `version` together, `version` below 1, `limit` or `before` out of range).", body = ErrorBody),
        (status = 404, description = "No such model, alias or version.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name, alias = ?query.alias, version = ?query.version))]
pub async fn drift_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<DriftHistoryQuery>,
) -> Result<Json<Value>, InferenceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let model = model_name(&name)?;
    let target = target(query.alias.as_deref(), query.version)?
        .unwrap_or_else(|| Target::Alias(AliasName::parse(AliasName::PRODUCTION).expect("a valid alias")));
    let page = Page::parse(query.limit.as_deref(), None, 200, 1_000)?;
    let before = query
        .before
        .as_deref()
        .map(|text| text.parse::<i64>().ok().filter(|n| *n >= 1))
        .map(|parsed| parsed.ok_or_else(|| InferenceError::invalid("`before` must be a check number (1 or more).")))
        .transpose()?;
    let version = state.served.version_of(&model, &target).await?;
    let checks = monitor::history(&state, model.as_str(), version, before, page.limit).await?;
    Ok(Json(json!({"model": model.as_str(), "version": version, "checks": checks})))
}

/// How a model's requests that name no alias or version are routed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RoutingBody {
    /// A share of those requests answered by another alias; `null` for none.
    canary: Option<Canary>,
    /// An alias that scores the same inputs in the background (recorded, never answered); `null`
    /// for none.
    shadow: Option<String>,
}

/// A canary: `percent` of the requests go to `alias` instead of `production`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Canary {
    alias: String,
    /// 0 to 100.
    #[schema(minimum = 0.0, maximum = 100.0)]
    percent: f64,
}

/// The model's canary and shadow aliases, and how the shadow compares.
#[utoipa::path(get, path = "/v1/models/{name}/routing", tag = "inference",
    security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    params(("name" = String, Path, description = "The model's name.")),
    responses(
        (status = 200, description = "`{\"canary_alias\", \"canary_percent\", \"shadow_alias\", \"shadow_comparison\"}`: no canary nor shadow when none is set (or no such model).", body = Object),
        (status = 400, description = "A malformed model name.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name))]
pub async fn get_routing(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, InferenceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let model = model_name(&name)?;
    let mut routing = serde_json::to_value(state.served.routing(&model).await).expect("routing serialises");
    routing["shadow_comparison"] = json!(monitor::shadow_comparison(&state, model.as_str()).await?);
    Ok(Json(routing))
}

/// Sets the model's canary and shadow aliases.
///
/// `{"canary": {"alias", "percent"} | null, "shadow": alias | null}` (scope `admin`: it steers
/// production traffic).
#[utoipa::path(put, path = "/v1/models/{name}/routing", tag = "inference",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "The model's name.")),
    request_body = RoutingBody,
    responses(
        (status = 200, description = "`{\"canary_alias\", \"canary_percent\", \"shadow_alias\"}`: the routing now.", body = Object),
        (status = 400, description = "A malformed model name or body (a bad alias, `percent` outside 0 to 100).", body = ErrorBody),
        (status = 404, description = "No such model.", body = ErrorBody),
        (status = 413, description = "The body is over `http.max_request_bytes`.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(model = %name))]
pub async fn put_routing(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Routing>, InferenceError> {
    caller.require(Scope::Admin)?;
    let model = model_name(&name)?;
    let routing: RoutingBody =
        serde_json::from_slice(&body).map_err(|err| InferenceError::invalid(format!("Malformed routing: {err}.")))?;
    if let Some(canary) = &routing.canary {
        if let Err(err) = AliasName::parse(&canary.alias) {
            return Err(InferenceError::invalid(format!("`canary.alias`: {err}.")));
        }
        if !(0.0..=100.0).contains(&canary.percent) {
            return Err(InferenceError::invalid("`canary.percent` must be between 0 and 100."));
        }
    }
    if let Some(Err(err)) = routing.shadow.as_deref().map(AliasName::parse) {
        return Err(InferenceError::invalid(format!("`shadow`: {err}.")));
    }
    let (canary_alias, canary_percent) = routing.canary.map(|c| (Some(c.alias), c.percent)).unwrap_or((None, 0.0));
    let routing = Routing { canary_alias, canary_percent, shadow_alias: routing.shadow };
    let client = state.served.ctx.db.get().await?;
    if !store::set_routing(&client, model.as_str(), &routing, &caller.0.name).await? {
        return Err(InferenceError::unknown_model(&model));
    }
    drop(client);
    state.served.forget_routing(&model);
    Ok(Json(state.served.routing(&model).await))
}
