//! How registry failures and bad path values become HTTP answers.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_core::{
    db::DbError,
    http::ApiError,
    models::{AliasName, ModelName, RegistryError},
    outbox::RelayError,
};

/// A handler's failure: every error converts into it, so handlers can use `?`.
#[derive(Debug)]
pub(crate) struct Failure(pub ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl From<RegistryError> for Failure {
    fn from(err: RegistryError) -> Self {
        Self(api_error(err))
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        RegistryError::from(err).into()
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        RegistryError::from(err).into()
    }
}

/// The answer for a failed registry call. An unknown version named in a request body is 422 (the
/// request is well-formed, the version it names does not exist); a version in the path answers
/// 404 in the handler.
fn api_error(err: RegistryError) -> ApiError {
    match err {
        RegistryError::UnknownModel(name) => not_found("unknown_model", format!("No model named {name}.")),
        RegistryError::UnknownAlias { model, alias } => {
            not_found("unknown_alias", format!("Model {model} has no alias {alias}."))
        }
        RegistryError::UnknownVersion { model, version } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_version",
            format!("Model {model} has no version {version}; `GET /v1/models/{model}/versions` lists them."),
        ),
        err @ RegistryError::TooManyAliases { .. } => {
            ApiError::new(StatusCode::CONFLICT, "too_many_aliases", format!("{}.", capitalised(&err.to_string())))
        }
        RegistryError::Outbox(err @ RelayError::TooLarge { .. }) => ApiError::internal(&err),
        RegistryError::Invalid(message) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_version", format!("{message}."))
        }
        RegistryError::Db(DbError::Query(e)) if e.code().is_some() => ApiError::internal(&e),
        err @ (RegistryError::Db(_) | RegistryError::S3(_) | RegistryError::Outbox(_)) => {
            tracing::warn!(error = %err, "registry dependency failure");
            ApiError::unavailable("The database is unreachable; nothing was changed. Retry shortly.")
        }
        err @ (RegistryError::MissingArtifact { .. } | RegistryError::Tampered { .. } | RegistryError::Corrupt(_)) => {
            ApiError::internal(&err)
        }
    }
}

/// `text` with its first letter upper-cased, as API messages are written.
fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

pub(crate) fn not_found(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code, message)
}

pub(crate) fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// A model name from the path: 400 when invalid, as ingest answers an invalid dataset name.
pub(crate) fn model_name(raw: &str) -> Result<ModelName, ApiError> {
    ModelName::parse(raw).map_err(|e| bad_request(format!("`model`: {}.", e.0)))
}

pub(crate) fn alias_name(raw: &str) -> Result<AliasName, ApiError> {
    AliasName::parse(raw).map_err(|e| bad_request(format!("`alias`: {}.", e.0)))
}

/// A version number from the path.
pub(crate) fn version_number(raw: &str) -> Result<i32, ApiError> {
    positive_version(raw.parse::<i32>().unwrap_or(0))
}

/// Versions are numbered from 1.
pub(crate) fn positive_version(version: i32) -> Result<i32, ApiError> {
    if version > 0 { Ok(version) } else { Err(bad_request("`version`: version numbers are positive integers.".into())) }
}
