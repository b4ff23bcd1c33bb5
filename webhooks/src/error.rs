//! How webhook handlers fail: every cause converts into [`WebhooksError`], which becomes the HTTP
//! answer.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_core::{db::DbError, http::ApiError};

use crate::{address::Refused, subscription::Invalid};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhooksError {
    /// Already an answer: a scope refusal or a request mistake found by the handler.
    #[error(transparent)]
    Refused(#[from] ApiError),
    /// The URL's address is not one webhooks may reach.
    #[error(transparent)]
    Address(#[from] Refused),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl WebhooksError {
    /// The answer; 5xx are logged with their cause chain.
    pub(crate) fn to_api(&self) -> ApiError {
        match self {
            Self::Refused(err) => err.clone(),
            Self::Address(refused) => {
                let code = match refused {
                    Refused::NotAllowed { .. } => "address_not_allowed",
                    Refused::Unresolvable { .. } => "unresolvable_host",
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("`url`: {refused}."))
            }
            Self::Db(err) => err.to_api(),
        }
    }
}

impl From<Invalid> for WebhooksError {
    fn from(invalid: Invalid) -> Self {
        Self::Refused(match invalid {
            Invalid::Malformed(message) => bad_request(message),
            Invalid::Unusable(code, message) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
        })
    }
}

impl IntoResponse for WebhooksError {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}

pub(crate) fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

pub(crate) fn unknown_webhook() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_webhook", "No webhook has this id; `GET /v1/webhooks` lists them.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(err: impl Into<WebhooksError>) -> (u16, &'static str, String) {
        let api = err.into().to_api();
        (api.status.as_u16(), api.code, api.message)
    }

    #[test]
    fn refusals_keep_their_status_code_and_message() {
        let private = Refused::NotAllowed { host: "10.0.0.1".into(), address: "10.0.0.1".parse().expect("address") };
        let (status, code, message) = answer(private);
        assert_eq!((status, code), (422, "address_not_allowed"));
        assert!(message.contains("webhooks.allowed_networks"), "{message}");
        assert_eq!(answer(Refused::Unresolvable { host: "x.invalid".into() }).1, "unresolvable_host");
        assert_eq!(answer(Invalid::Malformed("`url`: bad.".into())), (400, "invalid_request", "`url`: bad.".into()));
        assert_eq!(answer(Invalid::Unusable("unknown_event_type", "no".into())).0, 422);
        assert_eq!(answer(unknown_webhook()).0, 404);
    }
}
