//! The web console: sign-in with an API token for an `HttpOnly` session cookie, the CSRF token
//! every cookie-authenticated change must carry, sign-out, scopes exactly the token's, the page
//! built into the binary, and the whole console driven end to end in headless Chromium.

use std::{path::PathBuf, time::Duration};

use reqwest::{Method, header};
use serde_json::{Value, json};
use sluice::Service;
use sluice_core::{
    auth::{self, Scope},
    models::{self, Lineage, ModelName, NewVersion},
    pipeline::PipelineSpec,
};
use sluice_testkit::TestEnv;
use uuid::Uuid;

use crate::support::{RunningApp, json_of};

/// A signed-in browser, as the tests play it: the cookie it holds and the CSRF token it learnt.
struct Session {
    /// The cookie's name: `__Host-sluice_session` when it is `Secure`.
    name: String,
    cookie: String,
    csrf: String,
    set_cookie: String,
}

impl Session {
    fn header(&self) -> String {
        format!("{}={}", self.name, self.cookie)
    }
}

async fn sign_in_raw(app: &RunningApp, token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.http.post(app.url("/console/session")).json(&json!({ "token": token }));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.expect("sign-in request")
}

async fn sign_in(app: &RunningApp, token: &str) -> Session {
    let response = sign_in_raw(app, token, &[]).await;
    let set_cookie =
        response.headers().get(header::SET_COOKIE).expect("a session cookie").to_str().expect("ascii").to_owned();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 201, "{body}");
    let (name, cookie) = set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .filter(|(name, _)| ["sluice_session", "__Host-sluice_session"].contains(name))
        .expect("the session cookie comes first");
    let (name, cookie) = (name.to_owned(), cookie.to_owned());
    Session { name, cookie, csrf: body["csrf_token"].as_str().expect("a CSRF token").to_owned(), set_cookie }
}

/// A request carrying the session cookie, and the CSRF header when `csrf` is given.
async fn with_cookie(
    app: &RunningApp,
    method: Method,
    path: &str,
    session: &Session,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path)).header(header::COOKIE, session.header());
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.expect("request")).await
}

/// Registers versions `1..=count` of `model` straight into the registry's tables (no artifact:
/// nothing here loads one), with accuracies that rise by version.
async fn register_versions(app: &RunningApp, model: &str, count: u8) {
    for n in 1..=count {
        let accuracy = 0.80 + f64::from(n) * 0.05;
        let version = NewVersion {
            model: ModelName::parse(model).expect("model name"),
            artifact_key: format!("models/{model}/{n}"),
            sha256: hex::encode([n; 32]),
            size_bytes: 1024,
            architecture: "cnn".into(),
            input_spec: PipelineSpec::default(),
            labels: vec!["circle".into(), "square".into(), "triangle".into()],
            hyperparameters: json!({"learning_rate": 0.001, "batch_size": 32}),
            // The shape of the report trainer::evaluation writes for the test split.
            metrics: json!({"val_accuracy": accuracy, "test_accuracy": accuracy - 0.01, "val_loss": 0.2, "epochs": 8,
                "test": {"items": 30, "accuracy": accuracy - 0.01, "macro_f1": 0.87, "expected_calibration_error": 0.04,
                    "per_class": [
                        {"label": "circle", "precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 10},
                        {"label": "square", "precision": 0.82, "recall": 0.9, "f1": 0.86, "support": 10},
                        {"label": "triangle", "precision": 0.89, "recall": 0.8, "f1": 0.84, "support": 10}],
                    "confusion_matrix": [[9, 1, 0], [0, 9, 1], [1, 1, 8]]}}),
            reference: json!({}),
            lineage: Lineage {
                job_id: Uuid::now_v7(),
                trial_id: Uuid::now_v7(),
                snapshot_id: format!("snap-{n}"),
                dataset: "shapes".into(),
                spec_hash: PipelineSpec::default().hash(),
                sluice_version: env!("CARGO_PKG_VERSION").into(),
            },
        };
        let mut client = app.ctx.db.get().await.expect("connection");
        let tx = client.transaction().await.expect("transaction");
        models::register(&tx, &app.ctx.config.kafka.topic_prefix, &version).await.expect("register");
        tx.commit().await.expect("commit");
    }
}

async fn move_production(app: &RunningApp, model: &str, version: i32, reason: &str) {
    let path = format!("/v1/models/{model}/aliases/production");
    let request = app.http.put(app.url(&path)).bearer_auth(&app.admin_token);
    let (status, body) =
        json_of(request.json(&json!({"version": version, "reason": reason})).send().await.expect("PUT")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_a_bad_token_is_401_sets_no_cookie_and_counts_as_a_failed_authentication() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.auth_failure_burst = 4;
    let app = RunningApp::spawn_services(config, &[Service::Registry]).await;

    let long = format!("slc_{}", "a".repeat(300));
    for bad in ["slc_not-a-token", "", long.as_str()] {
        let response = sign_in_raw(&app, bad, &[]).await;
        assert!(response.headers().get(header::SET_COOKIE).is_none(), "no cookie for {bad:?}");
        let (status, body) = json_of(response).await;
        assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")), "{bad:?}: {body}");
    }
    // A form on another site cannot post JSON; the sign-in takes nothing else.
    let form = app
        .http
        .post(app.url("/console/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", app.admin_token));
    let response = form.send().await.expect("form post");
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(json_of(response).await.0, 415);
    let (status, body) = json_of(
        app.http
            .post(app.url("/console/session"))
            .header("content-type", "application/json")
            .body("{\"token\": 5}")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("invalid_request")), "{body}");

    // A session cookie nobody issued is one more failure; then the address is held off, even
    // for a good token, exactly as for bearer tokens.
    let forged = Session {
        name: "sluice_session".into(),
        cookie: "A".repeat(43),
        csrf: String::new(),
        set_cookie: String::new(),
    };
    let (status, body) = with_cookie(&app, Method::GET, "/v1/models", &forged, None, None).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")), "{body}");
    let response = sign_in_raw(&app, &app.admin_token, &[]).await;
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert!(response.headers().get(header::RETRY_AFTER).is_some());
    let (status, body) = json_of(response).await;
    assert_eq!((status, body["error"]["code"].clone()), (429, json!("rate_limited")), "{body}");
    assert_eq!(app.count("SELECT count(*) FROM console_sessions").await, 0, "no session was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_reads_like_its_token_and_changes_state_only_with_the_sessions_csrf_token() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    register_versions(&app, "shapes", 2).await;
    let session = sign_in(&app, &app.admin_token).await;
    let attributes: Vec<&str> = session.set_cookie.split("; ").collect();
    for wanted in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(attributes.contains(&wanted), "{wanted} in {}", session.set_cookie);
    }
    assert!(!attributes.contains(&"Secure"), "plain HTTP: a Secure cookie would be dropped");
    assert_eq!(session.cookie.len(), 43);
    assert!(!session.set_cookie.contains(&app.admin_token), "the cookie is a session, not the token");
    let stored: Vec<u8> = app
        .ctx
        .db
        .get()
        .await
        .expect("connection")
        .query_one("SELECT secret_sha256 FROM console_sessions", &[])
        .await
        .expect("one session")
        .get(0);
    assert_ne!(stored, session.cookie.as_bytes(), "only a hash of the secret is stored");

    let (status, models) = with_cookie(&app, Method::GET, "/v1/models", &session, None, None).await;
    assert_eq!((status, models["models"][0]["name"].clone()), (200, json!("shapes")), "{models}");
    let (status, me) = with_cookie(&app, Method::GET, "/console/session", &session, None, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["name"].clone(), me["scopes"].clone(), me["via"].clone()),
        (json!("test-admin"), json!(["admin"]), json!("cookie"))
    );
    assert_eq!(me["csrf_token"], session.csrf.as_str());
    let (status, me) =
        json_of(app.http.get(app.url("/console/session")).bearer_auth(&app.admin_token).send().await.expect("GET"))
            .await;
    assert_eq!((status, me["via"].clone(), me["csrf_token"].clone()), (200, json!("bearer"), Value::Null), "{me}");

    let path = "/v1/models/shapes/aliases/production";
    let promote = || Some(json!({"version": 2, "reason": "from the console"}));
    let other = sign_in(&app, &app.admin_token).await;
    for csrf in [None, Some(""), Some("not-the-token"), Some(other.csrf.as_str())] {
        let (status, body) = with_cookie(&app, Method::PUT, path, &session, csrf, promote()).await;
        assert_eq!((status, body["error"]["code"].clone()), (403, json!("csrf_failed")), "{csrf:?}: {body}");
    }
    let (status, body) = with_cookie(&app, Method::DELETE, path, &session, None, None).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("csrf_failed")), "every method but GET and HEAD");
    assert_eq!(app.count("SELECT count(*) FROM alias_history").await, 0, "a refused change writes nothing");

    let (status, moved) = with_cookie(&app, Method::PUT, path, &session, Some(&session.csrf), promote()).await;
    assert_eq!((status, moved["to"].clone(), moved["changed"].clone()), (200, json!(2), json!(true)), "{moved}");
    assert!(moved["actor"].as_str().expect("actor").starts_with("test-admin ("), "{moved}");

    // Bearer clients are judged by their header alone, cookie or not.
    let request = app.http.put(app.url(path)).bearer_auth(&app.admin_token).header(header::COOKIE, session.header());
    let (status, body) = json_of(request.json(&json!({"version": 1})).send().await.expect("PUT")).await;
    assert_eq!(status, 200, "a bearer request needs no CSRF token: {body}");
    let request = app.http.get(app.url("/v1/models")).bearer_auth("slc_wrong").header(header::COOKIE, session.header());
    assert_eq!(
        request.send().await.expect("GET").status().as_u16(),
        401,
        "a bad bearer token is not rescued by a cookie"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_the_session_everywhere_and_clears_the_cookie() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    let session = sign_in(&app, &app.admin_token).await;
    let (status, body) = with_cookie(&app, Method::DELETE, "/console/session", &session, None, None).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("csrf_failed")), "{body}");
    assert_eq!(with_cookie(&app, Method::GET, "/v1/models", &session, None, None).await.0, 200, "still signed in");

    let response = app
        .http
        .delete(app.url("/console/session"))
        .header(header::COOKIE, session.header())
        .header("x-csrf-token", &session.csrf)
        .send()
        .await
        .expect("sign out");
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(response.headers().get("clear-site-data").map(|v| v.as_bytes()), Some(&b"\"cache\""[..]));
    let cleared = response.headers().get(header::SET_COOKIE).expect("a clearing cookie").to_str().expect("ascii");
    assert!(cleared.starts_with("sluice_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(app.count("SELECT count(*) FROM console_sessions").await, 0);

    // A copy of the cookie kept elsewhere is dead too.
    let (status, body) = with_cookie(&app, Method::GET, "/v1/models", &session, None, None).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")), "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("sign in again"), "{body}");
    // Signing out again, or with no cookie at all, only clears the cookie.
    assert_eq!(with_cookie(&app, Method::DELETE, "/console/session", &session, None, None).await.0, 204);
    assert_eq!(app.http.delete(app.url("/console/session")).send().await.expect("DELETE").status().as_u16(), 204);

    // Signing in again replaces the previous session, and a revoked token ends its sessions.
    let first = sign_in(&app, &app.admin_token).await;
    let again = sign_in_raw(&app, &app.admin_token, &[("cookie", &first.header())]).await;
    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(with_cookie(&app, Method::GET, "/v1/models", &first, None, None).await.0, 401, "replaced");
    let doomed = app.token(&[Scope::Admin]).await;
    let session = sign_in(&app, &doomed).await;
    let doomed_id = auth::verify(&app.ctx.db, &doomed).await.expect("lookup").expect("token").token_id;
    auth::revoke_token(&app.ctx.db, doomed_id).await.expect("revoke");
    assert_eq!(with_cookie(&app, Method::GET, "/v1/models", &session, None, None).await.0, 401, "revoked token");

    // A token signing in over and over keeps its newest sessions only.
    let busy = app.token(&[Scope::Predict]).await;
    let busy_id = auth::verify(&app.ctx.db, &busy).await.expect("lookup").expect("token").token_id;
    let mut sessions = Vec::new();
    for _ in 0..sluice_core::sessions::MAX_SESSIONS_PER_TOKEN + 3 {
        sessions.push(sign_in(&app, &busy).await);
    }
    let kept = app.count(&format!("SELECT count(*) FROM console_sessions WHERE token_id = '{busy_id}'")).await;
    assert_eq!(kept, sluice_core::sessions::MAX_SESSIONS_PER_TOKEN);
    let newest = sessions.last().expect("a session");
    assert_eq!(with_cookie(&app, Method::GET, "/v1/models", newest, None, None).await.0, 200, "the newest stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_behind_tls_and_when_configured() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    let behind_proxy = sign_in_raw(&app, &app.admin_token, &[("x-forwarded-proto", "https")]).await;
    let cookie = behind_proxy.headers()[header::SET_COOKIE].to_str().expect("ascii").to_owned();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    // A plain session from before `secure_cookies` was set.
    let plain = sign_in(&app, &app.admin_token).await;
    assert_eq!(plain.name, "sluice_session");
    drop(app);

    let mut config = env.config.clone();
    config.http.secure_cookies = true;
    config.http.console_session_hours = 1;
    let app = RunningApp::spawn_services(config, &[Service::Registry]).await;
    let session = sign_in(&app, &app.admin_token).await;
    assert!(
        session.set_cookie.contains("Max-Age=3600") && session.set_cookie.ends_with("; Secure"),
        "{}",
        session.set_cookie
    );
    // Secure, it is a `__Host-` cookie, and only that name is read: a plain one (which another
    // host under the same domain could have set) does not sign anyone in.
    assert_eq!(session.name, "__Host-sluice_session", "{}", session.set_cookie);
    assert_eq!(with_cookie(&app, Method::GET, "/v1/models", &session, None, None).await.0, 200);
    let planted = Session { name: "sluice_session".to_owned(), ..session };
    assert_eq!(with_cookie(&app, Method::GET, "/v1/models", &planted, None, None).await.0, 401);

    // Signing in over TLS with the old plain cookie still held ends its session and clears it:
    // it would otherwise outlive sign-out unseen.
    let live = |secret: &str| {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(secret.as_bytes()).to_vec();
        let db = app.ctx.db.clone();
        async move {
            let client = db.get().await.expect("connection");
            let sql = "SELECT count(*) FROM console_sessions WHERE secret_sha256 = $1";
            client.query_one(sql, &[&hash]).await.expect("count").get::<_, i64>(0)
        }
    };
    assert_eq!(live(&plain.cookie).await, 1);
    let again = app
        .http
        .post(app.url("/console/session"))
        .header(header::COOKIE, plain.header())
        .json(&json!({ "token": app.admin_token }))
        .send()
        .await
        .expect("sign in");
    assert_eq!(again.status().as_u16(), 201);
    let set: Vec<&str> = again.headers().get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
    assert!(set.iter().any(|c| c.starts_with("__Host-sluice_session=") && !c.contains("Max-Age=0")), "{set:?}");
    assert!(set.iter().any(|c| c.starts_with("sluice_session=;") && c.contains("Max-Age=0")), "{set:?}");
    assert_eq!(live(&plain.cookie).await, 0, "the plain cookie's session is ended");
}

/// The scope matrix of `security.rs`, with a console session in place of each bearer token:
/// every route answers the cookie (with its CSRF token) exactly as it answers the token, and
/// every route that is not GET refuses the cookie without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_grants_exactly_its_tokens_scopes_on_every_route() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.auth_failure_burst = 0;
    let app = RunningApp::spawn(config).await;
    let mut wrong = Vec::new();
    for scope in [Scope::Ingest, Scope::Predict, Scope::Train, Scope::Admin] {
        let token = app.token(&[scope]).await;
        let session = sign_in(&app, &token).await;
        for (method, path, allowed) in crate::security::matrix() {
            let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({"unusable": true}));
            let by_bearer = {
                let mut request = app.http.request(method.clone(), app.url(&path)).bearer_auth(&token);
                if let Some(body) = &body {
                    request = request.json(body);
                }
                json_of(request.send().await.expect("request")).await
            };
            let by_cookie = with_cookie(&app, method.clone(), &path, &session, Some(&session.csrf), body.clone()).await;
            let refused = by_cookie.0 == 403 && by_cookie.1["error"]["code"] == "forbidden";
            if by_cookie.0 != by_bearer.0 || allowed.passes(scope) == refused {
                wrong.push(format!(
                    "{method} {path} as {scope}: cookie {} {}, bearer {}",
                    by_cookie.0, by_cookie.1, by_bearer.0
                ));
            }
            let without_csrf = with_cookie(&app, method.clone(), &path, &session, None, body).await;
            let csrf_refused = without_csrf.0 == 403 && without_csrf.1["error"]["code"] == "csrf_failed";
            if (method != Method::GET) != csrf_refused {
                wrong.push(format!("{method} {path} as {scope} without CSRF: {} {}", without_csrf.0, without_csrf.1));
            }
        }
    }
    assert!(wrong.is_empty(), "{} answers differ:\n{}", wrong.len(), wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_and_its_assets_are_served_from_the_binary_by_every_listener() {
    let env = TestEnv::new().await;
    for services in [&[Service::Registry][..], &[Service::Inference][..]] {
        let app = RunningApp::spawn_services(env.config.clone(), services).await;
        let page = app.http.get(app.url("/")).send().await.expect("page");
        assert_eq!(page.status(), 200);
        let headers = page.headers().clone();
        assert!(headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/html"));
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        let html = page.text().await.expect("html");
        for nav in ["Overview", "Datasets", "Training", "Models", "Serving"] {
            assert!(html.contains(&format!(">{nav}</a>")), "navigation to {nav}");
        }
        for (path, kind) in [
            ("/console/console.js", "text/javascript"),
            ("/console/console.css", "text/css"),
            ("/console/icon.svg", "image/svg+xml"),
        ] {
            let asset = app.http.get(app.url(path)).send().await.expect("asset");
            assert_eq!(asset.status(), 200, "{path}");
            assert!(asset.headers()[header::CONTENT_TYPE].to_str().expect("ascii").starts_with(kind), "{path}");
            // The SVG namespace is a name, not an address anything is fetched from.
            let text = asset.text().await.expect("text").replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"), "{path} loads nothing from elsewhere");
            assert!(html.contains(&format!("\"{path}\"")), "the page uses {path}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
    }
}

/// A running successive-halving job of `model` on `dataset`, inserted into the trainer's tables
/// (no event: nothing trains it): six trials of 3 epochs on rung 0, the best two continued to
/// epoch 6 on rung 1, and the best of those on rung 2, running at epoch 8 of 10.
async fn insert_training_job(app: &RunningApp, model: &str, dataset: &str) -> Uuid {
    let job_id = Uuid::now_v7();
    let client = app.ctx.db.get().await.expect("connection");
    let request = json!({"model": model, "dataset": dataset, "architecture": "mlp",
        "search": {"strategy": "halving", "max_trials": 6, "reduction_factor": 3, "min_epochs": 3,
                   "space": {"learning_rate": {"log_uniform": [0.0001, 0.1]}, "epochs": 10}},
        "validation_split": 0.2, "seed": 7, "promote": "never"});
    client
        .execute(
            "INSERT INTO training_jobs (id, model, dataset, architecture, request, status, snapshot_id, snapshot_key,
                                        labels, items, requested_by, started_at)
             VALUES ($1, $2, $3, 'mlp', $4, 'running', 'snap-console', 'snapshots/snap-console', $5, 3, 'test-admin', now())",
            &[&job_id, &model, &dataset, &request, &json!(["circle", "square", "triangle"])],
        )
        .await
        .expect("job");
    // (ordinal, rung, parent ordinal, learning rate, epoch budget, first epoch, last epoch, status)
    type Trial = (i32, i32, Option<i32>, f64, i32, i32, i32, &'static str);
    let plan: [Trial; 9] = [
        (0, 0, None, 0.0003, 3, 1, 3, "succeeded"),
        (1, 0, None, 0.001, 3, 1, 3, "succeeded"),
        (2, 0, None, 0.003, 3, 1, 3, "succeeded"),
        (3, 0, None, 0.01, 3, 1, 3, "succeeded"),
        (4, 0, None, 0.03, 3, 1, 3, "succeeded"),
        (5, 0, None, 0.1, 3, 1, 3, "succeeded"),
        (6, 1, Some(2), 0.003, 6, 4, 6, "succeeded"),
        (7, 1, Some(1), 0.001, 6, 4, 6, "succeeded"),
        (8, 2, Some(6), 0.003, 10, 7, 8, "running"),
    ];
    let mut ids: Vec<Uuid> = Vec::new();
    for (ordinal, rung, parent, learning_rate, epochs, first, last, status) in plan {
        // Closer to 0.003 learns better; every epoch a little more.
        let quality = 0.95 - 0.08 * (learning_rate / 0.003_f64).log10().powi(2);
        let epoch_metrics = |e: i32| {
            let accuracy = quality * (1.0 - 0.6 * (-f64::from(e) / 2.0).exp());
            json!({"epoch": e, "epochs": epochs, "train_loss": 1.2 - accuracy, "train_accuracy": accuracy + 0.02,
                   "val_loss": 1.3 - accuracy, "val_accuracy": accuracy, "learning_rate": learning_rate, "seconds": 2.5})
        };
        let history: Vec<Value> = (first..=last)
            .map(|e| {
                let mut entry = epoch_metrics(e);
                entry["worker"] = json!("test-worker");
                entry["resumed_from"] = json!(first - 1);
                entry
            })
            .collect();
        let metrics = if status == "succeeded" {
            let best = epoch_metrics(last);
            json!({"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"], "epochs": last})
        } else {
            epoch_metrics(last)
        };
        let params = json!({"learning_rate": learning_rate, "batch_size": 32, "epochs": epochs, "optimizer": "adamw",
                            "momentum": 0.9, "weight_decay": 0.0001, "dropout": 0.0, "hidden": 64,
                            "schedule": "cosine", "patience": 0, "horizon": 10});
        let id = Uuid::now_v7();
        let parent = parent.map(|p| ids[p as usize]);
        let duration_ms = (status == "succeeded").then_some(i64::from(last - first + 1) * 2500);
        client
            .execute(
                "INSERT INTO training_trials (id, job_id, ordinal, rung, parent, params, status, worker, epoch, epochs,
                                              metrics, history, duration_ms, started_at, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'test-worker', $8, $9, $10, $11, $12, now(),
                         CASE WHEN $7::text = 'running' THEN NULL ELSE now() END)",
                &[
                    &id,
                    &job_id,
                    &ordinal,
                    &rung,
                    &parent,
                    &params,
                    &status,
                    &last,
                    &epochs,
                    &metrics,
                    &Value::from(history),
                    &duration_ms,
                ],
            )
            .await
            .expect("trial");
        ids.push(id);
    }
    job_id
}

/// Where the browser test leaves its screenshots.
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// `sluice push DIR --dataset DATASET`, as a user would, against `app`.
async fn push(app: &RunningApp, dir: &std::path::Path, dataset: &str) {
    let mut push = crate::support::sluice_command();
    push.arg("push").arg(dir).args(["--dataset", dataset, "--url", &app.base_url, "--token", &app.admin_token]);
    let pushed = tokio::task::spawn_blocking(move || push.output()).await.expect("task").expect("sluice push");
    assert!(pushed.status.success(), "sluice push: {}", String::from_utf8_lossy(&pushed.stderr));
}

/// Headless Chromium, driven by Playwright: sign in, the Overview's health, a model's versions,
/// promote and roll back by clicking, sign out, and a predict-only token that sees no buttons and
/// whose cookie the API refuses a promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_shows_the_stack_and_promotes_and_rolls_back_in_a_browser() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    register_versions(&app, "shapes", 2).await;
    move_production(&app, "shapes", 1, "first release").await;
    // A labelled folder, pushed as a user would: `sluice push DIR --dataset shapes`.
    let folder = tempfile::tempdir().expect("temp dir");
    for (seed, label) in [(1, "circle"), (2, "square"), (3, "triangle")] {
        std::fs::create_dir_all(folder.path().join(label)).expect("mkdir");
        std::fs::write(folder.path().join(label).join(format!("{label}.png")), crate::ingest::png(32, 32, seed))
            .expect("write");
    }
    push(&app, folder.path(), "shapes").await;
    // A second, larger labelled folder the browser starts a real training job on (from the
    // Training page's New job dialog) and watches its learning curve grow.
    let live = "live";
    let live_folder = tempfile::tempdir().expect("temp dir");
    for (i, (png, label)) in crate::closed_loop::images(300, 5, 0).into_iter().enumerate() {
        std::fs::create_dir_all(live_folder.path().join(&label)).expect("mkdir");
        std::fs::write(live_folder.path().join(&label).join(format!("{i}.png")), png).expect("write");
    }
    push(&app, live_folder.path(), live).await;
    crate::closed_loop::processed(&app, live, 300).await;
    let predict = app.token(&[Scope::Predict]).await;
    let job = insert_training_job(&app, "shapes", "shapes").await;
    // A served model with one drift check, "ok", for the browser to watch turn to "drift".
    let drifting = "drifty";
    let version = crate::inference::register_trained(&app, drifting, 21, 3).await;
    crate::inference::move_alias(&app, drifting, "production", version).await;
    crate::inference::stream(&app, drifting, 400, 22, 0).await;
    sluice_testkit::eventually(Duration::from_secs(60), "the first drift check", || async {
        (crate::inference::drift_state(&app, drifting).await["checks"] == 1).then_some(())
    })
    .await;

    let root = env!("CARGO_MANIFEST_DIR");
    let installed = std::process::Command::new("bash")
        .arg(format!("{root}/tests/clients/browser-env.sh"))
        .output()
        .expect("browser-env.sh");
    assert!(installed.status.success(), "browser-env.sh: {}", String::from_utf8_lossy(&installed.stderr));
    let paths = String::from_utf8(installed.stdout).expect("paths");
    let mut paths = paths.lines();
    let (python, chromium) = (paths.next().expect("python").to_owned(), paths.next().expect("chromium").to_owned());
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let args = [
        format!("{root}/tests/clients/console_e2e.py"),
        app.base_url.clone(),
        app.admin_token.clone(),
        predict.clone(),
        "shapes".to_owned(),
        shots.display().to_string(),
        chromium,
        job.to_string(),
        drifting.to_owned(),
        live.to_owned(),
    ];
    let ready = shots.join("ready-for-drift");
    let _ = std::fs::remove_file(&ready);
    let run = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output());
    // Once the page shows the verdict "ok", the world shifts: brighter images, as in
    // inference::a_shifted_stream_is_detected_and_one_retrain_request_is_published.
    let shift = async {
        for _ in 0..300 {
            if ready.exists() {
                crate::inference::stream(&app, drifting, 800, 23, 90).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (output, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(300), run), shift);
    let output = output.expect("the browser run ends").expect("task").expect("python");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{stdout}\nscreenshots: {}", shots.display());
    assert!(output.status.success(), "the browser run failed:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script's JSON");
    assert_eq!(report["checks"], "passed", "{report}");
    for page in [
        "sign-in",
        "overview",
        "datasets",
        "dataset",
        "dataset-item",
        "training",
        "training-job",
        "training-new",
        "training-live",
        "models",
        "model",
        "serving",
        "serving-model",
        "serving-drift",
        "model-predict",
    ] {
        assert!(shots.join(format!("{page}.png")).is_file(), "a screenshot of {page}");
    }

    // The relabelling in the item's dialog went through the API.
    let relabelled = &report["relabelled"];
    // GET as an admin: (status, JSON).
    let get = |path: String| {
        let request = app.http.get(app.url(&path)).bearer_auth(&app.admin_token);
        async move { json_of(request.send().await.expect("GET")).await }
    };
    let media = format!("/v1/media/{}", relabelled["id"].as_str().expect("a relabelled id"));
    let (status, item) = get(media).await;
    assert_eq!((status, item["label"].clone()), (200, relabelled["label"].clone()), "{item}");

    // The Cancel click went through the API.
    let (status, view) = get(format!("/v1/training-jobs/{job}")).await;
    assert_eq!((status, view["status"].clone()), (200, json!("cancelled")), "{view}");
    assert_eq!(view["trials_summary"]["cancelled"], 1, "the running trial was cancelled: {view}");

    // The job the browser started ran on the live dataset and was cancelled mid-way, its curve
    // having grown while the page was open.
    let started = report["live_job"].as_str().expect("the started job's id");
    let (status, view) = get(format!("/v1/training-jobs/{started}")).await;
    assert_eq!((status, &view["model"], &view["dataset"]), (200, &json!(live), &json!(live)), "{view}");
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["request"]["search"]["space"]["epochs"], 200, "{view}");
    let epochs = view["trials"][0]["history"].as_array().map_or(0, Vec::len);
    assert!((3..200).contains(&epochs), "cancelled after {epochs} epochs: {view}");
    eprintln!("the live curve showed {} points in turn", report["curve_points_seen"]);

    // The clicks went through the API: production moved to v2, then back to v1, by the admin.
    let history = app.http.get(app.url("/v1/models/shapes/aliases/production/history")).bearer_auth(&app.admin_token);
    let (status, history) = json_of(history.send().await.expect("history")).await;
    assert_eq!(status, 200, "{history}");
    let moves: Vec<(Value, Value, Value)> = history["history"]
        .as_array()
        .expect("moves")
        .iter()
        .map(|m| (m["from"].clone(), m["to"].clone(), m["reason"].clone()))
        .collect();
    assert_eq!(
        moves,
        [
            (json!(2), json!(1), json!("rolled back to v1 from the console")),
            (json!(1), json!(2), json!("promoted v2 from the console")),
            (Value::Null, json!(1), json!("first release")),
        ],
        "{history}"
    );
    assert!(history["history"][0]["actor"].as_str().expect("actor").starts_with("test-admin ("), "{history}");

    // The predict-only session the browser held: the API refuses it a promotion, without the CSRF
    // header (csrf_failed) and with it (the scope).
    let held = Session {
        name: "sluice_session".into(),
        cookie: report["predict_cookie"].as_str().expect("cookie").to_owned(),
        csrf: report["predict_csrf"].as_str().expect("csrf").to_owned(),
        set_cookie: String::new(),
    };
    let path = "/v1/models/shapes/aliases/production";
    let body = || Some(json!({"version": 2}));
    let (status, refused) = with_cookie(&app, Method::PUT, path, &held, None, body()).await;
    assert_eq!((status, refused["error"]["code"].clone()), (403, json!("csrf_failed")), "{refused}");
    let (status, refused) = with_cookie(&app, Method::PUT, path, &held, Some(&held.csrf), body()).await;
    assert_eq!((status, refused["error"]["code"].clone()), (403, json!("forbidden")), "{refused}");
    let (status, alias) = with_cookie(&app, Method::GET, path, &held, None, None).await;
    assert_eq!((status, alias["version"].clone()), (200, json!(1)), "reads work, production stayed: {alias}");
    let sessions = app.count("SELECT count(*) FROM console_sessions").await;
    assert_eq!(sessions, 1, "the admin signed out; the predict session is the one left");
}
