//! `/openapi.json` and `/docs`: the spec generated from the handlers describes every route the
//! application serves, with its scopes and error answers, and every operation it describes is
//! served.

use std::{collections::BTreeSet, path::Path};

use serde_json::Value;
use sluice_testkit::TestEnv;

use crate::support::RunningApp;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every `(method, path)` the spec describes.
fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                found.insert((method.to_owned(), path.clone()));
            }
        }
    }
    found
}

/// The Rust sources of the crates that serve HTTP.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut pending: Vec<std::path::PathBuf> =
        ["core", "ingest", "preprocess", "trainer", "registry", "inference", "webhooks"]
            .iter()
            .map(|c| root.join(c).join("src"))
            .chain([root.join("src")])
            .filter(|p| p.exists())
            .collect();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source folder") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("readable source");
                files.push((path.display().to_string(), text));
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_describes_every_served_route_with_its_scopes_and_errors() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    // Every operation is called once without a token: no failed-authentication limit.
    config.http.auth_failure_burst = 0;
    let app = RunningApp::spawn(config).await;
    let (status, spec) = app.get("/openapi.json").await;
    assert_eq!(status, 200, "{spec}");
    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", spec["openapi"]);
    let described = operations(&spec);

    // Routes are only ever added with their description (`routes!`): a plain axum `.route(` in
    // a service would serve a path the spec does not know.
    for (file, text) in sources() {
        for (line_number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            assert!(
                !code.contains(".route(\"") && !code.contains(".route_service("),
                "{file}:{}: a route registered without its OpenAPI description: {line}",
                line_number + 1
            );
        }
        // And every described handler is routed (a `#[utoipa::path]` left out of `routes!`
        // would be missing from the spec).
        for part in text.split("#[utoipa::path(").skip(1) {
            let head: String = part.chars().take(400).collect();
            let method = head.split([',', ')']).next().unwrap_or_default().trim().to_owned();
            let Some(path) = head.split("path = \"").nth(1).and_then(|rest| rest.split('"').next()) else {
                panic!("{file}: a #[utoipa::path] without a path: {head}");
            };
            assert!(
                described.contains(&(method.clone(), path.to_owned())),
                "{file}: {method} {path} is described by a handler but missing from /openapi.json"
            );
        }
    }

    // The public contract's routes are all there.
    for (method, path) in [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("post", "/v1/media"),
        ("get", "/v1/media/{id}"),
        ("patch", "/v1/media/{id}"),
        ("get", "/v1/datasets"),
        ("get", "/v1/datasets/{name}"),
        ("put", "/v1/datasets/{name}/pipeline"),
        ("post", "/v1/datasets/{name}/reprocess"),
        ("post", "/v1/datasets/{name}/imports"),
        ("get", "/v1/imports/{id}"),
        ("post", "/v1/training-jobs"),
        ("get", "/v1/training-jobs/{id}"),
        ("post", "/v1/training-jobs/{id}/cancel"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{name}"),
        ("get", "/v1/models/{name}/versions"),
        ("get", "/v1/models/{name}/versions/{version}"),
        ("put", "/v1/models/{name}/aliases/{alias}"),
        ("get", "/v1/models/{name}/aliases/{alias}/history"),
        ("post", "/v1/models/{name}/predict"),
        ("post", "/v1/feedback"),
        ("post", "/v1/batch-predictions"),
        ("get", "/v1/batch-predictions/{id}"),
        ("get", "/v1/models/{name}/drift"),
        ("post", "/v2/models/{name}/infer"),
        ("get", "/v1/tokens"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    ] {
        assert!(described.contains(&(method.to_owned(), path.to_owned())), "{method} {path} is not in /openapi.json");
    }

    let http = reqwest::Client::new();
    for (method, path) in &described {
        let operation = &spec["paths"][path][method];
        let responses = operation["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success answer described");
        for status in ["500", "503"] {
            assert!(responses.contains_key(status), "{method} {path}: {status} not described");
        }
        let scoped = operation["security"].as_array().is_some_and(|s| !s.is_empty());
        if scoped {
            for status in ["401", "403", "429"] {
                assert!(responses.contains_key(status), "{method} {path}: {status} not described");
            }
            let scopes: BTreeSet<&str> = operation["security"]
                .as_array()
                .expect("security")
                .iter()
                .flat_map(|requirement| requirement["bearer"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            assert!(!scopes.is_empty(), "{method} {path}: a security requirement without scopes");
            assert!(
                scopes.iter().all(|s| ["ingest", "predict", "train", "admin"].contains(s)),
                "{method} {path}: unknown scopes {scopes:?}"
            );
        }
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                let reference = schema["$ref"].as_str().unwrap_or_default();
                if path.starts_with("/v1/") {
                    assert!(
                        reference.ends_with("/ErrorBody"),
                        "{method} {path} {status}: not the API's error body: {response}"
                    );
                } else {
                    // The protocol's own answers (`/v2/health/ready`'s `{"ready": false}`) or an error body.
                    assert!(schema.is_object(), "{method} {path} {status}: no JSON body described: {response}");
                }
            }
        }

        // Served: without a token a scoped operation is refused as unauthenticated (not as an
        // unknown route); an open one answers.
        let url = app.url(
            &path
                .replace("{id}", "0190b1a4-7c3e-7000-8000-000000000000")
                .replace("{version}", "1")
                .replace(['{', '}'], ""),
        );
        let request = match method.as_str() {
            "get" => http.get(&url),
            "post" => http.post(&url),
            "put" => http.put(&url),
            "patch" => http.patch(&url),
            _ => http.delete(&url),
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        if scoped {
            assert_eq!(status, 401, "{method} {path}: a scoped operation answered {status} without a token");
        } else {
            assert!(![404, 405].contains(&status), "{method} {path}: described but not served ({status})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_page_is_served_from_the_binary() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let response = reqwest::get(app.url("/docs")).await.expect("docs");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"),
        "{:?}",
        response.headers()
    );
    // Its inline script and style run by hash and nothing else does (the browser run in
    // console::the_console_signs_in_shows_the_stack_and_promotes_and_rolls_back_in_a_browser
    // renders the page under this policy).
    let policy = response.headers()["content-security-policy"].to_str().expect("ascii").to_owned();
    assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"), "{policy}");
    let page = response.text().await.expect("page");
    assert!(page.contains("/openapi.json"), "the page renders the spec");
    // Nothing is fetched from elsewhere at run time.
    for needle in ["http://", "https://", "<script src", "<link rel=\"stylesheet\" href"] {
        assert!(!page.contains(needle), "the reference page loads {needle}…");
    }
}

/// A client generated from `/openapi.json` by a generator no one here wrote
/// (openapi-python-client) calls Sluice unchanged: answers, errors and the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_spec_calls_sluice_unchanged() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let tools = crate::support::api_tools(root);
    let work = std::env::temp_dir().join(format!("sluice-generated-client-{}", uuid::Uuid::new_v4().simple()));
    let args = [
        format!("{root}/tests/clients/generated_client.py"),
        app.base_url.clone(),
        app.admin_token.clone(),
        work.display().to_string(),
        format!("{tools}/openapi-python-client"),
    ];
    let python = format!("{tools}/python");
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output())
        .await
        .expect("task")
        .expect("python runs");
    let _ = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the generated client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checks: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script's JSON");
    assert_eq!(checks["healthz"], 200, "{checks}");
    assert_eq!(checks["list_models"], 200, "{checks}");
    assert!(checks["models_body"]["models"].is_array(), "{checks}");
    assert_eq!(checks["get_unknown_model"], 404, "{checks}");
    assert_eq!(checks["unknown_model_code"], "unknown_model", "{checks}");
    assert_eq!(checks["list_models_without_token"], 401, "{checks}");
}
