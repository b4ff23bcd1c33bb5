//! Prediction records: handed over without waiting (a bounded queue; when PostgreSQL falls far
//! behind, records are dropped and counted rather than slowing requests) and written in batches.
//!
//! The recorder knows which answered predictions it holds unwritten (queued, or in the batch
//! being written), so feedback that arrives before its prediction is written asks the writer to
//! write now and waits for that write ([`Recorder::written`]), and feedback on an id this process
//! does not hold is answered at once.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use sluice_core::{Context, Shutdown, db::DbError};
use tokio::{
    sync::{Notify, mpsc, watch},
    time::Instant,
};
use uuid::Uuid;

/// Records waiting beyond this many are dropped.
const QUEUE: usize = 50_000;

/// One served (or shadow-scored) prediction.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: Uuid,
    pub model: String,
    pub version: i32,
    pub alias: Option<String>,
    pub label: String,
    pub confidence: f64,
    pub top: Value,
    pub stats: Value,
    pub shadow: bool,
    /// For a shadow prediction, the answered prediction of the same input.
    pub shadow_of: Option<Uuid>,
    /// The batch-prediction job that scored it; `None` for served requests.
    pub batch: Option<Uuid>,
}

/// What the handlers and the writer share.
#[derive(Debug)]
struct Pending {
    /// Ids of the answered predictions queued or being written: at most the queue and one batch.
    ids: Mutex<HashSet<Uuid>>,
    /// Asks the writer to write what it has gathered, and what is queued, now.
    flush: Notify,
    /// Bumped each time a batch is written or dropped (its ids are no longer held).
    written: watch::Sender<u64>,
}

impl Pending {
    fn holds(&self, id: Uuid) -> bool {
        self.ids.lock().expect("pending lock").contains(&id)
    }

    /// The batch's answered predictions are written (or dropped): waiters wake.
    fn release(&self, batch: &[Record]) {
        {
            let mut ids = self.ids.lock().expect("pending lock");
            for record in batch.iter().filter(|r| !r.shadow) {
                ids.remove(&record.id);
            }
        }
        self.written.send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

/// The sending side, cloned into request handlers.
#[derive(Debug, Clone)]
pub struct Recorder {
    sender: mpsc::Sender<Record>,
    pending: Arc<Pending>,
}

/// The writing side: runs once the process runs (building a process starts nothing).
#[derive(Debug)]
pub struct Writer {
    receiver: mpsc::Receiver<Record>,
    pending: Arc<Pending>,
}

impl Writer {
    /// Writes records in batches until `shutdown`, then writes what it holds and returns.
    pub async fn run(mut self, ctx: Context, shutdown: Shutdown) {
        let batch_size = ctx.config.inference.record_batch;
        let interval = Duration::from_millis(ctx.config.inference.record_interval_ms);
        let mut batch: Vec<Record> = Vec::with_capacity(batch_size);
        loop {
            let closing = tokio::select! {
                received = self.receiver.recv() => match received {
                    Some(record) => { batch.push(record); false }
                    None => true,
                },
                () = shutdown.cancelled() => true,
            };
            if !closing {
                self.gather(&mut batch, batch_size, interval).await;
            }
            if !batch.is_empty() {
                write(&ctx, &batch, closing).await;
                self.pending.release(&batch);
                batch.clear();
            }
            if closing {
                return;
            }
        }
    }

    /// Lets a batch gather for up to `interval` (records keep arriving meanwhile), or until a
    /// flush is asked for: then what is queued joins it without waiting.
    async fn gather(&mut self, batch: &mut Vec<Record>, batch_size: usize, interval: Duration) {
        let deadline = Instant::now() + interval;
        while batch.len() < batch_size {
            tokio::select! {
                received = tokio::time::timeout_at(deadline, self.receiver.recv()) => match received {
                    Ok(Some(record)) => batch.push(record),
                    _ => return,
                },
                () = self.pending.flush.notified() => {
                    while batch.len() < batch_size {
                        match self.receiver.try_recv() {
                            Ok(record) => batch.push(record),
                            Err(_) => return,
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// Writes one batch, retrying with backoff for a while (not when `closing`); then drops it,
/// counted.
async fn write(ctx: &Context, batch: &[Record], closing: bool) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match insert(ctx, batch).await {
            Ok(()) => return,
            Err(err) if closing || backoff > Duration::from_secs(5) => {
                tracing::warn!(error = %sluice_core::error_chain(&err), records = batch.len(), "dropping prediction records");
                metrics::counter!("sluice_inference_records_dropped_total").increment(batch.len() as u64);
                return;
            }
            Err(err) => {
                tracing::warn!(error = %sluice_core::error_chain(&err), "cannot record predictions; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}

async fn insert(ctx: &Context, batch: &[Record]) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    crate::store::insert_predictions(&client, batch).await
}

impl Recorder {
    /// A recorder and the writer that empties it.
    pub fn new() -> (Self, Writer) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let pending = Arc::new(Pending { ids: Mutex::default(), flush: Notify::new(), written: watch::Sender::new(0) });
        (Self { sender, pending: pending.clone() }, Writer { receiver, pending })
    }

    pub fn record(&self, record: Record) {
        // Held before it is queued, so the writer cannot release it first.
        let answered = (!record.shadow).then_some(record.id);
        if let Some(id) = answered {
            self.pending.ids.lock().expect("pending lock").insert(id);
        }
        if self.sender.try_send(record).is_err() {
            if let Some(id) = answered {
                self.pending.ids.lock().expect("pending lock").remove(&id);
            }
            metrics::counter!("sluice_inference_records_dropped_total").increment(1);
        }
    }

    /// Whether this process holds the answered prediction `id` unwritten.
    pub fn holds(&self, id: Uuid) -> bool {
        self.pending.holds(id)
    }

    /// Asks the writer to write now and waits, until `deadline` at most, for the answered
    /// prediction `id` to be no longer held: written, or dropped after its write kept failing.
    /// Returns whether it is no longer held.
    #[tracing::instrument(level = "debug", skip(self, deadline))]
    pub async fn written(&self, id: Uuid, deadline: Instant) -> bool {
        // Subscribed before looking, so a write between the two is not missed.
        let mut generations = self.pending.written.subscribe();
        loop {
            if !self.holds(id) {
                return true;
            }
            self.pending.flush.notify_one();
            match tokio::time::timeout_at(deadline, generations.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return !self.holds(id),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(id: Uuid, shadow: bool) -> Record {
        Record {
            id,
            model: "m".into(),
            version: 1,
            alias: None,
            label: "a".into(),
            confidence: 0.9,
            top: json!([]),
            stats: json!({}),
            shadow,
            shadow_of: None,
            batch: None,
        }
    }

    /// Feedback on a prediction still queued asks for a flush: the writer gathers the queued
    /// records at once instead of waiting out its interval, and the waiter wakes once they are
    /// released.
    #[tokio::test]
    async fn a_flush_writes_held_predictions_before_the_interval_and_wakes_the_waiter() {
        let (recorder, mut writer) = Recorder::new();
        let (first, second, shadow) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        recorder.record(record(first, false));
        recorder.record(record(second, false));
        recorder.record(record(shadow, true));
        assert!(recorder.holds(first) && recorder.holds(second));
        assert!(!recorder.holds(shadow), "shadow predictions get no feedback of their own");

        let waiter = recorder.clone();
        let waiting =
            tokio::spawn(async move { waiter.written(second, Instant::now() + Duration::from_secs(60)).await });
        // The writer as `run` drives it: the first record, then a batch gathering for a minute.
        let mut batch = vec![writer.receiver.recv().await.expect("a record")];
        let gathered =
            tokio::time::timeout(Duration::from_secs(10), writer.gather(&mut batch, 100, Duration::from_secs(60)));
        gathered.await.expect("the flush ends the gathering long before the interval");
        assert_eq!(batch.len(), 3);
        assert!(!waiting.is_finished());
        writer.pending.release(&batch);
        assert!(tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken").expect("joined"));
        assert!(!recorder.holds(first) && !recorder.holds(second));
    }

    #[tokio::test]
    async fn an_id_not_held_is_answered_at_once_and_a_dropped_record_is_not_held() {
        let (recorder, writer) = Recorder::new();
        assert!(recorder.written(Uuid::now_v7(), Instant::now() + Duration::from_secs(60)).await);
        drop(writer);
        let id = Uuid::now_v7();
        recorder.record(record(id, false));
        assert!(!recorder.holds(id), "a record the queue refused is not waited for");
    }
}
