//! Model and alias names: untrusted strings validated once, at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::Invalid;

/// Longest model or alias name.
const MAX_NAME_LEN: usize = 63;

/// `^[a-z][a-z0-9_-]{0,62}$`: safe in URLs, S3 keys and Kafka keys as it is.
fn identifier(raw: &str, what: &str) -> Result<String, Invalid> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if raw.is_empty() || raw.len() > MAX_NAME_LEN {
        return Err(Invalid(format!("{what} names are 1 to {MAX_NAME_LEN} characters long")));
    }
    if !raw.starts_with(|c: char| c.is_ascii_lowercase()) || !raw.chars().all(ok_char) {
        return Err(Invalid(format!(
            "{what} names use lower-case letters, digits, '-' and '_', and start with a letter"
        )));
    }
    Ok(raw.to_owned())
}

macro_rules! identifier_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, Invalid> {
                identifier(raw, $what).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;

            fn try_from(raw: String) -> Result<Self, Invalid> {
                Self::parse(&raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier_type!(
    /// A model's name: 1 to 63 of `a-z`, `0-9`, `-`, `_`, starting with a letter.
    ModelName,
    "model"
);
identifier_type!(
    /// An alias (`production`, `staging`, any name), by the same rule as [`ModelName`].
    AliasName,
    "alias"
);

impl AliasName {
    /// The alias inference serves by default; moving it needs the `admin` scope.
    pub const PRODUCTION: &'static str = "production";

    pub fn is_production(&self) -> bool {
        self.0 == Self::PRODUCTION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_alias_names_are_lower_case_identifiers_starting_with_a_letter() {
        for good in ["mnist", "a", "cats-v2", "shapes_cnn", "x1", &"m".repeat(63)] {
            assert_eq!(ModelName::parse(good).expect(good).as_str(), good);
            assert!(AliasName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "1model", "-x", "_x", "Upper", "has space", "a/b", "../etc", "é", "a.b", &"m".repeat(64)] {
            assert!(ModelName::parse(bad).is_err(), "{bad:?}");
            assert!(AliasName::parse(bad).is_err(), "{bad:?}");
        }
        let err = AliasName::parse("Prod").expect_err("upper case");
        assert!(err.0.starts_with("alias names"), "{err}");
    }

    #[test]
    fn names_deserialise_only_when_valid() {
        let name: ModelName = serde_json::from_str("\"shapes\"").expect("valid");
        assert_eq!(serde_json::to_string(&name).expect("serialises"), "\"shapes\"");
        assert!(serde_json::from_str::<ModelName>("\"Not Valid\"").is_err());
        assert!(AliasName::parse("production").expect("valid").is_production());
    }
}
