//! The model registry: dense versions, audited alias moves on `models.events`, verified artifacts,
//! scopes, bad input and the `sluice models` command, against a registry process running alone.

use std::collections::BTreeSet;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice::Service;
use sluice_core::{
    auth::Scope,
    models::{self, Lineage, ModelName, ModelVersion, NewVersion, RegistryError},
    pipeline::PipelineSpec,
    topics::Topic,
    training::artifact_key,
};
use sluice_testkit::TestEnv;
use uuid::Uuid;

use crate::support::{RunningApp, json_of, published_model_events, sluice_command};

/// A registry process alone: its own relay must publish what it writes.
async fn registry_app(env: &TestEnv) -> RunningApp {
    RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await
}

/// A version of `model` whose artifact is `bytes`, stored at the trainer's key layout.
async fn stored_version(app: &RunningApp, model: &str, bytes: &[u8]) -> NewVersion {
    let (job_id, trial_id) = (Uuid::now_v7(), Uuid::now_v7());
    let key = artifact_key(model, job_id, trial_id, &hex::encode(Sha256::digest(bytes)));
    put_object(app, &key, bytes.to_vec()).await;
    NewVersion {
        model: ModelName::parse(model).expect("valid model name"),
        artifact_key: key,
        sha256: hex::encode(Sha256::digest(bytes)),
        size_bytes: bytes.len() as i64,
        architecture: "cnn".into(),
        input_spec: PipelineSpec::default(),
        labels: vec!["circle".into(), "square".into(), "triangle".into()],
        hyperparameters: json!({"learning_rate": 0.001, "batch_size": 64}),
        metrics: json!({"val_accuracy": 0.97, "val_loss": 0.08, "epochs": 10}),
        reference: json!({"class_frequencies": [0.3, 0.3, 0.4]}),
        lineage: Lineage {
            job_id,
            trial_id,
            snapshot_id: "snap-1".into(),
            dataset: "shapes".into(),
            spec_hash: PipelineSpec::default().hash(),
            sluice_version: env!("CARGO_PKG_VERSION").into(),
        },
    }
}

async fn put_object(app: &RunningApp, key: &str, bytes: Vec<u8>) {
    app.ctx
        .s3
        .put_object()
        .bucket(&app.ctx.config.s3.bucket)
        .key(key)
        .body(bytes.into())
        .send()
        .await
        .expect("put artifact");
}

async fn register_with(pool: &sluice_core::db::Pool, prefix: &str, v: &NewVersion) -> ModelVersion {
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("transaction");
    let registered = models::register(&tx, prefix, v).await.expect("register");
    tx.commit().await.expect("commit");
    registered
}

async fn register(app: &RunningApp, v: &NewVersion) -> ModelVersion {
    register_with(&app.ctx.db, &app.ctx.config.kafka.topic_prefix, v).await
}

/// Registers `count` versions of `model`, one after another.
async fn versions(app: &RunningApp, model: &str, count: u8) -> Vec<ModelVersion> {
    let mut out = Vec::new();
    for n in 0..count {
        out.push(register(app, &stored_version(app, model, &[n; 32]).await).await);
    }
    out
}

async fn move_alias(app: &RunningApp, token: &str, path: &str, body: Value) -> (u16, Value) {
    json_of(app.http.put(app.url(path)).bearer_auth(token).json(&body).send().await.expect("PUT alias")).await
}

async fn get(app: &RunningApp, token: &str, path: &str) -> (u16, Value) {
    json_of(app.http.get(app.url(path)).bearer_auth(token).send().await.expect("GET")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_get_dense_version_numbers_and_one_event_each() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    let pool = sluice_core::db::pool_for_url(env.config.database.url.expose_secret(), 8).expect("pool");
    let mut new_versions = Vec::new();
    for n in 0..8u8 {
        new_versions.push(stored_version(&app, "shapes", &[n; 64]).await);
    }
    let prefix = app.ctx.config.kafka.topic_prefix.clone();
    let tasks: Vec<_> = new_versions
        .into_iter()
        .map(|v| {
            let (pool, prefix) = (pool.clone(), prefix.clone());
            tokio::spawn(async move { register_with(&pool, &prefix, &v).await })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.expect("registration task").version);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>(), "dense, no gaps, no duplicates");

    let events = published_model_events(&app).await;
    assert_eq!(events.len(), 8, "one event per registration: {events:?}");
    let mut seen = BTreeSet::new();
    for (key, event) in &events {
        assert_eq!(key, "shapes", "keyed by model name for compaction");
        assert_eq!(event["type"], "model.version_registered");
        seen.insert(event["data"]["version"].as_i64().expect("version"));
    }
    assert_eq!(seen, (1..=8).collect(), "{events:?}");
    let (status, listed) = get(&app, &app.admin_token, "/v1/models").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["models"][0]["latest_version"], 8, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_moves_are_audited_published_and_served_with_lineage() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    let registered = versions(&app, "shapes", 2).await;
    let path = "/v1/models/shapes/aliases/production";

    let (status, first) = move_alias(&app, &app.admin_token, path, json!({"version": 1, "reason": "first"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["from"].clone(), first["to"].clone(), first["changed"].clone()),
        (json!(null), json!(1), json!(true))
    );
    let (status, second) = move_alias(&app, &app.admin_token, path, json!({"version": 2, "reason": "better"})).await;
    assert_eq!(status, 200, "{second}");
    let (status, again) = move_alias(&app, &app.admin_token, path, json!({"version": 2})).await;
    assert_eq!((status, again["changed"].clone()), (200, json!(false)), "a repeated PUT is a no-op: {again}");

    let (status, history) = get(&app, &app.admin_token, &format!("{path}/history")).await;
    assert_eq!(status, 200, "{history}");
    let moves = history["history"].as_array().expect("history list");
    assert_eq!(moves.len(), 2, "the no-op left no history row: {history}");
    assert_eq!((moves[0]["from"].clone(), moves[0]["to"].clone()), (json!(1), json!(2)), "newest first");
    assert_eq!(moves[0]["reason"], "better");
    assert!(moves[0]["actor"].as_str().expect("actor").starts_with("test-admin ("), "{history}");
    assert!(moves[0]["at"].as_str().expect("at").ends_with('Z'), "{history}");
    assert_eq!(history["next_before"], Value::Null, "one page holds both: {history}");
    // A page at a time: the newest move, then the one before it, then nothing more.
    let (_, first) = get(&app, &app.admin_token, &format!("{path}/history?limit=1")).await;
    assert_eq!(first["history"].as_array().map(Vec::len), Some(1), "{first}");
    assert_eq!(first["history"][0]["to"], json!(2), "{first}");
    let next = first["next_before"].as_i64().expect("a next page");
    let (_, second) = get(&app, &app.admin_token, &format!("{path}/history?limit=1&before={next}")).await;
    assert_eq!(second["history"][0]["to"], json!(1), "{second}");
    let last = second["next_before"].as_i64().expect("a full page points on");
    let (_, empty) = get(&app, &app.admin_token, &format!("{path}/history?limit=1&before={last}")).await;
    assert_eq!((empty["history"].as_array().map(Vec::len), &empty["next_before"]), (Some(0), &Value::Null), "{empty}");
    for bad in ["limit=0", "limit=501", "limit=x", "before=0", "before=abc"] {
        let (status, answer) = get(&app, &app.admin_token, &format!("{path}/history?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }

    let events = published_model_events(&app).await;
    let moved: Vec<&Value> = events.iter().map(|(_, e)| e).filter(|e| e["type"] == "model.alias_moved").collect();
    assert_eq!(events.len(), 4, "two registrations and two moves, nothing for the no-op: {events:?}");
    assert_eq!(moved.len(), 2, "{events:?}");
    let last = &moved[1]["data"];
    assert_eq!((last["from"].clone(), last["to"].clone()), (json!(1), json!(2)), "{last}");
    assert_eq!(last["aliases"], json!({"production": 2}), "each event carries the whole alias map");
    assert!(moved[1]["data"]["revision"].as_i64() > moved[0]["data"]["revision"].as_i64());

    let (status, alias) = get(&app, &app.admin_token, path).await;
    assert_eq!((status, alias["version"].clone()), (200, json!(2)), "{alias}");
    let (status, version) = get(&app, &app.admin_token, "/v1/models/shapes/versions/2").await;
    assert_eq!(status, 200, "{version}");
    assert_eq!(version["sha256"], registered[1].sha256.as_str());
    assert_eq!(version["lineage"]["trial_id"], registered[1].lineage.trial_id.to_string());
    assert_eq!(version["labels"], json!(["circle", "square", "triangle"]));
    assert_eq!(version["input_spec"]["width"], 64);
    assert_eq!(version["aliases"], json!(["production"]));
    let (status, model) = get(&app, &app.admin_token, "/v1/models/shapes").await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["aliases"], json!({"production": 2}));
    assert_eq!(model["versions"].as_array().map(Vec::len), Some(2), "{model}");
    assert!(model["versions"][0].get("reference").is_none(), "summaries leave out the bulky parts: {model}");
    assert_eq!(model["next_before"], Value::Null, "{model}");
}

/// Version listings come a bounded page at a time, newest pages first, each oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_listed_a_page_at_a_time() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    versions(&app, "paged", 5).await;
    let numbers = |page: &Value| -> Vec<i64> {
        page["versions"].as_array().expect("versions").iter().map(|v| v["version"].as_i64().expect("number")).collect()
    };
    let (status, first) = get(&app, &app.admin_token, "/v1/models/paged/versions?limit=2").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!((numbers(&first), &first["next_before"]), (vec![4, 5], &json!(4)), "{first}");
    let (_, second) = get(&app, &app.admin_token, "/v1/models/paged/versions?limit=2&before=4").await;
    assert_eq!((numbers(&second), &second["next_before"]), (vec![2, 3], &json!(2)), "{second}");
    let (_, last) = get(&app, &app.admin_token, "/v1/models/paged/versions?limit=2&before=2").await;
    assert_eq!((numbers(&last), &last["next_before"]), (vec![1], &Value::Null), "{last}");
    let (_, all) = get(&app, &app.admin_token, "/v1/models/paged/versions").await;
    assert_eq!((numbers(&all), &all["next_before"]), (vec![1, 2, 3, 4, 5], &Value::Null), "{all}");
    for bad in ["limit=0", "limit=1001", "limit=x", "before=0", "before=abc"] {
        let (status, answer) = get(&app, &app.admin_token, &format!("/v1/models/paged/versions?{bad}")).await;
        assert_eq!((status, &answer["error"]["code"]), (400, &json!("invalid_request")), "{bad}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_artifact_is_refused_on_load() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    let original = b"safetensors bytes of a trained network".to_vec();
    let version = register(&app, &stored_version(&app, "shapes", &original).await).await;
    let (s3, bucket) = (&app.ctx.s3, app.ctx.config.s3.bucket.as_str());
    let loaded = models::load_artifact(s3, bucket, &version).await.expect("intact artifact loads");
    assert_eq!(loaded.as_ref(), original.as_slice());

    let mut flipped = original.clone();
    flipped[0] ^= 1;
    let bigger = [original.as_slice(), b"!"].concat();
    for tampered in [flipped, bigger, original[1..].to_vec()] {
        put_object(&app, &version.artifact_key, tampered.clone()).await;
        let refused = models::load_artifact(s3, bucket, &version).await;
        assert!(matches!(refused, Err(RegistryError::Tampered { .. })), "{} bytes: {refused:?}", tampered.len());
    }
    s3.delete_object().bucket(bucket).key(&version.artifact_key).send().await.expect("delete");
    let missing = models::load_artifact(s3, bucket, &version).await;
    assert!(matches!(missing, Err(RegistryError::MissingArtifact { .. })), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_production_without_admin_is_403_and_leaves_nothing() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    versions(&app, "shapes", 1).await;
    let (train, predict) = (app.token(&[Scope::Train]).await, app.token(&[Scope::Predict]).await);
    let outbox_before = app.count("SELECT count(*) FROM outbox").await;

    let (status, body) = move_alias(&app, &train, "/v1/models/shapes/aliases/production", json!({"version": 1})).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")), "{body}");
    let (status, _) = move_alias(&app, &predict, "/v1/models/shapes/aliases/staging", json!({"version": 1})).await;
    assert_eq!(status, 403, "other aliases need train");
    let delete = app.http.delete(app.url("/v1/models/shapes/aliases/production")).bearer_auth(&train);
    assert_eq!(delete.send().await.expect("DELETE").status().as_u16(), 403);
    assert_eq!(app.count("SELECT count(*) FROM alias_history").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM model_aliases").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, outbox_before, "no event for a refused move");

    let (status, body) = move_alias(&app, &train, "/v1/models/shapes/aliases/staging", json!({"version": 1})).await;
    assert_eq!(status, 200, "train moves staging: {body}");
    let (status, body) =
        move_alias(&app, &app.admin_token, "/v1/models/shapes/aliases/production", json!({"version": 1})).await;
    assert_eq!(status, 200, "admin moves production: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_valid_token_with_the_predict_or_train_scope() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    versions(&app, "shapes", 1).await;
    for path in ["/v1/models", "/v1/models/shapes", "/v1/models/shapes/versions/1"] {
        let (status, body) = app.get(path).await;
        assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")), "{path}: {body}");
        assert_eq!(get(&app, "slc_not-a-token", path).await.0, 401, "{path}");
    }
    let anonymous = app.http.put(app.url("/v1/models/shapes/aliases/staging")).json(&json!({"version": 1}));
    assert_eq!(anonymous.send().await.expect("PUT").status().as_u16(), 401);
    let predict = app.token(&[Scope::Predict]).await;
    let (status, listed) = get(&app, &predict, "/v1/models").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["models"][0]["name"], "shapes");
    let ingest = app.token(&[Scope::Ingest]).await;
    let (status, refused) = get(&app, &ingest, "/v1/models").await;
    assert_eq!((status, refused["error"]["code"].clone()), (403, json!("forbidden")), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_versions_and_invalid_names_get_clear_4xx_and_change_nothing() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    versions(&app, "shapes", 1).await;
    let outbox_before = app.count("SELECT count(*) FROM outbox").await;
    let admin = app.admin_token.clone();

    let reads = [
        ("/v1/models/nope", 404, "unknown_model"),
        ("/v1/models/nope/versions", 404, "unknown_model"),
        ("/v1/models/shapes/versions/9", 404, "unknown_version"),
        ("/v1/models/shapes/versions/zero", 400, "invalid_request"),
        ("/v1/models/shapes/aliases/production", 404, "unknown_alias"),
        ("/v1/models/Shapes", 400, "invalid_request"),
        ("/v1/models/1shapes/versions", 400, "invalid_request"),
    ];
    for (path, status, code) in reads {
        let (got, body) = get(&app, &admin, path).await;
        assert_eq!((got, body["error"]["code"].clone()), (status, json!(code)), "{path}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    let moves = [
        ("/v1/models/nope/aliases/production", json!({"version": 1}), 404, "unknown_model"),
        ("/v1/models/shapes/aliases/production", json!({"version": 7}), 422, "unknown_version"),
        ("/v1/models/shapes/aliases/production", json!({"version": 0}), 400, "invalid_request"),
        ("/v1/models/shapes/aliases/production", json!({"version": "1"}), 400, "invalid_request"),
        ("/v1/models/shapes/aliases/production", json!({"version": 1, "extra": true}), 400, "invalid_request"),
        (
            "/v1/models/shapes/aliases/production",
            json!({"version": 1, "reason": "x".repeat(1001)}),
            400,
            "invalid_request",
        ),
        ("/v1/models/Bad/aliases/production", json!({"version": 1}), 400, "invalid_request"),
        ("/v1/models/shapes/aliases/Prod", json!({"version": 1}), 400, "invalid_request"),
    ];
    for (path, body, status, code) in moves {
        let (got, answer) = move_alias(&app, &admin, path, body.clone()).await;
        assert_eq!((got, answer["error"]["code"].clone()), (status, json!(code)), "{path} {body}: {answer}");
    }
    let delete = app.http.delete(app.url("/v1/models/shapes/aliases/staging")).bearer_auth(&admin);
    let (status, body) = json_of(delete.send().await.expect("DELETE")).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("unknown_alias")), "{body}");

    assert_eq!(app.count("SELECT count(*) FROM alias_history").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM model_aliases").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM models").await, 1, "no model created by a bad request");
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, outbox_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_the_same_trial_twice_returns_its_first_version() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    let v = stored_version(&app, "shapes", b"weights").await;
    let first = register(&app, &v).await;
    let again = register(&app, &v).await;
    assert_eq!((first.version, again.version), (1, 1));
    assert_eq!(app.count("SELECT count(*) FROM model_versions").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 1, "one event for one version");
    let next = register(&app, &stored_version(&app, "shapes", b"other weights").await).await;
    assert_eq!(next.version, 2, "numbers stay dense after a repeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_alias_is_audited_and_published() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    versions(&app, "shapes", 1).await;
    let path = "/v1/models/shapes/aliases/staging";
    assert_eq!(move_alias(&app, &app.admin_token, path, json!({"version": 1})).await.0, 200);
    let delete = app.http.delete(app.url(&format!("{path}?reason=retired"))).bearer_auth(&app.admin_token);
    let (status, body) = json_of(delete.send().await.expect("DELETE")).await;
    assert_eq!((status, body["removed_version"].clone()), (200, json!(1)), "{body}");
    assert_eq!(get(&app, &app.admin_token, path).await.0, 404);
    let (_, history) = get(&app, &app.admin_token, &format!("{path}/history")).await;
    assert_eq!(history["history"][0]["to"], Value::Null, "{history}");
    assert_eq!(history["history"][0]["reason"], "retired");
    let events = published_model_events(&app).await;
    let removed = events.iter().find(|(_, e)| e["type"] == "model.alias_removed").expect("alias_removed event");
    assert_eq!(removed.1["data"]["aliases"], json!({}), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_models_promotes_rolls_back_and_shows_the_history() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    versions(&app, "shapes", 2).await;
    let sluice = |args: &[&str]| {
        let output = sluice_command()
            .arg("models")
            .args(args)
            .args(["--url", &app.base_url, "--token", &app.admin_token])
            .output()
            .expect("run sluice models");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success(), stdout + &String::from_utf8_lossy(&output.stderr))
    };

    let (ok, out) = sluice(&["promote", "shapes", "1"]);
    assert!(ok && out.contains("shapes production: (new) -> v1"), "{out}");
    let (ok, out) = sluice(&["promote", "shapes", "2", "--reason", "better accuracy"]);
    assert!(ok && out.contains("v1 -> v2"), "{out}");
    let (ok, out) = sluice(&["rollback", "shapes"]);
    assert!(ok && out.contains("v2 -> v1"), "{out}");
    let (ok, out) = sluice(&["history", "shapes"]);
    assert!(ok && out.contains("rollback to v1") && out.contains("better accuracy"), "{out}");
    assert_eq!(out.lines().count(), 4, "header and three moves:\n{out}");
    let (ok, out) = sluice(&["list"]);
    assert!(ok && out.contains("shapes") && out.contains("production=v1"), "{out}");
    let (ok, out) = sluice(&["show", "shapes"]);
    assert!(ok && out.contains("val_accuracy=0.97"), "{out}");
    let (ok, out) = sluice(&["show", "shapes", "--version", "2", "--json"]);
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(ok && json["version"] == 2 && json["lineage"]["dataset"] == "shapes", "{out}");

    let (ok, out) = sluice(&["promote", "shapes", "9"]);
    assert!(!ok && out.contains("422 unknown_version"), "{out}");
    let (ok, out) = sluice(&["rollback", "shapes", "--alias", "staging"]);
    assert!(!ok && out.contains("nothing to roll back"), "{out}");
}

/// Every `models.events` event carries the model's whole alias map, so the number of aliases is
/// bounded: past `MAX_ALIASES` a new alias is refused (existing ones still move), and the
/// largest event stays far below Kafka's message limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_refuses_aliases_past_the_limit_so_its_events_stay_small() {
    let env = TestEnv::new().await;
    let app = registry_app(&env).await;
    let registered = versions(&app, "crowded", 2).await;
    let model = ModelName::parse("crowded").expect("model");
    {
        let mut client = app.ctx.db.get().await.expect("connection");
        let tx = client.transaction().await.expect("transaction");
        for i in 0..models::MAX_ALIASES {
            // The longest names allowed, so the map is as large as it can get.
            let alias = models::AliasName::parse(&format!("a{i:03}{}", "x".repeat(59))).expect("alias");
            models::move_alias(&tx, &app.ctx.config.kafka.topic_prefix, &model, &alias, 1, "test", "fill")
                .await
                .expect("an alias within the limit");
        }
        tx.commit().await.expect("commit");
    }
    let path = "/v1/models/crowded/aliases/one-too-many";
    let (status, refused) = move_alias(&app, &app.admin_token, path, json!({"version": 1, "reason": "x"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "too_many_aliases", "{refused}");
    let (status, _) = get(&app, &app.admin_token, "/v1/models/crowded/aliases/one-too-many").await;
    assert_eq!(status, 404, "nothing was created");
    let existing = format!("/v1/models/crowded/aliases/a000{}", "x".repeat(59));
    let (status, moved) =
        move_alias(&app, &app.admin_token, &existing, json!({"version": registered[1].version, "reason": "y"})).await;
    assert_eq!(status, 200, "an existing alias still moves: {moved}");
    let largest: i32 = app
        .ctx
        .db
        .get()
        .await
        .expect("connection")
        .query_one(
            "SELECT max(octet_length(payload::text)) FROM outbox WHERE topic = $1",
            &[&app.ctx.topic(Topic::ModelsEvents).as_str()],
        )
        .await
        .expect("largest event")
        .get(0);
    assert!(largest < 16 * 1024, "the largest models.events event is {largest} bytes");
}
