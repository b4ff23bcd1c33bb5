//! Follows `models.events` so served aliases move without a restart. Every inference process
//! reads every partition itself (no consumer group: each must see every event), from the end:
//! aliases are resolved from PostgreSQL on first use, and only later moves matter. A reconciler
//! re-reads the served aliases from PostgreSQL every `inference.alias_reconcile_secs`, in case a
//! move was missed.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use rdkafka::{Message, Offset, TopicPartitionList, consumer::Consumer};
use sluice_core::{
    Shutdown, kafka,
    models::{self, ModelEvent, ModelName},
    topics::Topic,
};

use crate::serving::Served;

pub async fn run(served: Arc<Served>, shutdown: Shutdown) {
    let reconciler = tokio::spawn(reconcile(served.clone(), shutdown.clone()));
    kafka::keep_consuming("models.events follower", &shutdown, || follow(&served, &shutdown)).await;
    let _ = reconciler.await;
}

/// A safety net under the follower: every `alias_reconcile_secs`, the served models' aliases and revision
/// are read from PostgreSQL (the source of truth) and applied as a resync, so a move that
/// landed before the follower was positioned, or while Kafka was away, is not missed, and one
/// whose version could not be loaded then is tried again.
async fn reconcile(served: Arc<Served>, shutdown: Shutdown) {
    let every = Duration::from_secs(served.ctx.config.inference.alias_reconcile_secs);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        for model in served.served_models() {
            let Ok(name) = ModelName::parse(&model) else { continue };
            let Ok(client) = served.ctx.db.get().await else { break };
            let state = models::alias_state(&client, &name).await;
            drop(client);
            if let Ok(Some(state)) = state {
                served.apply_aliases(&model, state.revision, &state.aliases, true).await;
            }
        }
    }
}

/// The longest a paused follower goes without checking for an alias move it was not woken for.
const FOLLOWER_CHECK_MAX: Duration = Duration::from_secs(5);

async fn follow(served: &Arc<Served>, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let ctx = &served.ctx;
    let group = format!("inference-follower-{}", uuid::Uuid::new_v4());
    let consumer = kafka::consumer(&ctx.config.kafka, &group)?;
    let topic = ctx.topic(Topic::ModelsEvents);
    let metadata = consumer.fetch_metadata(Some(topic.as_str()), Duration::from_secs(10))?;
    // From each partition's end, looked up here rather than left to librdkafka (`Offset::End`),
    // so that an idle pause knows where the follower stands before its first event.
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, end) = consumer.fetch_watermarks(topic.as_str(), partition.id(), Duration::from_secs(10))?;
        assignment.add_partition_offset(topic.as_str(), partition.id(), Offset::Offset(end))?;
    }
    consumer.assign(&assignment)?;
    let mut stream = consumer.stream();
    // Hot swaps wait on this consumer. A promotion is published by a Sluice process, whose
    // announcement wakes it at once; the checks only bound the wait when that is not heard
    // (PostgreSQL away), so they start as often as a fetch and grow to FOLLOWER_CHECK_MAX at most.
    let first = Duration::from_millis(ctx.config.kafka.fetch_wait_ms.into());
    let max = FOLLOWER_CHECK_MAX.min(Duration::from_millis(ctx.config.kafka.idle_check_max_ms.into()));
    let mut idle = sluice_core::idle::IdlePause::new(&consumer).starting_at(&assignment).checking(first, max);
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            check = idle.wait() => {
                if check {
                    idle.check(true).await;
                }
                continue;
            }
            next = stream.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            },
        };
        idle.received(&message);
        match ModelEvent::decode(message.payload().unwrap_or_default()) {
            Ok(event) => {
                let (model, revision, aliases) = event.state();
                served.apply_aliases(model, revision, aliases, false).await;
            }
            Err(err) => tracing::warn!(error = %err, "undecodable models.events message; skipping it"),
        }
    }
}
