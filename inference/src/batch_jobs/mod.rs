//! Batch predictions: score a whole dataset or S3 prefix with one model version and write the
//! results to S3 as JSON lines.
//!
//! `POST /v1/batch-predictions` ([`routes`]) pins the version, freezes the item list into a
//! manifest in S3 and commits the job row with a `predictions.batch` event through the outbox
//! ([`freeze`], [`store`]). Workers of the `inference.batch_group_id` group ([`worker`]) score the
//! items chunk by chunk ([`chunk`]), each chunk one part object, and record progress so a job
//! resumes after a crash without duplicating a line. `GET /v1/batch-predictions/{id}` reports it.

mod chunk;
mod freeze;
pub(crate) mod routes;
mod store;
pub mod worker;

/// Most items one job may hold (its manifest is read whole by the worker).
const MAX_ITEMS: usize = 100_000;
