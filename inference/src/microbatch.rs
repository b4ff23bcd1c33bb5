//! Dynamic micro-batching: requests for one model version queue here; a single task takes what
//! is waiting, up to `max_batch` images or until `max_wait` has passed since the first (only
//! while the previous batch held more than one request), scores the batch off the async
//! runtime, and answers each request with its own rows.

use std::{sync::Arc, time::Duration};

use sluice_nn::{Network, Scores};
use tokio::sync::{mpsc, oneshot};

/// Requests waiting beyond this many are refused (503) rather than queued without bound.
const QUEUE: usize = 4096;

struct Job {
    images: Vec<u8>,
    count: usize,
    reply: oneshot::Sender<Result<Vec<Scores>, String>>,
}

/// The queue of one model version.
#[derive(Debug, Clone)]
pub struct Batcher {
    sender: mpsc::Sender<Job>,
    frame: usize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("count", &self.count).finish()
    }
}

impl Batcher {
    pub fn spawn(network: Arc<Network>, model: String, version: i32, max_batch: usize, max_wait: Duration) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let frame = network.shape().len();
        tokio::spawn(run(network, receiver, model, version.to_string(), max_batch, max_wait));
        Self { sender, frame }
    }

    /// Bytes of one input image (`u8` CHW).
    pub fn frame(&self) -> usize {
        self.frame
    }

    /// Scores `count` images laid back to back; returns the logits and embedding of each.
    pub async fn score(&self, images: Vec<u8>, count: usize) -> Result<Vec<Scores>, String> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Job { images, count, reply })
            .map_err(|_| "the model's queue is full; retry shortly".to_owned())?;
        answer.await.map_err(|_| "the model stopped".to_owned())?
    }
}

async fn run(
    network: Arc<Network>,
    mut receiver: mpsc::Receiver<Job>,
    model: String,
    version: String,
    max_batch: usize,
    max_wait: Duration,
) {
    let mut pending: Option<Job> = None;
    // Waiting for a batch to fill only pays under load: after a batch of one (a quiet moment),
    // the next batch takes what is already queued and goes, so a lone request never waits.
    let mut last_batch = 0usize;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match receiver.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut count = first.count;
        let mut jobs = vec![first];
        let wait = if last_batch > 1 { max_wait } else { Duration::ZERO };
        let deadline = tokio::time::Instant::now() + wait;
        while count < max_batch {
            // Requests arriving back to back join; a gap of an eighth of the wait means the
            // burst is over, and the batch goes without sitting out the rest of the wait.
            let next = if wait.is_zero() {
                receiver.try_recv().ok()
            } else {
                let gap = (tokio::time::Instant::now() + wait / 8).min(deadline);
                tokio::time::timeout_at(gap, receiver.recv()).await.ok().flatten()
            };
            match next {
                // A request that would overflow the batch starts the next one.
                Some(job) if count + job.count > max_batch => {
                    pending = Some(job);
                    break;
                }
                Some(job) => {
                    count += job.count;
                    jobs.push(job);
                }
                None => break,
            }
        }
        last_batch = count;
        let images: Vec<u8> = jobs.iter().flat_map(|job| job.images.iter().copied()).collect();
        let network = network.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || network.scores(&images, count))
            .await
            .map_err(|e| format!("scoring panicked: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        metrics::histogram!("sluice_inference_model_duration_seconds", "model" => model.clone(), "version" => version.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("sluice_inference_batch_size", "model" => model.clone(), "version" => version.clone())
            .record(count as f64);
        match result {
            Ok(mut rows) => {
                for job in jobs {
                    let rest = rows.split_off(job.count);
                    let _ = job.reply.send(Ok(rows));
                    rows = rest;
                }
            }
            Err(err) => {
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}
