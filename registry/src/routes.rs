//! `/v1/models/...`: models, versions, aliases and their audit trail.
//!
//! Reads need `predict` or `train`. Moving or deleting `production`, or an alias the model's
//! policy protects, needs `admin`; other aliases need `train`. Setting the policy needs `admin`.
//! A refused request writes nothing: the scope is checked before the transaction opens.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    http::{self, ApiError, Caller},
    models::{self, AliasMove, AliasName, ModelVersion},
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::{RegistryServiceError, alias_name, bad_request, model_name, not_found, positive_version, version_number},
    store,
};

/// Largest alias-move body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `reason` kept in the audit trail, in characters.
const MAX_REASON_CHARS: usize = 1000;

pub fn router(ctx: Context) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
        .routes(routes!(get_alias, put_alias, delete_alias))
        .routes(routes!(alias_history))
        .routes(routes!(get_policy, put_policy))
        .with_state(ctx)
}

#[utoipa::path(get, path = "/v1/models", tag = "registry", security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    responses((status = 200, description = "`{\"models\": [...]}` with their aliases.", body = Object)))]
#[tracing::instrument(skip_all)]
async fn list_models(State(ctx): State<Context>, caller: Caller) -> Result<Json<Value>, RegistryServiceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    Ok(Json(json!({ "models": store::models(&ctx).await? })))
}

#[utoipa::path(get, path = "/v1/models/{name}", tag = "registry", security(("bearer" = ["predict"]), ("bearer" = ["train"])), params(("name" = String, Path, description = "The model's name.")),
    responses((status = 200, description = "The model, its aliases and its newest 1,000 versions (oldest first); `next_before`, when present, pages on through `/versions`.", body = Object), (status = 400, description = "A malformed name, alias, version or body.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No such model (or alias, or version).", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name))]
async fn get_model(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, RegistryServiceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let name = model_name(&name)?;
    let Some(model) = store::model(&ctx, &name).await? else {
        return Err(unknown_model(&name));
    };
    let versions = store::versions(&ctx, &name, i32::MAX, MAX_VERSIONS_PAGE).await?;
    let next = next_before(&versions, MAX_VERSIONS_PAGE);
    let mut body = serde_json::to_value(&model).expect("models serialise");
    body["versions"] = versions.iter().map(|v| summary(v, &model.aliases)).collect();
    body["next_before"] = json!(next);
    Ok(Json(body))
}

/// Most versions one listing returns.
const MAX_VERSIONS_PAGE: i64 = 1000;

/// The `before` of the page after `page` (oldest first), when it was full.
fn next_before(page: &[ModelVersion], limit: i64) -> Option<i32> {
    (page.len() as i64 == limit).then(|| page.first().map(|v| v.version)).flatten()
}

#[utoipa::path(get, path = "/v1/models/{name}/versions", tag = "registry", security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    params(("name" = String, Path, description = "The model's name."),
        ("limit" = Option<i64>, Query, description = "Most versions to return (1 to 1,000; default 1,000)."),
        ("before" = Option<i32>, Query, description = "Only versions below this number (the previous page's `next_before`).")),
    responses((status = 200, description = "`{\"model\", \"versions\": [...], \"next_before\"}`: the `limit` newest versions below `before`, oldest first, without their reference statistics; `next_before`, when present, asks for the next (older) page.", body = Object), (status = 400, description = "A malformed name, limit or before.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No such model.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name))]
async fn list_versions(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<HistoryPage>,
) -> Result<Json<Value>, RegistryServiceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let name = model_name(&name)?;
    let limit = http::page_limit(page.limit.as_deref(), MAX_VERSIONS_PAGE, MAX_VERSIONS_PAGE)?;
    let before = http::page_before(page.before.as_deref(), |n: &i32| *n >= 1, "`before` must be a version number.")?;
    if !store::model_exists(&ctx, &name).await? {
        return Err(unknown_model(&name));
    }
    let aliases = store::aliases(&ctx, &name).await?;
    let versions = store::versions(&ctx, &name, before.unwrap_or(i32::MAX), limit).await?;
    let next = next_before(&versions, limit);
    let versions: Vec<Value> = versions.iter().map(|v| summary(v, &aliases)).collect();
    Ok(Json(json!({"model": name, "versions": versions, "next_before": next})))
}

#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}", tag = "registry", security(("bearer" = ["predict"]), ("bearer" = ["train"])),
    params(("name" = String, Path, description = "The model's name."), ("version" = i32, Path, description = "The version number.")),
    responses((status = 200, description = "Artifact key, sha256, architecture, input spec, labels, hyper-parameters, metrics, lineage.", body = Object), (status = 400, description = "A malformed name, alias, version or body.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No such model (or alias, or version).", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name, version = %version))]
async fn get_version(
    State(ctx): State<Context>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, RegistryServiceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let name = model_name(&name)?;
    let version = version_number(&version)?;
    let Some(found) = store::version(&ctx, &name, version).await? else {
        if !store::model_exists(&ctx, &name).await? {
            return Err(unknown_model(&name));
        }
        return Err(not_found("unknown_version", format!("Model {name} has no version {version}.")).into());
    };
    let aliases = store::aliases(&ctx, &name).await?;
    let mut body = serde_json::to_value(&found).expect("versions serialise");
    body["aliases"] = json!(pointing_at(&aliases, version));
    Ok(Json(body))
}

#[utoipa::path(get, path = "/v1/models/{name}/aliases/{alias}", tag = "registry", security(("bearer" = ["predict"]), ("bearer" = ["train"])), params(("name" = String, Path, description = "The model's name."), ("alias" = String, Path, description = "An alias: `production`, `staging`, …")),
    responses((status = 200, description = "The version the alias points at.", body = Object), (status = 400, description = "A malformed name, alias, version or body.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No such model (or alias, or version).", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name, alias = %alias))]
async fn get_alias(
    State(ctx): State<Context>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<store::Alias>, RegistryServiceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let (name, alias) = (model_name(&name)?, alias_name(&alias)?);
    match store::alias(&ctx, &name, &alias).await? {
        Some(found) => Ok(Json(found)),
        None if store::model_exists(&ctx, &name).await? => {
            Err(not_found("unknown_alias", format!("Model {name} has no alias {alias}.")).into())
        }
        None => Err(unknown_model(&name)),
    }
}

#[utoipa::path(get, path = "/v1/models/{name}/aliases/{alias}/history", tag = "registry", security(("bearer" = ["predict"]), ("bearer" = ["train"])), params(("name" = String, Path, description = "The model's name."), ("alias" = String, Path, description = "An alias: `production`, `staging`, …")),
    responses((status = 200, description = "The alias's audit trail, newest first, a page at a time: `history` holds up to `limit` moves (default 100, at most 500) older than `before`; `next_before`, when present, asks for the next page.", body = Object), (status = 400, description = "A malformed name, alias, limit or before.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No such model (or alias, or version).", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name, alias = %alias))]
async fn alias_history(
    State(ctx): State<Context>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
    Query(page): Query<HistoryPage>,
) -> Result<Json<Value>, RegistryServiceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let (name, alias) = (model_name(&name)?, alias_name(&alias)?);
    let limit = http::page_limit(page.limit.as_deref(), 100, 500)?;
    let before = http::page_before(page.before.as_deref(), |n: &i64| *n >= 1, "`before` must be a move's `id`.")?;
    if !store::model_exists(&ctx, &name).await? {
        return Err(unknown_model(&name));
    }
    let history = store::history(&ctx, &name, &alias, limit, before).await?;
    let next = (history.len() as i64 == limit).then(|| history.last().map(|m| m.id)).flatten();
    Ok(Json(json!({"model": name, "alias": alias, "history": history, "next_before": next})))
}

/// `limit` and `before` of a listing (alias history, versions), as text so a malformed one is a
/// 400 in the API's shape.
#[derive(Debug, Deserialize)]
struct HistoryPage {
    limit: Option<String>,
    before: Option<String>,
}

/// Where to point an alias.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    /// The version (≥ 1).
    version: i32,
    /// Why, for the audit trail (at most 1,000 characters).
    #[serde(default)]
    reason: String,
}

/// Promotes or rolls back: points the alias at `version`. Moving it where it already points is a
/// `200` with `"changed": false` and leaves no history row or event, so retrying a PUT is safe.
#[utoipa::path(put, path = "/v1/models/{name}/aliases/{alias}", tag = "registry",
    description = "Promotes or rolls back. `production` and aliases the model's policy protects need `admin`; other aliases `train`. A move to where the alias already points is `changed: false` and writes nothing.",
    security(("bearer" = ["train"]), ("bearer" = ["admin"])), params(("name" = String, Path, description = "The model's name."), ("alias" = String, Path, description = "An alias: `production`, `staging`, …")), request_body = MoveRequest,
    responses((status = 200, description = "The move, with `changed`.", body = Object), (status = 400, description = "A malformed name, alias, version or body.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No such model (or alias, or version).", body = sluice_core::api_doc::ErrorBody),
        (status = 409, description = "The model already has the most aliases it may have.", body = sluice_core::api_doc::ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = sluice_core::api_doc::ErrorBody),
        (status = 422, description = "The model has no such version.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name, alias = %alias))]
async fn put_alias(
    State(ctx): State<Context>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
    body: Body,
) -> Result<Json<AliasMove>, RegistryServiceError> {
    let (name, alias) = (model_name(&name)?, alias_name(&alias)?);
    require_move_scope(&ctx, &caller, &name, &alias).await?;
    let bytes = http::read_body(body, MAX_BODY_BYTES).await.map_err(ApiError::from)?;
    let request: MoveRequest = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("Send {{\"version\": <number>, \"reason\": \"...\"}} ({e}).")))?;
    let version = positive_version(request.version)?;
    let reason = checked_reason(request.reason)?;
    let moved = store::move_alias(&ctx, &name, &alias, version, &actor(&caller), &reason).await?;
    if moved.changed {
        count_move(&alias);
        tracing::info!(model = %name, alias = %alias, from = ?moved.from, to = moved.to, actor = %moved.actor, "alias moved");
    }
    Ok(Json(moved))
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    reason: String,
}

/// Deletes an alias (`?reason=` is kept in the audit trail).
#[utoipa::path(delete, path = "/v1/models/{name}/aliases/{alias}", tag = "registry",
    security(("bearer" = ["train"]), ("bearer" = ["admin"])), params(("name" = String, Path, description = "The model's name."), ("alias" = String, Path, description = "An alias: `production`, `staging`, …"), ("reason" = Option<String>, Query, description = "Kept in the audit trail.")),
    responses((status = 200, description = "The alias and the version it pointed at.", body = Object), (status = 400, description = "A malformed name, alias, version or body.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No such model (or alias, or version).", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name, alias = %alias))]
async fn delete_alias(
    State(ctx): State<Context>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<Value>, RegistryServiceError> {
    let (name, alias) = (model_name(&name)?, alias_name(&alias)?);
    require_move_scope(&ctx, &caller, &name, &alias).await?;
    let reason = checked_reason(query.reason)?;
    let actor = actor(&caller);
    let from = store::remove_alias(&ctx, &name, &alias, &actor, &reason).await?;
    count_move(&alias);
    tracing::info!(model = %name, alias = %alias, from, actor = %actor, "alias deleted");
    Ok(Json(json!({"model": name, "alias": alias, "removed_version": from, "actor": actor, "reason": reason})))
}

/// `production` is what inference serves by default: only `admin` moves it, and any alias the
/// model's policy protects.
async fn require_move_scope(
    ctx: &Context,
    caller: &Caller,
    model: &models::ModelName,
    alias: &AliasName,
) -> Result<(), RegistryServiceError> {
    caller.require(Scope::Train)?;
    if caller.is_admin() {
        return Ok(());
    }
    let policy = store::policy(ctx, model).await?;
    Ok(caller.require(if policy.protects(alias) { Scope::Admin } else { Scope::Train })?)
}

/// A model's promotion policy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PolicyRequest {
    /// What jobs and retrains no admin started may do to `production`.
    #[schema(value_type = String, example = "if_better")]
    auto_promote: models::AutoPromote,
    /// Aliases only an admin may move.
    #[serde(default)]
    protected_aliases: Vec<String>,
}

/// `GET /v1/models/{name}/policy`: the promotion policy (the default when none was set).
#[utoipa::path(get, path = "/v1/models/{name}/policy", tag = "registry", security(("bearer" = ["predict"]), ("bearer" = ["train"])), params(("name" = String, Path, description = "The model's name.")),
    responses((status = 200, description = "The promotion policy (the default when none was set).", body = Object), (status = 400, description = "A malformed name, alias, version or body.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name))]
async fn get_policy(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, RegistryServiceError> {
    caller.require_any(&[Scope::Predict, Scope::Train])?;
    let name = model_name(&name)?;
    let policy = store::policy(&ctx, &name).await?;
    Ok(Json(json!({"model": name, "policy": policy})))
}

/// `PUT /v1/models/{name}/policy {"auto_promote": "never"|"if_better"|"always",
/// "protected_aliases": [...]}` (scope `admin`): what jobs and retrains that no admin started may
/// do to `production`, and which other aliases only an admin may move. The model need not have
/// versions yet.
#[utoipa::path(put, path = "/v1/models/{name}/policy", tag = "registry", security(("bearer" = ["admin"])), params(("name" = String, Path, description = "The model's name.")),
    request_body = PolicyRequest,
    responses((status = 200, description = "The policy now.", body = Object), (status = 400, description = "A malformed name, alias, version or body.", body = sluice_core::api_doc::ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = sluice_core::api_doc::ErrorBody),
        (status = 422, description = "Too many protected aliases, or one that is not an alias name.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(model = %name))]
async fn put_policy(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, RegistryServiceError> {
    caller.require(Scope::Admin)?;
    let name = model_name(&name)?;
    let bytes = http::read_body(body, MAX_BODY_BYTES).await.map_err(ApiError::from)?;
    let request: PolicyRequest = serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(format!(
            "Send {{\"auto_promote\": \"never\"|\"if_better\"|\"always\", \"protected_aliases\": [...]}} ({e})."
        ))
    })?;
    // A well-formed body whose values are refused: 422, as the OpenAPI document says.
    let unprocessable = |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message);
    if request.protected_aliases.len() > models::MAX_PROTECTED_ALIASES {
        return Err(unprocessable(format!("`protected_aliases`: at most {}.", models::MAX_PROTECTED_ALIASES)).into());
    }
    let protected = request
        .protected_aliases
        .iter()
        .map(|a| AliasName::parse(a).map_err(|e| unprocessable(format!("`protected_aliases`: {}.", e.0))))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = store::set_policy(&ctx, &name, request.auto_promote, &protected, &actor(&caller)).await?;
    tracing::info!(model = %name, policy = ?policy, "promotion policy set");
    Ok(Json(json!({"model": name, "policy": policy})))
}

/// Who the audit trail names: the token's name and id.
fn actor(caller: &Caller) -> String {
    format!("{} ({})", caller.0.name, caller.0.token_id)
}

fn checked_reason(reason: String) -> Result<String, ApiError> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(bad_request(format!("`reason`: at most {MAX_REASON_CHARS} characters.")));
    }
    if reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad_request("`reason`: no control characters other than line breaks.".into()));
    }
    Ok(reason)
}

fn count_move(alias: &AliasName) {
    let kind = if alias.is_production() { "production" } else { "other" };
    metrics::counter!("sluice_registry_alias_moves_total", "kind" => kind).increment(1);
}

fn unknown_model(name: &models::ModelName) -> RegistryServiceError {
    not_found("unknown_model", format!("No model named {name}.")).into()
}

fn pointing_at(aliases: &BTreeMap<String, i32>, version: i32) -> Vec<&str> {
    aliases.iter().filter(|(_, v)| **v == version).map(|(alias, _)| alias.as_str()).collect()
}

/// A version without its bulky parts (reference statistics, input spec, hyper-parameters).
fn summary(version: &ModelVersion, aliases: &BTreeMap<String, i32>) -> Value {
    let mut value = serde_json::to_value(version).expect("versions serialise");
    if let Value::Object(fields) = &mut value {
        for bulky in ["reference", "input_spec", "hyperparameters", "labels"] {
            fields.remove(bulky);
        }
        fields.insert("classes".into(), json!(version.labels.len()));
        fields.insert("aliases".into(), json!(pointing_at(aliases, version.version)));
    }
    value
}
