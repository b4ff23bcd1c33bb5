//! Pausing an idle consumer's fetches.
//!
//! A consumer with nothing to read still sends a fetch every `fetch.wait.max.ms`. Apache Kafka
//! parks such a fetch until data arrives, but a broker that answers it by reading its storage on
//! a timer (the local stack's) spends CPU on every idle consumer × partition × round; an idle
//! `sluice up` kept a quarter of a core busy that way. So a work consumer that has received
//! nothing for `kafka.idle_pause_ms` pauses its partitions and instead compares their ends with
//! where it stands every `kafka.idle_check_ms` (one ListOffsets request for all of them). It
//! resumes at once when:
//! - a partition's end moved past the consumer's position (new events from anywhere);
//! - this process published to one of its topics ([`ring`], called by Sluice's producer: the
//!   local stack runs every service in one process, so new work there is picked up without
//!   waiting for a check);
//! - its assignment changed (a rebalance), a message arrived anyway, or a check failed.
//!
//! Nothing can be missed: the comparison is against the consumer's own position (what it
//! consumed, or its group's committed offset, or the partition's start when there is neither),
//! not against an earlier look at the ends, so an event that landed just before the pause is
//! found by the first check. A wrong answer only costs fetches: the consumer resumes, finds
//! nothing and pauses again after `kafka.idle_pause_ms`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};
use tokio::sync::watch;

use crate::kafka::SluiceConsumer;

/// How long a check may wait for the broker; a check that fails resumes fetching.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A consumer's idle-pause settings, kept in its context ([`crate::kafka::CommitOnRevoke`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pause after this long with nothing received; `None` never pauses.
    pub after: Option<Duration>,
    /// Compare the partitions' ends with the consumer's position this often while paused.
    pub check: Duration,
    /// The consumer's own properties (brokers, group, security): the checks run on a client of
    /// their own, made from them, so they never wait behind the consumer's fetches.
    pub client: ClientConfig,
}

/// Per topic, a counter bumped each time this process publishes to it.
static DOORBELLS: LazyLock<Mutex<HashMap<String, watch::Sender<()>>>> = LazyLock::new(Default::default);

fn doorbell(topic: &str) -> watch::Receiver<()> {
    let mut bells = DOORBELLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    bells.entry(topic.to_owned()).or_insert_with(|| watch::channel(()).0).subscribe()
}

/// Tells this process's paused consumers of `topic` that it published an event there
/// ([`crate::kafka::SluiceProducer`] calls it).
pub fn ring(topic: &str) {
    let bells = DOORBELLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(bell) = bells.get(topic) {
        bell.send_replace(());
    }
}

/// Where a paused consumer stands: per partition, the next offset it would read.
#[derive(Debug)]
struct Paused {
    next: BTreeMap<(String, i32), i64>,
}

/// The idle-pause state of one consume loop ([`crate::work::consume`]).
pub struct IdlePause<'a> {
    consumer: &'a SluiceConsumer,
    settings: Settings,
    last_active: Instant,
    paused: Option<Paused>,
    checks: tokio::time::Interval,
    doorbells: Vec<watch::Receiver<()>>,
    checker: Option<Arc<BaseConsumer>>,
    /// Per partition, the offset after the last message received (or where it was assigned).
    consumed: BTreeMap<(String, i32), i64>,
}

impl std::fmt::Debug for IdlePause<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePause")
            .field("settings", &self.settings)
            .field("last_active", &self.last_active)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl<'a> IdlePause<'a> {
    /// For a consumer that has subscribed to its topics or been assigned its partitions.
    pub fn new(consumer: &'a SluiceConsumer) -> Self {
        let settings = consumer.context().idle.clone();
        let mut checks = tokio::time::interval(settings.check);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let subscribed = consumer.subscription().unwrap_or_default();
        let assigned = consumer.assignment().unwrap_or_default();
        let topics: std::collections::BTreeSet<String> =
            subscribed.elements().iter().chain(assigned.elements().iter()).map(|e| e.topic().to_owned()).collect();
        Self {
            consumer,
            settings,
            last_active: Instant::now(),
            paused: None,
            checks,
            doorbells: topics.iter().map(|topic| doorbell(topic)).collect(),
            checker: None,
            consumed: BTreeMap::new(),
        }
    }

    /// For a consumer assigned `at` concrete offsets (not [`Offset::End`]): where it stands
    /// before its first message.
    pub fn starting_at(mut self, at: &TopicPartitionList) -> Self {
        for (topic, partition) in partitions(at) {
            if let Some(offset) = offset_in(at, &topic, partition) {
                self.consumed.insert((topic, partition), offset);
            }
        }
        self
    }

    /// Checks every `every` instead of `kafka.idle_check_ms` while paused.
    pub fn checking_every(mut self, every: Duration) -> Self {
        self.checks = tokio::time::interval(every);
        self.checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self
    }

    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// A message arrived: the consumer is not idle (and resumes if it was paused).
    pub fn received<M: rdkafka::Message>(&mut self, message: &M) {
        self.consumed.insert((message.topic().to_owned(), message.partition()), message.offset() + 1);
        self.active();
    }

    /// A message finished (or anything else that shows the consumer is busy).
    pub fn active(&mut self) {
        self.last_active = Instant::now();
        if self.paused.is_some() {
            self.resume("a message arrived");
        }
    }

    /// Waits for the next check (`true`) or, while paused, for this process to publish to one of
    /// the consumer's topics (it then resumes and answers `false`). Cancel-safe.
    pub async fn wait(&mut self) -> bool {
        let paused = self.paused.is_some() && !self.doorbells.is_empty();
        let rung = async {
            if !paused {
                return std::future::pending().await;
            }
            let changes = self.doorbells.iter_mut().map(|bell| Box::pin(bell.changed()));
            // A bell's sender lives as long as the process, so `changed` never fails.
            let _ = futures::future::select_all(changes).await;
        };
        tokio::select! {
            _ = self.checks.tick() => true,
            () = rung => {
                self.resume("this process published to its topic");
                false
            }
        }
    }

    /// At each tick: pause when `idle` (nothing in flight) for long enough, or check whether a
    /// paused consumer has something to read.
    pub async fn check(&mut self, idle: bool) {
        let Some(after) = self.settings.after else { return };
        let Some(paused) = self.paused.take() else {
            if idle && self.last_active.elapsed() >= after {
                self.pause().await;
            }
            return;
        };
        let assignment = self.consumer.assignment().unwrap_or_default();
        if partitions(&assignment) != paused.next.keys().cloned().collect::<Vec<_>>() {
            return self.resume("its assignment changed");
        }
        let ends = at(&assignment, Offset::End);
        match self.ask(ends, |checker, list| checker.offsets_for_times(list, CHECK_TIMEOUT)).await {
            Ok(ends) => {
                let behind = ends.elements().iter().any(|e| {
                    let next = paused.next.get(&(e.topic().to_owned(), e.partition())).copied().unwrap_or(0);
                    e.offset().to_raw().is_some_and(|end| end > next)
                });
                if behind {
                    self.resume("new events");
                } else {
                    self.paused = Some(paused);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "idle check failed");
                self.resume("a check failed");
            }
        }
    }

    async fn pause(&mut self) {
        let Ok(assignment) = self.consumer.assignment() else { return };
        if assignment.count() == 0 {
            return;
        }
        let next = match self.positions(&assignment).await {
            Ok(next) => next,
            Err(err) => {
                tracing::debug!(error = %err, "cannot tell where an idle consumer stands; not pausing");
                self.last_active = Instant::now();
                return;
            }
        };
        for bell in &mut self.doorbells {
            bell.borrow_and_update();
        }
        if let Err(err) = self.consumer.pause(&assignment) {
            tracing::debug!(error = %err, "cannot pause an idle consumer");
            self.last_active = Instant::now();
            return;
        }
        tracing::debug!(partitions = assignment.count(), "idle: fetching paused");
        metrics::counter!("sluice_consumer_idle_pauses_total").increment(1);
        self.paused = Some(Paused { next });
    }

    fn resume(&mut self, why: &str) {
        self.paused = None;
        self.last_active = Instant::now();
        let assignment = self.consumer.assignment().unwrap_or_default();
        if let Err(err) = self.consumer.resume(&assignment) {
            tracing::warn!(error = %err, "cannot resume a paused consumer");
        }
        tracing::debug!(why, "idle: fetching resumed");
    }

    /// Per assigned partition, the next offset the consumer would read: past what it received (or
    /// where it was assigned), or its group's committed offset, else the partition's start (where
    /// `auto.offset.reset=earliest` begins).
    async fn positions(&mut self, assignment: &TopicPartitionList) -> Result<BTreeMap<(String, i32), i64>, KafkaError> {
        let committed =
            self.ask(assignment.clone(), |checker, list| checker.committed_offsets(list, CHECK_TIMEOUT)).await?;
        let known: Vec<((String, i32), Option<i64>)> = partitions(assignment)
            .into_iter()
            .map(|(topic, partition)| {
                let consumed = self.consumed.get(&(topic.clone(), partition)).copied();
                let offset = consumed.max(offset_in(&committed, &topic, partition));
                ((topic, partition), offset)
            })
            .collect();
        let starts = if known.iter().any(|(_, offset)| offset.is_none()) {
            let starts = at(assignment, Offset::Beginning);
            Some(self.ask(starts, |checker, list| checker.offsets_for_times(list, CHECK_TIMEOUT)).await?)
        } else {
            None
        };
        Ok(known
            .into_iter()
            .map(|((topic, partition), offset)| {
                let start = || starts.as_ref().and_then(|starts| offset_in(starts, &topic, partition));
                let next = offset.or_else(start).unwrap_or(0);
                ((topic, partition), next)
            })
            .collect())
    }

    /// Runs a blocking request on the checking client, on a blocking thread.
    async fn ask<F>(&mut self, list: TopicPartitionList, request: F) -> Result<TopicPartitionList, KafkaError>
    where
        F: FnOnce(&BaseConsumer, TopicPartitionList) -> Result<TopicPartitionList, KafkaError> + Send + 'static,
    {
        let checker = match &self.checker {
            Some(checker) => checker.clone(),
            None => {
                let mut client = self.settings.client.clone();
                client.set("enable.auto.commit", "false");
                let checker: Arc<BaseConsumer> = Arc::new(client.create()?);
                self.checker = Some(checker.clone());
                checker
            }
        };
        tokio::task::spawn_blocking(move || request(&checker, list)).await.unwrap_or(Err(KafkaError::Canceled))
    }
}

/// `list`'s partitions at `offset`: [`Offset::End`] or [`Offset::Beginning`] ask
/// `offsets_for_times` for the partitions' ends or starts (ListOffsets' latest and earliest).
fn at(list: &TopicPartitionList, offset: Offset) -> TopicPartitionList {
    let mut with = TopicPartitionList::new();
    for (topic, partition) in partitions(list) {
        with.add_partition(&topic, partition).set_offset(offset).expect("a logical offset is valid");
    }
    with
}

/// `partition`'s offset in `list`, when it is a real one (not a logical or invalid offset).
fn offset_in(list: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    list.find_partition(topic, partition).and_then(|e| e.offset().to_raw()).filter(|&offset| offset >= 0)
}

fn partitions(list: &TopicPartitionList) -> Vec<(String, i32)> {
    let mut all: Vec<(String, i32)> = list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
    all.sort();
    all
}
