//! The events on `models.events` (compacted, keyed by model name).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::{DecodeError, Envelope, Event};

/// A version was registered (`model.version_registered`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelVersionRegistered {
    pub model: String,
    pub version: i32,
    pub artifact_key: String,
    pub sha256: String,
    /// The model's change counter: apply an event only if it is above the last one applied.
    pub revision: i64,
    /// Every alias of the model after this change.
    pub aliases: BTreeMap<String, i32>,
}

impl Event for ModelVersionRegistered {
    const TYPE: &'static str = "model.version_registered";
    const SCHEMA_VERSION: u32 = 1;
}

/// An alias was created or moved (`model.alias_moved`): servers hot-swap on it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AliasMoved {
    pub model: String,
    pub alias: String,
    pub from: Option<i32>,
    pub to: i32,
    pub actor: String,
    pub reason: String,
    pub revision: i64,
    pub aliases: BTreeMap<String, i32>,
}

impl Event for AliasMoved {
    const TYPE: &'static str = "model.alias_moved";
    const SCHEMA_VERSION: u32 = 1;
}

/// An alias was deleted (`model.alias_removed`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AliasRemoved {
    pub model: String,
    pub alias: String,
    pub from: i32,
    pub actor: String,
    pub reason: String,
    pub revision: i64,
    pub aliases: BTreeMap<String, i32>,
}

impl Event for AliasRemoved {
    const TYPE: &'static str = "model.alias_removed";
    const SCHEMA_VERSION: u32 = 1;
}

/// Any event on `models.events`.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelEvent {
    VersionRegistered(Envelope<ModelVersionRegistered>),
    AliasMoved(Envelope<AliasMoved>),
    AliasRemoved(Envelope<AliasRemoved>),
}

impl ModelEvent {
    /// Decodes a `models.events` message by its `type`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            event_type: String,
        }
        let kind: Kind = serde_json::from_slice(bytes)?;
        Ok(match kind.event_type.as_str() {
            AliasMoved::TYPE => Self::AliasMoved(Envelope::decode(bytes)?),
            AliasRemoved::TYPE => Self::AliasRemoved(Envelope::decode(bytes)?),
            _ => Self::VersionRegistered(Envelope::decode(bytes)?),
        })
    }

    /// The model's alias map and revision after the change.
    pub fn state(&self) -> (&str, i64, &BTreeMap<String, i32>) {
        match self {
            Self::VersionRegistered(e) => (&e.data.model, e.data.revision, &e.data.aliases),
            Self::AliasMoved(e) => (&e.data.model, e.data.revision, &e.data.aliases),
            Self::AliasRemoved(e) => (&e.data.model, e.data.revision, &e.data.aliases),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_events_decode_by_type_and_expose_the_alias_state() {
        let aliases = BTreeMap::from([("production".to_owned(), 2)]);
        let moved = Envelope::new(AliasMoved {
            model: "shapes".into(),
            alias: "production".into(),
            from: Some(1),
            to: 2,
            actor: "ops".into(),
            reason: "better".into(),
            revision: 5,
            aliases: aliases.clone(),
        });
        let event = ModelEvent::decode(&moved.to_json()).expect("decodes");
        assert!(matches!(&event, ModelEvent::AliasMoved(e) if e.data == moved.data && e.event_id == moved.event_id));
        assert_eq!(event.state(), ("shapes", 5, &aliases));
        let registered = Envelope::new(ModelVersionRegistered {
            model: "shapes".into(),
            version: 3,
            artifact_key: "k".into(),
            sha256: "s".into(),
            revision: 6,
            aliases: aliases.clone(),
        });
        assert!(matches!(ModelEvent::decode(&registered.to_json()), Ok(ModelEvent::VersionRegistered(_))));
        assert!(ModelEvent::decode(b"{\"type\": \"other\"}").is_err());
    }
}
