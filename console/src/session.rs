//! `/console/session`: sign in with an API token (a session cookie and its CSRF token), see who
//! is signed in, sign out.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_core::{
    Context,
    auth::Principal,
    http::{ApiError, AuthAttempt, AuthRejection, Caller},
    sessions::{self, SessionSecret},
};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest sign-in body read; a token is 68 characters.
const MAX_BODY_BYTES: usize = 4 * 1024;

/// Sign in with an API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    /// An API token: `sluice token create`, or `.sluice/token` for the local admin.
    #[schema(example = "slc_…")]
    token: String,
}

/// Who is signed in, and how.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionView {
    /// The token's name.
    name: String,
    token_id: Uuid,
    /// The token's scopes; the session grants exactly these.
    #[schema(example = json!(["admin"]))]
    scopes: Vec<String>,
    /// `cookie` (a console session) or `bearer` (an `Authorization` header).
    #[schema(example = "cookie")]
    via: &'static str,
    /// Send it as `X-CSRF-Token` with every cookie-authenticated request other than GET or HEAD
    /// (cookie sessions only).
    csrf_token: Option<String>,
    /// When the session ends (cookie sessions only).
    expires_at: Option<DateTime<Utc>>,
}

impl SessionView {
    fn new(principal: Principal, session: Option<(&SessionSecret, DateTime<Utc>)>) -> Self {
        Self {
            name: principal.name,
            token_id: principal.token_id,
            scopes: principal.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            via: if session.is_some() { "cookie" } else { "bearer" },
            csrf_token: session.map(|(secret, _)| secret.csrf_token()),
            expires_at: session.map(|(_, at)| at),
        }
    }
}

/// Signs a browser in: checks the token as a bearer token is checked (a failure counts against
/// the address's failed-authentication limit), then sets the session cookie.
#[utoipa::path(post, path = "/console/session", tag = "console",
    description = "Checks the token like a bearer token and sets the `sluice_session` cookie (`HttpOnly; SameSite=Strict; Path=/`; over HTTPS `Secure` and named `__Host-sluice_session`), which then authenticates `/v1` requests in place of `Authorization`. Cookie-authenticated requests other than GET and HEAD must send the answer's `csrf_token` as `X-CSRF-Token`. Failures count against the address's failed-authentication limit.",
    request_body = SignIn,
    responses((status = 201, description = "Signed in; `Set-Cookie` holds the session.", body = SessionView),
        (status = 400, description = "The body is not `{\"token\": \"...\"}`.", body = sluice_core::api_doc::ErrorBody),
        (status = 401, description = "The token is unknown or revoked; no cookie is set.", body = sluice_core::api_doc::ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = sluice_core::api_doc::ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; retry after `Retry-After` seconds.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(crate) async fn sign_in(
    State(ctx): State<Context>,
    attempt: AuthAttempt,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AuthRejection> {
    // A form on another site can post only form types, never JSON: refusing them keeps such a
    // form from signing a browser in as someone else.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Send the token as JSON."));
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "Send just {\"token\": \"...\"}."));
    }
    let request: SignIn = serde_json::from_slice(&body).map_err(|err| {
        refused(StatusCode::BAD_REQUEST, "invalid_request", format!("Send {{\"token\": \"...\"}} ({err})."))
    })?;
    let token = request.token.trim();
    let unknown = "This token is unknown or revoked; use one from `sluice token create` (or .sluice/token).";
    if token.is_empty() {
        return Err(attempt.failed(&ctx, unknown));
    }
    let principal = attempt.verify_token(&ctx, token).await?.ok_or_else(|| attempt.failed(&ctx, unknown))?;
    let secure = sessions::wants_secure(&ctx.config.http, &headers);
    // Signing in again replaces the browser's previous session.
    if let Some(previous) = sessions::cookie(&headers, secure).and_then(SessionSecret::parse) {
        sessions::end(&ctx.db, &previous).await.map_err(|e| AuthRejection::Api(e.to_api()))?;
    }
    let secret = SessionSecret::generate();
    let ttl = Duration::from_secs(ctx.config.http.console_session_hours * 3600);
    let expires_at = sessions::create(&ctx.db, &secret, principal.token_id, ttl)
        .await
        .map_err(|e| AuthRejection::Api(e.to_api()))?
        .ok_or_else(|| attempt.failed(&ctx, unknown))?;
    tracing::info!(token = %principal.name, token_id = %principal.token_id, "console sign-in");
    let cookie = sessions::set_cookie(&secret, ttl, secure);
    let view = SessionView::new(principal, Some((&secret, expires_at)));
    let response = private((StatusCode::CREATED, Json(view)).into_response(), &cookie);
    retire_plain_cookie(&ctx, &headers, secure, response).await
}

/// Who is signed in: the token's name and scopes, and for a console session its CSRF token.
#[utoipa::path(get, path = "/console/session", tag = "console",
    security(("bearer" = ["ingest"]), ("bearer" = ["predict"]), ("bearer" = ["train"]), ("bearer" = ["admin"])),
    responses((status = 200, description = "The caller (by session cookie or bearer token).", body = SessionView)))]
#[tracing::instrument(skip_all)]
pub(crate) async fn whoami(
    State(ctx): State<Context>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, AuthRejection> {
    let session = match sessions::credential(&headers, sessions::wants_secure(&ctx.config.http, &headers))
        .and_then(SessionSecret::parse)
    {
        Some(secret) => sessions::find(&ctx.db, &secret)
            .await
            .map_err(|e| AuthRejection::Api(e.to_api()))?
            .map(|found| (secret, found.expires_at)),
        None => None,
    };
    let view = SessionView::new(caller.0, session.as_ref().map(|(secret, at)| (secret, *at)));
    let mut response = Json(view).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Signs out: ends the session everywhere and clears the cookie. With a live session it needs
/// the session's CSRF token; with none (already ended, or no cookie) it only clears the cookie.
#[utoipa::path(delete, path = "/console/session", tag = "console",
    responses((status = 204, description = "Signed out; `Set-Cookie` clears the cookie and `Clear-Site-Data` the cached media."),
        (status = 403, description = "`csrf_failed`: a live session without its `X-CSRF-Token`.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(crate) async fn sign_out(State(ctx): State<Context>, headers: HeaderMap) -> Result<Response, AuthRejection> {
    let secure = sessions::wants_secure(&ctx.config.http, &headers);
    if let Some(secret) = sessions::cookie(&headers, secure).and_then(SessionSecret::parse) {
        let live = sessions::find(&ctx.db, &secret).await.map_err(|e| AuthRejection::Api(e.to_api()))?;
        if let Some(session) = live {
            if !sessions::csrf_presented(&secret, &headers) {
                return Err(AuthRejection::Api(sluice_core::http::csrf_failed()));
            }
            sessions::end(&ctx.db, &secret).await.map_err(|e| AuthRejection::Api(e.to_api()))?;
            tracing::info!(token = %session.principal.name, token_id = %session.principal.token_id, "console sign-out");
        }
    }
    let cookie = sessions::clear_cookie(secure);
    let mut response = private(StatusCode::NO_CONTENT.into_response(), &cookie);
    // Media the session fetched stays in the browser's cache for minutes (`private,
    // max-age=300`): on a shared machine, signing out drops it too.
    response.headers_mut().insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    retire_plain_cookie(&ctx, &headers, secure, response).await
}

/// Over TLS only the `__Host-` cookie is read, so a plain one (kept from before
/// `http.secure_cookies` was set, or planted) would outlive signing in and out unseen, and sign
/// the browser in again on any request judged plain: its session is ended and the cookie
/// cleared.
async fn retire_plain_cookie(
    ctx: &Context,
    headers: &HeaderMap,
    secure: bool,
    mut response: Response,
) -> Result<Response, AuthRejection> {
    if !secure {
        return Ok(response);
    }
    let Some(plain) = sessions::cookie(headers, false) else { return Ok(response) };
    if let Some(secret) = SessionSecret::parse(plain) {
        sessions::end(&ctx.db, &secret).await.map_err(|e| AuthRejection::Api(e.to_api()))?;
    }
    let clear = HeaderValue::from_str(&sessions::clear_plain_cookie()).expect("cookies are ASCII");
    response.headers_mut().append(header::SET_COOKIE, clear);
    Ok(response)
}

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> AuthRejection {
    AuthRejection::Api(ApiError::new(status, code, message))
}

/// Adds `Set-Cookie` and keeps the answer out of every cache.
fn private(mut response: Response, cookie: &str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::SET_COOKIE, HeaderValue::from_str(cookie).expect("cookies are ASCII"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
