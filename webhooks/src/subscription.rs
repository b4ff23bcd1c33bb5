//! What a webhook subscribes with, validated once at the edge: its URL, the event types it wants
//! and its signing secret.

use url::Url;

use sluice_core::{
    events::Event,
    models::{AliasMoved, AliasRemoved, ModelVersionRegistered},
    notifications::{DriftVerdictChanged, RetrainSkipped, TrainingJobFinished},
};

/// Every event type a webhook may subscribe to: the model events of `models.events` and the
/// notifications of `notifications`.
pub const EVENT_TYPES: [&str; 6] = [
    ModelVersionRegistered::TYPE,
    AliasMoved::TYPE,
    AliasRemoved::TYPE,
    DriftVerdictChanged::TYPE,
    TrainingJobFinished::TYPE,
    RetrainSkipped::TYPE,
];

/// Longest webhook URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most entries in a subscription's `events`.
pub const MAX_EVENT_ENTRIES: usize = 32;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Bounds of a secret given by the caller, in characters.
pub const SECRET_CHARS: std::ops::RangeInclusive<usize> = 24..=256;

/// A request mistake, as a status class and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Malformed (400).
    Malformed(String),
    /// Well-formed but unusable (422), with its code.
    Unusable(&'static str, String),
}

/// An `http` or `https` URL with a host, without credentials or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| Invalid::Malformed(format!("`url`: {why}."));
        if raw.len() > MAX_URL_BYTES {
            return Err(bad(&format!("at most {MAX_URL_BYTES} bytes")));
        }
        let url = Url::parse(raw.trim()).map_err(|e| bad(&format!("not an absolute URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("only http:// and https:// URLs are delivered to"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("no credentials in the URL; deliveries are signed, verify the signature instead"));
        }
        if url.fragment().is_some() {
            return Err(bad("no fragment (#...): it is never sent"));
        }
        Ok(Self(url))
    }

    pub fn url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// The distinct event types asked for, in [`EVENT_TYPES`] order.
pub fn event_types(raw: &[String]) -> Result<Vec<String>, Invalid> {
    if raw.is_empty() || raw.len() > MAX_EVENT_ENTRIES {
        return Err(Invalid::Malformed(format!(
            "`events`: name 1 to {MAX_EVENT_ENTRIES} event types, from {}.",
            EVENT_TYPES.join(", ")
        )));
    }
    if let Some(unknown) = raw.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        let shown: String = unknown.chars().take(100).collect();
        return Err(Invalid::Unusable(
            "unknown_event_type",
            format!("`events`: there is no event type {shown:?}; subscribe to any of {}.", EVENT_TYPES.join(", ")),
        ));
    }
    Ok(EVENT_TYPES.iter().filter(|t| raw.iter().any(|r| r == *t)).map(|t| (*t).to_owned()).collect())
}

/// The caller's secret, or a new one (`whsec_` and 32 random bytes in hex).
pub fn secret(given: Option<&str>) -> Result<String, Invalid> {
    match given {
        None => Ok(format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()))),
        Some(secret)
            if SECRET_CHARS.contains(&secret.chars().count()) && secret.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(secret.to_owned())
        }
        Some(_) => Err(Invalid::Malformed(format!(
            "`secret`: {} to {} printable ASCII characters without spaces (or leave it out to get a generated one).",
            SECRET_CHARS.start(),
            SECRET_CHARS.end()
        ))),
    }
}

/// A description: at most [`MAX_DESCRIPTION_CHARS`] characters, no control characters.
pub fn description(raw: &str) -> Result<String, Invalid> {
    if raw.chars().count() > MAX_DESCRIPTION_CHARS || raw.chars().any(char::is_control) {
        return Err(Invalid::Malformed(format!(
            "`description`: at most {MAX_DESCRIPTION_CHARS} characters, no control characters."
        )));
    }
    Ok(raw.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(WebhookUrl::parse("https://hooks.example.com/sluice?team=ml").is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/").is_ok());
        for bad in [
            "hooks.example.com/x",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "javascript:alert(1)",
        ] {
            assert!(matches!(WebhookUrl::parse(bad), Err(Invalid::Malformed(_))), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(matches!(WebhookUrl::parse(&long), Err(Invalid::Malformed(m)) if m.contains("2048")));
    }

    #[test]
    fn event_types_are_known_distinct_and_bounded() {
        let asked = vec!["retrain.skipped".to_owned(), "model.alias_moved".to_owned(), "retrain.skipped".to_owned()];
        assert_eq!(event_types(&asked), Ok(vec!["model.alias_moved".to_owned(), "retrain.skipped".to_owned()]));
        assert!(matches!(event_types(&[]), Err(Invalid::Malformed(_))));
        assert!(matches!(event_types(&["model.deleted".to_owned()]), Err(Invalid::Unusable("unknown_event_type", _))));
        assert!(matches!(event_types(&vec!["model.alias_moved".to_owned(); 33]), Err(Invalid::Malformed(_))));
    }

    #[test]
    fn secrets_are_generated_or_checked() {
        let generated = secret(None).expect("generated");
        assert!(generated.starts_with("whsec_") && generated.len() == 6 + 64);
        assert_ne!(secret(None), secret(None));
        assert!(secret(Some("short")).is_err());
        assert!(secret(Some("a secret with spaces in it, long enough")).is_err());
        assert_eq!(secret(Some("0123456789abcdef01234567")), Ok("0123456789abcdef01234567".into()));
    }
}
