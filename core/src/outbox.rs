//! The transactional outbox: services insert events in the same PostgreSQL transaction as the
//! rows they describe ([`enqueue`]); the relay publishes committed rows to Kafka, then marks them
//! sent. Every service process that writes outbox rows runs a relay.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several relays (several ingest processes)
//! never publish the same row at once. A relay killed between publishing and marking rolls its
//! transaction back and the rows are published again: at least once, never lost. Consumers
//! deduplicate on the event id and the media id.

use std::time::{Duration, Instant};

use crate::{Context, Shutdown};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

/// How long a relay waits before looking again when the outbox is empty.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Longest back-off after a failure (Kafka or PostgreSQL down).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a batch did not go out completely.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("kafka: {failed} of {total} events not acknowledged: {first}")]
    Kafka { failed: usize, total: usize, first: String },
}

impl From<tokio_postgres::Error> for RelayError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Db(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for RelayError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Db(err.into())
    }
}

/// Adds an event to the outbox inside the caller's transaction (or as one statement).
pub async fn enqueue<C, T>(
    client: &C,
    topic: &crate::topics::TopicName,
    key: &str,
    event: &crate::events::Envelope<T>,
) -> Result<(), RelayError>
where
    C: deadpool_postgres::GenericClient,
    T: crate::events::Event,
{
    enqueue_to_partition(client, topic, key, None, event).await
}

/// [`enqueue`] with an explicit partition, for work queues that spread items over the group's
/// members (training trials) instead of hashing keys. The partition must exist: Sluice creates
/// its topics with `kafka.partitions` partitions.
pub async fn enqueue_to_partition<C, T>(
    client: &C,
    topic: &crate::topics::TopicName,
    key: &str,
    partition: Option<i32>,
    event: &crate::events::Envelope<T>,
) -> Result<(), RelayError>
where
    C: deadpool_postgres::GenericClient,
    T: crate::events::Event,
{
    let payload = serde_json::to_value(event).expect("events serialise");
    let statement = client
        .prepare_cached("INSERT INTO outbox (id, topic, key, payload, partition) VALUES ($1, $2, $3, $4, $5)")
        .await?;
    client.execute(&statement, &[&event.event_id, &topic.as_str(), &key, &payload, &partition]).await?;
    Ok(())
}

/// Runs until `shutdown`, publishing batches as they appear.
pub async fn run(ctx: Context, shutdown: Shutdown) {
    metrics::describe_gauge!("sluice_outbox_pending", "Outbox events committed but not yet published to Kafka.");
    metrics::describe_histogram!(
        "sluice_outbox_publish_delay_seconds",
        metrics::Unit::Seconds,
        "Time from an event's commit to its acknowledgement by Kafka."
    );
    let mut backoff = IDLE_POLL;
    let mut last_gauge = Instant::now() - Duration::from_secs(10);
    let mut last_prune = Instant::now();
    while !shutdown.is_cancelled() {
        if last_gauge.elapsed() >= Duration::from_secs(1) {
            if let Ok(pending) = pending(&ctx).await {
                metrics::gauge!("sluice_outbox_pending").set(pending as f64);
            }
            last_gauge = Instant::now();
        }
        if last_prune.elapsed() >= Duration::from_secs(600) {
            let _ = prune(&ctx).await;
            last_prune = Instant::now();
        }
        let wait = match publish_batch(&ctx).await {
            Ok(n) if n as i64 >= ctx.config.outbox.batch => {
                backoff = IDLE_POLL;
                continue;
            }
            Ok(_) => {
                backoff = IDLE_POLL;
                IDLE_POLL
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "outbox relay batch failed");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Claims up to one batch of unsent rows, publishes them pipelined, marks the acknowledged ones.
/// Returns how many rows were claimed.
pub async fn publish_batch(ctx: &Context) -> Result<usize, RelayError> {
    let mut client = ctx.db.get().await?;
    let Some(claimed) = Claimed::claim(&mut client, ctx.config.outbox.batch).await? else {
        return Ok(0);
    };
    let total = claimed.events.len();
    let (sent, first_error) = claimed.publish(ctx).await;
    claimed.mark_sent(&sent).await?;
    metrics::counter!("sluice_outbox_published_total").increment(sent.len() as u64);
    match first_error {
        None => Ok(total),
        Some(first) => Err(RelayError::Kafka { failed: total - sent.len(), total, first }),
    }
}

/// Outbox rows locked by this relay's open transaction; other relays skip them until it ends.
/// Dropping it without [`Claimed::mark_sent`] (a crash) releases the rows for the next relay.
#[derive(Debug)]
pub struct Claimed<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    events: Vec<OutboxEvent>,
}

#[derive(Debug)]
struct OutboxEvent {
    id: Uuid,
    topic: String,
    key: String,
    payload: String,
    created_at: DateTime<Utc>,
    partition: Option<i32>,
}

impl<'a> Claimed<'a> {
    /// Locks up to `batch` unsent rows, oldest first; `None` when there are none.
    pub async fn claim(client: &'a mut deadpool_postgres::Object, batch: i64) -> Result<Option<Self>, RelayError> {
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT id, topic, key, payload::text, created_at, partition FROM outbox
                 WHERE sent_at IS NULL ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&batch],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let events = rows
            .iter()
            .map(|r| OutboxEvent {
                id: r.get(0),
                topic: r.get(1),
                key: r.get(2),
                payload: r.get(3),
                created_at: r.get(4),
                partition: r.get(5),
            })
            .collect();
        Ok(Some(Self { tx, events }))
    }

    /// How many rows are claimed.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Sends every claimed event (pipelined) and returns the acknowledged ones (with where Kafka
    /// stored them) and the first error.
    pub async fn publish(&self, ctx: &Context) -> (Vec<Delivered>, Option<String>) {
        let sends = self.events.iter().map(|event| {
            let mut record = FutureRecord::to(&event.topic).key(&event.key).payload(&event.payload);
            if let Some(partition) = event.partition {
                record = record.partition(partition);
            }
            ctx.producer.send(record, Duration::from_secs(30))
        });
        let results = join_all(sends).await;
        let now = Utc::now();
        let mut sent = Vec::with_capacity(self.events.len());
        let mut first_error = None;
        for (event, result) in self.events.iter().zip(results) {
            match result {
                Ok(delivery) => {
                    sent.push(Delivered { id: event.id, partition: delivery.partition, offset: delivery.offset });
                    let delay = (now - event.created_at).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics::histogram!("sluice_outbox_publish_delay_seconds").record(delay);
                }
                Err((err, _)) => {
                    first_error.get_or_insert_with(|| err.to_string());
                }
            }
        }
        (sent, first_error)
    }

    /// Marks `sent` as published, with their partitions and offsets, and commits, releasing the
    /// rest for a later attempt.
    pub async fn mark_sent(self, sent: &[Delivered]) -> Result<(), RelayError> {
        let ids: Vec<Uuid> = sent.iter().map(|d| d.id).collect();
        let partitions: Vec<i32> = sent.iter().map(|d| d.partition).collect();
        let offsets: Vec<i64> = sent.iter().map(|d| d.offset).collect();
        self.tx
            .execute(
                "UPDATE outbox o SET sent_at = now(), sent_partition = d.part, sent_offset = d.pos
                 FROM unnest($1::uuid[], $2::int[], $3::bigint[]) AS d(id, part, pos)
                 WHERE o.id = d.id",
                &[&ids, &partitions, &offsets],
            )
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// An event Kafka acknowledged, and where it stored it.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub id: Uuid,
    pub partition: i32,
    pub offset: i64,
}

/// Events committed but not yet acknowledged by Kafka.
pub async fn pending(ctx: &Context) -> Result<i64, RelayError> {
    let client = ctx.db.get().await?;
    Ok(client.query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[]).await?.get(0))
}

/// Forgets events published more than a day ago.
async fn prune(ctx: &Context) -> Result<u64, RelayError> {
    let client = ctx.db.get().await?;
    Ok(client.execute("DELETE FROM outbox WHERE sent_at < now() - interval '1 day'", &[]).await?)
}
