//! The delivery worker: claims due deliveries from PostgreSQL (at most `webhooks.concurrency` in
//! flight in this process, `webhooks.max_in_flight_per_url` per URL across all processes), POSTs
//! each event, signed, and records the attempt: delivered on a 2xx answer; otherwise retried after
//! `webhooks::retry_first_ms`, doubling with jitter ([`Backoff::nth`]), and failed after
//! `webhooks.max_attempts`.
//!
//! A claim is a lease: a process that dies mid-attempt leaves a lease that runs out, and the
//! delivery is attempted again (at least once). A stopping process claims nothing more and lets
//! the attempts it holds end (each is bounded by `webhooks.timeout_ms`) and be recorded.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use secrecy::ExposeSecret;
use sluice_core::{
    Context, Shutdown,
    config::WebhooksConfig,
    work::{self, Backoff},
};
use tokio::{sync::Notify, task::JoinSet};

use crate::{
    address::{AddressPolicy, GuardedResolver, Refused},
    signature,
    store::{self, Attempted, Claimed, DeliveryStatus},
};

/// How far a lease outlasts the attempt's own timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How often the pending gauge is refreshed and old history pruned.
const GAUGE_EVERY: Duration = Duration::from_secs(10);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest error text kept per attempt.
const MAX_ERROR_CHARS: usize = 500;

pub async fn run(ctx: Context, shutdown: Shutdown, wake: Arc<Notify>) {
    let config = ctx.config.webhooks.clone();
    let policy = Arc::new(AddressPolicy::new(&config.allowed_networks));
    let http = match client(&config, policy.clone()) {
        Ok(http) => http,
        Err(err) => {
            tracing::error!(error = %sluice_core::error_chain(&err), "cannot build the webhook HTTP client; no deliveries");
            return;
        }
    };
    let lease = Duration::from_millis(config.timeout_ms) + LEASE_MARGIN;
    let poll = Duration::from_millis(config.poll_interval_ms);
    let mut running = JoinSet::new();
    let mut last_gauge = Instant::now() - GAUGE_EVERY;
    let mut last_prune = Instant::now();
    while !shutdown.is_cancelled() {
        if last_gauge.elapsed() >= GAUGE_EVERY {
            if let Ok(pending) = store::pending(&ctx).await {
                metrics::gauge!("sluice_webhooks_pending").set(pending as f64);
            }
            last_gauge = Instant::now();
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            if let Err(err) = store::prune(&ctx, i32::try_from(config.history_days).unwrap_or(i32::MAX)).await {
                tracing::warn!(error = %sluice_core::error_chain(&err), "cannot prune webhook history");
            }
            last_prune = Instant::now();
        }
        let room = config.concurrency.saturating_sub(running.len()) as i64;
        if room > 0 {
            let per_url = i64::from(config.max_in_flight_per_url);
            let claimed = work::retry_until(&shutdown, Backoff::DEPENDENCY, "cannot claim webhook deliveries", || {
                store::claim(&ctx, room, lease, per_url)
            })
            .await
            .unwrap_or_default();
            for delivery in claimed {
                let attempt = Attempt { ctx: ctx.clone(), http: http.clone(), policy: policy.clone() };
                running.spawn(attempt.run(delivery, shutdown.clone()));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// The one HTTP client deliveries share: no proxy (it would bypass the address policy), no
/// redirects, names resolved through the policy, every attempt bounded by `timeout_ms`.
fn client(config: &WebhooksConfig, policy: Arc<AddressPolicy>) -> Result<reqwest::Client, reqwest::Error> {
    let timeout = Duration::from_millis(config.timeout_ms);
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(GuardedResolver::new(policy))
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("Sluice-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What one attempt needs.
struct Attempt {
    ctx: Context,
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl Attempt {
    /// Sends the delivery once and records how it went.
    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %delivery.id, webhook = %delivery.webhook_id, attempt = delivery.attempt))]
    async fn run(self, delivery: Claimed, shutdown: Shutdown) {
        let config = &self.ctx.config.webhooks;
        let (attempted, outcome) = self.send(&delivery).await;
        metrics::counter!("sluice_webhooks_attempts_total", "outcome" => outcome).increment(1);
        metrics::histogram!("sluice_webhooks_attempt_duration_seconds")
            .record(f64::from(attempted.duration_ms) / 1000.0);
        let backoff = Backoff {
            first: Duration::from_millis(config.retry_first_ms),
            max: Duration::from_millis(config.retry_max_ms),
        };
        let retry_in = backoff.nth(delivery.attempt.max(1) as u32);
        let max_attempts = config.max_attempts as i32;
        let recorded = work::retry_until(&shutdown, Backoff::DEPENDENCY, "cannot record a webhook attempt", || {
            store::finish(&self.ctx, &delivery, &attempted, max_attempts, retry_in)
        })
        .await;
        // Only the host is logged: chat services put the hook's secret in the URL's path.
        let url =
            reqwest::Url::parse(&delivery.url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let (id, event) = (delivery.id, &delivery.event_type);
        match recorded.flatten() {
            Some(DeliveryStatus::Delivered) => {
                metrics::counter!("sluice_webhooks_deliveries_total", "outcome" => "delivered").increment(1);
                tracing::debug!(%id, %url, %event, attempt = delivery.attempt, "webhook delivered");
            }
            Some(DeliveryStatus::Failed) => {
                metrics::counter!("sluice_webhooks_deliveries_total", "outcome" => "failed").increment(1);
                tracing::warn!(%id, %url, %event, attempts = delivery.attempt, error = ?attempted.error, "webhook delivery failed: out of attempts");
            }
            Some(DeliveryStatus::Pending) => {
                tracing::info!(%id, %url, %event, attempt = delivery.attempt, retry_in = ?retry_in, error = ?attempted.error, "webhook attempt failed; retrying");
            }
            // Another process holds it now (this lease ran out), its webhook was deleted, or
            // shutdown came before the attempt could be recorded: the lease decides.
            None => {}
        }
    }

    /// POSTs the event and says how it went (and the outcome's metric label).
    async fn send(&self, delivery: &Claimed) -> (Attempted, &'static str) {
        let started_at = Utc::now();
        let started = Instant::now();
        let result = self.post(delivery).await;
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let failed = |status_code, error: String, outcome| {
            let error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
            (Attempted { started_at, duration_ms, status_code, error }, outcome)
        };
        match result {
            Ok(status) if status.is_success() => {
                (Attempted { started_at, duration_ms, status_code: Some(status.as_u16()), error: None }, "delivered")
            }
            Ok(status) => failed(Some(status.as_u16()), format!("the receiver answered {status}"), "http_error"),
            Err(Failure::BadUrl(why)) => {
                failed(None, format!("the webhook's URL does not parse: {why}"), "unreachable")
            }
            Err(Failure::Refused(refused)) => failed(None, refused.to_string(), "address_refused"),
            Err(Failure::Http(err)) if refusal(&err).is_some() => {
                failed(None, refusal(&err).map(ToString::to_string).unwrap_or_default(), "address_refused")
            }
            Err(Failure::Http(err)) if err.is_timeout() => {
                failed(None, format!("no answer within {} ms", self.ctx.config.webhooks.timeout_ms), "timeout")
            }
            // Without the URL: reqwest's errors name it, and it may hold the hook's secret.
            Err(Failure::Http(err)) => failed(None, sluice_core::error_chain(&err.without_url()), "unreachable"),
        }
    }

    async fn post(&self, delivery: &Claimed) -> Result<reqwest::StatusCode, Failure> {
        let url = reqwest::Url::parse(&delivery.url).map_err(|e| Failure::BadUrl(e.to_string()))?;
        if let Some(Err(refused)) = self.policy.check_literal(&url) {
            return Err(Failure::Refused(refused));
        }
        let body = serde_json::to_vec(&delivery.payload).expect("JSON values serialise");
        let signed = signature::sign(delivery.secret.expose_secret(), Utc::now().timestamp(), &body);
        let response = self
            .http
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(signature::HEADER, signed)
            .header("Sluice-Event-Id", delivery.event_id.to_string())
            .header("Sluice-Event-Type", delivery.event_type.as_str())
            .header("Sluice-Delivery-Id", delivery.id.to_string())
            .header("Sluice-Delivery-Attempt", delivery.attempt.to_string())
            .body(body)
            .send()
            .await
            .map_err(Failure::Http)?;
        Ok(response.status())
    }
}

/// Why an attempt got no answer.
#[derive(Debug)]
enum Failure {
    /// The stored URL does not parse (it was checked when the webhook was created).
    BadUrl(String),
    Refused(Refused),
    Http(reqwest::Error),
}

/// The address refusal in an error's cause chain (the resolver's answer).
fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = current.source();
    }
    None
}
