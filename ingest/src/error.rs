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
}

impl From<tokio_postgres::Error> for IngestError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Database(DbError::Query(err))
    }
}

impl From<deadpool_postgres::PoolError> for IngestError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Database(DbError::Pool(err))
    }
}

impl IngestError {
    /// An outage (S3 or PostgreSQL), worth retrying; everything else is about the input.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Database(_))
    }

    /// The label used for `sluice_ingest_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge { .. } => "too_large",
            Self::TooManyParts { .. } => "too_many_parts",
            Self::Unsupported => "unsupported_media_type",
            Self::TypeMismatch { .. } => "type_mismatch",
            Self::Header(HeaderError::TooManyPixels { .. }) => "too_many_pixels",
            Self::Header(HeaderError::Malformed(_)) => "malformed_media",
            Self::Truncated(_) => "truncated",
            Self::BadField { .. } | Self::BadRequest(_) => "bad_request",
            Self::BodyRead(_) => "body_read",
            Self::Storage(_) => "storage_unavailable",
            Self::Database(_) => "database_unavailable",
            Self::NotFound(_) => "not_found",
        }
    }

    pub fn to_api(&self) -> ApiError {
        let message = match self {
            Self::Empty => "The upload is empty; send the file's bytes.".to_owned(),
            Self::TooLarge { limit } => format!("The upload is larger than the {limit}-byte limit."),
            Self::TooManyParts { max } => {
                format!("One upload holds at most {max} files (and one of each text part); send the rest in another request.")
            }
            Self::Unsupported => {
                "The bytes are not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF) or video (MP4, MOV, WebM, MKV, AVI)."
                    .to_owned()
            }
            Self::TypeMismatch { declared, actual } => {
                format!("The request declares {declared} but the bytes are {actual}; fix the Content-Type.")
            }
            Self::Header(err) => format!("{err}."),
            Self::Truncated(ext) => format!("The {ext} file ends early (truncated); upload the complete file."),
            Self::BadField { field, message } => format!("`{field}`: {message}."),
            Self::BadRequest(message) => format!("{message}."),
            Self::BodyRead(message) => format!("The request body could not be read: {message}."),
            Self::Storage(_) => "Object storage is unreachable; nothing was stored. Retry shortly.".to_owned(),
            Self::Database(_) => "The database is unreachable; nothing was stored. Retry shortly.".to_owned(),
            Self::NotFound(what) => format!("No {what}."),
        };
        let (status, code) = match self {
            Self::Empty => (StatusCode::BAD_REQUEST, "empty_upload"),
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::TooManyParts { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_parts"),
            Self::Unsupported => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::TypeMismatch { .. } => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type_mismatch"),
            Self::Header(HeaderError::TooManyPixels { .. }) => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels"),
            Self::Header(HeaderError::Malformed(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "malformed_media"),
            Self::Truncated(_) => (StatusCode::UNPROCESSABLE_ENTITY, "truncated_media"),
            Self::BadField { .. } | Self::BadRequest(_) | Self::BodyRead(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Self::Database(DbError::Query(e)) if e.code().is_some() => {
                tracing::error!(error = %e, "database refused a statement");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "The database refused the request; it has been logged.",
                );
            }
            Self::Storage(_) | Self::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "dependency_unavailable"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "ingest dependency failure");
        }
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}
