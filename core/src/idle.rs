//! Pausing an idle consumer's fetches.
//!
//! A consumer with nothing to read still sends a fetch every `fetch.wait.max.ms`. Apache Kafka
//! parks such a fetch until data arrives, but a broker that answers it by reading its storage on
//! a timer (the local stack's) spends CPU on every idle consumer × partition × round; an idle
//! `sluice up` kept a quarter of a core busy that way. So a work consumer that has received
//! nothing for `kafka.idle_pause_ms` pauses its partitions and instead compares their ends with
//! where it stands (one ListOffsets request for all of them): after `kafka.idle_check_ms`, then
//! twice as long after each check that finds nothing, up to `kafka.idle_check_max_ms` (each check
//! costs the broker a read per partition too). It resumes at once when:
//! - a partition's end moved past the consumer's position (new events from anywhere);
//! - this process published to one of its topics ([`ring`], called by Sluice's producer: the
//!   local stack runs every service in one process, so new work there is picked up without
//!   waiting for a check), or another Sluice process did and announced it through PostgreSQL
//!   ([`share_doorbells`]);
//! - its assignment changed (a rebalance), a message arrived anyway, or a check failed.
//!
//! Nothing can be missed: the comparison is against the consumer's own position (what it
//! consumed, or its group's committed offset, or the partition's start when there is neither),
//! not against an earlier look at the ends, so an event that landed just before the pause is
//! found by the first check. A wrong answer only costs fetches: the consumer resumes, finds
//! nothing and pauses again after `kafka.idle_pause_ms`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
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
    /// Compare the partitions' ends with the consumer's position this long after pausing, then
    /// twice as long after each check that finds nothing, up to `check_max`.
    pub check: Duration,
    pub check_max: Duration,
    /// The consumer's own properties (brokers, group, security): the checks run on a client of
    /// their own, made from them, so they never wait behind the consumer's fetches.
    pub client: ClientConfig,
}

/// Whether a consumer is paused, and how many times it paused: the tasks beside its consume loop
/// (the lag report) skip their own broker requests while it stands still.
#[derive(Debug, Default)]
pub struct Stillness {
    paused: AtomicBool,
    pauses: AtomicU64,
}

impl Stillness {
    /// Which pause the consumer is in (a count), or `None` while it fetches.
    pub fn current(&self) -> Option<u64> {
        self.paused.load(Ordering::Acquire).then(|| self.pauses.load(Ordering::Acquire))
    }

    fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::AcqRel);
        self.paused.store(true, Ordering::Release);
    }

    fn resumed(&self) {
        self.paused.store(false, Ordering::Release);
    }
}

/// Per topic, a counter bumped each time this process publishes to it.
static DOORBELLS: LazyLock<Mutex<HashMap<String, watch::Sender<()>>>> = LazyLock::new(Default::default);

fn doorbell(topic: &str) -> watch::Receiver<()> {
    let mut bells = DOORBELLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    bells.entry(topic.to_owned()).or_insert_with(|| watch::channel(()).0).subscribe()
}

/// Tells this process's paused consumers of `topic` that it published an event there, and the
/// other Sluice processes too ([`share_doorbells`]). [`crate::kafka::SluiceProducer`] calls it.
pub fn ring(topic: &str) {
    ring_here(topic);
    let mut announcers = ANNOUNCERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    announcers.retain(|announcer| announcer.strong_count() > 0);
    for announcer in announcers.iter().filter_map(std::sync::Weak::upgrade) {
        let mut published = announcer.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !published.contains(topic) {
            published.insert(topic.to_owned());
            announcer.due.notify_one();
        }
    }
}

fn ring_here(topic: &str) {
    let bells = DOORBELLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(bell) = bells.get(topic) {
        bell.send_replace(());
    }
}

/// Wakes every paused consumer of this process: announcements may have been missed.
fn ring_every_bell() {
    let bells = DOORBELLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for bell in bells.values() {
        bell.send_replace(());
    }
}

/// Topics this process published to since an announcer's last announcement, and the bell that
/// says there are some. One per [`share_doorbells`] running (one per process, except in tests,
/// where several apps with databases of their own share a process).
#[derive(Debug, Default)]
struct Announcer {
    published: Mutex<BTreeSet<String>>,
    due: tokio::sync::Notify,
}

static ANNOUNCERS: LazyLock<Mutex<Vec<std::sync::Weak<Announcer>>>> = LazyLock::new(Default::default);

/// The PostgreSQL channel Sluice processes announce the topics they published to on.
pub const CHANNEL: &str = "sluice_published";
/// Announcements go out at most this often: one `NOTIFY` per topic per round, however many
/// events went to it.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);

/// Shares this process's doorbells with the other Sluice processes through PostgreSQL, which all
/// of them use: announces (`NOTIFY sluice_published, '<topic>'`) the topics this process
/// published to, and rings this process's bells for the topics the others announce, so a
/// consumer paused on one host wakes as soon as another host publishes to its topic, not at its
/// next check. Producers that are not Sluice's (and announcements lost while PostgreSQL is away:
/// every bell rings when the listener reconnects) are left to the checks. Runs until `shutdown`.
pub async fn share_doorbells(pool: crate::db::Pool, config: crate::config::DatabaseConfig, shutdown: crate::Shutdown) {
    let announcer = Arc::new(Announcer::default());
    ANNOUNCERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Arc::downgrade(&announcer));
    tokio::join!(announce(&announcer, &pool, &shutdown), listen(&config, &shutdown));
}

async fn announce(announcer: &Announcer, pool: &crate::db::Pool, shutdown: &crate::Shutdown) {
    while !shutdown.is_cancelled() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = announcer.due.notified() => {}
        }
        // Later events of the round join this announcement.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
        let published =
            std::mem::take(&mut *announcer.published.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let topics: Vec<String> = published.into_iter().collect();
        let sent = async {
            let client = pool.get().await.map_err(crate::db::DbError::from)?;
            client
                .execute("SELECT pg_notify($1, topic) FROM unnest($2::text[]) AS topic", &[&CHANNEL, &topics])
                .await?;
            Ok::<_, crate::db::DbError>(())
        };
        if let Err(err) = sent.await {
            // The others' checks find the events; nothing is lost.
            tracing::debug!(error = %err, "cannot announce published topics");
        }
    }
}

async fn listen(config: &crate::config::DatabaseConfig, shutdown: &crate::Shutdown) {
    let mut backoff = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        if let Err(err) = listen_once(config, shutdown).await {
            tracing::debug!(error = %err, retry_in = ?backoff, "not listening for other processes' publishes");
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One `LISTEN` connection, until it fails or `shutdown`.
async fn listen_once(
    config: &crate::config::DatabaseConfig,
    shutdown: &crate::Shutdown,
) -> Result<(), crate::db::DbError> {
    use futures::StreamExt;
    let (client, mut connection) = crate::db::connect(config).await?;
    // The connection delivers notifications as it is driven; it ends when `client` is dropped.
    let mut driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(announced) = message? {
                ring_here(announced.payload());
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    if let Err(err) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return Err(err.into());
    }
    // Whatever was announced while nobody listened.
    ring_every_bell();
    tokio::select! {
        () = shutdown.cancelled() => {
            driver.abort();
            Ok(())
        }
        ended = &mut driver => match ended {
            Ok(Err(err)) => Err(err.into()),
            _ => Ok(()),
        },
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
    /// The wait between checks: `settings.check` while fetching, growing while paused.
    every: Duration,
    next_check: tokio::time::Instant,
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
        let subscribed = consumer.subscription().unwrap_or_default();
        let assigned = consumer.assignment().unwrap_or_default();
        let topics: BTreeSet<String> =
            subscribed.elements().iter().chain(assigned.elements().iter()).map(|e| e.topic().to_owned()).collect();
        Self {
            consumer,
            last_active: Instant::now(),
            paused: None,
            every: settings.check,
            next_check: tokio::time::Instant::now() + settings.check,
            settings,
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

    /// Checks after `first` while paused, then twice as long after each check that finds
    /// nothing, up to `max`, instead of `kafka.idle_check_ms` growing to `kafka.idle_check_max_ms`.
    pub fn checking(mut self, first: Duration, max: Duration) -> Self {
        (self.settings.check, self.settings.check_max) = (first, max.max(first));
        self.check_in(first);
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

    /// The next check comes `every` from now, and so on until the wait changes again.
    fn check_in(&mut self, every: Duration) {
        self.every = every;
        self.next_check = tokio::time::Instant::now() + every;
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
            () = tokio::time::sleep_until(self.next_check) => {
                self.check_in(self.every);
                true
            }
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
                    self.check_in((self.every * 2).min(self.settings.check_max));
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
        self.consumer.context().stillness.paused();
        tracing::debug!(partitions = assignment.count(), "idle: fetching paused");
        metrics::counter!("sluice_consumer_idle_pauses_total").increment(1);
        self.paused = Some(Paused { next });
    }

    fn resume(&mut self, why: &str) {
        self.paused = None;
        self.consumer.context().stillness.resumed();
        self.check_in(self.settings.check);
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
pub(crate) fn at(list: &TopicPartitionList, offset: Offset) -> TopicPartitionList {
    let mut with = TopicPartitionList::new();
    for (topic, partition) in partitions(list) {
        with.add_partition(&topic, partition).set_offset(offset).expect("a logical offset is valid");
    }
    with
}

/// `partition`'s offset in `list`, when it is a real one (not a logical or invalid offset).
pub(crate) fn offset_in(list: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    list.find_partition(topic, partition).and_then(|e| e.offset().to_raw()).filter(|&offset| offset >= 0)
}

fn partitions(list: &TopicPartitionList) -> Vec<(String, i32)> {
    let mut all: Vec<(String, i32)> = list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
    all.sort();
    all
}
