//! `/v1/webhooks` (scope `admin`): subscribe a URL to event types, list, show and delete
//! webhooks, and read a webhook's delivery history. A refused request writes nothing: the scope,
//! the body and the URL's addresses are checked before the webhook is stored.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    Context,
    api_doc::ErrorBody,
    auth::Scope,
    http::{ApiError, Caller},
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    address::AddressPolicy,
    error::{WebhooksError, bad_request, unknown_webhook},
    store::{self, DeliveryStatus, NewWebhook},
    subscription::{self, WebhookUrl},
};

/// Most deliveries one history request returns, and how many it returns by default.
const MAX_HISTORY: i64 = 500;
const DEFAULT_HISTORY: i64 = 50;

pub fn router(ctx: Context) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, remove))
        .routes(routes!(deliveries))
        .with_state(ctx)
}

/// A URL to subscribe.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    /// An `http://` or `https://` URL, at most 2,048 bytes, without credentials. Its host must
    /// resolve to public addresses only, unless an admin allowed its network
    /// (`webhooks.allowed_networks`).
    url: String,
    /// Event types: `model.version_registered`, `model.alias_moved`, `model.alias_removed`,
    /// `drift.verdict_changed`, `training.job_finished`, `retrain.skipped`.
    events: Vec<String>,
    /// The signing secret (24 to 256 printable ASCII characters); generated when left out.
    #[serde(default)]
    secret: Option<String>,
    /// What it is for (at most 500 characters).
    #[serde(default)]
    description: String,
}

/// Subscribes a URL to event types. The answer shows the signing secret, this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = ["admin"])),
    description = "Every event of the chosen types is POSTed to the URL as JSON (the event envelope), signed in `Sluice-Signature: t=<unix>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">`, with `Sluice-Event-Id` and `Sluice-Event-Type`; failures are retried with exponential backoff and jitter. Delivery is at least once: deduplicate on `Sluice-Event-Id`.",
    request_body = NewSubscription,
    responses(
        (status = 201, description = "The webhook and its `secret`, shown this once.", body = Object),
        (status = 400, description = "A malformed body, URL, event list, secret or description.", body = ErrorBody),
        (status = 409, description = "`webhooks.max_webhooks` webhooks exist already.", body = ErrorBody),
        (status = 413, description = "The body is over `http.max_request_bytes`.", body = ErrorBody),
        (status = 422, description = "An unknown event type, or a URL whose host resolves to an address webhooks may not reach (`address_not_allowed`) or to none.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn create(
    State(ctx): State<Context>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), WebhooksError> {
    caller.require(Scope::Admin)?;
    let request: NewSubscription = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "Send {{\"url\": \"https://...\", \"events\": [\"model.alias_moved\", ...], \"secret\"?: \"...\", \"description\"?: \"...\"}} ({e})."
        ))
    })?;
    let url = WebhookUrl::parse(&request.url)?;
    let events = subscription::event_types(&request.events)?;
    let secret = subscription::secret(request.secret.as_deref())?;
    let description = subscription::description(&request.description)?;
    AddressPolicy::new(&ctx.config.webhooks.allowed_networks).check(url.url()).await?;
    let created_by = format!("{} ({})", caller.0.name, caller.0.token_id);
    let new = NewWebhook {
        url: url.as_str(),
        events: &events,
        secret: &secret,
        description: &description,
        created_by: &created_by,
    };
    let max = ctx.config.webhooks.max_webhooks;
    let Some(webhook) = store::create(&ctx, new, i64::from(max)).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_webhooks",
            format!("There are already {max} webhooks, the most allowed (webhooks.max_webhooks); delete one first."),
        )
        .into());
    };
    tracing::info!(webhook = %webhook.id, url = %webhook.url, events = ?webhook.events, by = %created_by, "webhook created");
    let mut answer = serde_json::to_value(&webhook).expect("webhooks serialise");
    answer["secret"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Every webhook (never their secrets), with counts of their deliveries by status.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = ["admin"])),
    responses((status = 200, description = "`{\"webhooks\": [...]}`", body = Object)))]
#[tracing::instrument(skip_all)]
async fn list(State(ctx): State<Context>, caller: Caller) -> Result<Json<Value>, WebhooksError> {
    caller.require(Scope::Admin)?;
    Ok(Json(json!({ "webhooks": store::list(&ctx).await? })))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = ["admin"])),
    params(("id" = Uuid, Path, description = "The webhook's id.")),
    responses((status = 200, description = "The webhook (never its secret).", body = Object),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 404, description = "No webhook has this id.", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook = %id))]
async fn show(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, WebhooksError> {
    caller.require(Scope::Admin)?;
    let webhook = store::get(&ctx, webhook_id(&id)?).await?.ok_or_else(unknown_webhook)?;
    Ok(Json(serde_json::to_value(webhook).expect("webhooks serialise")))
}

/// Deletes a webhook; its pending deliveries are dropped and its history with it.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = ["admin"])),
    params(("id" = Uuid, Path, description = "The webhook's id.")),
    responses((status = 200, description = "The deleted webhook, with `\"deleted\": true`.", body = Object),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 404, description = "No webhook has this id.", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook = %id))]
async fn remove(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, WebhooksError> {
    caller.require(Scope::Admin)?;
    let webhook = store::delete(&ctx, webhook_id(&id)?).await?.ok_or_else(unknown_webhook)?;
    tracing::info!(webhook = %webhook.id, url = %webhook.url, by = %caller.0.name, "webhook deleted");
    let mut answer = serde_json::to_value(webhook).expect("webhooks serialise");
    answer["deleted"] = Value::Bool(true);
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    /// Only deliveries in this status: `pending`, `delivered` or `failed`.
    status: Option<String>,
    /// How many, newest first (default 50, at most 500).
    limit: Option<i64>,
}

/// The webhook's deliveries, newest first, each with every attempt: when, how long, and the
/// receiver's status code or why there was no answer.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = ["admin"])),
    params(("id" = Uuid, Path, description = "The webhook's id."),
        ("status" = Option<String>, Query, description = "Only deliveries in this status: `pending`, `delivered` or `failed`."),
        ("limit" = Option<i64>, Query, description = "How many, newest first: 1 to 500 (default 50).")),
    responses((status = 200, description = "`{\"webhook_id\", \"deliveries\": [{\"id\", \"event_id\", \"event_type\", \"status\", \"attempts\", \"history\": [...]}]}`", body = Object),
        (status = 400, description = "A malformed id, `status` or `limit`.", body = ErrorBody),
        (status = 404, description = "No webhook has this id.", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook = %id))]
async fn deliveries(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Value>, WebhooksError> {
    caller.require(Scope::Admin)?;
    let id = webhook_id(&id)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(raw) => Some(
            raw.parse::<DeliveryStatus>()
                .map_err(|_| bad_request("`status`: one of pending, delivered, failed.".to_owned()))?,
        ),
    };
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(bad_request(format!("`limit`: between 1 and {MAX_HISTORY}.")).into());
    }
    if store::get(&ctx, id).await?.is_none() {
        return Err(unknown_webhook().into());
    }
    let deliveries = store::deliveries(&ctx, id, status, limit).await?;
    Ok(Json(json!({"webhook_id": id, "deliveries": deliveries})))
}

/// A webhook id from the path: 400 unless it is a UUID.
fn webhook_id(raw: &str) -> Result<Uuid, ApiError> {
    sluice_core::http::path_id(raw, "Webhook")
}
