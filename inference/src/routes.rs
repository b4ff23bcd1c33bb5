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
    auth::Scope,
    capture::{self, CapturePolicy},
    domain::Label,
    http::Caller,
    models::{AliasName, ModelName},
};
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    prediction_id: Uuid,
    label: String,
}

/// `POST /v1/feedback {"prediction_id", "label"}`: ground truth for a prediction.
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

/// `GET /v1/models/{name}/capture`: the model's capture policy, or `null`.
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

/// `PUT /v1/models/{name}/capture {"dataset", "random_rate", "below_confidence",
/// "during_drift_rate"}` or `null` to stop (scope `admin`): which served inputs are stored into a
/// dataset as unlabelled media, for labelling and the next retrain.
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
        return Err(InferenceError::not_found(format!("No model named {model}.")));
    }
    capture::set_policy(&client, model.as_str(), policy.as_ref(), &caller.0.name).await?;
    state.served.forget_capture(&model);
    Ok(Json(json!({"model": model.as_str(), "capture": policy})))
}

#[derive(Debug, Deserialize)]
pub struct DriftQuery {
    alias: Option<String>,
    version: Option<i32>,
}

/// `GET /v1/models/{name}/drift`: the served version's cluster-wide drift verdict (the monitor's
/// last check: statistics, levels, kind of shift, accuracy estimate) and its live accuracy.
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
#[serde(deny_unknown_fields)]
struct RoutingBody {
    canary: Option<Canary>,
    shadow: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Canary {
    alias: String,
    percent: f64,
}

/// `GET /v1/models/{name}/routing`.
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

/// `PUT /v1/models/{name}/routing {"canary": {"alias", "percent"} | null, "shadow": alias | null}`
/// (scope `admin`: it steers production traffic).
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
        return Err(InferenceError::not_found(format!("No model named {model}.")));
    }
    drop(client);
    state.served.forget_routing(&model);
    Ok(Json(state.served.routing(&model).await))
}
