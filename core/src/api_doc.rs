//! The OpenAPI 3.1 description of every HTTP route, generated from the handlers themselves.
//!
//! Each service registers its handlers with `utoipa_axum::routes!`, which adds the route to the
//! router and its `#[utoipa::path]` to the spec in one place, so a route cannot be served without
//! being described. [`finish`] adds what every operation shares (the error answers of
//! authentication, scopes, rate limits and outages) and the application serves the result at
//! `/openapi.json`, with a reference page at `/docs` built into the binary.
//!
//! Scopes: an operation's `security` lists the scopes that grant it, one requirement per scope
//! (any one suffices; `admin` grants everything).

use std::sync::{Arc, OnceLock};

use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse},
};
use serde::Serialize;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        Components, ContentBuilder, HttpMethod, Info, OpenApi, OpenApiBuilder, Ref, RefOr, Response, ResponseBuilder,
        Tag,
        header::HeaderBuilder,
        path::Operation,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The security scheme every scoped operation names: `Authorization: Bearer <token>`.
pub const BEARER: &str = "bearer";

/// The security scheme of the console's session cookie (see [`crate::sessions`]).
pub const CONSOLE_SESSION: &str = "console_session";

/// The body of every `/v1` refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and people (`message`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable `snake_case` code.
    #[schema(example = "invalid_request")]
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
}

/// The body of every Open Inference Protocol (`/v2`) refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2ErrorBody {
    pub error: String,
}

/// The tags operations are grouped by, in the reference page's order.
const TAGS: [(&str, &str); 11] = [
    ("ingest", "Uploads, datasets and bulk imports."),
    ("preprocess", "Pipeline specs and reprocessing."),
    ("training", "Training jobs, trials and retrain requests."),
    ("registry", "Models, versions, aliases, their audit trail and policies."),
    ("inference", "Predictions, feedback, routing, capture and drift."),
    ("batch", "Batch predictions over a dataset or an S3 prefix."),
    ("v2", "The Open Inference Protocol (KServe V2 / Triton HTTP)."),
    ("webhooks", "Webhook subscriptions and their delivery history (admin)."),
    ("tokens", "API tokens (admin)."),
    ("console", "The web console: its pages and sign-in."),
    ("operations", "Liveness, readiness and metrics; no token."),
];

/// The description every service's router extends: title, version, tags, the bearer scheme and
/// the shared error schemas.
pub fn base() -> OpenApi {
    let mut components = Components::new();
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`sluice token create`). Scopes: ingest, predict, train, admin (admin grants all).",
                ))
                .build(),
        ),
    );
    // Documented for people: the console's cookie stands in for the bearer token on every
    // operation (with the same scopes), so operations keep naming `bearer` alone.
    components.security_schemes.insert(
        CONSOLE_SESSION.to_owned(),
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            crate::sessions::COOKIE,
            "A console session (`POST /console/session`), in place of `Authorization` on any operation, \
             granting its token's scopes. Requests other than GET and HEAD must also send its CSRF token \
             as `X-CSRF-Token`, else 403 `csrf_failed`.",
        ))),
    );
    for (name, schema) in [
        ("ErrorBody", ErrorBody::schema()),
        ("ErrorDetail", ErrorDetail::schema()),
        ("V2ErrorBody", V2ErrorBody::schema()),
    ] {
        components.schemas.insert(name.to_owned(), schema);
    }
    let mut info = Info::new("Sluice", env!("CARGO_PKG_VERSION"));
    info.description = Some(
        "Kafka-native MLOps: ingest media, preprocess it, train and register models, serve them. \
         Errors are `{\"error\": {\"code\", \"message\"}}` (`/v2`: `{\"error\": \"...\"}`); times are \
         RFC 3339 UTC; ids are UUIDs."
            .to_owned(),
    );
    OpenApiBuilder::new()
        .info(info)
        .components(Some(components))
        .tags(Some(TAGS.iter().map(|(name, about)| {
            let mut tag = Tag::new(*name);
            tag.description = Some((*about).to_owned());
            tag
        })))
        .build()
}

/// Completes the assembled spec: every operation gets a unique id (`<tag>_<handler>`) and the
/// answers every operation may give besides its own (401 and 403 where a token is needed, 429
/// for a token's rate limit, 500, and 503 when a dependency is down, with `Retry-After`);
/// responses that create something link to the operations that use it (OpenAPI links, which
/// stateful testers such as schemathesis follow).
pub fn finish(mut spec: OpenApi) -> OpenApi {
    for item in spec.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch] {
            let Some(operation) = operation.as_mut() else { continue };
            let tag = operation.tags.as_ref().and_then(|t| t.first()).cloned().unwrap_or_default();
            if let Some(id) = operation.operation_id.as_mut()
                && !tag.is_empty()
                && !id.starts_with(&format!("{tag}_"))
            {
                *id = format!("{tag}_{id}");
            }
        }
    }
    for (from, status, name, to, parameter, value) in LINKS {
        link(&mut spec, from, status, name, to, parameter, value);
    }
    for (path, item) in spec.paths.paths.iter_mut() {
        let v2 = path.starts_with("/v2");
        let operations = [
            (HttpMethod::Get, item.get.as_mut()),
            (HttpMethod::Put, item.put.as_mut()),
            (HttpMethod::Post, item.post.as_mut()),
            (HttpMethod::Delete, item.delete.as_mut()),
            (HttpMethod::Patch, item.patch.as_mut()),
        ];
        for (_, operation) in operations {
            let Some(operation) = operation else { continue };
            add_shared_responses(operation, v2);
        }
    }
    spec
}

/// Links from what an operation creates to the operations that use it: `(method path, status,
/// link name, target method path, target parameter, runtime expression)`.
const LINKS: [(&str, &str, &str, &str, &str, &str); 7] = [
    ("post /v1/media", "202", "GetMedia", "get /v1/media/{id}", "id", "$response.body#/items/0/id"),
    ("post /v1/media", "202", "RelabelMedia", "patch /v1/media/{id}", "id", "$response.body#/items/0/id"),
    ("post /v1/training-jobs", "202", "GetJob", "get /v1/training-jobs/{id}", "id", "$response.body#/id"),
    ("post /v1/training-jobs", "202", "CancelJob", "post /v1/training-jobs/{id}/cancel", "id", "$response.body#/id"),
    ("post /v1/batch-predictions", "202", "GetBatch", "get /v1/batch-predictions/{id}", "id", "$response.body#/id"),
    ("post /v1/datasets/{name}/imports", "202", "GetImport", "get /v1/imports/{id}", "id", "$response.body#/id"),
    ("post /v1/webhooks", "201", "GetDeliveries", "get /v1/webhooks/{id}/deliveries", "id", "$response.body#/id"),
];

fn operation_mut<'a>(spec: &'a mut OpenApi, route: &str) -> Option<&'a mut Operation> {
    let (method, path) = route.split_once(' ')?;
    let item = spec.paths.paths.get_mut(path)?;
    match method {
        "get" => item.get.as_mut(),
        "put" => item.put.as_mut(),
        "post" => item.post.as_mut(),
        "delete" => item.delete.as_mut(),
        "patch" => item.patch.as_mut(),
        _ => None,
    }
}

/// Adds one link, when both operations are served by this process.
fn link(spec: &mut OpenApi, from: &str, status: &str, name: &str, to: &str, parameter: &str, value: &str) {
    let Some(target) = operation_mut(spec, to).and_then(|op| op.operation_id.clone()) else { return };
    let Some(RefOr::T(response)) = operation_mut(spec, from).and_then(|op| op.responses.responses.get_mut(status))
    else {
        return;
    };
    let link = utoipa::openapi::link::LinkBuilder::new().operation_id(target).parameter(parameter, value).build();
    response.links.insert(name.to_owned(), RefOr::T(link));
}

fn add_shared_responses(operation: &mut Operation, v2: bool) {
    let scoped = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut shared = vec![
        ("500", "An unexpected failure on our side; it has been logged."),
        ("503", "A dependency (Kafka, S3 or PostgreSQL) is unreachable; retry after `Retry-After` seconds."),
    ];
    if scoped {
        shared.extend([
            ("401", "No token, or an unknown, revoked or malformed one."),
            ("403", "The token lacks the scope this operation needs."),
            ("429", "The token's request rate is over its limit; retry after `Retry-After` seconds."),
        ]);
    }
    for (status, description) in shared {
        if !operation.responses.responses.contains_key(status) {
            operation.responses.responses.insert(status.to_owned(), RefOr::T(error_response(description, v2, status)));
        }
    }
}

/// An error answer with the API's error body (and `Retry-After` on 429 and 503).
pub fn error_response(description: &str, v2: bool, status: &str) -> Response {
    let schema = Ref::from_schema_name(if v2 { "V2ErrorBody" } else { "ErrorBody" });
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build());
    if matches!(status, "429" | "503") {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::Integer))
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    response.build()
}

/// The spec as JSON, the way `/openapi.json` serves it.
pub fn to_json(spec: &OpenApi) -> String {
    let mut value = serde_json::to_value(spec).expect("OpenAPI documents serialise");
    camel_case_links(&mut value);
    serde_json::to_string_pretty(&value).expect("JSON values serialise")
}

/// utoipa 5.5 writes a link's `operationId` and `requestBody` in snake case; the specification
/// (and every tool that follows links) wants camel case.
fn camel_case_links(spec: &mut serde_json::Value) {
    let Some(paths) = spec.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    for item in paths.values_mut().filter_map(|i| i.as_object_mut()) {
        for operation in item.values_mut().filter_map(|o| o.as_object_mut()) {
            let Some(responses) = operation.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
            for response in responses.values_mut() {
                let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else { continue };
                for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
                    for (snake, camel) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(value) = link.remove(snake) {
                            link.insert(camel.to_owned(), value);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_name_their_target_in_camel_case() {
        let mut spec = base();
        let mut get = utoipa::openapi::path::OperationBuilder::new().operation_id(Some("get_thing")).build();
        get.tags = Some(vec!["ingest".to_owned()]);
        let mut post = utoipa::openapi::path::OperationBuilder::new()
            .operation_id(Some("create_thing"))
            .response("202", ResponseBuilder::new().description("made").build())
            .build();
        post.tags = Some(vec!["ingest".to_owned()]);
        spec.paths.add_path_operation("/v1/media/{id}", vec![HttpMethod::Get], get);
        spec.paths.add_path_operation("/v1/media", vec![HttpMethod::Post], post);
        let json: serde_json::Value = serde_json::from_str(&to_json(&finish(spec))).expect("JSON");
        let link = &json["paths"]["/v1/media"]["post"]["responses"]["202"]["links"]["GetMedia"];
        assert_eq!(link["operationId"], "ingest_get_thing", "{link}");
        assert_eq!(link["parameters"]["id"], "$response.body#/items/0/id", "{link}");
        assert!(link.get("operation_id").is_none(), "{link}");
        let shared = &json["paths"]["/v1/media"]["post"]["responses"];
        assert!(shared.get("503").is_some() && shared.get("401").is_none(), "{shared}");
    }

    #[test]
    fn the_reference_policy_allows_each_inline_block_by_hash_and_nothing_else() {
        let page = "<style></style><script>a()</script><p><script>a()</script>";
        let expected = "'sha256-qVpDBgj7bpq5hMAcGp3AOc79J3Y1Z4HvySTwKrWDoy4='";
        assert_eq!(inline_hashes(page, "script"), [expected, expected]);
        assert_eq!(inline_hashes(page, "style"), ["'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"]);
        assert_eq!(inline_hashes("<script>unclosed", "script"), Vec::<String>::new());
        let policy = reference_policy();
        assert_eq!(policy.matches("'sha256-").count(), 2, "one script and one style on the page: {policy}");
        assert!(policy.starts_with("default-src 'none'") && !policy.contains("unsafe"), "{policy}");
    }
}

/// The finished spec, set once the application has assembled every router.
#[derive(Debug, Clone, Default)]
pub struct Published(Arc<OnceLock<String>>);

impl Published {
    /// Serves `spec` from now on (the first call wins).
    pub fn publish(&self, spec: &OpenApi) {
        let _ = self.0.set(to_json(spec));
    }
}

/// `/openapi.json` and the reference page `/docs` (no token: the contract is public).
pub fn router(published: Published) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(openapi_json)).routes(routes!(reference)).with_state(published)
}

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of every route.", body = Object)))]
async fn openapi_json(State(published): State<Published>) -> impl IntoResponse {
    let body = published.0.get().cloned().unwrap_or_else(|| "{}".to_owned());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// A reference page rendering `/openapi.json`, built into the binary (no CDN).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "An HTML page.", body = String, content_type = "text/html")))]
async fn reference() -> impl IntoResponse {
    let headers = [
        (header::CONTENT_SECURITY_POLICY, reference_policy()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, Html(REFERENCE_PAGE))
}

const REFERENCE_PAGE: &str = include_str!("api_doc/reference.html");

/// The reference page's Content-Security-Policy: nothing but its own inline script and style
/// (allowed by hash, so an injected one would not run), and fetches of this origin.
fn reference_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hashes = |tag: &str| inline_hashes(REFERENCE_PAGE, tag).join(" ");
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hashes("script"),
            hashes("style")
        )
    })
}

/// `'sha256-…'` of the content of each inline `<tag>…</tag>` of `page`.
fn inline_hashes(page: &str, tag: &str) -> Vec<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut hashes = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        hashes.push(format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
        rest = &body[end + close.len()..];
    }
    hashes
}
