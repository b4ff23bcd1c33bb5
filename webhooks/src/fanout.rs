//! Events into deliveries: consumer group `webhooks.group_id` over `models.events` and
//! `notifications`. Each event of a subscribable type becomes one delivery row per webhook
//! subscribed to it (unique per webhook and event, so a redelivered event adds nothing); its
//! offset is stored once the rows are committed, and the delivery worker is woken.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rdkafka::{Message, consumer::Consumer, error::KafkaError};
use serde::Deserialize;
use sluice_core::{
    Context, Shutdown, kafka,
    topics::Topic,
    work::{self, Backoff},
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    store::{self, IncomingEvent},
    subscription::EVENT_TYPES,
};

pub async fn run(ctx: Context, shutdown: Shutdown, wake: Arc<Notify>) {
    kafka::keep_consuming("webhook fan-out", &shutdown, || consume(&ctx, &shutdown, &wake)).await;
}

async fn consume(ctx: &Context, shutdown: &Shutdown, wake: &Notify) -> Result<(), KafkaError> {
    let consumer = kafka::background_consumer(&ctx.config.kafka, &ctx.config.webhooks.group_id)?;
    let topics = [ctx.topic(Topic::ModelsEvents), ctx.topic(Topic::Notifications)];
    consumer.subscribe(&topics.iter().map(|t| t.as_str()).collect::<Vec<_>>())?;
    work::consume(&consumer, shutdown, 1, |message| async move {
        let Some(event) = decode(message.payload().unwrap_or_default()) else {
            tracing::warn!(topic = message.topic(), offset = message.offset(), "not a Sluice event; skipping it");
            return true;
        };
        if !EVENT_TYPES.contains(&event.event_type.as_str()) {
            return true;
        }
        let added = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot record webhook deliveries", || {
            store::fan_out(ctx, &event)
        })
        .await;
        match added {
            Some(added) => {
                if added > 0 {
                    metrics::counter!("sluice_webhooks_deliveries_created_total").increment(added);
                    wake.notify_one();
                }
                true
            }
            None => false,
        }
    })
    .await
}

/// The envelope fields fan-out needs, with the whole event kept as the delivery's body.
fn decode(payload: &[u8]) -> Option<IncomingEvent> {
    #[derive(Deserialize)]
    struct Head {
        event_id: Uuid,
        #[serde(rename = "type")]
        event_type: String,
        #[serde(with = "sluice_core::events::rfc3339")]
        occurred_at: DateTime<Utc>,
    }
    let payload: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if sluice_core::events::holds_nul(&payload) {
        return None;
    }
    let head = Head::deserialize(&payload).ok()?;
    Some(IncomingEvent { event_id: head.event_id, event_type: head.event_type, occurred_at: head.occurred_at, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{events::Envelope, notifications::RetrainSkipped};

    #[test]
    fn decodes_any_sluice_event_keeping_it_whole() {
        let event = Envelope::new(RetrainSkipped {
            model: "shapes".into(),
            request_id: Uuid::now_v7(),
            requested_for: "drift".into(),
            reason: "nothing new".into(),
        });
        let decoded = decode(&event.to_json()).expect("decodes");
        assert_eq!((decoded.event_id, decoded.event_type.as_str()), (event.event_id, "retrain.skipped"));
        assert_eq!(decoded.payload["data"]["reason"], "nothing new");
        assert!(decode(b"not json").is_none());
        assert!(decode(br#"{"type": "x"}"#).is_none());
    }
}
