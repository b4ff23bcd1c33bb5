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
pub(crate) enum Allowed {
    Ingest,
    IngestOrTrain,
    Train,
    PredictOrTrain,
    Predict,
    AdminOnly,
}

impl Allowed {
    pub(crate) fn passes(self, scope: Scope) -> bool {
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
pub(crate) fn matrix() -> Vec<(Method, String, Allowed)> {
    let id = Uuid::now_v7();
    use Allowed::*;
    vec![
        (Method::POST, "/v1/media".into(), Ingest),
        (Method::GET, format!("/v1/media/{id}"), IngestOrTrain),
        (Method::PATCH, format!("/v1/media/{id}"), Ingest),
        (Method::GET, "/v1/datasets".into(), IngestOrTrain),
        (Method::GET, "/v1/datasets/nope".into(), IngestOrTrain),
        (Method::GET, "/v1/datasets/nope/labelling-queue".into(), IngestOrTrain),
        (Method::GET, "/v1/datasets/nope/media".into(), IngestOrTrain),
        (Method::GET, format!("/v1/media/{id}/content"), IngestOrTrain),
        (Method::POST, "/v1/datasets/nope/imports".into(), Ingest),
        (Method::GET, format!("/v1/imports/{id}"), Ingest),
        (Method::GET, "/v1/datasets/nope/pipeline".into(), IngestOrTrain),
        (Method::PUT, "/v1/datasets/nope/pipeline".into(), Ingest),
        (Method::POST, "/v1/datasets/nope/reprocess".into(), Ingest),
        (Method::POST, "/v1/training-jobs".into(), Train),
        (Method::GET, "/v1/training-jobs".into(), Train),
        (Method::GET, format!("/v1/training-jobs/{id}"), Train),
        (Method::POST, format!("/v1/training-jobs/{id}/cancel"), Train),
        (Method::GET, "/v1/retrain-requests".into(), Train),
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
        (Method::GET, "/v1/models/nope/drift/history".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope/predictions".into(), PredictOrTrain),
        (Method::GET, "/v1/models/nope/routing".into(), PredictOrTrain),
        (Method::PUT, "/v1/models/nope/routing".into(), AdminOnly),
        (Method::GET, "/v1/models/nope/capture".into(), PredictOrTrain),
        (Method::PUT, "/v1/models/nope/capture".into(), AdminOnly),
        (Method::POST, "/v1/feedback".into(), Predict),
        (Method::POST, "/v1/batch-predictions".into(), Predict),
        (Method::GET, format!("/v1/batch-predictions/{id}"), Predict),
        (Method::GET, "/v1/tokens".into(), AdminOnly),
        (Method::POST, "/v1/tokens".into(), AdminOnly),
        (Method::DELETE, format!("/v1/tokens/{id}"), AdminOnly),
        (Method::GET, "/v1/webhooks".into(), AdminOnly),
        (Method::POST, "/v1/webhooks".into(), AdminOnly),
        (Method::GET, format!("/v1/webhooks/{id}"), AdminOnly),
        (Method::DELETE, format!("/v1/webhooks/{id}"), AdminOnly),
        (Method::GET, format!("/v1/webhooks/{id}/deliveries"), AdminOnly),
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

/// Every route with an id in its path tells a malformed id (400 `invalid_id`) from an unknown
/// one (404), as the API's conventions say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_400_and_unknown_ids_404_on_every_route() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let unknown = Uuid::now_v7().to_string();
    let routes = [
        (Method::GET, "/v1/media/{id}"),
        (Method::GET, "/v1/media/{id}/content"),
        (Method::GET, "/v1/imports/{id}"),
        (Method::GET, "/v1/training-jobs/{id}"),
        (Method::POST, "/v1/training-jobs/{id}/cancel"),
        (Method::GET, "/v1/batch-predictions/{id}"),
        (Method::GET, "/v1/webhooks/{id}"),
        (Method::DELETE, "/v1/webhooks/{id}"),
        (Method::GET, "/v1/webhooks/{id}/deliveries"),
        (Method::DELETE, "/v1/tokens/{id}"),
    ];
    for (method, route) in routes {
        for (id, status, code) in [("not-a-uuid", 400, Some("invalid_id")), (unknown.as_str(), 404, None)] {
            let path = route.replace("{id}", id);
            let response = app
                .http
                .request(method.clone(), app.url(&path))
                .bearer_auth(&app.admin_token)
                .send()
                .await
                .expect("send");
            let (got, body) = json_of(response).await;
            assert_eq!(got, status, "{method} {path}: {body}");
            if let Some(code) = code {
                assert_eq!(body["error"]["code"].as_str(), Some(code), "{method} {path}: {body}");
            }
        }
    }
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
    // The Open Inference Protocol's routes: `predict` (or `admin`) for models, nothing for health
    // and server metadata; refusals in the protocol's shape, `{"error": "..."}`.
    let v2 = [
        (Method::GET, "/v2/models/nope", true),
        (Method::GET, "/v2/models/nope/versions/1", true),
        (Method::GET, "/v2/models/nope/ready", true),
        (Method::GET, "/v2/models/nope/versions/1/ready", true),
        (Method::POST, "/v2/models/nope/infer", true),
        (Method::POST, "/v2/models/nope/versions/1/infer", true),
        (Method::GET, "/v2", false),
        (Method::GET, "/v2/health/live", false),
    ];
    for (method, path, guarded) in v2 {
        let (status, body) = call(&app, &method, path, None).await;
        if guarded != (status == 401 && body["error"].is_string()) {
            wrong.push(format!("{method} {path} without a token: {status} {body}"));
        }
        for (scope, token) in &tokens {
            let (status, body) = call(&app, &method, path, Some(token)).await;
            let refused = status == 403 && body["error"].is_string();
            let allowed = !guarded || matches!(scope, Scope::Predict | Scope::Admin);
            if allowed == refused || status == 401 {
                wrong.push(format!("{method} {path} with {scope}: {status} {body}"));
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
    // An alias that takes a canary share of the traffic answers requests: only an admin moves it.
    assert_eq!(put(&train, "candidate").await.expect("put").status().as_u16(), 200, "train moves an alias");
    let routing = json!({"canary": {"alias": "candidate", "percent": 10.0}});
    let route = app.http.put(app.url("/v1/models/guarded/routing")).bearer_auth(&app.admin_token).json(&routing);
    assert_eq!(route.send().await.expect("routing").status().as_u16(), 200);
    let (status, body) = json_of(put(&train, "candidate").await.expect("put")).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")), "the canary: {body}");
    let delete =
        |token: &str| app.http.delete(app.url("/v1/models/guarded/aliases/candidate")).bearer_auth(token).send();
    assert_eq!(delete(&train).await.expect("delete").status().as_u16(), 403, "nor deletes it");
    assert_eq!(put(&app.admin_token, "candidate").await.expect("put").status().as_u16(), 200);
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
    assert_eq!(status, 422, "a protected-alias list is bounded (a well-formed body whose values are refused)");
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
    let post =
        |token: &str, body: Value| app.http.post(app.url("/v1/training-jobs")).bearer_auth(token).json(&body).send();
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
    assert_eq!(created["id"].as_str(), Some(id.as_str()), "creation names the id that revoking takes: {created}");
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
        app.http
            .delete(app.url(&format!("/v1/tokens/{}", Uuid::now_v7())))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_failing_to_authenticate_is_slowed_down_with_429() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.auth_failure_burst = 5;
    // The test client's requests come through a proxy on loopback that names the client.
    config.http.trusted_proxies = vec!["127.0.0.0/8".into(), "::1".into()];
    let app = RunningApp::spawn_services(config, &[Service::Registry]).await;
    // Asking without any credential guesses nothing and is not counted.
    for _ in 0..8 {
        let request = app.http.get(app.url("/v1/models")).header("x-forwarded-for", "203.0.113.7");
        assert_eq!(request.send().await.expect("get").status().as_u16(), 401);
    }
    let mut statuses = Vec::new();
    for i in 0..8 {
        let request = app.http.get(app.url("/v1/models")).bearer_auth(format!("slc_random{i}"));
        let request = request.header("x-forwarded-for", "198.51.100.1, 203.0.113.7");
        statuses.push(request.send().await.expect("get").status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // Another client behind the same proxy is not refused for the first one's failures.
    let other =
        app.http.get(app.url("/v1/models")).bearer_auth(&app.admin_token).header("x-forwarded-for", "203.0.113.8");
    assert_eq!(other.send().await.expect("get").status().as_u16(), 200);
    let refused = app.http.get(app.url("/v1/models")).bearer_auth("slc_x").header("x-forwarded-for", "203.0.113.7");
    let refused = refused.send().await.expect("get");
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
    let media = format!("/v1/media/{}", Uuid::now_v7());
    for (method, path) in [
        (Method::POST, "/v1/feedback"),
        (Method::POST, "/v1/training-jobs"),
        (Method::POST, "/v1/batch-predictions"),
        (Method::POST, "/v1/tokens"),
        (Method::PUT, "/v1/models/m/aliases/staging"),
        (Method::PUT, "/v1/models/m/policy"),
        (Method::PATCH, media.as_str()),
        (Method::POST, "/v1/datasets/d/imports"),
    ] {
        let request =
            app.http.request(method, app.url(path)).bearer_auth(&admin).header("content-type", "application/json");
        let (status, body) = json_of(request.body(big.clone()).send().await.expect("post")).await;
        if status != 413 || !body["error"]["message"].is_string() {
            wrong.push(format!("{path}: {status} {body}"));
        }
    }
    // A well-formed policy whose values are refused is 422, as the OpenAPI document says.
    for aliases in [json!(["Bad Alias!"]), json!((0..40).map(|i| format!("a{i}")).collect::<Vec<_>>())] {
        let body = json!({"auto_promote": "never", "protected_aliases": aliases});
        let put = app.http.put(app.url("/v1/models/m/policy")).bearer_auth(&admin).json(&body);
        let (status, answer) = json_of(put.send().await.expect("put")).await;
        if status != 422 {
            wrong.push(format!("policy {aliases}: {status} {answer}"));
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
    // One tiny GIF many times over: each part would be an object and a row.
    let gif = tiny_gif();
    let flood = |count: usize| {
        (0..count).fold(reqwest::multipart::Form::new(), |form, i| {
            form.part("file", reqwest::multipart::Part::bytes(gif.clone()).file_name(format!("{i}.gif")))
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
    // A part header block that never ends, and a preamble with no boundary: the multipart
    // parser would buffer them whole (up to the body limit); the guard ends them at 64 KiB.
    let mut endless = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.gif\"\r\nX-Pad: ".to_vec();
    endless.resize(16 * 1024 * 1024, b'a');
    let preamble = vec![b'z'; 16 * 1024 * 1024];
    for (what, path, body) in [
        ("upload headers", "/v1/media?dataset=flood", &endless),
        ("upload preamble", "/v1/media?dataset=flood", &preamble),
        ("predict headers", "/v1/models/nope/predict", &endless),
    ] {
        let request = app.http.post(app.url(path)).bearer_auth(&admin);
        let request = request.header("content-type", "multipart/form-data; boundary=XyZ").body(body.clone());
        let (status, answer) = json_of(request.send().await.expect("post")).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        if status != 400 || message.trim_end_matches('.') != sluice_core::multipart::FRAMING_MESSAGE {
            wrong.push(format!("{what}: {status} {answer}"));
        }
    }
    // A boundary longer than the guard follows would leave the parser unguarded: refused.
    let long = "b".repeat(201);
    let mut unguarded = format!("--{long}\r\n").into_bytes();
    unguarded.resize(4 * 1024 * 1024, b'a');
    for (what, path) in
        [("upload boundary", "/v1/media?dataset=flood"), ("predict boundary", "/v1/models/nope/predict")]
    {
        let request = app.http.post(app.url(path)).bearer_auth(&admin);
        let request = request.header("content-type", format!("multipart/form-data; boundary={long}"));
        let (status, answer) = json_of(request.body(unguarded.clone()).send().await.expect("post")).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        if status != 400 || message.trim_end_matches('.') != sluice_core::multipart::BOUNDARY_MESSAGE {
            wrong.push(format!("{what}: {status} {answer}"));
        }
    }
    // Search spaces are counted before they are expanded.
    let values: Vec<u32> = (1..=100_000).collect();
    let thousand: Vec<f64> = (1..=1000).map(|i| f64::from(i) * 1e-4).collect();
    for space in [
        json!({"batch_size": values}),
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

/// A client that sends its headers a byte at a time, or opens connections and sends nothing,
/// holds no connection past `http.header_timeout_secs`, and the connections open at once are
/// capped at `http.max_connections` (the next one waits in the listen queue, then is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_silent_clients_are_disconnected_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.header_timeout_secs = 1;
    config.http.max_connections = 2;
    let app = RunningApp::spawn(config).await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    // Let the connections the start-up checks left in the test client's pool time out.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\nX-Slow: ").await.expect("write");
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let started = std::time::Instant::now();
    let served = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
        client.get(format!("http://{addr}/healthz")).send().await.map(|r| r.status().as_u16())
    });
    for (what, stream) in [("unfinished headers", &mut slow), ("no request at all", &mut silent)] {
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "a client with {what} was still connected after 10 s");
    }
    assert_eq!(served.await.expect("join").expect("the third client is served"), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the third connection waited for one of the two open ones to close"
    );
    // A body announced and never sent, refused before it is read: the answer goes out, and the
    // connection is let go once the lingering read (5 s) is over, not held for the missing bytes.
    let mut stalled =
        tokio::net::TcpStream::connect(app.base_url.trim_start_matches("http://")).await.expect("connect");
    let head =
        "POST /v1/media HTTP/1.1\r\nHost: sluice\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n";
    stalled.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "a stalled body kept its connection past the lingering read");
    assert!(answer.starts_with(b"HTTP/1.1 401"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_leave_no_cache_entry_or_metric_series() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Inference, Service::Registry]).await;
    let png = crate::inference::png(&crate::inference::samples(1, 1), 0, 0);
    for i in 0..50 {
        let url = app.url(&format!("/v1/models/ghost-{i}/predict"));
        let (status, _) =
            json_of(app.http.post(url).bearer_auth(&app.admin_token).body(png.clone()).send().await.expect("predict"))
                .await;
        assert_eq!(status, 404);
    }
    let (_, metrics) = app.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(!metrics.contains("ghost-"), "a name from the URL became a metric label");
    assert!(metrics.contains("sluice_inference_errors_total{model=\"unknown\""), "refusals are still counted");
}

/// A complete 1×1 GIF (a few dozen bytes).
fn tiny_gif() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(1, 1, image::Rgba([9, 9, 9, 255])))
        .write_to(&mut out, image::ImageFormat::Gif)
        .expect("encode GIF");
    out.into_inner()
}

/// A JPEG made of `tables` Huffman-table segments that define nothing, then a 8×8 gray frame.
fn dht_flood_jpeg(tables: usize) -> Vec<u8> {
    let mut jpeg = vec![0xFF, 0xD8];
    for i in 0..tables {
        jpeg.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x13, (i % 2 * 0x10 + i % 4) as u8]);
        jpeg.extend_from_slice(&[0; 16]);
    }
    jpeg.extend_from_slice(&gray_frame_tail(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    jpeg
}

/// SOF0 8×8 gray, a DQT, one DC and one AC table with `counts`, a scan and EOI.
fn gray_frame_tail(counts: &[u8; 16]) -> Vec<u8> {
    let mut tail = vec![0xFF, 0xDB, 0x00, 0x43, 0x00];
    tail.extend_from_slice(&[1; 64]);
    tail.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x08, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00]);
    let symbols: usize = counts.iter().map(|&c| usize::from(c)).sum();
    for class in [0x00u8, 0x10] {
        tail.extend_from_slice(&[0xFF, 0xC4, 0x00, (2 + 1 + 16 + symbols) as u8, class]);
        tail.extend_from_slice(counts);
        tail.extend((0..symbols).map(|s| s as u8));
    }
    tail.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    tail.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0xFF, 0xD9]);
    tail
}

/// A child process killed and reaped when dropped, so a failing test leaves no `sluice` behind.
struct Reaped(std::process::Child);

impl Reaped {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice up` as a child process on a free port, against `env`'s stack; its address once listening.
fn spawn_sluice_up(env: &TestEnv) -> (Reaped, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("up")
        .envs(crate::support::sluice_env(env))
        .env("SLUICE_TELEMETRY_LOG_FORMAT", "json")
        .env("SLUICE_HTTP_AUTH_FAILURE_BURST", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sluice up");
    let stdout = child.stdout.take().expect("stdout");
    let child = Reaped(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv_timeout(Duration::from_secs(90)).expect("sluice up logs `listening` within 90 s");
        if let Ok(log) = serde_json::from_str::<Value>(&line)
            && log["message"] == "listening"
        {
            let addr = log["addr"].as_str().expect("addr").to_owned();
            std::thread::spawn(move || rx.into_iter().for_each(drop));
            return (child, addr);
        }
    }
}

/// Peak resident memory of process `pid` so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_corpus_gets_4xx_and_grows_peak_memory_by_at_most_256_mib() {
    let env = TestEnv::new().await;
    let registry = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    crate::inference::register_trained(&registry, "target", 1, 1).await;
    crate::inference::move_alias(&registry, "target", "production", 1).await;
    let admin = registry.admin_token.clone();
    let (child, addr) = spawn_sluice_up(&env);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("client");
    let url = |path: &str| format!("http://{addr}{path}");
    let post = |path: &str, content_type: &str, body: Vec<u8>| {
        http.post(url(path)).bearer_auth(&admin).header("content-type", content_type).body(body).send()
    };
    // Warm up: the model loads and the allocator settles before the baseline is read.
    let good = crate::inference::png(&crate::inference::samples(1, 1), 0, 0);
    for _ in 0..5 {
        let (status, body) =
            json_of(post("/v1/models/target/predict", "image/png", good.clone()).await.expect("predict")).await;
        assert_eq!(status, 200, "{body}");
    }
    let baseline = peak_rss_kib(child.id());

    let mut oversubscribed = vec![0xFF, 0xD8];
    oversubscribed.extend_from_slice(&gray_frame_tail(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    let mut comments = vec![0xFF, 0xD8];
    for _ in 0..60_000 {
        comments.extend_from_slice(&[0xFF, 0xFE, 0x00, 0x22]);
        comments.extend_from_slice(&[b'x'; 32]);
    }
    comments.extend_from_slice(&gray_frame_tail(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    let gif_screen = b"GIF89a\xff\xff\xff\xff\x00\x00\x00\x3b".to_vec();
    let tiff = crate::crafted::tiff(&[], &[(256, 4, 0x00FF_FFFF), (257, 4, 0x00FF_FFFF)]);
    // "Uncompressed" to a reader that takes a tag's first entry, JPEG to one that takes its last.
    let mut twice = crate::crafted::gray_tiff_entries(16, 16, 8).to_vec();
    twice.push((259, 3, 7));
    let twice = crate::crafted::tiff(&[0; 256], &twice);
    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        ("a TIFF giving its compression twice", "/v1/models/target/predict", "image/tiff", twice.clone()),
        ("a TIFF giving its compression twice", "/v1/media?dataset=hostile", "image/tiff", twice),
        ("2 MiB of empty Huffman tables", "/v1/models/target/predict", "image/jpeg", dht_flood_jpeg(100_000)),
        ("20 MiB of empty Huffman tables", "/v1/models/target/predict", "image/jpeg", dht_flood_jpeg(1_000_000)),
        ("an over-subscribed Huffman table", "/v1/models/target/predict", "image/jpeg", oversubscribed),
        ("2 MiB of comment segments", "/v1/models/target/predict", "image/jpeg", comments),
        (
            "a PNG claiming 100000x100000",
            "/v1/models/target/predict",
            "image/png",
            crate::crafted::png_claiming(100_000, 100_000),
        ),
        (
            "a PNG claiming 100000x100000",
            "/v1/media?dataset=hostile",
            "image/png",
            crate::crafted::png_claiming(100_000, 100_000),
        ),
        ("a GIF with a 65535x65535 screen", "/v1/models/target/predict", "image/gif", gif_screen.clone()),
        ("a TIFF claiming 16M x 16M", "/v1/models/target/predict", "image/tiff", tiff),
        ("a 100 MiB predict body", "/v1/models/target/predict", "image/jpeg", vec![0xFF; 100 * 1024 * 1024]),
        ("a 2 MiB feedback body", "/v1/feedback", "application/json", vec![b'['; 2 * 1024 * 1024]),
        ("deeply nested JSON", "/v1/training-jobs", "application/json", vec![b'['; 512 * 1024]),
    ];
    let mut wrong = Vec::new();
    for (what, path, content_type, body) in cases {
        let (status, answer) = json_of(post(path, content_type, body).await.expect(what)).await;
        // Thousands of comments are odd but legal: decoded or refused, never a failure of ours.
        let legal = what.contains("comment") && status == 200;
        if !legal && (!(400..500).contains(&status) || !answer["error"]["message"].is_string()) {
            wrong.push(format!("{what} → {status} {}", answer.to_string().chars().take(300).collect::<String>()));
        }
    }
    let flood = (0..1000).fold(reqwest::multipart::Form::new(), |form, i| {
        form.part("file", reqwest::multipart::Part::bytes(tiny_gif()).file_name(format!("{i}.gif")))
    });
    let (status, _) = json_of(
        http.post(url("/v1/media?dataset=hostile")).bearer_auth(&admin).multipart(flood).send().await.expect("flood"),
    )
    .await;
    if status != 413 {
        wrong.push(format!("a 1000-part upload → {status}"));
    }
    let values: Vec<u32> = (1..=100_000).collect();
    let job = json!({"model": "target", "dataset": "hostile", "architecture": "mlp",
        "search": {"strategy": "grid", "space": {"batch_size": values}}});
    let (status, _) =
        json_of(http.post(url("/v1/training-jobs")).bearer_auth(&admin).json(&job).send().await.expect("job")).await;
    if status != 422 {
        wrong.push(format!("a 100,000-value grid → {status}"));
    }
    // Still serving, and still right.
    let (status, body) = json_of(post("/v1/models/target/predict", "image/png", good).await.expect("predict")).await;
    assert_eq!(status, 200, "the process survives the corpus: {body}");
    let grown_mib = peak_rss_kib(child.id()).saturating_sub(baseline) / 1024;
    drop(child);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(grown_mib <= 256, "peak RSS grew by {grown_mib} MiB over the hostile corpus");
    assert_eq!(registry.count("SELECT count(*) FROM media").await, 0, "nothing hostile was stored");
}

/// A JPEG of `width`×`height` made by the image crate.
fn plain_jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut out, image::ImageFormat::Jpeg).expect("encode JPEG");
    out.into_inner()
}

/// What `ffmpeg` writes for `args` (an animated WebP, for example).
fn ffmpeg_output(args: &[&str], extension: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("out.{extension}"));
    let status = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .arg(&path)
        .status()
        .expect("run ffmpeg (deploy/local/stack.sh installs it)");
    assert!(status.success(), "ffmpeg {args:?}");
    std::fs::read(path).expect("ffmpeg output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_but_unusual_files_are_accepted_stored_whole_and_decoded() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    crate::inference::register_trained(&app, "any", 1, 1).await;
    crate::inference::move_alias(&app, "any", "production", 1).await;
    let base = plain_jpeg(40, 30);
    // A phone's motion photo: a still of phone-photo size (past any head buffer), then a video
    // appended after its end-of-image marker.
    let still = {
        let noise = image::RgbImage::from_fn(1200, 900, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
            image::Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(noise).write_to(&mut out, image::ImageFormat::Jpeg).expect("encode JPEG");
        out.into_inner()
    };
    assert!(still.len() > 512 * 1024, "the still is {} bytes", still.len());
    let mut motion = still;
    motion.extend_from_slice(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom\x00\x00\x00\x08free");
    motion.extend(std::iter::repeat_n(0x5Au8, 4096));
    // Metadata a maker appends after the image, and comment and APPn segments before the frame.
    let mut trailer = base.clone();
    trailer.extend_from_slice(b"\xFF\xD8junk after EOI\x00\xFF\xFF");
    let mut segments = base[..2].to_vec();
    segments.extend_from_slice(b"\xFF\xFE\x00\x0Ea comment!!!");
    segments.extend_from_slice(b"\xFF\xE2\x00\x10ICC_PROFILE\x00\x01\x01");
    segments.extend_from_slice(b"\xFF\xEB\x00\x06JP\x00\x00");
    segments.extend_from_slice(&base[2..]);
    let animated_gif = {
        let mut out = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
            encoder.set_repeat(image::codecs::gif::Repeat::Infinite).expect("repeat");
            for shade in [20u8, 200] {
                let frame = image::RgbaImage::from_pixel(24, 24, image::Rgba([shade, 80, 80, 255]));
                let delay = image::Delay::from_numer_denom_ms(500, 1);
                encoder.encode_frame(image::Frame::from_parts(frame, 0, 0, delay)).expect("frame");
            }
        }
        out
    };
    let animated_webp =
        ffmpeg_output(&["-f", "lavfi", "-i", "testsrc=size=32x32:rate=4", "-t", "1", "-loop", "0"], "webp");
    let gray16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(30, 30, |x, _| image::Luma([x as u16 * 2000]));
    let mut png16 = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma16(gray16).write_to(&mut png16, image::ImageFormat::Png).expect("16-bit PNG");
    // A TIFF laid out as libtiff writes it: the image data first, its directory at the end,
    // past the head an upload's header is first looked for in.
    let late_directory_tiff = {
        let (w, h) = (600u32, 600u32);
        let data: Vec<u8> = (0..w * h).map(|i| (i % 251) as u8).collect();
        crate::crafted::tiff(&data, &crate::crafted::gray_tiff_entries(w, h, 8))
    };

    let files: Vec<(&str, &str, Vec<u8>)> = vec![
        ("a TIFF whose directory follows its data", "image/tiff", late_directory_tiff),
        ("data after EOI (motion photo)", "image/jpeg", motion),
        ("metadata after EOI", "image/jpeg", trailer),
        ("comment and APP segments", "image/jpeg", segments),
        ("restart markers", "image/jpeg", include_bytes!("../../media/testdata/restart_422.jpg").to_vec()),
        ("progressive", "image/jpeg", include_bytes!("../../media/testdata/progressive_422.jpg").to_vec()),
        ("CMYK", "image/jpeg", include_bytes!("fixtures/cmyk.jpg").to_vec()),
        ("16-bit PNG", "image/png", png16.into_inner()),
        ("animated GIF", "image/gif", animated_gif),
        ("animated WebP", "image/webp", animated_webp),
    ];
    let mut wrong = Vec::new();
    let mut accepted = Vec::new();
    for (what, content_type, body) in &files {
        let predict = app.http.post(app.url("/v1/models/any/predict")).bearer_auth(&app.admin_token);
        let (status, answer) =
            json_of(predict.header("content-type", *content_type).body(body.clone()).send().await.expect("predict"))
                .await;
        if status != 200 {
            wrong.push(format!("predict {what}: {status} {answer}"));
        }
        let upload = app.http.post(app.url("/v1/media?dataset=unusual&label=a")).bearer_auth(&app.admin_token);
        let (status, answer) =
            json_of(upload.header("content-type", *content_type).body(body.clone()).send().await.expect("upload"))
                .await;
        match (status, answer["items"][0]["id"].as_str()) {
            (202, Some(id)) => accepted.push((*what, id.to_owned(), body.clone())),
            _ => wrong.push(format!("upload {what}: {status} {answer}")),
        }
    }
    for (what, id, body) in accepted {
        let item = eventually(Duration::from_secs(60), "the item settles", || async {
            let request = app.http.get(app.url(&format!("/v1/media/{id}"))).bearer_auth(&app.admin_token);
            let (_, item) = json_of(request.send().await.ok()?).await;
            matches!(item["status"].as_str(), Some("processed" | "failed")).then_some(item)
        })
        .await;
        if item["status"] != "processed" {
            wrong.push(format!("preprocess {what}: {item}"));
            continue;
        }
        let key = item["raw"]["key"].as_str().expect("raw key");
        let stored = sluice_core::s3::get_bytes(&app.ctx.s3, &app.ctx.config.s3.bucket, key).await.expect("get");
        if stored.as_deref() != Some(body.as_slice()) {
            wrong.push(format!("{what}: the raw object is not the upload, byte for byte"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Kafka messages are input too. Events no Sluice process writes (a NUL in a name, which
/// PostgreSQL refuses to store; a capture naming an object outside its capture key) are skipped,
/// never retried forever with the consumer stalled behind them, and never make a consumer read or
/// delete the object they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_neither_stall_consumers_nor_reach_other_objects() {
    use sluice_core::topics::Topic;
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    // One message at a time: a forged event retried forever would stop every later one.
    config.preprocess.concurrency = 1;
    let app = RunningApp::spawn(config.clone()).await;
    let producer = sluice_core::kafka::producer(&config.kafka).expect("producer");
    let (bucket, s3) = (&config.s3.bucket, &app.ctx.s3);
    let precious = "models/precious/artifact.safetensors";
    s3.put_object()
        .bucket(bucket)
        .key(precious)
        .body(b"weights".to_vec().into())
        .send()
        .await
        .expect("put the precious object");

    let event = |event_type: &str, data: Value| {
        json!({"event_id": Uuid::now_v7(), "type": event_type, "schema_version": 1,
               "occurred_at": "2026-12-05T00:00:00.000Z", "data": data})
        .to_string()
    };
    let ingested = event(
        "media.ingested",
        json!({"media_id": Uuid::now_v7(), "dataset": "x\u{0}y", "label": null, "kind": "image",
               "content_type": "image/png", "raw_key": precious, "bytes": 7, "sha256": "00", "width": 1, "height": 1}),
    );
    let capture = |key: &str, dataset: &str| {
        event(
            "media.captured",
            json!({"prediction_id": Uuid::now_v7(), "model": "m", "version": 1, "dataset": dataset, "key": key,
                   "predicted": "a", "confidence": 0.5, "why": "random"}),
        )
    };
    let captures = [capture(precious, "d"), capture("", "d"), capture(precious, "d\u{0}")];
    let ingested_topic = app.ctx.topic(Topic::MediaIngested);
    let captures_topic = app.ctx.topic(Topic::MediaCaptures);
    crate::support::produce(&producer, ingested_topic.as_str(), &[(0, ingested)]).await;
    let forged: Vec<(i32, String)> = captures.into_iter().map(|c| (0, c)).collect();
    crate::support::produce(&producer, captures_topic.as_str(), &forged).await;

    // Preprocess goes on past the forged event: a real upload behind it is processed.
    let response = app
        .http
        .post(app.url("/v1/media?dataset=after-forgery"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "image/png")
        .body(crate::ingest::png(32, 24, 9))
        .send()
        .await
        .expect("upload");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 202, "{body}");
    let id = body["items"][0]["id"].as_str().expect("id").to_owned();
    eventually(Duration::from_secs(60), "the upload behind the forged event to be processed", || async {
        let request = app.http.get(app.url(&format!("/v1/media/{id}"))).bearer_auth(&app.admin_token);
        let (_, media) = json_of(request.send().await.ok()?).await;
        (media["status"] == "processed").then_some(())
    })
    .await;
    // An event naming a real item but another object and dataset (no NUL): the item is processed
    // from its own row. A new spec for its dataset makes it due again.
    let spec = app.http.put(app.url("/v1/datasets/after-forgery/pipeline")).bearer_auth(&app.admin_token);
    let spec = spec.json(&json!({"width": 16, "height": 16})).send().await.expect("spec");
    assert_eq!(spec.status().as_u16(), 200);
    let misdirected = event(
        "media.ingested",
        json!({"media_id": id, "dataset": "elsewhere", "label": null, "kind": "image",
               "content_type": "image/png", "raw_key": precious, "bytes": 7, "sha256": "00", "width": 1, "height": 1}),
    );
    crate::support::produce(&producer, ingested_topic.as_str(), &[(0, misdirected)]).await;
    eventually(Duration::from_secs(60), "the item to be processed again, from its own object", || async {
        let request = app.http.get(app.url(&format!("/v1/media/{id}"))).bearer_auth(&app.admin_token);
        let (_, media) = json_of(request.send().await.ok()?).await;
        assert_ne!(media["status"], "failed", "{media}");
        (media["status"] == "processed" && media["outputs"][0]["width"] == 16).then_some(())
    })
    .await;
    eventually(Duration::from_secs(60), "the captures consumer to pass the forged events", || async {
        crate::support::group_caught_up(&config, &config.ingest.capture_group_id, captures_topic.as_str())
            .await
            .then_some(())
    })
    .await;
    let kept = s3.get_object().bucket(bucket).key(precious).send().await.expect("the precious object is still there");
    assert_eq!(kept.body.collect().await.expect("read").into_bytes().as_ref(), b"weights");
    assert_eq!(app.count("SELECT count(*) FROM media WHERE captured_from IS NOT NULL").await, 0);
}
