//! Sluice's shared contracts and clients.
//!
//! Services depend on this crate and never on each other: they meet through the topics
//! ([`topics`]), event envelopes ([`events`]), S3 keys and PostgreSQL tables defined here, using
//! the client builders in [`kafka`], [`s3`] and [`db`]. Configuration enters through [`config`];
//! the shared HTTP surface (`/healthz`, `/readyz`, `/metrics`, error bodies) is in [`http`].

pub mod api_doc;
pub mod auth;
pub mod batch_predictions;
pub mod capture;
pub mod config;
pub mod context;
pub mod db;
pub mod domain;
pub mod events;
pub mod http;
pub mod idle;
pub mod kafka;
pub mod live;
pub mod migrate;
pub mod models;
pub mod multipart;
pub mod notifications;
pub mod observations;
pub mod outbox;
pub mod parking;
pub mod pipeline;
pub mod processed;
pub mod reference;
pub mod s3;
pub mod sessions;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod tiff;
pub mod tokens_api;
pub mod tools;
pub mod topics;
pub mod training;
pub mod uploads;
pub mod work;

pub use config::Config;
pub use context::Context;
pub use shutdown::Shutdown;

/// Renders an error and its sources on one line: the AWS SDK and tokio-postgres keep the useful
/// part (connection refused, timeout) in the chain.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
