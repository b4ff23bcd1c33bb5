//! Kafka clients built the one way Sluice uses them, and topic bootstrap.
//!
//! Producers are idempotent with `acks=all`. Consumers commit automatically but only offsets the
//! code stored explicitly (`enable.auto.offset.store=false`), after a message's effects are durable;
//! they commit synchronously when partitions are revoked, so a rebalance never replays finished work.
//! The loop that stores those offsets, and the retrying around it, are in [`crate::work`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::channel::oneshot;
use rdkafka::{
    ClientConfig, ClientContext, Message, Offset,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::ToBytes,
    metadata::Metadata,
    producer::{
        BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext, future_producer::Delivery,
    },
};

use crate::{config::KafkaConfig, topics::Topic};

/// The consumer type every Sluice worker uses.
pub type SluiceConsumer = StreamConsumer<CommitOnRevoke>;

/// Base properties shared by every client: brokers, fast reconnects, extra user properties.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .set("socket.keepalive.enable", "true");
    for (key, value) in &config.extra {
        client.set(key, secrecy::ExposeSecret::expose_secret(value));
    }
    client
}

/// An idempotent producer with `acks=all`; sends are pipelined (`linger.ms=5`); it never creates
/// a topic.
pub fn producer(config: &KafkaConfig) -> Result<SluiceProducer, KafkaError> {
    let base: BaseProducer<Deliveries> = client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        // Sluice creates its topics with their partition counts and configs (`ensure_topics`);
        // a metadata request or a send naming a missing topic must not create it with the
        // broker's defaults.
        .set("allow.auto.create.topics", "false")
        .create_with_context(Deliveries)?;
    let base = Arc::new(base);
    let stop = Arc::new(AtomicBool::new(false));
    let (polled, stopping) = (base.clone(), stop.clone());
    std::thread::Builder::new()
        .name("kafka-deliveries".into())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                polled.poll(DELIVERY_POLL);
            }
        })
        .map_err(|err| KafkaError::ClientCreation(format!("cannot start the delivery thread: {err}")))?;
    Ok(SluiceProducer(Arc::new(ProducerInner { base, stop })))
}

/// How long the delivery thread waits for delivery reports per poll. rdkafka's `poll` ends each
/// wait by spinning through the last millisecond (its timeout is truncated to whole
/// milliseconds), so rdkafka's own `FutureProducer`, which polls every 100 ms, keeps about 1 % of
/// a core busy when idle; polling every second spins a tenth as often. Deliveries are reported
/// as they arrive either way; this only bounds how long a dropped producer's thread lingers.
const DELIVERY_POLL: Duration = Duration::from_secs(1);

/// Sluice's producer: librdkafka's with a delivery thread of its own ([`producer`]); cheap to
/// clone. Its sends answer when the broker acknowledges, like rdkafka's `FutureProducer`.
#[derive(Clone)]
pub struct SluiceProducer(Arc<ProducerInner>);

struct ProducerInner {
    base: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
}

impl Drop for ProducerInner {
    fn drop(&mut self) {
        // The delivery thread holds the last reference and destroys the client off the runtime.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SluiceProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SluiceProducer").finish_non_exhaustive()
    }
}

/// Answers each message's delivery report on the channel sent with it.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<Result<Delivery, KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, answer: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((err, _)) => Err(err.clone()),
        };
        let _ = answer.send(owned);
    }
}

impl SluiceProducer {
    /// Queues `record` (waiting up to `queue_timeout` while librdkafka's queue is full) and
    /// answers once the broker acknowledged it (where it landed) or it failed for good. An
    /// acknowledged event wakes this process's paused consumers of its topic ([`crate::idle::ring`]).
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> Result<Delivery, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let started = std::time::Instant::now();
        let topic = record.topic;
        let (tx, rx) = oneshot::channel();
        let mut base = base_record(record, Box::new(tx));
        loop {
            match self.0.base.send(base) {
                Ok(()) => {
                    // The report never comes only if the client is destroyed with the message queued.
                    let delivery = rx.await.unwrap_or(Err(KafkaError::Canceled))?;
                    crate::idle::ring(topic);
                    return Ok(delivery);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record))
                    if started.elapsed() < queue_timeout =>
                {
                    base = record;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((err, _)) => return Err(err),
            }
        }
    }

    /// Queues `record` without waiting for room or for its acknowledgement; refused at once when
    /// librdkafka's queue is full. Wakes this process's paused consumers of its topic as soon as it
    /// is queued.
    pub fn send_nowait<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let topic = record.topic;
        let (tx, _) = oneshot::channel();
        self.0.base.send(base_record(record, Box::new(tx))).map_err(|(err, _)| err)?;
        crate::idle::ring(topic);
        Ok(())
    }

    /// Waits up to `timeout` for every queued message to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.0.base.flush(timeout)
    }

    /// The cluster's metadata (every topic, or `topic`), on the producer's own connections;
    /// blocks up to `timeout`.
    pub fn fetch_metadata(&self, topic: Option<&str>, timeout: Duration) -> Result<Metadata, KafkaError> {
        self.0.base.client().fetch_metadata(topic, timeout)
    }
}

fn base_record<'a, K, P>(
    record: FutureRecord<'a, K, P>,
    answer: Box<oneshot::Sender<Result<Delivery, KafkaError>>>,
) -> BaseRecord<'a, K, P, Box<oneshot::Sender<Result<Delivery, KafkaError>>>>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    BaseRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers: record.headers,
        delivery_opaque: answer,
    }
}

/// Publishes one event straight to its topic and waits for the broker's acknowledgement (up to
/// 30 s). For events a worker must see acknowledged before it stores its own offset; events
/// that follow a database change go through the outbox instead.
pub async fn send<T: crate::events::Event>(
    ctx: &crate::Context,
    topic: Topic,
    key: &str,
    event: &crate::events::Envelope<T>,
) -> Result<(), String> {
    let payload = event.to_json();
    let topic = ctx.topic(topic);
    let record = FutureRecord::to(topic.as_str()).key(key).payload(&payload);
    ctx.producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|err| err.to_string())
}

/// A group consumer with auto offset store off: call `store_offset_from_message` once a message's
/// effects are durable; the background auto-commit then commits it.
pub fn consumer(config: &KafkaConfig, group_id: &str) -> Result<ClosesInBackground<SluiceConsumer>, KafkaError> {
    create(&consumer_config(config, group_id), config)
}

/// A Sluice consumer from `client` ([`consumer_config`], adjusted): it commits on revoke and
/// pauses its fetches while idle ([`crate::idle`]).
pub fn create(client: &ClientConfig, config: &KafkaConfig) -> Result<ClosesInBackground<SluiceConsumer>, KafkaError> {
    let idle = crate::idle::Settings {
        after: (config.idle_pause_ms > 0).then(|| Duration::from_millis(config.idle_pause_ms)),
        check: Duration::from_millis(config.idle_check_ms.into()),
        check_max: Duration::from_millis(config.idle_check_max_ms.into()),
        client: client.clone(),
    };
    client.create_with_context(CommitOnRevoke { idle, stillness: Default::default() }).map(ClosesInBackground::new)
}

/// A consumer that is closed on a thread of its own when dropped. Closing a group consumer can
/// hang forever inside librdkafka: the revoke callback's `rd_kafka_assign` is never answered
/// (confluentinc/librdkafka#4884, fede1024/rust-rdkafka#509; seen here as a test that never
/// ended). Dropped on the async runtime, that would stall a worker thread and shutdown with it.
/// Nothing is lost by not waiting: offsets are committed synchronously on revoke and at the end
/// of every consume loop, before the drop.
#[derive(Debug)]
pub struct ClosesInBackground<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> ClosesInBackground<T> {
    pub fn new(consumer: T) -> Self {
        Self(Some(consumer))
    }
}

impl<T: Send + 'static> std::ops::Deref for ClosesInBackground<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for ClosesInBackground<T> {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            let closing = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(consumer));
            if let Err(err) = closing {
                tracing::warn!(error = %err, "cannot start a thread to close a Kafka consumer; leaking it");
            }
        }
    }
}

/// The properties of [`consumer`], for callers that need a different consumer type.
pub fn consumer_config(config: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut client = client_config(config);
    client
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
        // Workers retry a batch through S3 or PostgreSQL outages without polling; allow 30 min
        // before the group gives their partitions away.
        .set("max.poll.interval.ms", "1800000")
        .set("heartbeat.interval.ms", (config.session_timeout_ms / 4).max(250).to_string());
    client
}

/// Makes `client` a background consumer: the broker may hold its empty fetches for
/// `kafka.background_fetch_wait_ms` instead of `kafka.fetch_wait_ms`. For consumers whose work is
/// not waited on interactively; the broker answers each fetch round with a storage read per
/// partition, so this is what an idle consumer costs it.
pub fn background<'a>(client: &'a mut ClientConfig, config: &KafkaConfig) -> &'a mut ClientConfig {
    client.set("fetch.wait.max.ms", config.background_fetch_wait_ms.to_string())
}

/// [`consumer`] for a background consumer ([`background`]).
pub fn background_consumer(
    config: &KafkaConfig,
    group_id: &str,
) -> Result<ClosesInBackground<SluiceConsumer>, KafkaError> {
    create(background(&mut consumer_config(config, group_id), config), config)
}

/// Commits stored offsets synchronously before partitions are taken away, so the next owner
/// starts after the last finished message instead of replaying up to one auto-commit interval;
/// carries the consumer's idle-pause settings ([`crate::idle`]).
#[derive(Debug, Clone)]
pub struct CommitOnRevoke {
    pub idle: crate::idle::Settings,
    /// Whether the consumer's fetches are paused now, for the tasks beside its consume loop.
    pub stillness: Arc<crate::idle::Stillness>,
}

impl ClientContext for CommitOnRevoke {}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            for topic in per_topic(partitions).into_keys() {
                metrics::gauge!("sluice_consumer_assigned_partitions", "topic" => topic).set(0.0);
            }
            // Lost, not revoked (the session expired, e.g. cut off from the broker): the group
            // has moved on, a commit would be refused, and a synchronous one blocks while the
            // broker is unreachable.
            if partitions.count() == 0 || consumer.assignment_lost() {
                return;
            }
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(err) => tracing::warn!(error = %err, "commit on partition revoke failed"),
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            metrics::describe_gauge!(
                "sluice_consumer_assigned_partitions",
                "Partitions of a topic this process's consumer holds now (0 while it has none, e.g. cut off from the broker)."
            );
            for (topic, count) in per_topic(partitions) {
                metrics::gauge!("sluice_consumer_assigned_partitions", "topic" => topic).set(count as f64);
            }
        }
    }
}

/// How many partitions of each topic a partition list holds.
fn per_topic(partitions: &rdkafka::TopicPartitionList) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for element in partitions.elements() {
        *counts.entry(element.topic().to_owned()).or_default() += 1;
    }
    counts
}

/// Runs a consumer loop until `shutdown`, recreating it two seconds after a Kafka error.
pub async fn keep_consuming<F, Fut>(what: &str, shutdown: &crate::Shutdown, mut consume: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    while !shutdown.is_cancelled() {
        if let Err(err) = consume().await {
            tracing::warn!(error = %err, consumer = what, "consumer failed; restarting in 2 s");
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

/// Exports `sluice_consumer_lag{group, topic, partition}` for the consumer's assigned partitions
/// every 10 s (high watermark minus committed offset) until aborted.
pub async fn report_lag(consumer: Arc<ClosesInBackground<SluiceConsumer>>, topic: String, group: String) {
    metrics::describe_gauge!("sluice_consumer_lag", "Messages not yet committed by a consumer group, per partition.");
    // The pause the last report was made in: a paused consumer's lag cannot change until it
    // resumes (it resumes when its partitions' ends move), so one report per pause is enough.
    let mut reported_in = None;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let pause = consumer.context().stillness.current();
        if pause.is_some() && pause == reported_in {
            continue;
        }
        let consumer = consumer.clone();
        let name = topic.clone();
        // One OffsetFetch and one ListOffsets for every assigned partition.
        let lags = tokio::task::spawn_blocking(move || {
            let assignment = consumer.assignment().ok()?;
            if assignment.count() == 0 {
                return Some(Vec::new());
            }
            let committed = consumer.committed_offsets(assignment.clone(), Duration::from_secs(5)).ok()?;
            let ends =
                consumer.offsets_for_times(crate::idle::at(&assignment, Offset::End), Duration::from_secs(5)).ok()?;
            let lags = ends
                .elements_for_topic(&name)
                .iter()
                .filter_map(|end| {
                    let high = end.offset().to_raw().filter(|&high| high >= 0)?;
                    let at = crate::idle::offset_in(&committed, &name, end.partition()).unwrap_or(0);
                    Some((end.partition(), (high - at).max(0)))
                })
                .collect();
            Some(lags)
        })
        .await
        .ok()
        .flatten();
        let Some(lags) = lags else { continue };
        reported_in = pause;
        for (partition, lag) in lags {
            metrics::gauge!("sluice_consumer_lag", "group" => group.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                .set(lag as f64);
        }
    }
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPosition {
    /// The group's committed offset (the next message it will read); `None` before its first
    /// commit on this partition.
    pub committed: Option<i64>,
    /// The partition's first retained offset and its next offset (the high watermark).
    pub low: i64,
    pub high: i64,
}

impl GroupPosition {
    /// Whether the message at `offset` is still ahead of the group: retained by the broker and
    /// not yet past the group's committed offset. (With no commit yet the group starts from the
    /// earliest retained message, as Sluice's consumers do.)
    pub fn still_queued(&self, offset: i64) -> bool {
        let start = self.committed.unwrap_or(self.low).max(self.low);
        offset >= start && offset < self.high
    }
}

/// `group`'s committed offset and the watermarks of every partition of `topic`, read without
/// joining the group (an OffsetFetch and a ListOffsets per partition).
pub async fn group_positions(
    config: &KafkaConfig,
    group: &str,
    topic: &str,
) -> Result<std::collections::HashMap<i32, GroupPosition>, KafkaError> {
    let consumer: BaseConsumer =
        client_config(config).set("group.id", group).set("enable.auto.commit", "false").create()?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(5);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut partitions = rdkafka::TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            partitions.add_partition(&topic, partition.id());
        }
        let committed = consumer.committed_offsets(partitions, timeout)?;
        let mut positions = std::collections::HashMap::new();
        for element in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(&topic, element.partition(), timeout)?;
            let committed = element.offset().to_raw().filter(|&offset| offset >= 0);
            positions.insert(element.partition(), GroupPosition { committed, low, high });
        }
        Ok(positions)
    })
    .await
    .unwrap_or_else(|_| Err(KafkaError::Canceled))
}

/// An admin client for topic management and metadata.
pub fn admin(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client_config(config).create()
}

/// Creates every Sluice topic under the configured prefix with its partition count and configs.
/// Existing topics are left as they are, so start-up is idempotent and concurrent-safe.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), KafkaError> {
    ensure_topic_set(config, &Topic::ALL).await
}

/// [`ensure_topics`] for a subset.
pub async fn ensure_topic_set(config: &KafkaConfig, topics: &[Topic]) -> Result<(), KafkaError> {
    let admin = admin(config)?;
    let names: Vec<String> = topics.iter().map(|t| t.qualified(&config.topic_prefix).to_string()).collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&names)
        .map(|(topic, name)| {
            topic.configs().iter().fold(
                NewTopic::new(
                    name,
                    topic.partitions(config.partitions),
                    TopicReplication::Fixed(config.replication_factor),
                ),
                |new, (k, v)| new.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %name, error = %code, "could not create topic");
                });
            }
        }
    }
    Ok(())
}

/// Deletes every topic under `prefix` (test clean-up; never called by services).
pub async fn delete_topics_with_prefix(config: &KafkaConfig, prefix: &str) -> Result<usize, KafkaError> {
    let admin = admin(config)?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(5))?;
    let names: Vec<String> =
        metadata.topics().iter().map(|t| t.name().to_owned()).filter(|n| n.starts_with(prefix)).collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin.delete_topics(&refs, &AdminOptions::new()).await?;
    Ok(names.len())
}

/// Whether the cluster answers a metadata request within `timeout`, and how many brokers it
/// names. Asks about `topic` alone where given ([`crate::Context::kafka_reachable`]): a
/// cluster's metadata for every topic grows with the cluster, and readiness asks every 10 s from
/// every process. The producer never asks the broker to create a topic it names
/// (`allow.auto.create.topics=false`), so the probe cannot create one. Runs the blocking
/// librdkafka call off the async runtime.
pub async fn check_reachable(
    producer: &SluiceProducer,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<usize, String> {
    let producer = producer.clone();
    let topic = topic.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        producer.fetch_metadata(topic.as_deref(), timeout).map(|m| m.brokers().len()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("metadata task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::GroupPosition;

    #[test]
    fn a_message_is_queued_between_the_group_and_the_end_of_the_log() {
        let position = GroupPosition { committed: Some(10), low: 5, high: 20 };
        assert!(position.still_queued(10) && position.still_queued(19));
        assert!(!position.still_queued(9), "the group has committed past it");
        assert!(!position.still_queued(20), "beyond the log: the broker lost it");
        let fresh = GroupPosition { committed: None, low: 5, high: 20 };
        assert!(fresh.still_queued(5), "no commit yet: read from the earliest retained message");
        assert!(!fresh.still_queued(4), "deleted before anyone read it");
        let behind = GroupPosition { committed: Some(2), low: 5, high: 20 };
        assert!(!behind.still_queued(3), "retention removed it before the group got there");
    }
}
