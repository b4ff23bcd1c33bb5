//! The transactional outbox: services insert events in the same PostgreSQL transaction as the
//! rows they describe ([`enqueue`]); the relay publishes committed rows to Kafka, then marks them
//! sent. Every service process that writes outbox rows runs a relay.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several relays (several ingest processes)
//! never publish the same row at once. A relay killed between publishing and marking rolls its
//! transaction back and the rows are published again: at least once, never lost. Consumers
//! deduplicate on the event id and the media id.
//!
//! Poison rows do not block the rest: an event over [`MAX_EVENT_BYTES`] is refused by
//! [`enqueue`] before it is written, and a row Kafka refuses anyway (a cluster with a lower
//! message limit, a partition that does not exist) counts an attempt each time it is refused
//! while Kafka is otherwise up; after `outbox.max_attempts` it is parked (`failed_at`, `error`)
//! with a `work.parked` event and `sluice_outbox_parked_total`, and the relay skips it.

use std::time::{Duration, Instant};

use crate::{
    Context, Shutdown,
    parking::{self, WorkKind, WorkParked},
    topics::Topic,
};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use uuid::Uuid;

/// How long a relay waits before looking again when the outbox is empty while events flow: its
/// last batch, or this process's last [`enqueue`], was under [`BUSY_FOR`] ago.
const BUSY_POLL: Duration = Duration::from_millis(100);
/// How long events count as flowing after the last one.
const BUSY_FOR: Duration = Duration::from_secs(2);
/// How long an idle relay waits before looking again: rows another process wrote (every service
/// process that writes rows runs a relay, so these are rows whose writer died before publishing
/// them) wait this long at most; this process's own rows wake it at once ([`written`]).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the `sluice_outbox_pending` gauge is refreshed while events flow, and while idle.
const GAUGE_BUSY: Duration = Duration::from_secs(1);
const GAUGE_IDLE: Duration = Duration::from_secs(10);
/// Longest back-off after a failure (Kafka or PostgreSQL down).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Largest event (key and JSON payload) [`enqueue`] accepts, in bytes: below Kafka's default
/// message limit (`message.max.bytes`, 1,000,000 in librdkafka and close to it on brokers), with
/// room for the record's overhead. Events carry ids, keys and metadata, never media bytes, so one
/// this large is a bug upstream; refusing it at the source keeps it from ever reaching the relay.
pub const MAX_EVENT_BYTES: usize = 900_000;

/// Why a batch did not go out completely.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("kafka: {failed} of {total} events not acknowledged: {first}")]
    Kafka { failed: usize, total: usize, first: String },
    /// The event could never be published: refused before it was written.
    #[error("a {bytes}-byte event for {topic} is over the {limit}-byte limit of a Kafka message")]
    TooLarge { topic: String, bytes: usize, limit: usize },
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

/// Bumped each time this process writes an outbox row (before its transaction commits): an idle
/// relay looks again within [`BUSY_POLL`] instead of [`IDLE_POLL`].
static WRITTEN: std::sync::LazyLock<tokio::sync::watch::Sender<()>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(()).0);

fn written() {
    WRITTEN.send_replace(());
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
/// members (training trials) instead of hashing keys. The partition is a spread hint: the relay
/// sends to it modulo the topic's partitions as the broker reports them, so a topic created with
/// fewer partitions than `kafka.partitions` says now (raised after the topics existed) still
/// gets every row.
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
    check_size(topic.as_str(), key, &payload)?;
    let statement = client
        // An event's id names it: one enqueued again (an event derived from what caused it,
        // handled twice) is the same event, written once.
        .prepare_cached(
            "INSERT INTO outbox (id, topic, key, payload, partition) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    client.execute(&statement, &[&event.event_id, &topic.as_str(), &key, &payload, &partition]).await?;
    written();
    Ok(())
}

/// An event checked and serialised as [`enqueue`] would write it, for a hot path whose one
/// statement writes the rows the event describes and its outbox row together (one round trip,
/// atomic on its own): the statement takes its outbox part from [`insert_per_row`] and binds
/// [`OutboxRow::params`]. Everywhere else, [`enqueue`].
#[derive(Debug, Clone)]
pub struct OutboxRow {
    id: Uuid,
    topic: String,
    key: String,
    payload: serde_json::Value,
}

impl OutboxRow {
    /// Refuses an event over [`MAX_EVENT_BYTES`], like [`enqueue`].
    pub fn new<T: crate::events::Event>(
        topic: &crate::topics::TopicName,
        key: &str,
        event: &crate::events::Envelope<T>,
    ) -> Result<Self, RelayError> {
        let payload = serde_json::to_value(event).expect("events serialise");
        check_size(topic.as_str(), key, &payload)?;
        // Made to be written by the statement that follows.
        written();
        Ok(Self { id: event.event_id, topic: topic.as_str().to_owned(), key: key.to_owned(), payload })
    }

    /// The four parameters [`insert_per_row`] numbers from `first`, in order.
    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [&self.id, &self.topic, &self.key, &self.payload]
    }
}

/// The body of a data-modifying CTE that writes one outbox row (parameters `$first` to
/// `$first + 3`, bound to [`OutboxRow::params`]) for each row `source`, another CTE of the same
/// statement, returns: none when `source` wrote nothing (a conflict), so the event exists exactly
/// when its row does.
pub fn insert_per_row(source: &str, first: usize) -> String {
    let [id, topic, key, payload] = [first, first + 1, first + 2, first + 3];
    format!("INSERT INTO outbox (id, topic, key, payload) SELECT ${id}, ${topic}, ${key}, ${payload} FROM {source}")
}

/// Refuses an event whose key and compact JSON (what the relay publishes) exceed
/// [`MAX_EVENT_BYTES`].
fn check_size(topic: &str, key: &str, payload: &serde_json::Value) -> Result<(), RelayError> {
    let bytes = key.len() + serde_json::to_vec(payload).expect("JSON values serialise").len();
    if bytes > MAX_EVENT_BYTES {
        metrics::counter!("sluice_outbox_oversized_total").increment(1);
        tracing::error!(topic, key, bytes, limit = MAX_EVENT_BYTES, "refused an event over Kafka's message limit");
        return Err(RelayError::TooLarge { topic: topic.to_owned(), bytes, limit: MAX_EVENT_BYTES });
    }
    Ok(())
}

/// Runs until `shutdown`, publishing batches as they appear.
pub async fn run(ctx: Context, shutdown: Shutdown) {
    metrics::describe_gauge!("sluice_outbox_pending", "Outbox events committed but not yet published to Kafka.");
    metrics::describe_counter!(
        "sluice_outbox_parked_total",
        "Outbox rows Kafka refused outbox.max_attempts times, parked as failed and skipped."
    );
    metrics::describe_counter!(
        "sluice_outbox_oversized_total",
        "Events refused before they were enqueued because they exceed the Kafka message limit."
    );
    metrics::counter!("sluice_outbox_parked_total").increment(0);
    metrics::describe_histogram!(
        "sluice_outbox_publish_delay_seconds",
        metrics::Unit::Seconds,
        "Time from an event's commit to its acknowledgement by Kafka."
    );
    let mut backoff = BUSY_POLL;
    let mut last_gauge: Option<Instant> = None;
    let mut last_prune = Instant::now();
    let mut last_event = Instant::now();
    let mut writes = WRITTEN.subscribe();
    while !shutdown.is_cancelled() {
        if writes.has_changed().unwrap_or(false) {
            writes.mark_unchanged();
            last_event = Instant::now();
        }
        let busy = last_event.elapsed() < BUSY_FOR;
        let gauge_every = if busy { GAUGE_BUSY } else { GAUGE_IDLE };
        if last_gauge.is_none_or(|at| at.elapsed() >= gauge_every) {
            if let Ok(pending) = pending(&ctx).await {
                metrics::gauge!("sluice_outbox_pending").set(pending as f64);
            }
            last_gauge = Some(Instant::now());
        }
        if last_prune.elapsed() >= Duration::from_secs(600) {
            let _ = prune(&ctx).await;
            last_prune = Instant::now();
        }
        // How long to wait, and whether the relay is idle (then a row written here wakes it).
        let (wait, idle) = match publish_batch(&ctx).await {
            Ok(n) if n as i64 >= ctx.config.outbox.batch => {
                backoff = BUSY_POLL;
                last_event = Instant::now();
                continue;
            }
            Ok(n) => {
                backoff = BUSY_POLL;
                if n > 0 {
                    last_event = Instant::now();
                }
                if n > 0 || busy { (BUSY_POLL, false) } else { (IDLE_POLL, true) }
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "outbox relay batch failed");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                (wait, false)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            // A row written here: its transaction commits right after, so look again shortly.
            Ok(()) = writes.changed(), if idle => {
                last_event = Instant::now();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(BUSY_POLL) => {}
                }
            }
        }
    }
}

/// Claims up to one batch of unsent rows, publishes them pipelined, marks the acknowledged ones
/// and counts an attempt for each refused one (parking those out of attempts). Returns how many
/// rows were claimed; an error when some row was neither acknowledged nor parked.
pub async fn publish_batch(ctx: &Context) -> Result<usize, RelayError> {
    let mut client = ctx.db.get().await?;
    let Some(claimed) = Claimed::claim(&mut client, ctx.config.outbox.batch).await? else {
        return Ok(0);
    };
    let total = claimed.events.len();
    let outcomes = claimed.send(ctx).await;
    let sent: Vec<Delivered> = outcomes.iter().filter_map(|o| o.as_ref().ok().copied()).collect();
    let refused: Vec<(Uuid, String)> = claimed
        .events
        .iter()
        .zip(&outcomes)
        .filter_map(|(event, outcome)| outcome.as_ref().err().map(|(err, _)| (event.id, err.clone())))
        .collect();
    // A refusal is the row's own fault only while Kafka takes other events, and only when it
    // is not about Kafka's state: during an outage every row is refused, and a partition
    // without a leader refuses its rows while the others go out; neither counts an attempt (a
    // parked trial event would leave its job running forever).
    let blamable: Vec<(Uuid, String)> = claimed
        .events
        .iter()
        .zip(&outcomes)
        .filter_map(|(event, outcome)| match outcome {
            Err((err, false)) => Some((event.id, err.clone())),
            _ => None,
        })
        .collect();
    let blame_rows = !blamable.is_empty() && (!sent.is_empty() || parking::kafka_up(ctx).await);
    let parked = claimed.settle(ctx, &sent, if blame_rows { &blamable } else { &[] }).await?;
    metrics::counter!("sluice_outbox_published_total").increment(sent.len() as u64);
    metrics::counter!("sluice_outbox_parked_total").increment(parked as u64);
    match refused.first() {
        Some((_, first)) if refused.len() > parked => {
            Err(RelayError::Kafka { failed: refused.len(), total, first: first.clone() })
        }
        _ => Ok(total),
    }
}

/// Whether a refused send was about Kafka's state (a partition without a leader, a timeout, a
/// full queue, brokers away) rather than the event itself: such a refusal passes with time.
fn kafka_state(err: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        err.rdkafka_error_code(),
        Some(
            C::MessageTimedOut
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::RequestTimedOut
                | C::BrokerNotAvailable
                | C::ReplicaNotAvailable
                | C::NetworkException
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::KafkaStorageError
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::QueueFull
                | C::TimedOutQueue
                | C::ThrottlingQuotaExceeded
        )
    ) || matches!(err, rdkafka::error::KafkaError::Canceled)
}

/// How long a topic's partition count is trusted before the broker is asked again.
const PARTITIONS_TTL: Duration = Duration::from_secs(60);

/// Topics' partition counts as the broker last reported them, per process.
static PARTITIONS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, (i32, Instant)>>> =
    std::sync::LazyLock::new(Default::default);

/// The partitions `topic` has, from a cache refreshed every [`PARTITIONS_TTL`]; `None` when the
/// broker cannot say now (the row's hint is then sent as it is, and a refusal counts an attempt).
async fn partition_count(ctx: &Context, topic: &str) -> Option<i32> {
    if let Some(&(count, at)) = PARTITIONS.lock().expect("partitions lock").get(topic)
        && at.elapsed() < PARTITIONS_TTL
    {
        return Some(count);
    }
    let (producer, name) = (ctx.producer.clone(), topic.to_owned());
    let count = tokio::task::spawn_blocking(move || {
        let metadata = producer.fetch_metadata(Some(&name), Duration::from_secs(5)).ok()?;
        let topic = metadata.topics().first()?;
        i32::try_from(topic.partitions().len()).ok().filter(|&n| topic.error().is_none() && n > 0)
    })
    .await
    .ok()
    .flatten()?;
    PARTITIONS.lock().expect("partitions lock").insert(topic.to_owned(), (count, Instant::now()));
    Some(count)
}

/// Outbox rows locked by this relay's open transaction; other relays skip them until it ends.
/// Dropping it without [`Claimed::settle`] (a crash) releases the rows for the next relay.
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
    /// Compact JSON: the size [`enqueue`] checked (PostgreSQL's text form of JSONB is longer).
    payload: Vec<u8>,
    created_at: DateTime<Utc>,
    partition: Option<i32>,
}

impl<'a> Claimed<'a> {
    /// Locks up to `batch` unsent rows, oldest first; `None` when there are none.
    pub async fn claim(client: &'a mut deadpool_postgres::Object, batch: i64) -> Result<Option<Self>, RelayError> {
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT id, topic, key, payload, created_at, partition FROM outbox
                 WHERE sent_at IS NULL AND failed_at IS NULL ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&batch],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let events = rows
            .iter()
            .map(|r| OutboxEvent {
                id: r.get("id"),
                topic: r.get("topic"),
                key: r.get("key"),
                payload: serde_json::to_vec(&r.get::<_, serde_json::Value>("payload")).expect("JSON values serialise"),
                created_at: r.get("created_at"),
                partition: r.get("partition"),
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
        let outcomes = self.send(ctx).await;
        let first_error = outcomes.iter().find_map(|o| o.as_ref().err().map(|(err, _)| err.clone()));
        (outcomes.into_iter().filter_map(Result::ok).collect(), first_error)
    }

    /// Sends every claimed event (pipelined); one outcome per event, in claim order.
    /// Publishes every claimed row; a refusal says whether it was about Kafka's state (true:
    /// [`kafka_state`]) rather than the row.
    async fn send(&self, ctx: &Context) -> Vec<Result<Delivered, (String, bool)>> {
        let mut counts = std::collections::HashMap::new();
        for event in self.events.iter().filter(|e| e.partition.is_some()) {
            if !counts.contains_key(&event.topic) {
                counts.insert(event.topic.clone(), partition_count(ctx, &event.topic).await);
            }
        }
        let sends = self.events.iter().map(|event| {
            let mut record = FutureRecord::to(&event.topic).key(&event.key).payload(&event.payload);
            if let Some(partition) = event.partition {
                let count = counts.get(&event.topic).copied().flatten();
                record = record.partition(count.map_or(partition, |count| partition.rem_euclid(count)));
            }
            ctx.producer.send(record, Duration::from_secs(30))
        });
        let results = join_all(sends).await;
        let now = Utc::now();
        self.events
            .iter()
            .zip(results)
            .map(|(event, result)| match result {
                Ok(delivery) => {
                    let delay = (now - event.created_at).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics::histogram!("sluice_outbox_publish_delay_seconds").record(delay);
                    Ok(Delivered { id: event.id, partition: delivery.partition, offset: delivery.offset })
                }
                Err(err) => Err((err.to_string(), kafka_state(&err))),
            })
            .collect()
    }

    /// Marks `sent` as published (with their partitions and offsets), counts an attempt for each
    /// `refused` row, parks the ones out of attempts with a `work.parked` event, and commits,
    /// releasing the rest for a later batch. Returns how many rows were parked.
    pub async fn settle(
        self,
        ctx: &Context,
        sent: &[Delivered],
        refused: &[(Uuid, String)],
    ) -> Result<usize, RelayError> {
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
        let mut parked = 0;
        if !refused.is_empty() {
            let ids: Vec<Uuid> = refused.iter().map(|(id, _)| *id).collect();
            let errors: Vec<String> = refused.iter().map(|(_, err)| parking::clip(err.clone())).collect();
            let max_attempts = ctx.config.outbox.max_attempts as i32;
            let out_of_attempts = self
                .tx
                .query(
                    "UPDATE outbox o SET attempts = o.attempts + 1, error = d.error,
                         failed_at = CASE WHEN o.attempts + 1 >= $3 THEN now() END
                     FROM unnest($1::uuid[], $2::text[]) AS d(id, error)
                     WHERE o.id = d.id
                     RETURNING o.id, o.topic, o.key, o.attempts, o.error, o.failed_at IS NOT NULL AS parked",
                    &[&ids, &errors, &max_attempts],
                )
                .await?;
            let dlq = ctx.topic(Topic::WorkDlq);
            for row in out_of_attempts.iter().filter(|r| r.get::<_, bool>("parked")) {
                let (id, topic, key, attempts): (Uuid, String, String, i32) =
                    (row.get("id"), row.get("topic"), row.get("key"), row.get("attempts"));
                let error: Option<String> = row.get("error");
                let reason = parking::gave_up(attempts, error.as_deref());
                tracing::error!(%id, %topic, %key, attempts, %reason, "outbox row parked: Kafka keeps refusing it");
                parked += 1;
                // A parked event about a parked event would only be refused the same way.
                if topic != dlq.as_str() {
                    let detail = json!({"topic": topic, "key": key});
                    let event = WorkParked { kind: WorkKind::OutboxRow, id: id.to_string(), attempts, reason, detail };
                    parking::enqueue(&self.tx, ctx, event).await?;
                }
            }
        }
        self.tx.commit().await?;
        Ok(parked)
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
    Ok(client
        .query_one("SELECT count(*) AS pending FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL", &[])
        .await?
        .get("pending"))
}

/// Forgets events published more than a day ago, and parked ones after `work.dlq`'s retention.
async fn prune(ctx: &Context) -> Result<u64, RelayError> {
    let client = ctx.db.get().await?;
    Ok(client
        .execute(
            "DELETE FROM outbox WHERE sent_at < now() - interval '1 day' OR failed_at < now() - interval '30 days'",
            &[],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_about_kafkas_state_is_told_from_one_about_the_event() {
        use rdkafka::{error::KafkaError, types::RDKafkaErrorCode as C};
        for code in
            [C::MessageTimedOut, C::LeaderNotAvailable, C::NotLeaderForPartition, C::QueueFull, C::AllBrokersDown]
        {
            assert!(kafka_state(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        for code in [C::MessageSizeTooLarge, C::InvalidMessageSize, C::UnknownPartition, C::InvalidRecord] {
            assert!(!kafka_state(&KafkaError::MessageProduction(code)), "{code:?}");
        }
    }

    #[test]
    fn events_over_the_kafka_message_limit_are_refused_before_they_are_written() {
        let small = json!({"event_id": "e", "data": {"aliases": {"production": 1}}});
        assert!(check_size("t", "k", &small).is_ok());
        let huge = json!({"data": "x".repeat(MAX_EVENT_BYTES)});
        match check_size("sluice.models.events", "shapes", &huge) {
            Err(RelayError::TooLarge { topic, bytes, limit }) => {
                assert_eq!((topic.as_str(), limit), ("sluice.models.events", MAX_EVENT_BYTES));
                assert!(bytes > MAX_EVENT_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_one_statement_outbox_row_is_size_checked_and_numbers_its_parameters_from_first() {
        let topic = Topic::WorkDlq.qualified("t.");
        let parked = |detail| {
            let reason = "refused".to_owned();
            crate::events::Envelope::new(WorkParked {
                kind: WorkKind::OutboxRow,
                id: "k".into(),
                attempts: 1,
                reason,
                detail,
            })
        };
        assert!(OutboxRow::new(&topic, "k", &parked(json!({}))).is_ok());
        let huge = parked(json!({"data": "x".repeat(MAX_EVENT_BYTES)}));
        assert!(matches!(OutboxRow::new(&topic, "k", &huge), Err(RelayError::TooLarge { .. })));
        assert_eq!(
            insert_per_row("m", 14),
            "INSERT INTO outbox (id, topic, key, payload) SELECT $14, $15, $16, $17 FROM m"
        );
    }
}
