//! The event envelope every Kafka message carries.
//!
//! Wire form: `{"event_id", "type", "schema_version", "occurred_at", "data": {...}}`. Consumers
//! deduplicate on `event_id` (or on the payload's natural key), so delivering twice is harmless.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// A payload type with a stable name and schema version.
pub trait Event: Serialize + DeserializeOwned {
    /// The `type` field, for example `media.ingested`.
    const TYPE: &'static str;
    /// Bumped on incompatible payload changes; consumers reject versions they do not know.
    const SCHEMA_VERSION: u32;
}

/// An event on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    #[serde(with = "rfc3339")]
    pub occurred_at: DateTime<Utc>,
    pub data: T,
}

/// Why a message could not be read as an event (a poison message: dead-letter it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Sluice event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected event type {expected}, got {actual}")]
    WrongType { expected: &'static str, actual: String },
    #[error("{event_type} schema version {actual} is newer than this build understands ({supported})")]
    UnsupportedVersion { event_type: &'static str, actual: u32, supported: u32 },
    /// A text holds a NUL character: Sluice never writes one (every name, label and text is
    /// checked where it enters), and PostgreSQL refuses to store one, so such an event could only
    /// be retried forever.
    #[error("a text in the event holds a NUL character")]
    Nul,
}

impl<T: Event> Envelope<T> {
    /// Wraps `data` with a fresh time-ordered id and the current time.
    pub fn new(data: T) -> Self {
        Self::with_id(Uuid::now_v7(), data)
    }

    /// Wraps `data` with an id derived from `origin`, the one thing that caused it (a Kafka
    /// message's topic/partition/offset): the same cause, handled twice (a consumer killed before
    /// its offset was stored), gives the same event, which subscribers deduplicate by id.
    pub fn caused_by(origin: &str, data: T) -> Self {
        Self::with_id(Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("sluice:{}:{origin}", T::TYPE).as_bytes()), data)
    }

    /// Wraps `data` with a caller-chosen id (an outbox row id, so a re-publish keeps its id).
    pub fn with_id(event_id: Uuid, data: T) -> Self {
        Self {
            event_id,
            event_type: T::TYPE.to_owned(),
            schema_version: T::SCHEMA_VERSION,
            occurred_at: Utc::now(),
            data,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events serialise to JSON")
    }

    /// Decodes and checks type and schema version.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if escapes_nul(bytes) {
            return Err(DecodeError::Nul);
        }
        let envelope: Self = serde_json::from_slice(bytes)?;
        if envelope.event_type != T::TYPE {
            return Err(DecodeError::WrongType { expected: T::TYPE, actual: envelope.event_type });
        }
        if envelope.schema_version > T::SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                event_type: T::TYPE,
                actual: envelope.schema_version,
                supported: T::SCHEMA_VERSION,
            });
        }
        Ok(envelope)
    }
}

/// Whether JSON text escapes a NUL (`\u0000`), the only way valid JSON can hold one (a raw
/// control character is a syntax error): a scan of the bytes, so decoding parses once.
fn escapes_nul(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&byte| byte == b'\\') {
        let escaped = &rest[at + 1..];
        if escaped.starts_with(b"u0000") {
            return true;
        }
        // Past the escaped character, so an escaped backslash is not read as an escape.
        rest = escaped.get(1..).unwrap_or_default();
    }
    false
}

/// Whether any string (or object key) in `value` holds a NUL character (which no Sluice event
/// carries, and PostgreSQL refuses to store).
pub fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// RFC 3339 UTC with millisecond precision, as the public contract writes times
/// (`#[serde(with = "sluice_core::events::rfc3339")]`).
pub mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }

    impl Event for Ping {
        const TYPE: &'static str = "test.ping";
        const SCHEMA_VERSION: u32 = 2;
    }

    #[test]
    fn round_trips_with_the_contract_fields() {
        let event = Envelope::new(Ping { n: 7 });
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).expect("json");
        for field in ["event_id", "type", "schema_version", "occurred_at", "data"] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        assert_eq!(json["type"], "test.ping");
        assert!(json["occurred_at"].as_str().expect("string").ends_with('Z'));
        let back = Envelope::<Ping>::decode(&event.to_json()).expect("decodes");
        assert_eq!(back.data, Ping { n: 7 });
        assert_eq!(back.event_id, event.event_id);
    }

    #[test]
    fn an_event_caused_by_one_message_has_one_id() {
        let a = Envelope::caused_by("sluice.media.ingested/3/17", Ping { n: 1 });
        assert_eq!(a.event_id, Envelope::caused_by("sluice.media.ingested/3/17", Ping { n: 2 }).event_id);
        assert_ne!(a.event_id, Envelope::caused_by("sluice.media.ingested/3/18", Ping { n: 1 }).event_id);
        assert_ne!(a.event_id, Envelope::new(Ping { n: 1 }).event_id);
    }

    #[test]
    fn rejects_wrong_type_newer_schema_and_garbage() {
        let mut event = Envelope::new(Ping { n: 1 });
        event.event_type = "other".into();
        assert!(matches!(Envelope::<Ping>::decode(&event.to_json()), Err(DecodeError::WrongType { .. })));
        let nul = br#"{"event_id":"01a2484f-1799-750b-8f71-030de2b4663c","type":"pi\u0000ng","schema_version":1,"occurred_at":"2026-12-05T00:00:00.000Z","data":{"n":1}}"#;
        assert!(matches!(Envelope::<Ping>::decode(nul), Err(DecodeError::Nul)), "in the type");
        let nul = br#"{"event_id":"01a2484f-1799-750b-8f71-030de2b4663c","type":"ping","schema_version":1,"occurred_at":"2026-12-05T00:00:00.000Z","data":{"n":1,"x\u0000":[{"y":"a\u0000"}]}}"#;
        assert!(matches!(Envelope::<Ping>::decode(nul), Err(DecodeError::Nul)), "deep in the data");
        let text = br#"{"event_id":"01a2484f-1799-750b-8f71-030de2b4663c","type":"test.ping","schema_version":1,"occurred_at":"2026-12-05T00:00:00.000Z","data":{"n":1,"x":"\\u0000\\\u0041"}}"#;
        let decoded = Envelope::<Ping>::decode(text);
        assert!(decoded.is_ok(), "an escaped backslash before u0000 is text, not a NUL: {decoded:?}");
        assert!(escapes_nul(br#""\\\u0000""#) && !escapes_nul(br#""\\""#) && !escapes_nul(b"\\"));
        let mut event = Envelope::new(Ping { n: 1 });
        event.schema_version = 3;
        assert!(matches!(
            Envelope::<Ping>::decode(&event.to_json()),
            Err(DecodeError::UnsupportedVersion { actual: 3, .. })
        ));
        assert!(matches!(Envelope::<Ping>::decode(b"\xff not json"), Err(DecodeError::Json(_))));
    }
}
