//! What every Sluice HTTP listener shares: the error body, `/healthz`, `/readyz`, `/metrics`,
//! and request metrics.

use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{context::Context, db, s3};

/// An error answer: `{"error": {"code", "message"}}` with its status (and `Retry-After` on 503).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// A dependency is down; clients should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "dependency_unavailable", message)
    }

    /// A dependency is down because of `cause` (logged with its whole chain); clients should retry.
    pub fn unavailable_because(cause: &dyn std::error::Error, message: impl Into<String>) -> Self {
        tracing::warn!(error = %crate::error_chain(cause), "dependency unavailable");
        Self::unavailable(message)
    }

    /// An unexpected failure; the cause is logged with its whole chain, not shown.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %crate::error_chain(cause), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Something went wrong on our side; it has been logged.",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<db::DbError> for ApiError {
    fn from(err: db::DbError) -> Self {
        err.to_api()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// One page of a list read newest first, as its query asked: `limit` (1 to `max`, `default`
/// when left out) items older than the item `before` (a UUID: the previous page's last id).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Page {
    pub limit: i64,
    pub before: Option<uuid::Uuid>,
}

impl Page {
    /// The page the query's `limit` and `before` texts ask for; 400 `invalid_request` otherwise.
    pub fn parse(limit: Option<&str>, before: Option<&str>, default: i64, max: i64) -> Result<Self, ApiError> {
        Ok(Self {
            limit: page_limit(limit, default, max)?,
            before: page_before(before, |_: &uuid::Uuid| true, "`before` must be an id from the previous page.")?,
        })
    }
}

/// A page's `limit` query text: 1 to `max`, `default` when left out; 400 `invalid_request`
/// otherwise.
pub fn page_limit(limit: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(text) => text.parse::<i64>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("`limit` must be 1 to {max}."))
        }),
    }
}

/// A page's `before` query text, parsed and `accept`ed; 400 `invalid_request` with `message`
/// otherwise.
pub fn page_before<B: std::str::FromStr>(
    before: Option<&str>,
    accept: impl Fn(&B) -> bool,
    message: &str,
) -> Result<Option<B>, ApiError> {
    before
        .map(|text| {
            text.parse::<B>()
                .ok()
                .filter(|value| accept(value))
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message))
        })
        .transpose()
}

/// `/healthz`, `/readyz` and `/metrics`, which need no token.
pub fn ops_router(ctx: Context) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics)).with_state(ctx)
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs.", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Wraps `router` with request counting and latency by matched route.
pub fn with_request_metrics(router: Router) -> Router {
    router.layer(middleware::from_fn(record_request))
}

/// The limits every route gets unless it sets its own: a body limit enforced while the body
/// streams (an over-limit body is refused with 413 without being buffered whole), a deadline
/// for the whole request, and error answers in the API's JSON shape even where the refusal
/// comes from the framework (a body over the limit, a malformed path or query, an unknown route).
pub fn with_limits(router: Router, config: &crate::config::HttpConfig) -> Router {
    let timeout = Duration::from_secs(config.request_timeout_secs);
    router
        .layer(middleware::from_fn(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(config.max_request_bytes))
        .layer(middleware::from_fn(linger))
        .layer(middleware::from_fn(move |request: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    format!("The request took longer than {} s; retry it.", timeout.as_secs()),
                )
                .into_response(),
            }
        }))
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets the
/// requests in flight finish and closes idle connections. Unlike `axum::serve`, each HTTP/1
/// connection has a timer: a client that takes longer than `http.header_timeout_secs` to send a
/// request's headers (one byte at a time, or idle on a keep-alive connection) is disconnected,
/// and at most `http.max_connections` are open at once (more wait in the listen queue), so
/// connections that never make a request cannot pile up. Each request carries the client's
/// address as [`axum::extract::ConnectInfo`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: &crate::config::HttpConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(config.header_timeout_secs));
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little instead of spinning on the error.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
            request
        });
        let connection = graceful.watch(
            http1.serve_connection(TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(service)),
        );
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, client = %remote, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Why [`read_body`] could not read a body.
#[derive(Debug)]
pub enum BodyError {
    /// Over the limit (answered 413): reading stopped there.
    TooLarge { limit: usize },
    /// The client's body ended badly (answered 400).
    Unreadable(String),
}

/// An id from a request path: 400 `invalid_id` unless it is a UUID, so a malformed id is told
/// from an unknown one (404).
pub fn path_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", format!("{what} ids are UUIDs.")))
}

/// Reads a small request body (JSON) within `limit` bytes, telling an over-limit body (413) from
/// one that could not be read (400), which `axum::body::to_bytes` reports alike.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::TooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("The body must be at most {limit} bytes."),
            ),
            BodyError::Unreadable(why) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("The body could not be read: {why}."))
            }
        }
    }
}

/// After a handler stops reading a request body (it refused it early: too large, bad type), up to
/// this much more of it is read and discarded, for at most [`LINGER_TIME`], so the client gets
/// the answer instead of a reset connection ("lingering close", as nginx and Apache do).
const LINGER_BYTES: u64 = 64 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Hands the handler the request body through a channel; if the handler drops it before the
/// end, the rest is drained (bounded) in the background while the answer goes out.
async fn linger(request: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    use futures::StreamExt;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, axum::Error>>(2);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut handler_reads = true;
        let mut drained = 0u64;
        let mut deadline = None;
        loop {
            let next = match deadline {
                // The handler may stop reading while the client sends nothing more: the lingering
                // starts then, not at the next chunk (which might never come).
                None => tokio::select! {
                    next = stream.next() => next,
                    () = sender.closed() => {
                        handler_reads = false;
                        deadline = Some(tokio::time::Instant::now() + LINGER_TIME);
                        continue;
                    }
                },
                Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => return,
                },
            };
            let Some(chunk) = next else { return };
            if handler_reads {
                if sender.send(chunk).await.is_err() {
                    handler_reads = false;
                    deadline = Some(tokio::time::Instant::now() + LINGER_TIME);
                }
            } else {
                drained += chunk.map_or(0, |c| c.len() as u64);
                if drained > LINGER_BYTES {
                    return;
                }
            }
        }
    });
    // Fused: a handler may poll its body again after it ended.
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    })
    .fuse();
    next.run(Request::from_parts(parts, axum::body::Body::from_stream(stream))).await
}

/// Most bytes of a framework's plain-text refusal kept as the JSON error's message.
const MAX_REFUSAL_TEXT: usize = 1024;

/// Rewrites error answers that are not JSON (axum's extractor rejections, 404 and 405 for
/// unknown routes) into `{"error": {"code", "message"}}` with the same status.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REFUSAL_TEXT * 4).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text[..text.len().min(MAX_REFUSAL_TEXT)]).trim().to_owned();
    let (code, fallback) = refusal(status);
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "The request body is larger than this route accepts; send less per request.".to_owned()
    } else if text.is_empty() {
        fallback.to_owned()
    } else {
        format!("{text}.").replace("..", ".")
    };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

/// The error code and a default message for a status the framework answered on its own.
fn refusal(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::NOT_FOUND => ("not_found", "No such route; see ../shared/API.md for the routes."),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "This route does not accept this method."),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "The request body is too large."),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "Send the body with a supported Content-Type.")
        }
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_request", "The request is well-formed but cannot be used."),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "Too many requests; retry later."),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "The request took too long."),
        s if s.is_server_error() => ("internal", "Something went wrong on our side; it has been logged."),
        _ => ("invalid_request", "The request is malformed."),
    }
}

async fn record_request(request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("sluice_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("sluice_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain")))]
async fn metrics(State(ctx): State<Context>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], ctx.metrics.render())
}

/// How long each dependency gets to answer a readiness probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of probing every dependency.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `(dependency, Ok(detail) | Err(reason))`, in a fixed order: kafka, s3, postgres.
    pub checks: Vec<(&'static str, Result<String, String>)>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, r)| r.is_ok())
    }
}

/// Probes Kafka, S3 and PostgreSQL concurrently, each within [`CHECK_TIMEOUT`].
pub async fn probe(ctx: &Context) -> Readiness {
    async fn timed<F: Future<Output = Result<String, String>>>(target: &str, f: F) -> Result<String, String> {
        tokio::time::timeout(CHECK_TIMEOUT, f)
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {target} within {}s", CHECK_TIMEOUT.as_secs())))
    }
    let kafka = timed(&ctx.config.kafka.brokers, async {
        ctx.kafka_reachable(CHECK_TIMEOUT)
            .await
            .map(|brokers| format!("{brokers} broker(s) at {}", ctx.config.kafka.brokers))
            .map_err(|e| format!("cannot reach {}: {e}", ctx.config.kafka.brokers))
    });
    let s3 = timed(&ctx.config.s3.endpoint, async {
        s3::check_bucket(&ctx.s3, &ctx.config.s3.bucket)
            .await
            .map(|()| format!("bucket {} reachable", ctx.config.s3.bucket))
            .map_err(|e| e.to_string())
    });
    let postgres = timed("PostgreSQL", async {
        db::check(&ctx.db).await.map(|()| "SELECT 1 ok".to_owned()).map_err(|e| crate::error_chain(&e))
    });
    let (kafka, s3, postgres) = tokio::join!(kafka, s3, postgres);
    let checks = vec![("kafka", kafka), ("s3", s3), ("postgres", postgres)];
    for (name, result) in &checks {
        metrics::gauge!("sluice_dependency_up", "dependency" => *name).set(if result.is_ok() { 1.0 } else { 0.0 });
    }
    Readiness { checks }
}

/// Readiness: 200 when Kafka, S3 and PostgreSQL answer, else 503 naming what failed.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Every dependency answers.", body = Object),
    (status = 503, description = "A dependency is unreachable: the error, `failed` and `checks` name it.", body = crate::api_doc::ErrorBody),
))]
async fn readyz(State(ctx): State<Context>) -> Response {
    let readiness = probe(&ctx).await;
    let checks: serde_json::Map<String, serde_json::Value> = readiness
        .checks
        .iter()
        .map(|(name, result)| {
            let value = match result {
                Ok(detail) => json!({"ok": true, "detail": detail}),
                Err(reason) => json!({"ok": false, "error": reason}),
            };
            ((*name).to_owned(), value)
        })
        .collect();
    if readiness.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready", "checks": checks}))).into_response()
    } else {
        let failed: Vec<&str> = readiness.checks.iter().filter(|(_, r)| r.is_err()).map(|(n, _)| *n).collect();
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "error": {
                    "code": "dependency_unavailable",
                    "message": format!("Not ready: cannot reach {}.", failed.join(", ")),
                },
                "failed": failed,
                "checks": checks,
            })),
        )
            .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        response
    }
}

/// The verified caller: extract it in a handler to require a valid bearer token (or a console
/// session cookie, see [`crate::sessions`]), then call [`Caller::require`] for a scope.
/// Rejections are 401 (missing or unknown token or session), 403 (scope; or `csrf_failed`: a
/// cookie-authenticated request other than GET or HEAD without its CSRF token), 429 (too many
/// failed authentications from this address) and 503 (the token store is unreachable).
#[derive(Debug, Clone)]
pub struct Caller(pub crate::auth::Principal);

impl Caller {
    pub fn require(&self, scope: crate::auth::Scope) -> Result<(), ApiError> {
        self.require_any(&[scope])
    }

    /// Passes when the token holds one of `scopes` (or `admin`); the README's scope matrix says
    /// which scopes each route accepts.
    pub fn require_any(&self, scopes: &[crate::auth::Scope]) -> Result<(), ApiError> {
        if scopes.iter().any(|scope| self.0.allows(*scope)) {
            Ok(())
        } else {
            let names: Vec<String> = scopes.iter().map(|s| format!("`{s}`")).collect();
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("This token lacks the {} scope needed here.", names.join(" or ")),
            ))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.0.scopes.contains(&crate::auth::Scope::Admin)
    }
}

/// Works with any router state that holds the [`Context`] (`Context: FromRef<S>`).
impl<S> axum::extract::FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Context: axum::extract::FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, AuthRejection> {
        let ctx = &<Context as axum::extract::FromRef<S>>::from_ref(state);
        let attempt = AuthAttempt::start(ctx, parts)?;
        let secure = crate::sessions::wants_secure(&ctx.config.http, &parts.headers);
        if let Some(cookie) = crate::sessions::credential(&parts.headers, secure) {
            return attempt.session(ctx, cookie, &parts.method, &parts.headers).await;
        }
        // No credential at all guesses nothing: answered 401, not counted against the address
        // (a console opened while signed out asks for its session this way).
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            AuthAttempt::unauthenticated(
                "Send `Authorization: Bearer <token>`; `sluice up` writes one to .sluice/token.",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            // The scheme is case-insensitive (RFC 9110 §11.1): `bearer x` is the same credential.
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .filter(|token| token.len() <= MAX_TOKEN_CHARS)
            .ok_or_else(|| attempt.failed(ctx, "The Authorization header must be `Bearer <token>`."))?;
        match attempt.verify_token(ctx, token).await? {
            Some(principal) => Ok(Self(principal)),
            None => Err(attempt.failed(ctx, "This token is unknown or revoked.")),
        }
    }
}

/// The address a request came from: its peer's, or, when the peer is one of
/// `http.trusted_proxies`, the nearest address in `X-Forwarded-For` that is not a trusted proxy
/// (the entries before it are the client's to write, so they are not believed). Without it,
/// every client behind a reverse proxy shares the proxy's address, and one client's failed
/// attempts would have the others refused with 429.
pub fn client_address(trusted: &[String], parts: &axum::http::request::Parts) -> Option<std::net::IpAddr> {
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip())?;
    let is_trusted = |ip: std::net::IpAddr| {
        trusted.iter().any(|entry| match entry.parse::<ipnet::IpNet>() {
            Ok(net) => net.contains(&ip),
            Err(_) => entry.parse::<std::net::IpAddr>().is_ok_and(|one| one == ip),
        })
    };
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<std::net::IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.trim().parse().ok())
        .collect();
    Some(forwarded.iter().rev().copied().find(|ip| !is_trusted(*ip)).or(forwarded.first().copied()).unwrap_or(peer))
}

/// One attempt to authenticate, from a bearer token, a session cookie or the console's sign-in
/// form: refused up front with 429 while its client address is over the failed-authentication
/// limit (`http.auth_failure_burst`), and counted against that limit when it fails.
#[derive(Debug, Clone, Copy)]
pub struct AuthAttempt {
    client: Option<std::net::IpAddr>,
}

impl AuthAttempt {
    /// Starts an attempt for the request's client address, or answers 429 with `Retry-After`.
    pub fn start(ctx: &Context, parts: &axum::http::request::Parts) -> Result<Self, AuthRejection> {
        let client = client_address(&ctx.config.http.trusted_proxies, parts);
        if let Some(retry_after) = client.and_then(|ip| ctx.auth_failures.blocked_for(ip)) {
            let mut refused = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("Too many failed authentications from this address; retry in {retry_after} s."),
            )
            .into_response();
            refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return Err(AuthRejection::Response(Box::new(refused)));
        }
        Ok(Self { client })
    }

    /// 401 `unauthorized` with `message`, not counted: the request offered no credential.
    pub fn unauthenticated(message: &str) -> AuthRejection {
        AuthRejection::Api(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message))
    }

    /// Counts a failure against the client address and answers 401 `unauthorized` with `message`.
    pub fn failed(&self, ctx: &Context, message: &str) -> AuthRejection {
        if let Some(ip) = self.client {
            ctx.auth_failures.failed(ip);
        }
        metrics::counter!("sluice_http_auth_failures_total").increment(1);
        AuthRejection::Api(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message))
    }

    /// Looks an API token up (through the cache); `None` when it is unknown, revoked or longer
    /// than any token Sluice issues. A failure is not counted here: the caller words it.
    pub async fn verify_token(
        &self,
        ctx: &Context,
        token: &str,
    ) -> Result<Option<crate::auth::Principal>, AuthRejection> {
        if token.len() > MAX_TOKEN_CHARS {
            return Ok(None);
        }
        ctx.tokens.verify(&ctx.db, token).await.map_err(token_store_down)
    }

    /// Authenticates with a console session cookie; a request other than GET or HEAD must also
    /// carry the session's CSRF token, else 403 `csrf_failed`.
    async fn session(
        &self,
        ctx: &Context,
        cookie: &str,
        method: &axum::http::Method,
        headers: &axum::http::HeaderMap,
    ) -> Result<Caller, AuthRejection> {
        let ended = "This console session has ended (signed out, expired or its token revoked); sign in again.";
        let secret = crate::sessions::SessionSecret::parse(cookie).ok_or_else(|| self.failed(ctx, ended))?;
        let session = crate::sessions::find(&ctx.db, &secret)
            .await
            .map_err(token_store_down)?
            .ok_or_else(|| self.failed(ctx, ended))?;
        let safe = matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
        if !safe && !crate::sessions::csrf_presented(&secret, headers) {
            return Err(AuthRejection::Api(csrf_failed()));
        }
        Ok(Caller(session.principal))
    }
}

/// 403 `csrf_failed`: a cookie-authenticated request that changes state came without the
/// session's CSRF token (counted in `sluice_http_csrf_failures_total`).
pub fn csrf_failed() -> ApiError {
    metrics::counter!("sluice_http_csrf_failures_total").increment(1);
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_failed",
        "A request signed in with the console's cookie must send the session's `X-CSRF-Token` header; \
         reload the console (or send `Authorization: Bearer <token>` instead of the cookie).",
    )
}

/// Works with any router state that holds the [`Context`] (`Context: FromRef<S>`).
impl<S> axum::extract::FromRequestParts<S> for AuthAttempt
where
    S: Send + Sync,
    Context: axum::extract::FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, AuthRejection> {
        Self::start(&<Context as axum::extract::FromRef<S>>::from_ref(state), parts)
    }
}

fn token_store_down(err: db::DbError) -> AuthRejection {
    tracing::warn!(error = %crate::error_chain(&err), "token check failed");
    AuthRejection::Api(ApiError::unavailable("The token store (PostgreSQL) is unreachable; retry shortly."))
}

/// Longest bearer token looked up; Sluice's own are 68 characters.
const MAX_TOKEN_CHARS: usize = 256;

/// Why a request was not authenticated: an [`ApiError`], or a 429 with `Retry-After`.
#[derive(Debug)]
pub enum AuthRejection {
    Api(ApiError),
    Response(Box<Response>),
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            AuthRejection::Api(err) => err.into_response(),
            AuthRejection::Response(response) => *response,
        }
    }
}

#[cfg(test)]
mod client_address_tests {
    use super::client_address;

    fn parts(peer: &str, forwarded: Option<&str>) -> axum::http::request::Parts {
        let mut request = axum::http::Request::builder();
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        parts
            .extensions
            .insert(axum::extract::ConnectInfo(format!("{peer}:4000").parse::<std::net::SocketAddr>().expect("addr")));
        parts
    }

    #[test]
    fn the_client_is_the_nearest_forwarded_address_past_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".to_owned(), "192.0.2.1".to_owned()];
        let at = |peer, forwarded| client_address(&trusted, &parts(peer, forwarded)).expect("an address").to_string();
        assert_eq!(at("198.51.100.9", Some("1.2.3.4")), "198.51.100.9", "an untrusted peer is the client");
        assert_eq!(at("10.0.0.5", Some("6.6.6.6, 1.2.3.4")), "1.2.3.4", "the client wrote the entries before");
        assert_eq!(at("10.0.0.5", Some("1.2.3.4, 10.0.0.9")), "1.2.3.4", "a chain of proxies");
        assert_eq!(at("192.0.2.1", Some("junk, 1.2.3.4")), "1.2.3.4");
        assert_eq!(at("10.0.0.5", None), "10.0.0.5", "a proxy that names nobody");
        assert_eq!(
            client_address(&[], &parts("10.0.0.5", Some("1.2.3.4"))).map(|a| a.to_string()).as_deref(),
            Some("10.0.0.5")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_a_bounded_limit_and_an_optional_id() {
        assert_eq!(Page::parse(None, None, 60, 200).expect("defaults"), Page { limit: 60, before: None });
        let id = uuid::Uuid::now_v7();
        let page = Page::parse(Some("200"), Some(&id.to_string()), 60, 200).expect("a page");
        assert_eq!(page, Page { limit: 200, before: Some(id) });
        for (limit, before) in
            [(Some("0"), None), (Some("201"), None), (Some("-1"), None), (Some("x"), None), (None, Some("nope"))]
        {
            let refused = Page::parse(limit, before, 60, 200).expect_err("refused");
            assert_eq!(
                (refused.status, refused.code),
                (StatusCode::BAD_REQUEST, "invalid_request"),
                "{limit:?} {before:?}"
            );
        }
    }
}
