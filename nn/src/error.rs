//! The one error type of this crate.

/// Why a network could not be built, trained, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// The session spec or hyper-parameters are unusable (bad value, unknown architecture).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The samples do not match the declared shape or class count.
    #[error("invalid samples: {0}")]
    InvalidSamples(String),
    /// A checkpoint or exported model is malformed or belongs to another spec.
    #[error("invalid model file: {0}")]
    InvalidFile(String),
    /// A tensor operation failed (shape mismatch, device error).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A safetensors file could not be written or parsed.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}

/// Result alias used throughout the crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;
