//! Feedback, drift and routing routes (predict is in [`crate::predict`]).

use std::time::Duration;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use sluice_core::{
    auth::Scope,
    capture::{self, CapturePolicy},
    domain::Label,
    http::{ApiError, Caller},
    models::{AliasName, ModelName},
};
use uuid::Uuid;

use crate::{
    AppState, monitor,
    predict::{model_name, serve_error, target},
    serving::Target,
};

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn unavailable(err: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "inference store failed");
    ApiError::unavailable("The database is unreachable; retry shortly.")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    prediction_id: Uuid,
    label: String,
}

/// `POST /v1/feedback {"prediction_id", "label"}`: ground truth for a prediction.
pub async fn feedback(State(state): State<AppState>, caller: Caller, body: Bytes) -> Response {
    if let Err(err) = caller.require(Scope::Predict) {
        return err.into_response();
    }
    let feedback: Feedback = match serde_json::from_slice(&body) {
        Ok(feedback) => feedback,
        Err(err) => return bad(format!("Malformed feedback: {err}.")).into_response(),
    };
    let label = match Label::parse(&feedback.label) {
        Ok(label) => label,
        Err(err) => return bad(format!("`label`: {err}.")).into_response(),
    };
    // Predictions are written in batches a moment after they are served: feedback sent right
    // after a prediction waits for its record rather than failing. No pooled connection is held
    // while waiting, so slow feedback cannot starve the pool.
    let wait = Duration::from_millis(state.served.ctx.config.inference.record_interval_ms * 2 + 500);
    let deadline = tokio::time::Instant::now() + wait;
    let known = loop {
        let client = match state.served.ctx.db.get().await {
            Ok(client) => client,
            Err(err) => return unavailable(&err).into_response(),
        };
        let found = client
            .query_opt(
                "SELECT p.model, p.version, v.labels FROM predictions p
                 JOIN model_versions v ON v.model = p.model AND v.version = p.version
                 WHERE p.id = $1 AND NOT p.shadow",
                &[&feedback.prediction_id],
            )
            .await;
        drop(client);
        if !matches!(found, Ok(None)) || tokio::time::Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (model, version, labels): (String, i32, Vec<String>) = match known {
        Ok(Some(row)) => (row.get(0), row.get(1), row.get(2)),
        Ok(None) => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "No prediction has this id (predictions are recorded within a second of being served).",
            )
            .into_response();
        }
        Err(err) => return unavailable(&err).into_response(),
    };
    if !labels.iter().any(|l| l == label.as_str()) {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_label",
            format!("{:?} is not a class of {model} version {version}; its classes are {labels:?}.", label.as_str()),
        )
        .into_response();
    }
    let client = match state.served.ctx.db.get().await {
        Ok(client) => client,
        Err(err) => return unavailable(&err).into_response(),
    };
    if let Err(err) = client
        .execute(
            // The shadow predictions of the same input are scored with it.
            "UPDATE predictions SET feedback_label = $2, feedback_at = now() WHERE id = $1 OR shadow_of = $1",
            &[&feedback.prediction_id, &label.as_str()],
        )
        .await
    {
        return unavailable(&err).into_response();
    }
    // Ground truth for the input too, if a capture policy kept it (a capture not stored yet takes
    // the label when it is).
    let labelled = match capture::label_captured(&client, feedback.prediction_id, label.as_str()).await {
        Ok(labelled) => labelled,
        Err(err) => return unavailable(&err).into_response(),
    };
    drop(client);
    monitor::after_feedback(&state, &model, version).await;
    Json(json!({"prediction_id": feedback.prediction_id, "label": label.as_str(), "model": model, "version": version,
                "labelled_captured_input": labelled}))
    .into_response()
}

/// `GET /v1/models/{name}/capture`: the model's capture policy, or `null`.
pub async fn get_capture(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Predict, Scope::Train]) {
        return err.into_response();
    }
    let model = match model_name(&name) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let client = match state.served.ctx.db.get().await {
        Ok(client) => client,
        Err(err) => return unavailable(&err).into_response(),
    };
    match capture::policy(&client, model.as_str()).await {
        Ok(policy) => Json(json!({"model": model.as_str(), "capture": policy})).into_response(),
        Err(err) => unavailable(&err).into_response(),
    }
}

/// `PUT /v1/models/{name}/capture {"dataset", "random_rate", "below_confidence",
/// "during_drift_rate"}` or `null` to stop (scope `admin`): which served inputs are stored into a
/// dataset as unlabelled media, for labelling and the next retrain.
pub async fn put_capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(err) = caller.require(Scope::Admin) {
        return err.into_response();
    }
    let model = match model_name(&name) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let policy: Option<CapturePolicy> = match serde_json::from_slice(&body) {
        Ok(policy) => policy,
        Err(err) => return bad(format!("Malformed capture policy: {err}.")).into_response(),
    };
    if let Some(Err(err)) = policy.as_ref().map(CapturePolicy::validate) {
        return bad(format!("{err}.")).into_response();
    }
    let client = match state.served.ctx.db.get().await {
        Ok(client) => client,
        Err(err) => return unavailable(&err).into_response(),
    };
    match client.query_opt("SELECT 1 FROM models WHERE name = $1", &[&model.as_str()]).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("No model named {model}."))
                .into_response();
        }
        Err(err) => return unavailable(&err).into_response(),
    }
    if let Err(err) = capture::set_policy(&client, model.as_str(), policy.as_ref(), &caller.0.name).await {
        return unavailable(&err).into_response();
    }
    state.served.forget_capture(&model);
    Json(json!({"model": model.as_str(), "capture": policy})).into_response()
}

#[derive(Debug, Deserialize)]
pub struct DriftQuery {
    alias: Option<String>,
    version: Option<i32>,
}

/// `GET /v1/models/{name}/drift`: the served version's cluster-wide drift verdict (the monitor's
/// last check: statistics, levels, kind of shift, accuracy estimate) and its live accuracy.
pub async fn drift(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<DriftQuery>,
) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Predict, Scope::Train]) {
        return err.into_response();
    }
    let model = match model_name(&name) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let target = match target(query.alias.as_deref(), query.version) {
        Ok(Some(target)) => target,
        Ok(None) => Target::Alias(AliasName::parse(AliasName::PRODUCTION).expect("a valid alias")),
        Err(err) => return err.into_response(),
    };
    let loaded = match state.served.resolve(&model, &target).await {
        Ok(loaded) => loaded,
        Err(err) => return serve_error(err).into_response(),
    };
    let config = &state.served.ctx.config.inference;
    let version = loaded.version.version;
    let verdict = match monitor::verdict(&state, model.as_str(), version).await {
        Ok(verdict) => verdict,
        Err(err) => return unavailable(&err).into_response(),
    };
    let live = monitor::live_accuracy(&state, model.as_str(), version).await.ok().flatten();
    // Before the first check of this version: nothing to say yet.
    let mut answer = verdict.unwrap_or_else(|| {
        json!({"state": "insufficient_data", "kind": "none", "fired": [], "statistics": [], "window": 0, "checks": 0,
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
        "live_accuracy": live.map(|(accuracy, _)| accuracy),
        "live_accuracy_answers": live.map(|(_, answers)| answers).unwrap_or(0),
        "scope": "cluster: one verdict per model version across all inference replicas",
    });
    if let (Some(answer), Some(extra)) = (answer.as_object_mut(), extra.as_object()) {
        answer.extend(extra.clone());
    }
    Json(answer).into_response()
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
pub async fn get_routing(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Predict, Scope::Train]) {
        return err.into_response();
    }
    let model = match model_name(&name) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let mut routing = serde_json::to_value(state.served.routing(&model).await).expect("routing serialises");
    match monitor::shadow_comparison(&state, model.as_str()).await {
        Ok(comparison) => routing["shadow_comparison"] = json!(comparison),
        Err(err) => return unavailable(&err).into_response(),
    }
    Json(routing).into_response()
}

/// `PUT /v1/models/{name}/routing {"canary": {"alias", "percent"} | null, "shadow": alias | null}`
/// (scope `admin`: it steers production traffic).
pub async fn put_routing(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(err) = caller.require(Scope::Admin) {
        return err.into_response();
    }
    let model: ModelName = match model_name(&name) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let routing: RoutingBody = match serde_json::from_slice(&body) {
        Ok(routing) => routing,
        Err(err) => return bad(format!("Malformed routing: {err}.")).into_response(),
    };
    if let Some(canary) = &routing.canary {
        if let Err(err) = AliasName::parse(&canary.alias) {
            return bad(format!("`canary.alias`: {err}.")).into_response();
        }
        if !(0.0..=100.0).contains(&canary.percent) {
            return bad("`canary.percent` must be between 0 and 100.").into_response();
        }
    }
    if let Some(Err(err)) = routing.shadow.as_deref().map(AliasName::parse) {
        return bad(format!("`shadow`: {err}.")).into_response();
    }
    let client = match state.served.ctx.db.get().await {
        Ok(client) => client,
        Err(err) => return unavailable(&err).into_response(),
    };
    let (canary_alias, percent) = routing.canary.map(|c| (Some(c.alias), c.percent)).unwrap_or((None, 0.0));
    let result = client
        .execute(
            "INSERT INTO model_routing (model, canary_alias, canary_percent, shadow_alias, updated_by)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM models WHERE name = $1)
             ON CONFLICT (model) DO UPDATE SET canary_alias = $2, canary_percent = $3, shadow_alias = $4,
                 updated_by = $5, updated_at = now()",
            &[&model.as_str(), &canary_alias, &percent, &routing.shadow, &caller.0.name],
        )
        .await;
    match result {
        Ok(0) => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("No model named {model}.")).into_response(),
        Ok(_) => {
            state.served.forget_routing(&model);
            Json(state.served.routing(&model).await).into_response()
        }
        Err(err) => unavailable(&err).into_response(),
    }
}
