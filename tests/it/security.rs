//! Hostile clients and least privilege: the scope matrix route by route, promotion through
//! training jobs, token revocation, the failed-authentication limit, and bounded cost per request
//! (body, part and search-space limits) answered in the API's JSON error shape.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sluice::Service;
use sluice_core::auth::Scope;
use sluice_testkit::{TestEnv, eventually};
use uuid::Uuid;

use crate::{
    support::{RunningApp, json_of},
    training::seed_dataset,
};

/// Who may call a route: the scopes that pass (admin always does).
#[derive(Debug, Clone, Copy)]
enum Allowed {
    Ingest,
    IngestOrTrain,
    Train,
    PredictOrTrain,
    Predict,
    AdminOnly,
}

impl Allowed {
    fn passes(self, scope: Scope) -> bool {
        use Scope::{Admin, Ingest, Predict, Train};
        scope == Admin
            || match self {
                Allowed::Ingest => scope == Ingest,
                Allowed::IngestOrTrain => matches!(scope, Ingest | Train),
                Allowed::Train => scope == Train,
                Allowed::PredictOrTrain => matches!(scope, Predict | Train),
                Allowed::Predict => scope == Predict,
                Allowed::AdminOnly => false,
            }
    }
}

/// The README's scope matrix, route by route. Bodies are deliberately unusable, so a request
/// that passes the scope check is refused by validation and changes nothing.
fn matrix() -> Vec<(Method, String, Allowed)> {
    let id = Uuid::now_v7();
    use Allowed::*;
    vec![
        (Method::POST, "/v1/media".into(), Ingest),
        (Method::GET, format!("/v1/media/{id}"), IngestOrTrain),
        (Method::PATCH, format!("/v1/media/{id}"), Ingest),
        (Method::GET, "/v1/datasets".into(), IngestOrTrain),
        (Method::GET, "/v1/datasets/nope".into(), IngestOrTrain),
        (Method::POST, "/v1/datasets/nope/imports".into(), Ingest),
        (Method::GET, format!("/v1/imports/{id}"), Ingest),
        (Method::GET, "/v1/datasets/nope/pipeline".into(), IngestOrTrain),
        (Method::PUT, "/v1/datasets/nope/pipeline".into(), Ingest),
        (Method::POST, "/v1/datasets/nope/reprocess".into(), Ingest),
        (Method::POST, "/v1/training-jobs".into(), Train),
        (Method::GET, "/v1/training-jobs".into(), Train),
        (Method::GET, format!("/v1/training-jobs/{id}"), Train),
        (Method::POST, format!("/v1/training-jobs/{id}/cancel"), Train),
        (Method::GET, "/v1/models".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope/versions".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope/versions/1".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope/aliases/production".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope/aliases/production/history".into(), PredictOrTrain),
        (Method::PUT, "/v1/models/nope/aliases/staging".into(), Train),
        (Method::DELETE, "/v1/models/nope/aliases/staging".into(), Train),
        (Method::PUT, "/v1/models/nope/aliases/production".into(), AdminOnly),
        (Method::DELETE, "/v1/models/nope/aliases/production".into(), AdminOnly),
        (Method::GET, "/v1/models/nope/policy".into(), PredictOrTrain),
        (Method::PUT, "/v1/models/nope/policy".into(), AdminOnly),
        (Method::POST, "/v1/models/nope/predict".into(), Predict),
        (Method::GET, "/v1/models/nope/drift".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope/routing".into(), PredictOrTrain),
        (Method::PUT, "/v1/models/nope/routing".into(), AdminOnly),
        (Method::POST, "/v1/feedback".into(), Predict),
        (Method::POST, "/v1/batch-predictions".into(), Predict),
        (Method::GET, format!("/v1/batch-predictions/{id}"), Predict),
        (Method::GET, "/v1/tokens".into(), AdminOnly),
        (Method::POST, "/v1/tokens".into(), AdminOnly),
        (Method::DELETE, format!("/v1/tokens/{id}"), AdminOnly),
    ]
}

async fn call(app: &RunningApp, method: &Method, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = app.http.request(method.clone(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        request = request.header("content-type", "application/json").body("{");
    }
    json_of(request.send().await.expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_scope_as_the_scope_matrix_says() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.auth_failure_burst = 0;
    let app = RunningApp::spawn(config).await;
    let before = (app.count("SELECT count(*) FROM outbox").await, app.count("SELECT count(*) FROM media").await);
    let scopes = [Scope::Ingest, Scope::Predict, Scope::Train, Scope::Admin];
    let mut tokens = Vec::new();
    for scope in scopes {
        tokens.push((scope, app.token(&[scope]).await));
    }
    let mut wrong = Vec::new();
    for (method, path, allowed) in matrix() {
        let (status, body) = call(&app, &method, &path, None).await;
        if status != 401 || body["error"]["code"] != "unauthorized" {
            wrong.push(format!("{method} {path} without a token: {status} {body}"));
        }
        for (scope, token) in &tokens {
            let (status, body) = call(&app, &method, &path, Some(token)).await;
            let refused = status == 403 && body["error"]["code"] == "forbidden";
            let has_error_shape = body["error"]["message"].is_string() || status < 400;
            if allowed.passes(*scope) == refused || status == 401 || !has_error_shape {
                wrong.push(format!("{method} {path} with {scope}: {status} {body} (allowed: {allowed:?})"));
            }
        }
    }
    assert!(wrong.is_empty(), "{} routes disagree with the matrix:\n{}", wrong.len(), wrong.join("\n"));
    let after = (app.count("SELECT count(*) FROM outbox").await, app.count("SELECT count(*) FROM media").await);
    assert_eq!(before, after, "refused and invalid requests leave nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_the_policy_protects_needs_admin_and_the_policy_is_admin_only() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry, Service::Inference]).await;
    let version = crate::inference::register_trained(&app, "guarded", 1, 1).await;
    let train = app.token(&[Scope::Train]).await;
    let put = |token: &str, alias: &str| {
        app.http
            .put(app.url(&format!("/v1/models/guarded/aliases/{alias}")))
            .bearer_auth(token)
            .json(&json!({"version": version, "reason": "test"}))
            .send()
    };
    assert_eq!(put(&train, "staging").await.expect("put").status().as_u16(), 200, "train moves staging");
    let policy = json!({"auto_promote": "never", "protected_aliases": ["staging"]});
    let set = |token: &str| app.http.put(app.url("/v1/models/guarded/policy")).bearer_auth(token).json(&policy).send();
    assert_eq!(set(&train).await.expect("policy").status().as_u16(), 403);
    let (status, body) = json_of(set(&app.admin_token).await.expect("policy")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["protected_aliases"], json!(["staging"]));
    let (status, body) = json_of(put(&train, "staging").await.expect("put")).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")), "{body}");
    assert_eq!(put(&app.admin_token, "staging").await.expect("put").status().as_u16(), 200);
    let flood: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
    let (status, _) = json_of(
        app.http
            .put(app.url("/v1/models/guarded/policy"))
            .bearer_auth(&app.admin_token)
            .json(&json!({"auto_promote": "never", "protected_aliases": flood}))
            .send()
            .await
            .expect("policy"),
    )
    .await;
    assert_eq!(status, 400, "a protected-alias list is bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_token_cannot_move_production_through_a_training_job_without_a_policy() {
    let env = TestEnv::new().await;
    // Only the routes run: nothing consumes the trials; the stored request is what is checked.
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry, Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 6, 16, 3).await;
    let train = app.token(&[Scope::Train]).await;
    let job = |promote: Option<&str>| {
        let mut body = json!({"model": "m", "dataset": "shapes", "architecture": "mlp",
            "search": {"strategy": "grid", "space": {"epochs": 1}}});
        if let Some(promote) = promote {
            body["promote"] = json!(promote);
        }
        body
    };
    let post = |token: &str, body: Value| app.http.post(app.url("/v1/training-jobs")).bearer_auth(token).json(&body).send();
    for promote in ["always", "if_better"] {
        let (status, body) = json_of(post(&train, job(Some(promote))).await.expect("post")).await;
        assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")), "{promote}: {body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM training_jobs").await, 0, "a refused job leaves nothing");
    let stored_promote = |id: String| {
        let app = &app;
        async move {
            let id = Uuid::parse_str(&id).expect("job id");
            let client = app.ctx.db.get().await.expect("connection");
            let row = client.query_one("SELECT request FROM training_jobs WHERE id = $1", &[&id]).await.expect("job");
            row.get::<_, Value>("request")["promote"].clone()
        }
    };
    // Without `promote`, a train token's job registers but never promotes.
    let (status, body) = json_of(post(&train, job(None)).await.expect("post")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(stored_promote(body["id"].as_str().expect("id").to_owned()).await, "never");
    // The admin's own job promotes as asked; a policy lets train tokens promote up to it.
    let (status, body) = json_of(post(&app.admin_token, job(Some("always"))).await.expect("post")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(stored_promote(body["id"].as_str().expect("id").to_owned()).await, "always");
    let policy = app.http.put(app.url("/v1/models/m/policy")).bearer_auth(&app.admin_token);
    assert_eq!(policy.json(&json!({"auto_promote": "if_better"})).send().await.expect("policy").status(), 200);
    let (status, body) = json_of(post(&train, job(Some("if_better"))).await.expect("post")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(stored_promote(body["id"].as_str().expect("id").to_owned()).await, "if_better");
    let (status, _) = json_of(post(&train, job(Some("always"))).await.expect("post")).await;
    assert_eq!(status, 403, "the policy grants if_better, not always");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_within_seconds_and_tokens_are_listed_without_secrets() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    let (status, created) = json_of(
        app.http
            .post(app.url("/v1/tokens"))
            .bearer_auth(&app.admin_token)
            .json(&json!({"name": "dashboard", "scopes": ["predict"]}))
            .send()
            .await
            .expect("create"),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().expect("token").to_owned();
    let models = || app.http.get(app.url("/v1/models")).bearer_auth(&token).send();
    assert_eq!(models().await.expect("get").status(), 200);
    let (status, listed) =
        json_of(app.http.get(app.url("/v1/tokens")).bearer_auth(&app.admin_token).send().await.expect("list")).await;
    assert_eq!(status, 200, "{listed}");
    assert!(!listed.to_string().contains(&token), "the list never shows a token");
    let id = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "dashboard")
        .and_then(|t| t["id"].as_str())
        .expect("the new token is listed")
        .to_owned();
    // Revoked by the CLI, straight in PostgreSQL: this process notices within the cache TTL.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["token", "revoke", &id])
        .envs(crate::support::sluice_env(&env))
        .output()
        .expect("run sluice token revoke");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    eventually(Duration::from_secs(10), "the revoked token refused", || async {
        (models().await.ok()?.status() == 401).then_some(())
    })
    .await;
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["token", "list"])
        .envs(crate::support::sluice_env(&env))
        .output()
        .expect("run sluice token list");
    let text = String::from_utf8_lossy(&listed.stdout);
    let line = text.lines().find(|l| l.starts_with(&id)).expect("listed by the CLI");
    assert!(line.contains("dashboard") && line.contains("predict") && !line.ends_with('-'), "{line}");
    let (status, _) = json_of(
        app.http.delete(app.url(&format!("/v1/tokens/{}", Uuid::now_v7()))).bearer_auth(&app.admin_token).send().await.expect("delete"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_failing_to_authenticate_is_slowed_down_with_429() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.auth_failure_burst = 5;
    let app = RunningApp::spawn_services(config, &[Service::Registry]).await;
    let statuses: Vec<u16> = futures::future::join_all((0..8).map(|i| {
        let request = app.http.get(app.url("/v1/models")).bearer_auth(format!("slc_random{i}"));
        async move { request.send().await.expect("get").status().as_u16() }
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    let refused = app.http.get(app.url("/v1/models")).bearer_auth("slc_x").send().await.expect("get");
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let (_, body) = json_of(refused).await;
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_part_floods_and_huge_search_spaces_are_refused_in_json() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let admin = app.admin_token.clone();
    let big = vec![b' '; 2 * 1024 * 1024];
    let mut wrong = Vec::new();
    for path in ["/v1/feedback", "/v1/training-jobs", "/v1/batch-predictions", "/v1/tokens"] {
        let request = app.http.post(app.url(path)).bearer_auth(&admin).header("content-type", "application/json");
        let (status, body) = json_of(request.body(big.clone()).send().await.expect("post")).await;
        if status != 413 || !body["error"]["message"].is_string() {
            wrong.push(format!("{path}: {status} {body}"));
        }
    }
    // An unknown route and a wrong method answer in the same JSON shape.
    for (method, path, want) in [(Method::GET, "/v1/nothing-here", 404), (Method::DELETE, "/v1/datasets", 405)] {
        let (status, body) =
            json_of(app.http.request(method, app.url(path)).bearer_auth(&admin).send().await.expect("request")).await;
        if status != want || !body["error"]["code"].is_string() {
            wrong.push(format!("{path}: {status} {body}"));
        }
    }
    // One 11-byte GIF many times over: each part would be an object and a row.
    let gif: &[u8] = b"GIF89a\x01\x00\x01\x00\x00";
    let flood = |count: usize| {
        (0..count).fold(reqwest::multipart::Form::new(), |form, i| {
            form.part("file", reqwest::multipart::Part::bytes(gif.to_vec()).file_name(format!("{i}.gif")))
        })
    };
    let max_parts = app.ctx.config.http.max_parts;
    let upload = app.http.post(app.url("/v1/media?dataset=flood")).bearer_auth(&admin).multipart(flood(max_parts + 1));
    let (status, body) = json_of(upload.send().await.expect("upload")).await;
    if status != 413 || body["error"]["code"] != "too_many_parts" {
        wrong.push(format!("upload flood: {status} {body}"));
    }
    let predict = app.http.post(app.url("/v1/models/nope/predict")).bearer_auth(&admin).multipart(flood(max_parts + 1));
    let (status, body) = json_of(predict.send().await.expect("predict")).await;
    if status != 413 || body["error"]["code"] != "too_many_images" {
        wrong.push(format!("predict flood: {status} {body}"));
    }
    // Search spaces are counted before they are expanded.
    let values: Vec<f64> = (1..=100_000).map(|i| f64::from(i) * 1e-6).collect();
    let thousand: Vec<f64> = (1..=1000).map(|i| f64::from(i) * 1e-4).collect();
    for space in [
        json!({"learning_rate": values}),
        json!({"learning_rate": thousand, "dropout": (0..100).map(|i| f64::from(i) / 200.0).collect::<Vec<_>>(),
            "batch_size": (1..=100).collect::<Vec<_>>()}),
    ] {
        let job = json!({"model": "m", "dataset": "flood", "architecture": "mlp",
            "search": {"strategy": "grid", "space": space}});
        let post = app.http.post(app.url("/v1/training-jobs")).bearer_auth(&admin).json(&job);
        let (status, body) = json_of(post.send().await.expect("post")).await;
        if status != 422 || body["error"]["code"] != "invalid_search" {
            wrong.push(format!("search space: {status} {}", body.to_string().chars().take(300).collect::<String>()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(app.count("SELECT count(*) FROM media").await, 0, "nothing from a refused upload is kept");
    assert_eq!(app.count("SELECT count(*) FROM training_jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_leave_no_cache_entry_or_metric_series() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Inference, Service::Registry]).await;
    let png = crate::inference::png(&crate::inference::samples(1, 1), 0, 0);
    for i in 0..50 {
        let url = app.url(&format!("/v1/models/ghost-{i}/predict"));
        let (status, _) = json_of(app.http.post(url).bearer_auth(&app.admin_token).body(png.clone()).send().await.expect("predict")).await;
        assert_eq!(status, 404);
    }
    let (_, metrics) = app.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(!metrics.contains("ghost-"), "a name from the URL became a metric label");
    assert!(metrics.contains("sluice_inference_errors_total{model=\"unknown\""), "refusals are still counted");
}
