//! Webhooks end to end, against a local receiver that checks every signature itself: subscriptions
//! (validation, the admin scope, the address policy), every event type delivered signed, a
//! receiver that fails, times out and recovers (retries recorded in the delivery history, the
//! per-URL cap kept), and deliveries that outlive a Sluice restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    routing::post,
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice::{Application, Service};
use sluice_core::{
    Config, Context, Shutdown,
    auth::{self, Scope},
    db::Pool,
    models::{self, AliasName, Lineage, ModelName, NewVersion},
    pipeline::PipelineSpec,
    training::artifact_key,
};
use sluice_inference::drift::{DriftKind, DriftState, Verdict};
use sluice_testkit::{TestEnv, eventually};
use sluice_webhooks::subscription::EVENT_TYPES;
use uuid::Uuid;

use crate::support::{RunningApp, json_of};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Fail,
    /// Answers long after Sluice's timeout.
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    event_id: String,
    event_type: String,
    body: Value,
    /// The signature verified (by this file's own HMAC, not Sluice's code) and was fresh.
    signed: bool,
    answered: u16,
    /// The body's bytes and the `Sluice-Signature` header, as sent.
    raw: Vec<u8>,
    signature: String,
}

#[derive(Debug)]
struct Inbox {
    secret: String,
    mode: Mode,
    received: Vec<Received>,
}

/// A webhook receiver on 127.0.0.1: any path, every request recorded.
#[derive(Debug, Clone)]
struct Receiver {
    addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    async fn start() -> Self {
        let inbox = Arc::new(Mutex::new(Inbox { secret: String::new(), mode: Mode::Accept, received: Vec::new() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("bound address");
        let app = Router::new().route("/{*path}", post(receive)).with_state(inbox.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inbox }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, mode: Mode) {
        self.inbox.lock().expect("inbox").mode = mode;
    }

    fn set_secret(&self, secret: &str) {
        self.inbox.lock().expect("inbox").secret = secret.to_owned();
    }

    fn received(&self) -> Vec<Received> {
        self.inbox.lock().expect("inbox").received.clone()
    }

    /// Distinct event ids answered 2xx on `path`.
    fn accepted(&self, path: &str) -> BTreeMap<String, Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path && r.answered < 300)
            .map(|r| (r.event_id.clone(), r))
            .collect()
    }
}

async fn receive(State(inbox): State<Arc<Mutex<Inbox>>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (mode, secret) = {
        let inbox = inbox.lock().expect("inbox");
        (inbox.mode, inbox.secret.clone())
    };
    let answered = match mode {
        Mode::Accept => StatusCode::NO_CONTENT,
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Hang => StatusCode::OK,
    };
    let received = Received {
        path: uri.path().to_owned(),
        event_id: header("sluice-event-id"),
        event_type: header("sluice-event-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signed: signature_verifies(&secret, &header("sluice-signature"), &body),
        answered: answered.as_u16(),
        raw: body.to_vec(),
        signature: header("sluice-signature"),
    };
    inbox.lock().expect("inbox").received.push(received);
    if mode == Mode::Hang {
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    answered
}

/// `Sluice-Signature: t=<unix>,v1=<hex>` checked as a receiver would, with its own HMAC.
fn signature_verifies(secret: &str, header: &str, body: &[u8]) -> bool {
    let fields: BTreeMap<&str, &str> = header.split(',').filter_map(|part| part.split_once('=')).collect();
    let (Some(t), Some(v1)) = (fields.get("t"), fields.get("v1")) else { return false };
    let Ok(sent) = t.parse::<u64>() else { return false };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC keys of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    now.abs_diff(sent) <= 300 && hex::encode(mac.finalize().into_bytes()) == *v1
}

/// What the README's Python receiver (the `python` block of its Webhooks section, run unchanged)
/// says of a delivery: `True` or `False`.
fn readme_verifies(secret: &str, signature: &str, body: &[u8]) -> String {
    use std::io::Write;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section = readme.split("\n## Webhooks\n").nth(1).expect("a Webhooks section in the README");
    let code = section.split("```python\n").nth(1).and_then(|c| c.split("```").next()).expect("its python block");
    let script = format!("{code}\nimport sys\nprint(verified(sys.argv[1], sys.argv[2], sys.stdin.buffer.read()))\n");
    let mut python = std::process::Command::new("python3")
        .args(["-c", &script, secret, signature])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (./dev installs it)");
    python.stdin.take().expect("stdin").write_all(body).expect("body to python");
    let output = python.wait_with_output().expect("python3 ends");
    assert!(output.status.success(), "the README's code fails: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The test configuration: the receiver's address allowed, quick retries and timeouts.
fn config(env: &TestEnv) -> Config {
    let mut config = env.config.clone();
    config.webhooks.allowed_networks = vec!["127.0.0.1/32".into()];
    config.webhooks.timeout_ms = 2000;
    config.webhooks.retry_first_ms = 100;
    config.webhooks.retry_max_ms = 300;
    config.webhooks.max_attempts = 8;
    config.webhooks.poll_interval_ms = 50;
    config
}

/// A running Sluice the helpers below talk to: a [`RunningApp`], or a [`Process`] the test stops.
trait Sluice {
    fn url(&self, path: &str) -> String;
    fn http(&self) -> &reqwest::Client;
    fn admin_token(&self) -> &str;
}

impl Sluice for RunningApp {
    fn url(&self, path: &str) -> String {
        RunningApp::url(self, path)
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
    fn admin_token(&self) -> &str {
        &self.admin_token
    }
}

async fn post_webhook(app: &impl Sluice, token: &str, body: Value) -> (u16, Value) {
    json_of(app.http().post(app.url("/v1/webhooks")).bearer_auth(token).json(&body).send().await.expect("POST")).await
}

/// Subscribes `url` to `events` and tells the receiver the secret it was given.
async fn subscribe(app: &impl Sluice, receiver: &Receiver, path: &str, events: &[&str]) -> String {
    let body = json!({"url": receiver.url(path), "events": events});
    let (status, answer) = post_webhook(app, app.admin_token(), body).await;
    assert_eq!(status, 201, "{answer}");
    receiver.set_secret(answer["secret"].as_str().expect("the secret, shown once"));
    answer["id"].as_str().expect("id").to_owned()
}

async fn get(app: &impl Sluice, path: &str) -> (u16, Value) {
    json_of(app.http().get(app.url(path)).bearer_auth(app.admin_token()).send().await.expect("GET")).await
}

async fn deliveries(app: &impl Sluice, webhook: &str) -> Vec<Value> {
    let (status, body) = get(app, &format!("/v1/webhooks/{webhook}/deliveries?limit=500")).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().expect("deliveries").clone()
}

/// A version of `model` (its artifact is never loaded here, so none is stored).
fn version(model: &str, seed: u8) -> NewVersion {
    let (job_id, trial_id) = (Uuid::now_v7(), Uuid::now_v7());
    NewVersion {
        model: ModelName::parse(model).expect("valid model name"),
        artifact_key: artifact_key(model, job_id, trial_id, &hex::encode(Sha256::digest([seed; 16]))),
        sha256: hex::encode(Sha256::digest([seed; 16])),
        size_bytes: 16,
        architecture: "mlp".into(),
        input_spec: PipelineSpec::default(),
        labels: vec!["circle".into(), "square".into()],
        hyperparameters: json!({}),
        metrics: json!({}),
        reference: Value::Null,
        lineage: Lineage {
            job_id,
            trial_id,
            snapshot_id: "snap".into(),
            dataset: "hooked".into(),
            spec_hash: PipelineSpec::default().hash(),
            sluice_version: env!("CARGO_PKG_VERSION").into(),
        },
    }
}

/// Registers a version as the trainer does (with its `model.version_registered` event).
async fn register(db: &Pool, prefix: &str, model: &str, seed: u8) -> i32 {
    let mut client = db.get().await.expect("connection");
    let tx = client.transaction().await.expect("transaction");
    let registered = models::register(&tx, prefix, &version(model, seed)).await.expect("register");
    tx.commit().await.expect("commit");
    registered.version
}

async fn move_alias(app: &impl Sluice, model: &str, alias: &str, version: i32) {
    let url = app.url(&format!("/v1/models/{model}/aliases/{alias}"));
    let body = json!({"version": version, "reason": "webhook test"});
    let request = app.http().put(url).bearer_auth(app.admin_token()).json(&body);
    let (status, answer) = json_of(request.send().await.expect("PUT alias")).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_admin_only_validated_and_refuse_addresses_not_allowed() {
    let env = TestEnv::new().await;
    let mut config = config(&env);
    config.webhooks.max_webhooks = 2;
    let app = RunningApp::spawn_services(config, &[Service::Webhooks]).await;
    let receiver = Receiver::start().await;
    let good = json!({"url": receiver.url("/hook"), "events": ["model.alias_moved", "retrain.skipped"]});

    let train = app.token(&[Scope::Train]).await;
    assert_eq!(post_webhook(&app, &train, good.clone()).await.0, 403, "a train token cannot subscribe");
    let (status, _) =
        json_of(app.http.get(app.url("/v1/webhooks")).bearer_auth(&train).send().await.expect("GET")).await;
    assert_eq!(status, 403, "nor list");
    let (status, _) = json_of(app.http.get(app.url("/v1/webhooks")).send().await.expect("GET")).await;
    assert_eq!(status, 401);

    let (status, created) = post_webhook(&app, &app.admin_token, good.clone()).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret shown once");
    assert!(secret.starts_with("whsec_") && secret.len() == 70, "{secret}");
    assert_eq!(created["events"], json!(["model.alias_moved", "retrain.skipped"]));
    assert_eq!(created["url"], receiver.url("/hook"));
    let id = created["id"].as_str().expect("id").to_owned();

    let (status, listed) = get(&app, "/v1/webhooks").await;
    assert_eq!(status, 200);
    assert_eq!(listed["webhooks"].as_array().map(Vec::len), Some(1), "{listed}");
    assert!(!listed.to_string().contains(secret), "the secret is never shown again: {listed}");
    let (status, shown) = get(&app, &format!("/v1/webhooks/{id}")).await;
    assert_eq!((status, shown.get("secret")), (200, None), "{shown}");
    assert_eq!(shown["deliveries"], json!({"pending": 0, "delivered": 0, "failed": 0}));

    let refusals = [
        (json!("{"), 400, "invalid_request"),
        (json!({"url": receiver.url("/hook")}), 400, "invalid_request"),
        (
            json!({"url": receiver.url("/hook"), "events": ["model.alias_moved"], "colour": "red"}),
            400,
            "invalid_request",
        ),
        (json!({"url": "ftp://127.0.0.1/x", "events": ["model.alias_moved"]}), 400, "invalid_request"),
        (json!({"url": "http://user:pw@127.0.0.1/x", "events": ["model.alias_moved"]}), 400, "invalid_request"),
        (
            json!({"url": format!("http://127.0.0.1/{}", "a".repeat(2100)), "events": ["model.alias_moved"]}),
            400,
            "invalid_request",
        ),
        (json!({"url": receiver.url("/hook"), "events": []}), 400, "invalid_request"),
        (json!({"url": receiver.url("/hook"), "events": ["model.deleted"]}), 422, "unknown_event_type"),
        (
            json!({"url": receiver.url("/hook"), "events": ["model.alias_moved"], "secret": "short"}),
            400,
            "invalid_request",
        ),
        // Loopback and private networks are refused unless allowed: only 127.0.0.1/32 is.
        (json!({"url": "http://127.0.0.2:9/x", "events": ["model.alias_moved"]}), 422, "address_not_allowed"),
        (json!({"url": "http://[::1]:9/x", "events": ["model.alias_moved"]}), 422, "address_not_allowed"),
        (json!({"url": "http://10.0.0.1/x", "events": ["model.alias_moved"]}), 422, "address_not_allowed"),
        (json!({"url": "http://192.168.1.1/x", "events": ["model.alias_moved"]}), 422, "address_not_allowed"),
        (json!({"url": "http://169.254.169.254/latest", "events": ["model.alias_moved"]}), 422, "address_not_allowed"),
        (json!({"url": "http://100.64.0.1/x", "events": ["model.alias_moved"]}), 422, "address_not_allowed"),
    ];
    for (body, status, code) in refusals {
        let request = match &body {
            Value::String(raw) => app
                .http
                .post(app.url("/v1/webhooks"))
                .bearer_auth(&app.admin_token)
                .header("content-type", "application/json")
                .body(raw.clone()),
            _ => app.http.post(app.url("/v1/webhooks")).bearer_auth(&app.admin_token).json(&body),
        };
        let (got, answer) = json_of(request.send().await.expect("POST")).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
    assert_eq!(app.count("SELECT count(*) FROM webhooks").await, 1, "refused requests leave nothing behind");

    let chosen = json!({"url": receiver.url("/other"), "events": ["retrain.skipped"], "secret": "0123456789abcdef-given-secret"});
    let (status, second) = post_webhook(&app, &app.admin_token, chosen).await;
    assert_eq!((status, second["secret"].as_str()), (201, Some("0123456789abcdef-given-secret")), "{second}");
    let (status, full) = post_webhook(&app, &app.admin_token, good).await;
    assert_eq!((status, full["error"]["code"].as_str()), (409, Some("too_many_webhooks")), "{full}");

    for (path, status) in [
        (format!("/v1/webhooks/{}", Uuid::now_v7()), 404),
        ("/v1/webhooks/not-an-id".to_owned(), 400),
        (format!("/v1/webhooks/{}/deliveries", Uuid::now_v7()), 404),
        (format!("/v1/webhooks/{id}/deliveries?status=lost"), 400),
        (format!("/v1/webhooks/{id}/deliveries?limit=0"), 400),
        (format!("/v1/webhooks/{id}/deliveries?status=pending&limit=10"), 200),
    ] {
        assert_eq!(get(&app, &path).await.0, status, "{path}");
    }
    let delete = |id: String| {
        let request = app.http.delete(app.url(&format!("/v1/webhooks/{id}"))).bearer_auth(&app.admin_token);
        async move { json_of(request.send().await.expect("DELETE")).await }
    };
    let (status, deleted) = delete(id.clone()).await;
    assert_eq!((status, deleted["deleted"].as_bool(), deleted["id"].as_str()), (200, Some(true), Some(id.as_str())));
    assert_eq!(delete(id.clone()).await.0, 404);
    assert_eq!(get(&app, &format!("/v1/webhooks/{id}")).await.0, 404);
    assert_eq!(app.count("SELECT count(*) FROM webhooks").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_reaches_its_subscribers_once_each_and_signed() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(config(&env), &[Service::Registry, Service::Webhooks]).await;
    let receiver = Receiver::start().await;
    let everything = subscribe(&app, &receiver, "/all", &EVENT_TYPES).await;
    // A second webhook on the same receiver (with the same secret), subscribed to one type only.
    let secret = receiver.inbox.lock().expect("inbox").secret.clone();
    let narrow = json!({"url": receiver.url("/skips"), "events": ["retrain.skipped"], "secret": secret});
    let (status, narrow) = post_webhook(&app, &app.admin_token, narrow).await;
    assert_eq!(status, 201, "{narrow}");
    let ctx = &app.ctx;
    let prefix = ctx.config.kafka.topic_prefix.clone();

    // model.version_registered, model.alias_moved (twice), model.alias_removed.
    let v1 = register(&ctx.db, &prefix, "hooked", 1).await;
    move_alias(&app, "hooked", "production", v1).await;
    move_alias(&app, "hooked", "staging", v1).await;
    move_alias(&app, "hooked", "staging", v1).await; // where it already points: no event
    let url = app.url("/v1/models/hooked/aliases/staging?reason=done");
    let (status, removed) =
        json_of(app.http.delete(url).bearer_auth(&app.admin_token).send().await.expect("DELETE")).await;
    assert_eq!(status, 200, "{removed}");

    // drift.verdict_changed: a first verdict, the same again (no change), then drift.
    let verdict = |state, kind, consecutive, checks| Verdict {
        state,
        kind,
        window: 400,
        requests: 40,
        segments: 40,
        batches: 40,
        alpha: 0.002,
        statistics: Vec::new(),
        fired: Vec::new(),
        consecutive,
        checks,
        expected_accuracy: Some(0.9),
        expected_accuracy_interval: None,
        expected_accuracy_reliable: true,
        reference_accuracy: 0.95,
    };
    for checked in [
        verdict(DriftState::Ok, DriftKind::None, 0, 1),
        verdict(DriftState::Ok, DriftKind::None, 0, 2),
        verdict(DriftState::Drift, DriftKind::CovariateShift, 1, 3),
    ] {
        let mut client = ctx.db.get().await.expect("connection");
        let tx = client.transaction().await.expect("transaction");
        assert!(sluice_inference::store::record_verdict(&tx, &prefix, "hooked", v1, &checked).await.expect("verdict"));
        tx.commit().await.expect("commit");
    }

    // training.job_finished: one job cancelled, one failed; ending them again changes nothing.
    let client = ctx.db.get().await.expect("connection");
    client.execute("INSERT INTO datasets (name) VALUES ('hooked')", &[]).await.expect("dataset");
    let jobs = [Uuid::now_v7(), Uuid::now_v7()];
    for job in jobs {
        client
            .execute(
                "INSERT INTO training_jobs (id, model, dataset, architecture, request, snapshot_id, snapshot_key, labels,
                                            items, requested_by)
                 VALUES ($1, 'hooked', 'hooked', 'mlp', '{}', 'snap', 'snapshots/hooked/snap.json', '[]', 0, 'test')",
                &[&job],
            )
            .await
            .expect("job");
    }
    drop(client);
    assert_eq!(
        sluice_trainer::store::cancel(ctx, jobs[0]).await.expect("cancel"),
        sluice_trainer::store::Cancelled::Done
    );
    assert!(sluice_trainer::store::fail_job(ctx, jobs[1], "out of memory", None).await.expect("fail"));
    assert!(!sluice_trainer::store::fail_job(ctx, jobs[0], "again", None).await.expect("fail an ended job"));

    // retrain.skipped: once per request, and only for skipped ones.
    let request = Uuid::now_v7();
    for (id, outcome) in [(request, "skipped: nothing new since production's snapshot"), (request, "skipped: again")] {
        sluice_trainer::store::record_retrain(ctx, id, "hooked", "drift", &json!({}), outcome, None)
            .await
            .expect("record");
    }
    sluice_trainer::store::record_retrain(ctx, Uuid::now_v7(), "hooked", "drift", &json!({}), "coalesced", None)
        .await
        .expect("record");

    let expected = BTreeMap::from([
        ("model.version_registered", 1),
        ("model.alias_moved", 2),
        ("model.alias_removed", 1),
        ("drift.verdict_changed", 2),
        ("training.job_finished", 2),
        ("retrain.skipped", 1),
    ]);
    let total: usize = expected.values().sum();
    let accepted = eventually(Duration::from_secs(40), "every event at the receiver", || async {
        let accepted = receiver.accepted("/all");
        (accepted.len() >= total && !receiver.accepted("/skips").is_empty()).then_some(accepted)
    })
    .await;
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, received) in &accepted {
        *by_type.entry(received.body["type"].as_str().expect("type")).or_default() += 1;
        assert_eq!(received.body["event_id"].as_str(), Some(id.as_str()), "the id header is the event's");
        assert_eq!(
            received.body["type"].as_str(),
            Some(received.event_type.as_str()),
            "the type header is the event's"
        );
    }
    assert_eq!(by_type, expected, "each change announced once, no-ops not at all");
    assert!(receiver.received().iter().all(|r| r.signed), "every request carries a valid, fresh signature");
    let drift: Vec<(&Value, &Value)> = accepted
        .values()
        .filter(|r| r.event_type == "drift.verdict_changed")
        .map(|r| (&r.body["data"]["from"], &r.body["data"]["to"]))
        .collect();
    assert!(
        drift.contains(&(&Value::Null, &json!("ok"))) && drift.contains(&(&json!("ok"), &json!("drift"))),
        "{drift:?}"
    );
    let finished: BTreeSet<String> = accepted
        .values()
        .filter(|r| r.event_type == "training.job_finished")
        .map(|r| r.body["data"]["status"].as_str().expect("status").to_owned())
        .collect();
    assert_eq!(finished, BTreeSet::from(["cancelled".to_owned(), "failed".to_owned()]));

    let sample = accepted.values().next().expect("a delivery");
    assert_eq!(readme_verifies(&secret, &sample.signature, &sample.raw), "True", "the README's receiver accepts it");
    let mut tampered = sample.raw.clone();
    tampered.push(b' ');
    assert_eq!(readme_verifies(&secret, &sample.signature, &tampered), "False", "and refuses a changed body");

    let skips = receiver.accepted("/skips");
    assert_eq!(skips.len(), 1, "the narrow webhook gets only its type: {skips:?}");
    assert_eq!(skips.values().next().map(|r| r.event_type.as_str()), Some("retrain.skipped"));
    assert_eq!(skips.values().next().map(|r| r.body["data"]["request_id"].clone()), Some(json!(request)));

    let history = eventually(Duration::from_secs(10), "the history to show every delivery done", || async {
        let history = deliveries(&app, &everything).await;
        (history.len() == total && history.iter().all(|d| d["status"] == "delivered")).then_some(history)
    })
    .await;
    for delivery in &history {
        let attempts = delivery["history"].as_array().expect("attempts");
        assert_eq!(delivery["attempts"].as_u64(), Some(attempts.len() as u64), "{delivery}");
        assert_eq!(attempts.last().map(|a| a["status_code"].clone()), Some(json!(204)), "{delivery}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_then_times_out_then_recovers_gets_every_event_after_retries() {
    let env = TestEnv::new().await;
    let mut config = config(&env);
    config.webhooks.max_in_flight_per_url = 1;
    let app = RunningApp::spawn_services(config, &[Service::Registry, Service::Webhooks]).await;
    let receiver = Receiver::start().await;
    let webhook = subscribe(&app, &receiver, "/hook", &["model.alias_moved"]).await;
    // A receiver that is gone: every attempt is refused, until the delivery fails for good.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("address").port()
    };
    let (status, dead) = post_webhook(
        &app,
        &app.admin_token,
        json!({"url": format!("http://127.0.0.1:{gone}/hook"), "events": ["model.alias_moved"]}),
    )
    .await;
    assert_eq!(status, 201, "{dead}");
    let dead = dead["id"].as_str().expect("id").to_owned();

    receiver.set(Mode::Fail);
    let v1 = register(&app.ctx.db, &app.ctx.config.kafka.topic_prefix, "flaky", 1).await;
    for alias in ["production", "staging", "canary"] {
        move_alias(&app, "flaky", alias, v1).await;
    }
    eventually(Duration::from_secs(30), "three failed attempts", || async {
        (receiver.received().len() >= 3).then_some(())
    })
    .await;
    receiver.set(Mode::Hang);
    let hung = receiver.received().len() + 1;
    eventually(Duration::from_secs(30), "an attempt that times out", || async {
        (receiver.received().len() >= hung).then_some(())
    })
    .await;
    receiver.set(Mode::Accept);

    let history = eventually(Duration::from_secs(40), "every event delivered after the receiver recovered", || async {
        let history = deliveries(&app, &webhook).await;
        (history.len() == 3 && history.iter().all(|d| d["status"] == "delivered")).then_some(history)
    })
    .await;
    let attempts: Vec<&Value> = history.iter().flat_map(|d| d["history"].as_array().expect("attempts")).collect();
    let answered = |code: u64| attempts.iter().filter(|a| a["status_code"].as_u64() == Some(code)).count();
    assert!(answered(500) >= 3, "the failures are in the history: {history:#?}");
    assert!(
        attempts.iter().any(|a| a["status_code"].is_null()
            && a["error"].as_str().is_some_and(|e| e.contains("no answer within 2000 ms"))),
        "the timeout is in the history: {history:#?}"
    );
    assert_eq!(answered(204), 3, "one success each: {history:#?}");
    for delivery in &history {
        let tries = delivery["history"].as_array().expect("attempts");
        assert_eq!(delivery["attempts"].as_u64(), Some(tries.len() as u64), "{delivery}");
        assert_eq!(tries.last().map(|a| a["status_code"].clone()), Some(json!(204)), "{delivery}");
        assert_eq!(delivery["last_status_code"], json!(204));
    }
    let accepted = receiver.accepted("/hook");
    assert_eq!(accepted.len(), 3, "every event arrived: {accepted:?}");
    assert!(receiver.received().iter().all(|r| r.signed));

    // max_in_flight_per_url = 1: no two attempts at this URL overlapped.
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = attempts
        .iter()
        .map(|a| {
            let start: DateTime<Utc> = a["started_at"].as_str().expect("started_at").parse().expect("RFC 3339");
            (start, start + chrono::Duration::milliseconds(a["duration_ms"].as_i64().expect("duration")))
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1 - chrono::Duration::milliseconds(1), "attempts overlapped: {pair:?}");
    }

    let failed = eventually(Duration::from_secs(30), "the dead receiver's deliveries to fail", || async {
        let history = deliveries(&app, &dead).await;
        (history.len() == 3 && history.iter().all(|d| d["status"] == "failed")).then_some(history)
    })
    .await;
    for delivery in &failed {
        assert_eq!(delivery["attempts"], json!(8), "webhooks.max_attempts: {delivery}");
        let tries = delivery["history"].as_array().expect("attempts");
        assert_eq!(tries.len(), 8);
        assert!(tries.iter().all(|a| a["status_code"].is_null() && a["error"].is_string()), "{delivery}");
    }
}

/// A Sluice process (registry and webhooks) the test stops and waits for.
struct Process {
    base_url: String,
    ctx: Context,
    admin_token: String,
    http: reqwest::Client,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(config: Config) -> Process {
    let built = Application::build(config, &[Service::Registry, Service::Webhooks]).await.expect("application builds");
    let ctx = built.context().clone();
    let shutdown = Shutdown::new();
    let base_url = format!("http://{}", built.local_addr());
    let handle = tokio::spawn(built.run_until_stopped(shutdown.clone()));
    let admin_token = auth::create_token(&ctx.db, "test-admin", &[Scope::Admin]).await.expect("admin token");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
    Process { base_url, ctx, admin_token, http, shutdown, handle }
}

impl Sluice for Process {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
    fn admin_token(&self) -> &str {
        &self.admin_token
    }
}

impl Process {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(45), self.handle)
            .await
            .expect("stops within the drain deadline")
            .expect("joins")
            .expect("runs and stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_pending_when_sluice_stops_are_made_after_it_restarts() {
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    receiver.set(Mode::Fail);
    let prefix = env.config.kafka.topic_prefix.clone();
    let first = start(config(&env)).await;
    let webhook = subscribe(&first, &receiver, "/hook", &["model.version_registered", "model.alias_moved"]).await;
    let v1 = register(&first.ctx.db, &prefix, "durable", 1).await;
    move_alias(&first, "durable", "production", v1).await;
    eventually(Duration::from_secs(30), "both events attempted (and refused)", || async {
        let ids: BTreeSet<String> = receiver.received().into_iter().map(|r| r.event_id).collect();
        (ids.len() >= 2).then_some(())
    })
    .await;
    first.stop().await;

    // While no Sluice runs: two more changes, their events waiting in the outbox.
    let pool = env.pool();
    let v2 = register(&pool, &prefix, "durable", 2).await;
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("transaction");
    let (model, production) =
        (ModelName::parse("durable").expect("name"), AliasName::parse("production").expect("alias"));
    models::move_alias(&tx, &prefix, &model, &production, v2, "test", "while down").await.expect("move");
    tx.commit().await.expect("commit");
    let pending: i64 = client
        .query_one("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(pending, 2, "the refused deliveries wait for the next process");
    // One of them as a process killed mid-attempt leaves it: claimed (its attempt counted), the
    // lease still running. The next process must wait the lease out, then deliver it.
    let abandoned: Uuid = client
        .query_one(
            "UPDATE webhook_deliveries SET claimed_until = now() + interval '2 seconds', attempts = attempts + 1
             WHERE id = (SELECT id FROM webhook_deliveries WHERE status = 'pending' ORDER BY created_at LIMIT 1)
             RETURNING id",
            &[],
        )
        .await
        .expect("claim as a dead process would")
        .get(0);
    receiver.set(Mode::Accept);

    let second = start(config(&env)).await;
    let accepted = eventually(Duration::from_secs(40), "all four events delivered after the restart", || async {
        let accepted = receiver.accepted("/hook");
        (accepted.len() >= 4).then_some(accepted)
    })
    .await;
    assert_eq!(accepted.len(), 4, "{accepted:?}");
    assert!(receiver.received().iter().all(|r| r.signed));
    let history = eventually(Duration::from_secs(10), "every delivery recorded as delivered", || async {
        let history = deliveries(&second, &webhook).await;
        (history.len() == 4 && history.iter().all(|d| d["status"] == "delivered")).then_some(history)
    })
    .await;
    let retried = history.iter().filter(|d| d["attempts"].as_u64().is_some_and(|n| n >= 2)).count();
    assert!(retried >= 2, "the two refused before the restart succeeded after it: {history:#?}");
    let lost = history.iter().find(|d| d["id"] == json!(abandoned)).expect("the abandoned delivery");
    let recorded = lost["history"].as_array().expect("attempts").len() as u64;
    assert_eq!(lost["attempts"].as_u64(), Some(recorded + 1), "the dead process's attempt counts: {lost}");
    second.stop().await;
}
