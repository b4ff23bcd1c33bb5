//! Follows `models.events` so served aliases move without a restart. Every inference process
//! reads every partition itself (no consumer group: each must see every event), from the end:
//! aliases are resolved from PostgreSQL on first use, and only later moves matter.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use rdkafka::{Message, Offset, TopicPartitionList, consumer::Consumer};
use sluice_core::{Shutdown, kafka, models::ModelEvent, topics::Topic};

use crate::serving::Served;

pub async fn run(served: Arc<Served>, shutdown: Shutdown) {
    kafka::keep_consuming("models.events follower", &shutdown, || follow(&served, &shutdown)).await;
}

async fn follow(served: &Arc<Served>, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let ctx = &served.ctx;
    let group = format!("inference-follower-{}", uuid::Uuid::new_v4());
    let consumer = kafka::consumer(&ctx.config.kafka, &group)?;
    let topic = ctx.topic(Topic::ModelsEvents);
    let metadata = consumer.fetch_metadata(Some(topic.as_str()), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic.as_str(), partition.id(), Offset::End)?;
    }
    consumer.assign(&assignment)?;
    let mut stream = consumer.stream();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = stream.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            },
        };
        match ModelEvent::decode(message.payload().unwrap_or_default()) {
            Ok(event) => {
                let (model, revision, aliases) = event.state();
                served.apply_aliases(model, revision, aliases).await;
            }
            Err(err) => tracing::warn!(error = %err, "undecodable models.events message; skipping it"),
        }
    }
}
