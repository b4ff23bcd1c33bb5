//! Everything that can go wrong in ingest, and the HTTP answer for each.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_core::{db::DbError, http::ApiError, s3::S3Error};

use crate::sniff::HeaderError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the upload is empty")]
    Empty,
    #[error("the upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload has more than {max} files")]
    TooManyParts { max: usize },
    #[error("the bytes are not a supported image or video")]
    Unsupported,
    #[error("declared {declared} but the bytes are {actual}")]
    TypeMismatch { declared: String, actual: &'static str },
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("the {0} file is truncated")]
    Truncated(&'static str),
    #[error("{field}: {message}")]
    BadField { field: &'static str, message: String },
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    #[error("object storage: {0}")]
    Storage(S3Error),
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("not found")]
    NotFound(String),
    /// An answer already shaped by `sluice_core` (a missing scope, a malformed id, a bucket
    /// that may not be read).
    #[error(transparent)]
    Refused(#[from] ApiError),
}

impl IngestError {
    /// An outage (S3 or PostgreSQL), worth retrying; everything else is about the input.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Storage(_)) || matches!(self, Self::Database(err) if !err.is_refusal())
    }

    /// The label used for `sluice_ingest_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge { .. } => "too_large",
            Self::TooManyParts { .. } => "too_many_parts",
            Self::Unsupported => "unsupported_media_type",
            Self::TypeMismatch { .. } => "type_mismatch",
            Self::Header(HeaderError::Oversize(_)) => "too_many_pixels",
            Self::Header(HeaderError::Unsupported(_)) => "unsupported_media_type",
            Self::Header(HeaderError::Malformed(_) | HeaderError::Later { .. }) => "malformed_media",
            Self::Truncated(_) => "truncated",
            Self::BadField { .. } | Self::BadRequest(_) => "bad_request",
            Self::BodyRead(_) => "body_read",
            Self::Storage(_) => "storage_unavailable",
            Self::Database(err) if err.is_refusal() => "internal",
            Self::Database(_) => "database_unavailable",
            Self::NotFound(_) => "not_found",
            Self::Refused(_) => "refused",
        }
    }

    /// The HTTP answer. 5xx answers log the whole cause chain (`sluice_core::http::ApiError`).
    pub fn to_api(&self) -> ApiError {
        use StatusCode as S;
        let (status, code, message) = match self {
            Self::Empty => (S::BAD_REQUEST, "empty_upload", "The upload is empty; send the file's bytes.".to_owned()),
            Self::TooLarge { limit } => {
                (S::PAYLOAD_TOO_LARGE, "too_large", format!("The upload is larger than the {limit}-byte limit."))
            }
            Self::TooManyParts { max } => (
                S::PAYLOAD_TOO_LARGE,
                "too_many_parts",
                format!("One upload holds at most {max} files (and one of each text part); send the rest in another request."),
            ),
            Self::Unsupported => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "The bytes are not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF) or video (MP4, MOV, WebM, MKV, AVI)."
                    .to_owned(),
            ),
            Self::TypeMismatch { declared, actual } => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "content_type_mismatch",
                format!("The request declares {declared} but the bytes are {actual}; fix the Content-Type."),
            ),
            Self::Header(err @ HeaderError::Oversize(_)) => {
                (S::UNPROCESSABLE_ENTITY, "too_many_pixels", format!("{err}."))
            }
            Self::Header(err @ HeaderError::Unsupported(_)) => {
                (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", format!("The upload is {err}; convert it first."))
            }
            Self::Header(err @ (HeaderError::Malformed(_) | HeaderError::Later { .. })) => {
                (S::UNPROCESSABLE_ENTITY, "malformed_media", format!("{err}."))
            }
            Self::Truncated(ext) => (
                S::UNPROCESSABLE_ENTITY,
                "truncated_media",
                format!("The {ext} file ends early (truncated); upload the complete file."),
            ),
            Self::BadField { field, message } => (S::BAD_REQUEST, "invalid_request", format!("`{field}`: {message}.")),
            Self::BadRequest(message) => (S::BAD_REQUEST, "invalid_request", format!("{message}.")),
            Self::BodyRead(message) => {
                (S::BAD_REQUEST, "invalid_request", format!("The request body could not be read: {message}."))
            }
            Self::NotFound(what) => (S::NOT_FOUND, "not_found", format!("No {what}.")),
            Self::Storage(err) => {
                return ApiError::unavailable_because(
                    err,
                    "Object storage is unreachable; nothing was stored. Retry shortly.",
                );
            }
            Self::Database(err) => {
                // Status, code and the logged chain from core; the message says what ingest kept.
                let mut api = err.to_api();
                api.message = if err.is_refusal() {
                    "The database refused the request; it has been logged."
                } else {
                    "The database is unreachable; nothing was stored. Retry shortly."
                }
                .to_owned();
                return api;
            }
            Self::Refused(api) => return api.clone(),
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}
