//! Every statement on the webhooks tables (`webhooks`, `webhook_deliveries`, `webhook_attempts`).
//! Functions return [`DbError`] and typed rows; statuses are [`DeliveryStatus`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;
use sluice_core::{Context, db::DbError};
use uuid::Uuid;

sluice_core::text_enum! {
    /// Where a delivery stands (`webhook_deliveries.status`).
    pub enum DeliveryStatus {
        /// Not delivered yet: due at `next_attempt_at`, or being attempted.
        Pending = "pending",
        /// The receiver answered 2xx.
        Delivered = "delivered",
        /// Every attempt failed (`webhooks.max_attempts`).
        Failed = "failed",
    }
}

/// Transaction-scoped advisory locks: one serialises creations (the `webhooks.max_webhooks`
/// bound), the other claims, so the per-URL cap holds across processes (two claimers cannot
/// each see the other's claims before they commit, as they could with row locks alone).
const CREATE_LOCK: i64 = 0x736c_7569_6365_0001;
const CLAIM_LOCK: i64 = 0x736c_7569_6365_0002;

/// A webhook as the API shows it: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_by: String,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Its deliveries (kept `webhooks.history_days` once finished), by status.
    pub deliveries: Counts,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

const WEBHOOK_SELECT: &str = "
    SELECT w.id, w.url, w.event_types, w.description, w.created_by, w.created_at,
           coalesce(c.pending, 0) AS pending, coalesce(c.delivered, 0) AS delivered, coalesce(c.failed, 0) AS failed
    FROM webhooks w LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE d.status = $1) AS pending,
               count(*) FILTER (WHERE d.status = $2) AS delivered,
               count(*) FILTER (WHERE d.status = $3) AS failed
        FROM webhook_deliveries d WHERE d.webhook_id = w.id) c ON true";

fn webhook(row: &tokio_postgres::Row) -> Webhook {
    Webhook {
        id: row.get("id"),
        url: row.get("url"),
        events: row.get("event_types"),
        description: row.get("description"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        deliveries: Counts { pending: row.get("pending"), delivered: row.get("delivered"), failed: row.get("failed") },
    }
}

const STATUSES: [DeliveryStatus; 3] = [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed];

/// A webhook to create.
#[derive(Debug)]
pub struct NewWebhook<'a> {
    pub url: &'a str,
    pub events: &'a [String],
    pub secret: &'a str,
    pub description: &'a str,
    pub created_by: &'a str,
}

/// Creates a webhook; `None` when `max` already exist.
#[tracing::instrument(level = "debug", skip_all, fields(url = %new.url))]
pub async fn create(ctx: &Context, new: NewWebhook<'_>, max: i64) -> Result<Option<Webhook>, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK]).await?;
    let existing: i64 = tx.query_one("SELECT count(*) AS n FROM webhooks", &[]).await?.get("n");
    if existing >= max {
        return Ok(None);
    }
    let id = Uuid::now_v7();
    tx.execute(
        "INSERT INTO webhooks (id, url, event_types, secret, description, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &new.url, &new.events, &new.secret, &new.description, &new.created_by],
    )
    .await?;
    let row = tx
        .query_one(&format!("{WEBHOOK_SELECT} WHERE w.id = $4"), &[&STATUSES[0], &STATUSES[1], &STATUSES[2], &id])
        .await?;
    tx.commit().await?;
    Ok(Some(webhook(&row)))
}

/// Every webhook, oldest first.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(ctx: &Context) -> Result<Vec<Webhook>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(&format!("{WEBHOOK_SELECT} ORDER BY w.created_at, w.id"), &[&STATUSES[0], &STATUSES[1], &STATUSES[2]])
        .await?;
    Ok(rows.iter().map(webhook).collect())
}

#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn get(ctx: &Context, id: Uuid) -> Result<Option<Webhook>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(&format!("{WEBHOOK_SELECT} WHERE w.id = $4"), &[&STATUSES[0], &STATUSES[1], &STATUSES[2], &id])
        .await?;
    Ok(row.as_ref().map(webhook))
}

/// Deletes a webhook with its deliveries (pending ones are never attempted); `None` when unknown.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn delete(ctx: &Context, id: Uuid) -> Result<Option<Webhook>, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(&format!("{WEBHOOK_SELECT} WHERE w.id = $4"), &[&STATUSES[0], &STATUSES[1], &STATUSES[2], &id])
        .await?;
    if row.is_some() {
        tx.execute("DELETE FROM webhooks WHERE id = $1", &[&id]).await?;
    }
    tx.commit().await?;
    Ok(row.as_ref().map(webhook))
}

/// One delivery of one event to one webhook, with its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When it is attempted next (pending deliveries).
    #[serde(serialize_with = "optional_time")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "optional_time")]
    pub finished_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// Every attempt, first first.
    pub history: Vec<Attempt>,
}

/// One attempt: the receiver's status code, or why there was no answer.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub attempt: i32,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

fn optional_time<S: serde::Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => sluice_core::events::rfc3339::serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// The webhook's latest `limit` deliveries (of `status` when given), newest first.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn deliveries(
    ctx: &Context,
    webhook_id: Uuid,
    status: Option<DeliveryStatus>,
    limit: i64,
) -> Result<Vec<Delivery>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT id, event_id, event_type, status, attempts, created_at, next_attempt_at, finished_at,
                    last_status_code, last_error
             FROM webhook_deliveries WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2)
             ORDER BY created_at DESC, id DESC LIMIT $3",
            &[&webhook_id, &status, &limit],
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get("id")).collect();
    let attempts = client
        .query(
            "SELECT delivery_id, attempt, started_at, duration_ms, status_code, error FROM webhook_attempts
             WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
            &[&ids],
        )
        .await?;
    // Grouped once: a page of 500 deliveries with 50 attempts each is not rescanned per delivery.
    let mut by_delivery: std::collections::HashMap<Uuid, Vec<&tokio_postgres::Row>> = std::collections::HashMap::new();
    for attempt in &attempts {
        by_delivery.entry(attempt.get("delivery_id")).or_default().push(attempt);
    }
    Ok(rows
        .iter()
        .map(|row| {
            let id: Uuid = row.get("id");
            let status: DeliveryStatus = row.get("status");
            Delivery {
                id,
                event_id: row.get("event_id"),
                event_type: row.get("event_type"),
                status,
                attempts: row.get("attempts"),
                created_at: row.get("created_at"),
                next_attempt_at: (status == DeliveryStatus::Pending).then(|| row.get("next_attempt_at")),
                finished_at: row.get("finished_at"),
                last_status_code: row.get("last_status_code"),
                last_error: row.get("last_error"),
                history: by_delivery
                    .get(&id)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|a| Attempt {
                        attempt: a.get("attempt"),
                        started_at: a.get("started_at"),
                        duration_ms: a.get("duration_ms"),
                        status_code: a.get("status_code"),
                        error: a.get("error"),
                    })
                    .collect(),
            }
        })
        .collect())
}

/// An event read from Kafka, as webhooks deliver it.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// The whole envelope: the body every delivery sends.
    pub payload: Value,
}

/// Adds a delivery of `event` for every webhook subscribed to its type that existed when it
/// occurred; a redelivered event adds none. Returns how many were added.
#[tracing::instrument(level = "debug", skip_all, fields(event_id = %event.event_id, event_type = %event.event_type))]
pub async fn fan_out(ctx: &Context, event: &IncomingEvent) -> Result<u64, DbError> {
    let client = ctx.db.get().await?;
    Ok(client
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload)
             SELECT gen_random_uuid(), w.id, $1, $2, $3 FROM webhooks w
             WHERE $2 = ANY (w.event_types) AND date_trunc('milliseconds', w.created_at) <= $4
             ON CONFLICT (webhook_id, event_id) DO NOTHING",
            &[&event.event_id, &event.event_type, &event.payload, &event.occurred_at],
        )
        .await?)
}

/// A delivery this process holds the lease of, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    /// This attempt's number (attempts are counted when claimed).
    pub attempt: i32,
    pub url: String,
    pub secret: SecretString,
}

/// Claims up to `limit` due deliveries, oldest due first, for `lease`: none for a URL that
/// already has `per_url` deliveries in flight (in any process). Each claim counts an attempt.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn claim(ctx: &Context, limit: i64, lease: Duration, per_url: i64) -> Result<Vec<Claimed>, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK]).await?;
    let rows = tx
        .query(
            "WITH urls AS (SELECT url, array_agg(id) AS ids FROM webhooks GROUP BY url),
             room AS (
                 SELECT u.ids, $4 - (SELECT count(*) FROM webhook_deliveries d
                                     WHERE d.webhook_id = ANY (u.ids) AND d.claimed_until > now()
                                       AND d.status = $1) AS free
                 FROM urls u),
             chosen AS (
                 SELECT due.id, due.next_attempt_at FROM room CROSS JOIN LATERAL (
                     SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
                     WHERE d.webhook_id = ANY (room.ids) AND d.status = $1 AND d.next_attempt_at <= now()
                       AND (d.claimed_until IS NULL OR d.claimed_until <= now())
                     ORDER BY d.next_attempt_at LIMIT greatest(room.free, 0)) due
                 ORDER BY due.next_attempt_at LIMIT $2)
             UPDATE webhook_deliveries d
             SET attempts = d.attempts + 1, claimed_until = now() + make_interval(secs => $3)
             FROM chosen, webhooks w
             WHERE d.id = chosen.id AND w.id = d.webhook_id AND d.status = $1
             RETURNING d.id, d.webhook_id, d.event_id, d.event_type, d.payload, d.attempts, w.url, w.secret",
            &[&DeliveryStatus::Pending, &limit, &lease.as_secs_f64(), &per_url],
        )
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|row| Claimed {
            id: row.get("id"),
            webhook_id: row.get("webhook_id"),
            event_id: row.get("event_id"),
            event_type: row.get("event_type"),
            payload: row.get("payload"),
            attempt: row.get("attempts"),
            url: row.get("url"),
            secret: SecretString::from(row.get::<_, String>("secret")),
        })
        .collect())
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    /// The receiver's answer, when there was one.
    pub status_code: Option<u16>,
    /// Why it failed: no answer, or an answer other than 2xx. `None` when delivered.
    pub error: Option<String>,
}

/// Records an attempt and what follows from it: delivered, retried after `retry_in`, or failed
/// once `max_attempts` were made. `None` when the delivery is no longer this claim's (its lease
/// ran out and another process claimed it, or its webhook was deleted): nothing is recorded.
#[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %claimed.id, attempt = claimed.attempt))]
pub async fn finish(
    ctx: &Context,
    claimed: &Claimed,
    attempted: &Attempted,
    max_attempts: i32,
    retry_in: Duration,
) -> Result<Option<DeliveryStatus>, DbError> {
    let status = match &attempted.error {
        None => DeliveryStatus::Delivered,
        Some(_) if claimed.attempt >= max_attempts => DeliveryStatus::Failed,
        Some(_) => DeliveryStatus::Pending,
    };
    let finished = status != DeliveryStatus::Pending;
    let retry_secs = if finished { 0.0 } else { retry_in.as_secs_f64() };
    let code = attempted.status_code.map(i32::from);
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let updated = tx
        .execute(
            "UPDATE webhook_deliveries
             SET status = $3, claimed_until = NULL, next_attempt_at = now() + make_interval(secs => $4),
                 finished_at = CASE WHEN $5 THEN now() END, last_status_code = $6, last_error = $7
             WHERE id = $1 AND attempts = $2 AND status = $8",
            &[
                &claimed.id,
                &claimed.attempt,
                &status,
                &retry_secs,
                &finished,
                &code,
                &attempted.error,
                &DeliveryStatus::Pending,
            ],
        )
        .await?;
    if updated == 0 {
        return Ok(None);
    }
    tx.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[&claimed.id, &claimed.attempt, &attempted.started_at, &attempted.duration_ms, &code, &attempted.error],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(status))
}

/// Deliveries not yet delivered or failed.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn pending(ctx: &Context) -> Result<i64, DbError> {
    let client = ctx.db.get().await?;
    Ok(client
        .query_one("SELECT count(*) AS pending FROM webhook_deliveries WHERE status = $1", &[&DeliveryStatus::Pending])
        .await?
        .get("pending"))
}

/// Forgets deliveries (and their attempts) finished more than `days` ago.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn prune(ctx: &Context, days: i32) -> Result<u64, DbError> {
    let client = ctx.db.get().await?;
    Ok(client
        .execute(
            "DELETE FROM webhook_deliveries WHERE status <> $1 AND finished_at < now() - make_interval(days => $2)",
            &[&DeliveryStatus::Pending, &days],
        )
        .await?)
}
