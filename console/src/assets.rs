//! The console's page and assets, compiled in with `include_str!`. They are small, hand-written
//! HTML, CSS and JavaScript: edit them and rebuild.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

/// What the page may load and run: only this origin's own files, no inline script, no framing
/// (the promote buttons must not be clickjacked).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Built into the binary: revalidate, so an upgraded process is seen at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The console's script: its parts, in order, as one file (one request, one scope). `console.js`
/// holds the shell (sign-in, routing, polling, Overview, Models); each page family has its own.
const SCRIPT: &str = concat!(
    include_str!("assets/console.js"),
    "\n",
    include_str!("assets/charts.js"),
    "\n",
    include_str!("assets/training.js"),
    "\n",
    include_str!("assets/serving.js"),
    "\n",
    include_str!("assets/datasets.js"),
);

/// The console's page: navigation, sign-in, and the pages (rendered by `console.js`).
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The console's HTML page, built into the binary.", body = String, content_type = "text/html")))]
pub(crate) async fn index() -> Response {
    let mut response = asset(include_str!("assets/index.html"), "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The console's script.
#[utoipa::path(get, path = "/console/console.js", tag = "console",
    responses((status = 200, description = "JavaScript, built into the binary.", body = String, content_type = "text/javascript")))]
pub(crate) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console/console.css", tag = "console",
    responses((status = 200, description = "CSS, built into the binary.", body = String, content_type = "text/css")))]
pub(crate) async fn style() -> Response {
    asset(include_str!("assets/console.css"), "text/css; charset=utf-8")
}

/// The console's icon.
#[utoipa::path(get, path = "/console/icon.svg", tag = "console",
    responses((status = 200, description = "An SVG image, built into the binary.", body = String, content_type = "image/svg+xml")))]
pub(crate) async fn icon() -> Response {
    asset(include_str!("assets/icon.svg"), "image/svg+xml")
}
