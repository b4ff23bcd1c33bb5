//! Logging (tracing; JSON when stdout is not a terminal) and the process-wide Prometheus recorder.

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global tracing subscriber. Later calls (tests spawning several apps) are no-ops.
pub fn init_logging(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(false)).try_init()
    } else {
        registry.with(fmt::layer()).try_init()
    };
    // Already installed by an earlier call in this process: keep the first one.
    drop(result);
}

/// Latency buckets (seconds) for every Sluice duration histogram: 1 ms to 60 s.
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Images per scored batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Probabilities in [0, 1], in tenths.
const UNIT_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// The process-wide Prometheus recorder, installed on first use; render it for `/metrics`.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::Matcher;
            let recorder = PrometheusBuilder::new()
                .set_buckets(DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("sluice_inference_batch_size".into()), BATCH_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("sluice_inference_confidence".into()), UNIT_BUCKETS)
                })
                .expect("non-empty bucket lists")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a host embedding Sluice); then this
            // handle renders only what was recorded through it, which is still well-formed.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Declares the metrics every process exports, with their help text.
fn describe() {
    metrics::describe_counter!("sluice_http_requests_total", "HTTP requests by route, method and status.");
    metrics::describe_histogram!(
        "sluice_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route and method."
    );
    metrics::describe_gauge!(
        "sluice_dependency_up",
        "1 when the last readiness check reached the dependency (kafka, s3, postgres), else 0."
    );
    metrics::describe_counter!(
        "sluice_http_auth_failures_total",
        "Requests refused 401: no, malformed, unknown or revoked token (brute force shows here)."
    );
    metrics::describe_counter!(
        "sluice_http_csrf_failures_total",
        "Console requests refused 403 csrf_failed: signed in by cookie, changing state, without the session's CSRF token."
    );
    metrics::describe_gauge!("sluice_build_info", "Always 1; labels carry the version.");
    metrics::gauge!("sluice_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
