//! `GET/POST /v1/tokens`, `DELETE /v1/tokens/{id}` (scope `admin`): API tokens over HTTP, for
//! operators and dashboards that cannot reach PostgreSQL. Tokens are shown once, at creation.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    Context,
    auth::{self, Scope},
    http::{ApiError, Caller},
};

/// Longest token name, in characters.
const MAX_NAME_CHARS: usize = 200;

pub fn router(ctx: Context) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(revoke)).with_state(ctx)
}

fn unavailable(err: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "token store failed");
    ApiError::unavailable("The token store (PostgreSQL) is unreachable; retry shortly.")
}

/// The tokens (names, scopes, creation and revocation times; never the secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = ["admin"])),
    responses((status = 200, description = "`{\"tokens\": [...]}`", body = Object)))]
#[tracing::instrument(skip_all)]
async fn list(State(ctx): State<Context>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let tokens = auth::list_tokens(&ctx.db).await.map_err(|e| unavailable(&e))?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// 1 to 200 printable characters.
    name: String,
    /// Any of `ingest`, `predict`, `train`, `admin`.
    scopes: Vec<String>,
}

/// Creates a token and shows it once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = ["admin"])),
    request_body = NewToken,
    responses(
        (status = 201, description = "`{\"id\", \"name\", \"scopes\", \"token\"}`: the token, shown this once (`id` is what revoking it names).", body = Object),
        (status = 400, description = "Malformed body, name or scopes.", body = crate::api_doc::ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn create(
    State(ctx): State<Context>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Admin)?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
    let request: NewToken = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("Send {{\"name\": \"...\", \"scopes\": [\"predict\", ...]}} ({e}).")))?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(bad(format!("`name`: 1 to {MAX_NAME_CHARS} printable characters.")));
    }
    let mut scopes = Vec::new();
    for raw in &request.scopes {
        let scope: Scope = raw.parse().map_err(|e: String| bad(format!("`scopes`: {e}.")))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(bad("`scopes`: give at least one of ingest, predict, train, admin.".to_owned()));
    }
    let (id, token) = auth::issue_token(&ctx.db, name, &scopes).await.map_err(|e| unavailable(&e))?;
    tracing::info!(name, scopes = ?scopes, by = %caller.0.name, "token created");
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    Ok((StatusCode::CREATED, Json(json!({"id": id, "name": name, "scopes": scopes, "token": token}))))
}

/// Revokes a token; requests with it are refused within the auth cache's lifetime.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The token's id.")),
    responses(
        (status = 200, description = "Revoked.", body = Object),
        (status = 400, description = "The id is not a UUID.", body = crate::api_doc::ErrorBody),
        (status = 404, description = "No token has this id.", body = crate::api_doc::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(token_id = %id))]
async fn revoke(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "No token has this id.");
    let id = crate::http::path_id(&id, "Token")?;
    let revoked = auth::revoke_token(&ctx.db, id).await.map_err(|e| unavailable(&e))?.ok_or_else(not_found)?;
    ctx.tokens.forget_all();
    tracing::info!(token = %revoked.id, name = %revoked.name, by = %caller.0.name, "token revoked");
    Ok(Json(json!({ "token": revoked })))
}
