//! What every Sluice HTTP listener shares: the error body, `/healthz`, `/readyz`, `/metrics`,
//! and request metrics.

use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{context::Context, db, kafka, s3};

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

    /// An unexpected failure; the cause is logged, not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Something went wrong on our side; it has been logged.",
        )
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

/// `/healthz`, `/readyz` and `/metrics`, which need no token.
pub fn ops_router(ctx: Context) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// Wraps `router` with request counting and latency by matched route.
pub fn with_request_metrics(router: Router) -> Router {
    router.layer(middleware::from_fn(record_request))
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
        kafka::check_reachable(ctx.kafka_admin.clone(), CHECK_TIMEOUT)
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

/// The verified caller: extract it in a handler to require a valid bearer token, then call
/// [`Caller::require`] for a scope. Rejections are 401 (missing or unknown token), 403 (scope)
/// and 503 (the token store is unreachable).
#[derive(Debug, Clone)]
pub struct Caller(pub crate::auth::Principal);

impl Caller {
    pub fn require(&self, scope: crate::auth::Scope) -> Result<(), ApiError> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("This token lacks the `{scope}` scope needed here."),
            ))
        }
    }
}

/// Works with any router state that holds the [`Context`] (`Context: FromRef<S>`).
impl<S> axum::extract::FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Context: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let ctx = &<Context as axum::extract::FromRef<S>>::from_ref(state);
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized("Send `Authorization: Bearer <token>`; `sluice up` writes one to .sluice/token.")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthorized("The Authorization header must be `Bearer <token>`."))?;
        match ctx.tokens.verify(&ctx.db, token).await {
            Ok(Some(principal)) => Ok(Self(principal)),
            Ok(None) => Err(unauthorized("This token is unknown or revoked.")),
            Err(err) => {
                tracing::warn!(error = %err, "token check failed");
                Err(ApiError::unavailable("The token store (PostgreSQL) is unreachable; retry shortly."))
            }
        }
    }
}
