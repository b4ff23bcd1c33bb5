//! The one way Sluice workers consume and retry.
//!
//! - An attempt at a piece of work returns an [`Outcome`]: `Ok` when it is done, or a
//!   [`Failure`]: [`Failure::Poison`] when it can never succeed (recorded, then skipped),
//!   [`Failure::Retry`] when a dependency is away (tried again), [`Failure::Interrupted`] when
//!   shutdown stopped it (left for the next owner).
//! - [`retry_until`] runs an attempt until it succeeds, with exponential backoff and jitter;
//!   [`settle`] runs one until it is done or poisoned.
//! - [`consume`] is the at-least-once loop of every work-queue consumer: up to `concurrency`
//!   messages in flight (never two of one key at once), each partition's offset stored only up
//!   to the first message not yet finished, so a slow item never holds the others back and a
//!   crash replays only what had not finished.
//!
//! (The shape of rust-rdkafka's `examples/at_least_once.rs`, with vector's per-partition
//! acknowledgement of `src/sources/kafka.rs`.)

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt::Display,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    Message, Offset,
    consumer::{CommitMode, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedMessage,
};

use crate::{Shutdown, kafka::SluiceConsumer};

/// Why an attempt did not finish its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The input can never succeed: record it with the reason and move on.
    Poison(String),
    /// A dependency is away: try again later; nothing is acknowledged.
    Retry(String),
    /// Shutting down: leave the work to whoever consumes it next.
    Interrupted,
}

impl Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Poison(reason) => write!(f, "cannot succeed: {reason}"),
            Self::Retry(cause) => write!(f, "{cause}"),
            Self::Interrupted => write!(f, "interrupted by shutdown"),
        }
    }
}

// PostgreSQL or S3 failing is an outage until shown otherwise: a caller that can tell a missing
// object from an outage maps it to `Poison` itself. Data PostgreSQL refuses to store is refused
// every time: poison, not an outage.
impl From<crate::db::DbError> for Failure {
    fn from(err: crate::db::DbError) -> Self {
        if err.is_data_refusal() {
            Self::Poison(format!("PostgreSQL refuses the data: {}", crate::error_chain(&err)))
        } else {
            Self::Retry(crate::error_chain(&err))
        }
    }
}

impl From<crate::s3::S3Error> for Failure {
    fn from(err: crate::s3::S3Error) -> Self {
        Self::Retry(err.to_string())
    }
}

/// The result of one attempt: done (with its value), or why not.
pub type Outcome<T = ()> = Result<T, Failure>;

/// How long to wait between attempts: doubling from `first` up to `max`, each wait jittered by
/// ±50 % so that replicas retrying one outage do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// For work waiting on PostgreSQL, S3 or Kafka.
    pub const DEPENDENCY: Self = Self { first: Duration::from_millis(200), max: Duration::from_secs(10) };

    fn waits(self) -> impl Iterator<Item = Duration> {
        std::iter::successors(Some(self.first), move |w| Some((*w * 2).min(self.max))).map(jittered)
    }

    /// The wait before retry number `retry` (1 for the first), jittered the same way: for work
    /// whose retries are scheduled in PostgreSQL rather than slept through (webhook deliveries).
    pub fn nth(self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        jittered(self.first.saturating_mul(1 << doublings).min(self.max))
    }
}

fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(rand::random_range(0.5..1.5))
}

/// Runs `attempt` until it succeeds, waiting after each failure (logged with `what`); `None`
/// when `shutdown` comes first. For outages only: an input that can never succeed must be
/// answered with `Ok` (recorded as refused), or it is retried forever.
pub async fn retry_until<T, E, F, Fut>(shutdown: &Shutdown, backoff: Backoff, what: &str, mut attempt: F) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waits = backoff.waits();
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => {
                if shutdown.is_cancelled() {
                    return None;
                }
                let wait = waits.next().unwrap_or(backoff.max);
                tracing::warn!(error = %err, retry_in = ?wait, "{what}; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// How settled work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled<T> {
    Done(T),
    Poison(String),
}

/// Runs `attempt` until it is done or poisoned, retrying [`Failure::Retry`] with `backoff`;
/// `None` when it was interrupted or shutdown came first.
pub async fn settle<T, F, Fut>(shutdown: &Shutdown, backoff: Backoff, what: &str, mut attempt: F) -> Option<Settled<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Outcome<T>>,
{
    let settled = retry_until(shutdown, backoff, what, || {
        let attempt = attempt();
        async move {
            match attempt.await {
                Ok(value) => Ok(Some(Settled::Done(value))),
                Err(Failure::Poison(reason)) => Ok(Some(Settled::Poison(reason))),
                Err(Failure::Interrupted) => Ok(None),
                Err(Failure::Retry(cause)) => Err(cause),
            }
        }
    });
    settled.await.flatten()
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
}

async fn tagged<Fut: Future<Output = bool>>(
    work: Fut,
    at: Position,
    key: Option<Vec<u8>>,
) -> (Position, Option<Vec<u8>>, bool) {
    (at, key, work.await)
}

/// The at-least-once loop of a work-queue consumer. Hands each message to `handle`, with up to
/// `concurrency` in flight (a message whose key is in flight waits for it: one item is never
/// worked on twice at once, and a key's messages keep their order); `handle` answers `true` once
/// the message's effects are durable (or it can never succeed and was recorded as such), and
/// `false` when shutdown interrupted it. Each partition's offset is stored up to the first
/// message not yet finished. Ends on `shutdown`, a `false`, or a consumer error, once the
/// messages in flight have ended, after a synchronous commit of what was stored. With nothing
/// received or in flight for `kafka.idle_pause_ms`, its fetches pause ([`crate::idle`]).
pub async fn consume<F, Fut>(
    consumer: &SluiceConsumer,
    shutdown: &Shutdown,
    concurrency: usize,
    handle: F,
) -> Result<(), KafkaError>
where
    F: FnMut(OwnedMessage) -> Fut,
    Fut: Future<Output = bool>,
{
    consume_with(consumer, shutdown, concurrency, false, handle).await
}

/// [`consume`] for work that takes long (a training trial runs for hours): while every slot is
/// busy the loop goes on polling, its partitions paused, so the group's rebalances complete at
/// once. A member that does not poll holds up a rebalance of the whole group until its work
/// ends (up to `max.poll.interval.ms`): a worker joining or dying would stall every other
/// worker's next trial. A message that arrives while every slot is busy (fetched before the
/// pause, or from a partition assigned since) is sought back to, and read again once a slot is
/// free.
pub async fn consume_long<F, Fut>(
    consumer: &SluiceConsumer,
    shutdown: &Shutdown,
    concurrency: usize,
    handle: F,
) -> Result<(), KafkaError>
where
    F: FnMut(OwnedMessage) -> Fut,
    Fut: Future<Output = bool>,
{
    consume_with(consumer, shutdown, concurrency, true, handle).await
}

async fn consume_with<F, Fut>(
    consumer: &SluiceConsumer,
    shutdown: &Shutdown,
    concurrency: usize,
    poll_while_busy: bool,
    mut handle: F,
) -> Result<(), KafkaError>
where
    F: FnMut(OwnedMessage) -> Fut,
    Fut: Future<Output = bool>,
{
    let concurrency = concurrency.max(1);
    let mut paused_while_busy = false;
    let mut stream = consumer.stream();
    let mut idle = crate::idle::IdlePause::new(consumer);
    let mut running = FuturesUnordered::new();
    // Per partition: offsets received, with whether each has finished.
    let mut open: HashMap<(String, i32), BTreeMap<i64, bool>> = HashMap::new();
    let mut busy: HashSet<Vec<u8>> = HashSet::new();
    let mut waiting: HashMap<Vec<u8>, VecDeque<OwnedMessage>> = HashMap::new();
    let mut held = 0usize;
    let mut stopping = false;
    let mut result = Ok(());
    let mut start = |message: OwnedMessage, busy: &mut HashSet<Vec<u8>>| {
        let at =
            Position { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() };
        let key = message.key().map(<[u8]>::to_vec);
        if let Some(key) = &key {
            busy.insert(key.clone());
        }
        tagged(handle(message), at, key)
    };
    loop {
        if stopping && running.is_empty() {
            break;
        }
        let room = !stopping && running.len() + held < concurrency;
        if poll_while_busy && room == paused_while_busy {
            paused_while_busy = !room;
            set_paused(consumer, paused_while_busy);
        }
        tokio::select! {
            () = shutdown.cancelled(), if !stopping => stopping = true,
            check = idle.wait(), if !stopping => if check {
                idle.check(running.is_empty() && held == 0).await;
            },
            Some((at, key, finished)) = running.next(), if !running.is_empty() => {
                let (at, key, finished): (Position, Option<Vec<u8>>, bool) = (at, key, finished);
                idle.active();
                if finished {
                    let partition = open.entry((at.topic.clone(), at.partition)).or_default();
                    partition.insert(at.offset, true);
                    let mut last = None;
                    while let Some(entry) = partition.first_entry() {
                        if !*entry.get() {
                            break;
                        }
                        last = Some(*entry.key());
                        entry.remove();
                    }
                    if let Some(offset) = last
                        && let Err(err) = consumer.store_offset(&at.topic, at.partition, offset)
                    {
                        // The partition was taken away meanwhile: its next owner redoes the
                        // message, which changes nothing.
                        tracing::warn!(error = %err, topic = at.topic, partition = at.partition, offset, "cannot store an offset");
                    }
                } else {
                    stopping = true;
                }
                if let Some(key) = key {
                    busy.remove(&key);
                    let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                    if waiting.get(&key).is_some_and(VecDeque::is_empty) {
                        waiting.remove(&key);
                    }
                    if let Some(message) = next {
                        held -= 1;
                        if !stopping {
                            running.push(start(message, &mut busy));
                        }
                    }
                }
            },
            next = stream.next(), if room || (poll_while_busy && !stopping) => match next {
                Some(Ok(message)) if !room => {
                    // Read again once a slot is free (from here, as its offset was not stored).
                    set_paused(consumer, true);
                    let at = Offset::Offset(message.offset());
                    if let Err(err) = consumer.seek(message.topic(), message.partition(), at, Duration::from_secs(5)) {
                        tracing::warn!(error = %err, "cannot seek back to a message that came while busy; reconnecting");
                        stopping = true;
                    }
                }
                Some(Ok(message)) => {
                    idle.received(&message);
                    let message = message.detach();
                    let partition = open.entry((message.topic().to_owned(), message.partition())).or_default();
                    partition.entry(message.offset()).or_insert(false);
                    match message.key() {
                        Some(key) if busy.contains(key) => {
                            waiting.entry(key.to_vec()).or_default().push_back(message);
                            held += 1;
                        }
                        _ => running.push(start(message, &mut busy)),
                    }
                }
                Some(Err(err)) => {
                    result = Err(err);
                    stopping = true;
                }
                None => stopping = true,
            },
        }
    }
    drop(stream);
    // After a Kafka error the consumer is replaced: its session is likely gone (a commit would
    // be refused) and a synchronous commit to an unreachable broker would block this thread.
    // Offsets it stored were auto-committed while it could; the next owner redoes the rest.
    if result.is_ok() && !consumer.assignment_lost() {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => tracing::warn!(error = %err, "final commit failed"),
        }
    }
    result
}

/// One delivery's run of a long unit of work (a trial, a batch prediction) under
/// [`consume_long`], across the retries of its attempts. The run names itself on its unit when it
/// starts it (a `run_id` column); a later delivery elsewhere, after a rebalance gave the
/// partition away, names itself there in turn, and this run stops at its next step.
#[derive(Debug)]
pub struct Run {
    pub id: uuid::Uuid,
    started: AtomicBool,
    taken_over: AtomicBool,
    counted: AtomicBool,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            started: AtomicBool::new(false),
            taken_over: AtomicBool::new(false),
            counted: AtomicBool::new(false),
        }
    }
}

impl Run {
    /// Whether this run has named itself on its unit: a retry then checks that no other run took
    /// the unit over meanwhile instead of taking it back (only a new delivery takes a unit over).
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// This run named itself on its unit.
    pub fn start(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// This run's try counted an attempt on its unit, to be given back if the run stops through
    /// no fault of the unit ([`Run::uncount`]).
    pub fn count_attempt(&self) {
        self.counted.store(true, Ordering::Relaxed);
    }

    /// Whether the attempt this run counted is still to be given back; the first call says so,
    /// later ones do not, so an attempt is given back (or kept as failed) once.
    pub fn uncount(&self) -> bool {
        self.counted.swap(false, Ordering::Relaxed)
    }

    /// Another process's run took the unit over: this run stops with nothing to publish.
    pub fn yield_unit(&self) {
        self.taken_over.store(true, Ordering::Relaxed);
    }

    /// What the consume loop is told once the run's handler answered `done`. A run whose unit was
    /// taken over leaves the message to the process that holds its partition now; if the
    /// partition came back here meanwhile, storing its offset would end the message while the
    /// other run may still die, so the loop is told to stop (`false`): it reconnects and the
    /// message is delivered again.
    pub fn answer<M: Message>(&self, done: bool, consumer: &SluiceConsumer, message: &M) -> bool {
        if !self.taken_over.load(Ordering::Relaxed) {
            return done;
        }
        !consumer.assignment().is_ok_and(|held| held.find_partition(message.topic(), message.partition()).is_some())
    }
}

/// Pauses or resumes every partition the consumer holds now.
fn set_paused(consumer: &SluiceConsumer, paused: bool) {
    let assignment = consumer.assignment().unwrap_or_default();
    let done = if paused { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    if let Err(err) = done {
        tracing::warn!(error = %err, paused, "cannot pause or resume a busy consumer's partitions");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let backoff = Backoff { first: Duration::from_millis(100), max: Duration::from_millis(400) };
        let waits: Vec<Duration> = backoff.waits().take(5).collect();
        let bounds = [100, 200, 400, 400, 400];
        for (wait, bound) in waits.iter().zip(bounds) {
            let bound = Duration::from_millis(bound);
            assert!(*wait >= bound / 2 && *wait <= bound * 3 / 2, "{wait:?} for {bound:?}");
        }
    }

    #[test]
    fn the_nth_wait_follows_the_same_doubling_and_jitter() {
        let backoff = Backoff { first: Duration::from_millis(100), max: Duration::from_millis(400) };
        for (retry, bound) in [(0, 100), (1, 100), (2, 200), (3, 400), (40, 400)] {
            let wait = backoff.nth(retry);
            let bound = Duration::from_millis(bound);
            assert!(wait >= bound / 2 && wait <= bound * 3 / 2, "retry {retry}: {wait:?} for {bound:?}");
        }
    }

    #[tokio::test]
    async fn settle_retries_what_can_succeed_and_stops_at_poison() {
        let shutdown = Shutdown::new();
        let fast = Backoff { first: Duration::from_millis(1), max: Duration::from_millis(2) };
        let mut tries = 0;
        let settled = settle(&shutdown, fast, "test", || {
            tries += 1;
            let outcome = if tries < 3 { Err(Failure::Retry("away".into())) } else { Ok(tries) };
            async move { outcome }
        })
        .await;
        assert_eq!(settled, Some(Settled::Done(3)));
        let poisoned = settle(&shutdown, fast, "test", || async { Err::<(), _>(Failure::Poison("bad".into())) }).await;
        assert_eq!(poisoned, Some(Settled::Poison("bad".into())));
        let interrupted = settle(&shutdown, fast, "test", || async { Err::<(), _>(Failure::Interrupted) }).await;
        assert_eq!(interrupted, None);
        shutdown.cancel();
        let away = settle(&shutdown, fast, "test", || async { Err::<(), _>(Failure::Retry("away".into())) }).await;
        assert_eq!(away, None, "no retrying once shutting down");
    }
}
