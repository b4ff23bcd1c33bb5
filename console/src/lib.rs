//! The web console every Sluice listener serves at `/`: one page and its script and style, built
//! into the binary (no build step, nothing fetched from elsewhere), and browser sign-in.
//!
//! The page calls the same `/v1` API as every other client, so scopes are enforced where they
//! always are. A browser signs in by posting an API token to `POST /console/session`, which
//! answers with an `HttpOnly` session cookie and the session's CSRF token; from then on
//! [`sluice_core::http::Caller`] accepts the cookie in place of `Authorization: Bearer`, and
//! requests that change state must echo the CSRF token in `X-CSRF-Token`
//! ([`sluice_core::sessions`] explains the design). No service depends on this crate; the
//! application merges [`router`] into every listener.

mod assets;
mod session;

use sluice_core::Context;
use utoipa_axum::{router::OpenApiRouter, routes};

/// `/` and `/console/…`: the page, its assets, and sign-in, who-am-I and sign-out.
pub fn router(ctx: Context) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(assets::index))
        .routes(routes!(assets::script))
        .routes(routes!(assets::style))
        .routes(routes!(assets::icon))
        .routes(routes!(session::sign_in, session::whoami, session::sign_out))
        .with_state(ctx)
}
