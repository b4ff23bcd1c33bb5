//! `sluice tail`: print a topic's events as JSON lines, optionally as a member of a consumer
//! group that commits what it printed (like `kcat -G`), for debugging and operations.

use std::io::Write;

use anyhow::Context as _;
use futures::StreamExt;
use rdkafka::{Message, consumer::Consumer};
use sluice_core::{Config, Shutdown, kafka};

/// Prints every message of `<prefix><topic>` until `shutdown` (or `limit` messages).
/// With a `group`, offsets are stored after each printed message and committed, so a restarted
/// member resumes after the last line it printed.
pub async fn run(
    config: &Config,
    topic: &str,
    group: Option<String>,
    limit: Option<u64>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let name = format!("{}{topic}", config.kafka.topic_prefix);
    let committing = group.is_some();
    let group = group.unwrap_or_else(|| format!("sluice-tail-{}", uuid::Uuid::new_v4()));
    let consumer = kafka::consumer(&config.kafka, &group).context("creating consumer")?;
    consumer.subscribe(&[&name]).with_context(|| format!("subscribing to {name}"))?;
    let mut stream = consumer.stream();
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            next = stream.next() => match next {
                Some(message) => message.context("receiving")?,
                None => break,
            },
        };
        let value = message.payload().map(|bytes| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
        });
        let line = serde_json::json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "value": value,
        });
        {
            let mut out = stdout.lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        if committing {
            consumer.store_offset_from_message(&message)?;
        }
        seen += 1;
        if limit.is_some_and(|limit| seen >= limit) {
            break;
        }
    }
    if committing {
        drop(stream);
        match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => return Err(err).context("committing offsets on exit"),
        }
    }
    Ok(())
}
