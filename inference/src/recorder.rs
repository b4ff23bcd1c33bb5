//! Prediction records: handed over without waiting (a bounded queue; when PostgreSQL falls far
//! behind, records are dropped and counted rather than slowing requests) and written in batches.

use std::time::Duration;

use serde_json::Value;
use sluice_core::{Context, Shutdown};
use tokio::sync::mpsc;
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

/// The sending side, cloned into request handlers.
#[derive(Debug, Clone)]
pub struct Recorder(mpsc::Sender<Record>);

/// The writing side: runs once the process runs (building a process starts nothing).
#[derive(Debug)]
pub struct Writer(mpsc::Receiver<Record>);

impl Writer {
    /// Writes records in batches until `shutdown`, then writes what it holds and returns.
    pub async fn run(self, ctx: Context, shutdown: Shutdown) {
        write(ctx, self.0, shutdown).await;
    }
}

impl Recorder {
    /// A recorder and the writer that empties it.
    pub fn new() -> (Self, Writer) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        (Self(sender), Writer(receiver))
    }

    pub fn record(&self, record: Record) {
        if self.0.try_send(record).is_err() {
            metrics::counter!("sluice_inference_records_dropped_total").increment(1);
        }
    }
}

async fn write(ctx: Context, mut receiver: mpsc::Receiver<Record>, shutdown: Shutdown) {
    let batch_size = ctx.config.inference.record_batch;
    let interval = Duration::from_millis(ctx.config.inference.record_interval_ms);
    let mut batch: Vec<Record> = Vec::with_capacity(batch_size);
    loop {
        let closing = tokio::select! {
            received = receiver.recv() => match received {
                Some(record) => { batch.push(record); false }
                None => true,
            },
            () = shutdown.cancelled() => true,
        };
        // Let a batch gather for up to `record_interval_ms` (records keep arriving meanwhile).
        if !closing {
            let deadline = tokio::time::Instant::now() + interval;
            while batch.len() < batch_size {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(record)) => batch.push(record),
                    _ => break,
                }
            }
        }
        if !batch.is_empty() {
            let mut backoff = Duration::from_millis(100);
            loop {
                match insert(&ctx, &batch).await {
                    Ok(()) => break,
                    Err(err) if closing || backoff > Duration::from_secs(5) => {
                        tracing::warn!(error = %err, records = batch.len(), "dropping prediction records");
                        metrics::counter!("sluice_inference_records_dropped_total").increment(batch.len() as u64);
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot record predictions; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            }
            batch.clear();
        }
        if closing {
            return;
        }
    }
}

/// Writes `batch` in one statement; ids already recorded are skipped, so a retry is harmless.
pub(crate) async fn insert(ctx: &Context, batch: &[Record]) -> Result<(), String> {
    let client = ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    let models: Vec<&str> = batch.iter().map(|r| r.model.as_str()).collect();
    let versions: Vec<i32> = batch.iter().map(|r| r.version).collect();
    let aliases: Vec<Option<&str>> = batch.iter().map(|r| r.alias.as_deref()).collect();
    let labels: Vec<&str> = batch.iter().map(|r| r.label.as_str()).collect();
    let confidences: Vec<f64> = batch.iter().map(|r| r.confidence).collect();
    let tops: Vec<&Value> = batch.iter().map(|r| &r.top).collect();
    let stats: Vec<&Value> = batch.iter().map(|r| &r.stats).collect();
    let shadows: Vec<bool> = batch.iter().map(|r| r.shadow).collect();
    let jobs: Vec<Option<Uuid>> = batch.iter().map(|r| r.batch).collect();
    let shadowed: Vec<Option<Uuid>> = batch.iter().map(|r| r.shadow_of).collect();
    client
        .execute(
            // A shadow prediction written after its answer got feedback takes that feedback:
            // the shadow is scored late, and the comparison must not lose it.
            "INSERT INTO predictions (id, model, version, alias, label, confidence, top, stats, shadow, batch_id,
                                      shadow_of, feedback_label, feedback_at)
             SELECT n.*, answered.feedback_label, answered.feedback_at
             FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::float8[],
                         $7::jsonb[], $8::jsonb[], $9::bool[], $10::uuid[], $11::uuid[])
                  AS n(id, model, version, alias, label, confidence, top, stats, shadow, batch_id, shadow_of)
             LEFT JOIN predictions answered ON answered.id = n.shadow_of
             ON CONFLICT (id) DO NOTHING",
            &[&ids, &models, &versions, &aliases, &labels, &confidences, &tops, &stats, &shadows, &jobs, &shadowed],
        )
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    Ok(())
}
