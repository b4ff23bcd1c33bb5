//! Validated newtypes for untrusted strings: parsed once at the edge, trusted afterwards.
//! None of them ever becomes part of an S3 key or a file path; keys use server-generated ids.

use std::fmt;

/// Why a value was refused, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A dataset name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DatasetName(String);

impl DatasetName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(Invalid(format!("dataset names are 1 to {} characters long", Self::MAX_LEN)));
        }
        if !raw.chars().all(ok_char) || !raw.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(Invalid(
                "dataset names use lower-case letters, digits, '-' and '_', and start with a letter or digit".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DatasetName {
    fn default() -> Self {
        Self("default".into())
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A class label: 1 to 128 characters of any script, no control characters, no surrounding
/// whitespace. Stored as data only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.trim().is_empty() {
            return Err(Invalid("a label must not be empty".into()));
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(Invalid(format!("labels are at most {} characters", Self::MAX_CHARS)));
        }
        if raw.chars().any(char::is_control) {
            return Err(Invalid("labels must not contain control characters".into()));
        }
        if raw.trim() != raw {
            return Err(Invalid("labels must not start or end with whitespace".into()));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_refuse_paths_spaces_case_and_length() {
        for good in ["default", "cats-v2", "a", "x_1", &"a".repeat(64)] {
            assert!(DatasetName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "../etc", "a/b", "has space", "Upper", &"a".repeat(200), "-lead", "é", "a\0b", "."] {
            assert!(DatasetName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_allow_any_script_but_no_control_characters_or_huge_values() {
        for good in ["cat", "Golden Retriever", "猫", "'; DROP TABLE media; --"] {
            assert_eq!(Label::parse(good).expect(good).as_str(), good);
        }
        for bad in ["", "   ", "a\nb", "tab\there", "\u{7f}", " padded", &"x".repeat(10 * 1024)] {
            assert!(Label::parse(bad).is_err(), "{bad:?}");
        }
    }
}
