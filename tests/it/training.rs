//! Training end to end on the real stack: jobs, trials over Kafka, workers, the coordinator, the
//! registry, retraining, and the failure paths (bad requests, cancellation, a killed worker).

use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice::Service;
use sluice_core::{
    auth::Scope,
    events::Envelope,
    pipeline::{PipelineSpec, output_key},
    topics::Topic,
    training::{RetrainRequested, TrialFinished, TrialOutcome},
};
use sluice_nn::synthetic::{self, SyntheticSpec};
use sluice_testkit::{TestEnv, eventually};
use uuid::Uuid;

use crate::support::{RunningApp, json_of, parked_events, sluice_command, sluice_command_after, sluice_env};

/// Writes a processed, labelled synthetic dataset as preprocess would have left it: PNG outputs in
/// S3 under the dataset's spec, media rows `processed`, output rows. Returns the labels.
pub async fn seed_dataset(app: &RunningApp, dataset: &str, classes: usize, per_class: usize, size: u32, seed: u64) {
    let samples = synthetic::generate(&SyntheticSpec::rgb(size as usize, classes, classes * per_class, seed))
        .expect("synthetic images");
    let labels = synthetic::labels(classes);
    let spec = PipelineSpec { width: size, height: size, ..PipelineSpec::default() };
    let hash = spec.hash();
    let client = app.ctx.db.get().await.expect("connection");
    client
        .execute("INSERT INTO datasets (name) VALUES ($1) ON CONFLICT DO NOTHING", &[&dataset])
        .await
        .expect("dataset");
    client
        .execute(
            "INSERT INTO pipelines (dataset, spec, spec_hash) VALUES ($1, $2, $3)
             ON CONFLICT (dataset) DO UPDATE SET spec = $2, spec_hash = $3",
            &[&dataset, &serde_json::to_value(&spec).expect("spec"), &hash],
        )
        .await
        .expect("pipeline");
    let frame = 3 * (size * size) as usize;
    let puts =
        samples.labels.iter().enumerate().map(|(i, &label)| {
            let png =
                sluice_media::png_from_chw(&samples.images[i * frame..(i + 1) * frame], size, size).expect("an image");
            // Ids derived from the dataset, seed and index: the snapshot and its split, and so
            // every metric, are the same on every run.
            let digest = Sha256::digest(format!("{dataset}/{seed}/{i}"));
            let id = Uuid::from_bytes(digest[..16].try_into().expect("16 bytes"));
            let key = output_key(dataset, &hash, id, 0);
            let (client, hash, labels) = (&client, &hash, &labels);
            async move {
                let bytes = png;
                sluice_core::s3::put_bytes(&app.ctx.s3, &app.ctx.config.s3.bucket, &key, bytes.clone(), "image/png")
                    .await
                    .expect("put output");
                let sha = hex::encode(Sha256::digest(&bytes));
                client
                .execute(
                    "INSERT INTO media (id, dataset, label, kind, content_type, bytes, sha256, width, height, raw_key,
                                        status, spec_hash, processed_at)
                     VALUES ($1, $2, $3, 'image', 'image/png', $4, $5, $6, $6, $7, 'processed', $8, now())",
                    &[&id, &dataset, &labels[label as usize], &(bytes.len() as i64), &sha, &(size as i32),
                      &format!("raw/{dataset}/{id}.png"), hash],
                )
                .await
                .expect("media row");
                client
                    .execute(
                        "INSERT INTO media_outputs (media_id, key, width, height, frame_index, spec_hash)
                     VALUES ($1, $2, $3, $3, 0, $4)",
                        &[&id, &key, &(size as i32), hash],
                    )
                    .await
                    .expect("output row");
            }
        });
    futures::future::join_all(puts).await;
}

/// Serves the trainer's routes alone (no workers) for `ctx`, on a port of their own; their base URL.
async fn trainer_routes(ctx: sluice_core::Context) -> String {
    let routes: axum::Router = sluice_trainer::router(ctx).into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, routes).await });
    base
}

/// A `sluice serve trainer` process on the test's stack, with a short session timeout so the
/// group sees it go quickly.
fn trainer_worker(env: &TestEnv) -> std::process::Child {
    let mut command = sluice_command();
    command.args(["serve", "trainer"]).envs(sluice_env(env)).env("SLUICE_KAFKA_SESSION_TIMEOUT_MS", "6000");
    command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn a trainer worker")
}

pub async fn post_job(app: &RunningApp, token: &str, body: &Value) -> (u16, Value) {
    json_of(app.http.post(app.url("/v1/training-jobs")).bearer_auth(token).json(body).send().await.expect("post job"))
        .await
}

/// Starts a job (202) and waits until it ends; returns the final view.
pub async fn run_job(app: &RunningApp, body: &Value, timeout: Duration) -> Value {
    let (status, created) = post_job(app, &app.admin_token, body).await;
    assert_eq!(status, 202, "{created}");
    wait_job(app, created["id"].as_str().expect("job id"), timeout).await
}

pub async fn wait_job(app: &RunningApp, id: &str, timeout: Duration) -> Value {
    eventually(timeout, "the training job to end", || async {
        let (_, job) = job(app, id).await;
        (!matches!(job["status"].as_str(), Some("queued" | "running"))).then_some(job)
    })
    .await
}

async fn job(app: &RunningApp, id: &str) -> (u16, Value) {
    json_of(
        app.http
            .get(app.url(&format!("/v1/training-jobs/{id}")))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .expect("get job"),
    )
    .await
}

fn grid(model: &str, dataset: &str, space: Value, promote: &str) -> Value {
    json!({"model": model, "dataset": dataset, "architecture": "cnn",
           "search": {"strategy": "grid", "space": space}, "seed": 7, "promote": promote})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_search_trains_every_trial_registers_the_best_and_promotes_it() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer, Service::Registry]).await;
    seed_dataset(&app, "shapes", 3, 24, 24, 1).await;
    let space = json!({"learning_rate": [0.003, 0.01], "batch_size": [16, 32], "epochs": 4, "hidden": 32});
    let job = run_job(&app, &grid("shapes-cnn", "shapes", space, "if_better"), Duration::from_secs(240)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let trials = job["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 4);
    assert!(trials.iter().all(|t| t["status"] == "succeeded" && t["epoch"].as_i64() >= Some(1)), "{job:#}");
    // Best: highest validation accuracy, then lowest validation loss (the coordinator's rule).
    let score = |t: &&Value| {
        let metric = |name: &str| t["metrics"][name].as_f64().expect("a metric");
        (metric("val_accuracy"), -metric("val_loss"))
    };
    let best = trials
        .iter()
        .max_by(|a, b| score(a).0.total_cmp(&score(b).0).then(score(a).1.total_cmp(&score(b).1)))
        .expect("a best trial");
    assert_eq!(job["best_trial"], best["id"]);
    assert_eq!(job["registered_version"], 1);
    assert_eq!(job["promotion"]["promoted"], true, "{job:#}");

    let version = app.http.get(app.url("/v1/models/shapes-cnn/versions/1")).bearer_auth(&app.admin_token).send().await;
    let (status, version) = json_of(version.expect("get version")).await;
    assert_eq!(status, 200, "{version}");
    assert_eq!(version["lineage"]["job_id"], job["id"]);
    assert_eq!(version["lineage"]["snapshot_id"], job["snapshot_id"]);
    assert_eq!(version["labels"], json!(["circle", "square", "triangle"]));
    assert!(version["reference"]["temperature"].as_f64().expect("a fitted temperature") > 0.0);
    // Held-out evidence, reported apart from validation: the test split's metrics and every
    // split's size (72 items: 0.6 / 0.15 / 0.1 / 0.15 by hash).
    let metrics = &version["metrics"];
    let splits = &metrics["splits"];
    let sizes: Vec<u64> = ["train", "validation", "calibration", "test"]
        .iter()
        .map(|s| splits[s].as_u64().expect("a split size"))
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 72, "{metrics:#}");
    assert!(sizes.iter().all(|&n| n > 0), "{metrics:#}");
    let test = &metrics["test"];
    assert_eq!(test["items"], splits["test"], "{metrics:#}");
    assert_eq!(metrics["test_accuracy"], test["accuracy"]);
    let confusion = test["confusion_matrix"].as_array().expect("a confusion matrix");
    assert_eq!(confusion.len(), 3);
    let total: u64 =
        confusion.iter().flat_map(|row| row.as_array().expect("a row")).map(|n| n.as_u64().expect("n")).sum();
    assert_eq!(Some(total), test["items"].as_u64());
    assert_eq!(test["per_class"].as_array().expect("per class").len(), 3);
    for key in ["macro_f1", "expected_calibration_error", "accuracy"] {
        assert!((0.0..=1.0).contains(&test[key].as_f64().expect(key)), "{key}: {test:#}");
    }
    assert_eq!(metrics["calibrated_on"], "calibration");
    let key = version["artifact_key"].as_str().expect("artifact key");
    let bytes =
        sluice_core::s3::get_bytes(&app.ctx.s3, &app.ctx.config.s3.bucket, key).await.expect("get").expect("artifact");
    assert_eq!(version["sha256"], hex::encode(Sha256::digest(&bytes)));
    let snapshot = format!("snapshots/shapes/{}.json", job["snapshot_id"].as_str().expect("snapshot id"));
    assert!(
        sluice_core::s3::get_bytes(&app.ctx.s3, &app.ctx.config.s3.bucket, &snapshot).await.expect("get").is_some()
    );

    let events = crate::support::published_model_events(&app).await;
    let types: Vec<&str> = events.iter().map(|(_, e)| e["type"].as_str().unwrap_or("")).collect();
    assert_eq!(types, ["model.version_registered", "model.alias_moved"]);
    assert!(events.iter().all(|(key, _)| key == "shapes-cnn"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_data_seed_and_parameters_give_identical_metrics_and_artifacts() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 16, 16, 2).await;
    let body = grid("twins", "shapes", json!({"epochs": 2, "dropout": 0.2, "hidden": 16}), "never");
    let first = run_job(&app, &body, Duration::from_secs(120)).await;
    let second = run_job(&app, &body, Duration::from_secs(120)).await;
    for job in [&first, &second] {
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    let (a, b) = (&first["trials"][0], &second["trials"][0]);
    assert_eq!(a["sha256"], b["sha256"]);
    assert_eq!(a["metrics"], b["metrics"]);
    let without_timing = |trial: &Value| {
        let mut history = trial["history"].clone();
        history.as_array_mut().expect("history").iter_mut().for_each(|h| {
            h.as_object_mut().expect("entry").remove("seconds");
        });
        history
    };
    assert_eq!(without_timing(a), without_timing(b));
    assert_eq!(first["promotion"]["promoted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halving_keeps_the_best_third_and_continues_it_from_its_checkpoint() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 16, 16, 3).await;
    let body = json!({"model": "halved", "dataset": "shapes", "architecture": "mlp", "seed": 3, "promote": "never",
        "search": {"strategy": "halving", "max_trials": 3, "reduction_factor": 3, "min_epochs": 1,
                   "space": {"epochs": 3, "learning_rate": {"log_uniform": [0.001, 0.05]}, "patience": 0}}});
    let job = run_job(&app, &body, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let trials = job["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 4, "three on the first rung, one promoted: {job:#}");
    let first_rung: Vec<&Value> = trials.iter().filter(|t| t["rung"] == 0).collect();
    assert!(first_rung.iter().all(|t| t["epochs"] == 1 && t["status"] == "succeeded"));
    let promoted = trials.iter().find(|t| t["rung"] == 1).expect("a promoted trial");
    let score = |t: &Value| t["metrics"]["val_accuracy"].as_f64().unwrap_or(0.0);
    let parent = first_rung.iter().find(|t| t["id"] == promoted["parent"]).expect("its parent on the first rung");
    assert!(first_rung.iter().all(|t| score(t) <= score(parent)), "the promoted trial was the best: {job:#}");
    assert_eq!(promoted["epochs"], 3);
    // It continued from the parent's epoch 1: its own history holds epochs 2 and 3 only.
    let epochs: Vec<i64> = promoted["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["epoch"].as_i64().expect("an epoch"))
        .collect();
    assert_eq!(epochs, [2, 3], "{job:#}");
    assert_eq!(job["best_trial"], promoted["id"]);
}

/// ASHA: trials are promoted as they rank in the top third of those that finished their rung,
/// and the winner trains the whole budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asha_promotes_the_top_third_and_the_winner_trains_the_whole_budget() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 16, 16, 13).await;
    let body = json!({"model": "async", "dataset": "shapes", "architecture": "mlp", "seed": 4, "promote": "never",
        "search": {"strategy": "asha", "max_trials": 6, "reduction_factor": 3, "min_epochs": 1,
                   "space": {"epochs": 9, "learning_rate": {"log_uniform": [0.001, 0.05]}, "patience": 0}}});
    let job = run_job(&app, &body, Duration::from_secs(180)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let trials = job["trials"].as_array().expect("trials");
    let first_rung: Vec<&Value> = trials.iter().filter(|t| t["rung"] == 0).collect();
    assert_eq!(first_rung.len(), 6, "{job:#}");
    // The top third of six reach the second rung, each promoted as soon as it ranked in the top
    // third of the trials finished so far: one promoted early may later drop out of the top two,
    // and others join them, up to four when results arrive worst first (the asynchrony is covered
    // by the unit tests of `search`, where timing does not decide), each continuing its parent
    // with three epochs.
    let second: Vec<&Value> = trials.iter().filter(|t| t["rung"] == 1).collect();
    assert!((2..=4).contains(&second.len()), "{job:#}");
    for t in &second {
        assert_eq!(t["epochs"], 3);
        assert!(first_rung.iter().any(|p| p["id"] == t["parent"]), "{job:#}");
    }
    let best = trials.iter().find(|t| t["id"] == job["best_trial"]).expect("the best trial");
    assert_eq!(best["epochs"], 9, "the winner trains the whole budget: {job:#}");
}

/// The median rule stops trials that lag their peers at the same epoch (after the grace epochs),
/// keeping their best weights; the job still ends with a good trial. (Which trials it stops
/// depends on which peers had reported by then: the rule itself is unit-tested in `search`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_median_rule_stops_laggards_after_the_grace_epochs() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 40, 24, 10).await;
    let body = json!({"model": "pruned", "dataset": "shapes", "architecture": "cnn", "seed": 2, "promote": "never",
        "search": {"strategy": "grid", "early_stopping": "median", "grace_epochs": 2,
                   "space": {"epochs": 10, "patience": 0, "batch_size": 8, "hidden": 32,
                             "learning_rate": [0.003, 0.004, 0.005, 0.000001, 0.0000012, 0.0000014]}}});
    let job = run_job(&app, &body, Duration::from_secs(180)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let trials = job["trials"].as_array().expect("trials");
    let lr = |t: &Value| t["params"]["learning_rate"].as_f64().expect("a learning rate");
    let pruned: Vec<&Value> = trials.iter().filter(|t| t["metrics"]["pruned_at_epoch"].is_number()).collect();
    eprintln!("median rule: {} of 6 trials stopped early", pruned.len());
    for t in &pruned {
        let at = t["metrics"]["pruned_at_epoch"].as_u64().expect("an epoch");
        assert!((2..10).contains(&at), "stopped at epoch {at}, within the grace epochs or at the end: {job:#}");
        assert_eq!(t["status"], "succeeded", "a stopped trial keeps its best weights: {job:#}");
    }
    let best = trials.iter().find(|t| t["id"] == job["best_trial"]).expect("the best trial");
    assert!(lr(best) >= 0.003, "{job:#}");
}

/// TPE: five random trials, then one proposal per ended trial, up to max_trials; the job ends
/// with the best of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpe_proposes_trials_from_the_results_so_far() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 16, 16, 15).await;
    let body = json!({"model": "guided", "dataset": "shapes", "architecture": "mlp", "seed": 6, "promote": "never",
        "search": {"strategy": "tpe", "max_trials": 8,
                   "space": {"epochs": 2, "learning_rate": {"log_uniform": [0.0001, 0.05]}, "hidden": {"int_uniform": [8, 32]}}}});
    let job = run_job(&app, &body, Duration::from_secs(180)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let trials = job["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 8, "{job:#}");
    assert!(trials.iter().all(|t| t["status"] == "succeeded"), "{job:#}");
    let score = |t: &Value| t["metrics"]["val_accuracy"].as_f64().unwrap_or(0.0);
    let best = trials.iter().find(|t| t["id"] == job["best_trial"]).expect("the best trial");
    assert!(trials.iter().all(|t| score(t) <= score(best)), "{job:#}");
}

/// Found by schemathesis: a `model` filter holding a NUL byte reached PostgreSQL, which refuses
/// it, and the lists answered 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_that_cannot_be_model_names_are_400_not_500() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    for path in ["/v1/training-jobs", "/v1/retrain-requests"] {
        for model in ["%00", "a%00b", "%C3%83%214H%C2%BAQ%00B"] {
            let url = app.url(&format!("{path}?model={model}&limit=-4760302037"));
            let response = app.http.get(&url).bearer_auth(&app.admin_token).send().await.expect("request");
            let (status, body) = json_of(response).await;
            assert_eq!(status, 400, "{path}?model={model}: {body}");
            assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        }
        for (query, status) in [("model=m&limit=20", 200), ("limit=-5", 400), ("limit=0", 400), ("limit=501", 400)] {
            let response = app.http.get(app.url(&format!("{path}?{query}"))).bearer_auth(&app.admin_token).send().await;
            assert_eq!(response.expect("request").status().as_u16(), status, "{path}?{query}: a limit is 1 to 500");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_training_requests_get_a_clear_4xx_and_leave_nothing_behind() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    // Tight dataset limits for two cases below; every other dataset here is within them.
    config.trainer.max_classes = 2;
    config.trainer.max_snapshot_mib = 1;
    let app = RunningApp::spawn_services(config, &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 4, 16, 4).await;
    seed_dataset(&app, "wide", 3, 2, 16, 6).await;
    // 40 frames of 3×128×128 bytes, held twice: about 3.8 MiB.
    seed_dataset(&app, "large", 2, 20, 128, 7).await;
    let client = app.ctx.db.get().await.expect("connection");
    client.execute("INSERT INTO datasets (name) VALUES ('empty')", &[]).await.expect("empty dataset");
    // One class only.
    client.execute("UPDATE media SET label = 'circle' WHERE dataset = 'shapes'", &[]).await.expect("relabel");
    seed_dataset(&app, "good", 2, 4, 16, 5).await;
    let ok = |f: &dyn Fn(&mut Value)| {
        let mut body = grid("m", "good", json!({"epochs": 1}), "never");
        f(&mut body);
        body
    };
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("unknown dataset", ok(&|b| b["dataset"] = json!("nope")), 404, "unknown_dataset"),
        ("unknown architecture", ok(&|b| b["architecture"] = json!("transformer")), 422, "invalid_request"),
        ("no processed items", ok(&|b| b["dataset"] = json!("empty")), 422, "dataset_not_trainable"),
        ("a single class", ok(&|b| b["dataset"] = json!("shapes")), 422, "dataset_not_trainable"),
        ("more classes than trainer.max_classes", ok(&|b| b["dataset"] = json!("wide")), 422, "dataset_not_trainable"),
        ("frames over trainer.max_snapshot_mib", ok(&|b| b["dataset"] = json!("large")), 422, "dataset_not_trainable"),
        ("an empty list", ok(&|b| b["search"]["space"]["learning_rate"] = json!([])), 422, "invalid_search"),
        (
            "a negative learning rate",
            ok(&|b| b["search"]["space"]["learning_rate"] = json!([-0.1])),
            422,
            "invalid_search",
        ),
        ("a zero learning rate", ok(&|b| b["search"]["space"]["learning_rate"] = json!(0.0)), 422, "invalid_search"),
        ("an unknown strategy", ok(&|b| b["search"]["strategy"] = json!("annealing")), 422, "invalid_search"),
        ("an unknown parameter", ok(&|b| b["search"]["space"]["momentum_x"] = json!([1])), 422, "invalid_search"),
        ("max_trials 0", ok(&|b| b["search"]["max_trials"] = json!(0)), 422, "invalid_search"),
        ("max_trials over the limit", ok(&|b| b["search"]["max_trials"] = json!(100_000)), 422, "invalid_search"),
        ("an invalid model name", ok(&|b| b["model"] = json!("Bad Name!")), 422, "invalid_request"),
        ("an unknown field", ok(&|b| b["colour"] = json!("red")), 400, "invalid_request"),
    ];
    let mut failures = Vec::new();
    for (what, body, status, code) in &cases {
        let (got, answer) = post_job(&app, &app.admin_token, body).await;
        if got != *status || answer["error"]["code"] != *code || !answer["error"]["message"].is_string() {
            failures.push(format!("{what}: expected {status} {code}, got {got} {answer}"));
        }
    }
    let body = ok(&|_| {});
    let (status, _) =
        json_of(app.http.post(app.url("/v1/training-jobs")).json(&body).send().await.expect("post")).await;
    assert_eq!(status, 401);
    let ingest_only = app.token(&[Scope::Ingest, Scope::Predict]).await;
    assert_eq!(post_job(&app, &ingest_only, &body).await.0, 403);
    assert_eq!(post_job(&app, "not-a-token", &body).await.0, 401);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(app.count("SELECT count(*) FROM training_jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM training_trials").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    let listed = app.ctx.s3.list_objects_v2().bucket(&app.ctx.config.s3.bucket).prefix("snapshots/").send().await;
    assert_eq!(listed.expect("list").key_count(), Some(0), "no snapshot manifest was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_skips_its_trials_and_cannot_be_cancelled_twice() {
    let env = TestEnv::new().await;
    // Only the routes run: nothing consumes the trials, so the job is still queued when cancelled.
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    let base = trainer_routes(app.ctx.clone()).await;
    seed_dataset(&app, "shapes", 2, 4, 16, 6).await;
    let body = grid("m", "shapes", json!({"learning_rate": [0.01, 0.02, 0.03], "epochs": 50}), "never");
    let post = app.http.post(format!("{base}/v1/training-jobs")).bearer_auth(&app.admin_token).json(&body);
    let (status, created) = json_of(post.send().await.expect("post")).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id");
    let cancel = || app.http.post(format!("{base}/v1/training-jobs/{id}/cancel")).bearer_auth(&app.admin_token).send();
    let (status, answer) = json_of(cancel().await.expect("cancel")).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = json_of(cancel().await.expect("cancel again")).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "job_finished");
    // A worker started now skips every trial: none runs, none produces an artifact.
    let worker = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    eventually(Duration::from_secs(60), "the worker to consume the cancelled trials", || async {
        crate::support::group_caught_up(&worker.ctx.config, "trainer", worker.ctx.topic(Topic::TrainingTrials).as_str())
            .await
            .then_some(())
    })
    .await;
    assert_eq!(worker.count("SELECT count(*) FROM training_trials WHERE status <> 'cancelled'").await, 0);
    assert_eq!(worker.count("SELECT count(*) FROM training_trials WHERE worker IS NOT NULL").await, 0);
    let (status, _) = json_of(
        app.http
            .post(format!("{base}/v1/training-jobs/{}/cancel", Uuid::new_v4()))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .expect("cancel"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_burst_starts_one_job_from_the_last_template() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 8, 16, 8).await;
    let body = json!({"model": "loop", "dataset": "shapes", "architecture": "mlp", "seed": 1, "promote": "always",
        "search": {"strategy": "grid", "space": {"epochs": 1}}});
    let first = run_job(&app, &body, Duration::from_secs(120)).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    let topic = app.ctx.topic(Topic::RetrainRequests);
    // Nothing new since production's snapshot: the request is skipped, with the reason.
    let stale = Envelope::new(RetrainRequested {
        model: "loop".into(),
        reason: "drift".into(),
        evidence: json!({}),
        requested_by: "test".into(),
    });
    crate::support::produce(
        &app.ctx.producer,
        topic.as_str(),
        &[(0, String::from_utf8(stale.to_json()).expect("utf-8"))],
    )
    .await;
    eventually(Duration::from_secs(60), "the stale retrain request recorded", || async {
        (app.count("SELECT count(*) FROM retrain_requests").await == 1).then_some(())
    })
    .await;
    let listed = app
        .http
        .get(app.url("/v1/retrain-requests?model=loop"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("list");
    let (status, listed) = json_of(listed).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["requests"][0]["outcome"], "skipped", "{listed:#}");
    let detail = listed["requests"][0]["detail"].as_str().expect("a reason");
    assert!(detail.contains("has not changed since production v1"), "{detail}");
    assert_eq!(app.count("SELECT count(*) FROM training_jobs WHERE origin = 'retrain'").await, 0);
    // New labelled items arrive: the next burst starts one job.
    seed_dataset(&app, "shapes", 2, 4, 16, 9).await;
    let requests: Vec<(i32, String)> = (0..3)
        .map(|i| {
            let event = Envelope::new(RetrainRequested {
                model: "loop".into(),
                reason: "drift".into(),
                evidence: json!({"psi": 0.4, "n": i}),
                requested_by: "test".into(),
            });
            (0, String::from_utf8(event.to_json()).expect("utf-8"))
        })
        .collect();
    crate::support::produce(&app.ctx.producer, topic.as_str(), &requests).await;
    eventually(Duration::from_secs(60), "three more retrain requests recorded", || async {
        (app.count("SELECT count(*) FROM retrain_requests").await == 4).then_some(())
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM retrain_requests WHERE outcome = 'started'").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM retrain_requests WHERE outcome = 'coalesced'").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM training_jobs WHERE origin = 'retrain'").await, 1);
    let client = app.ctx.db.get().await.expect("connection");
    let id: Uuid =
        client.query_one("SELECT id FROM training_jobs WHERE origin = 'retrain'", &[]).await.expect("job").get(0);
    let retrained = wait_job(&app, &id.to_string(), Duration::from_secs(120)).await;
    assert_eq!(retrained["status"], "succeeded", "{retrained:#}");
    // The template, except that a retrain promotes only within the model's policy (none set).
    let mut template = first["request"].clone();
    template["promote"] = json!("never");
    assert_eq!(retrained["request"], template);
    assert_eq!(retrained["evidence"]["reason"], "drift");
    assert_eq!(retrained["registered_version"], 2);

    // Two retrains started at once (a rebalance redelivering a request mid-start) make one job:
    // the check is repeated under a per-model lock where the job is created.
    seed_dataset(&app, "shapes", 2, 4, 16, 10).await;
    app.ctx
        .db
        .get()
        .await
        .expect("connection")
        .execute("UPDATE training_jobs SET created_at = created_at - interval '7 days'", &[])
        .await
        .expect("age the jobs past the cooldown");
    let template: sluice_trainer::search::JobRequest = serde_json::from_value(template).expect("a job request");
    let start = || {
        let origin = sluice_trainer::store::Origin { kind: "retrain", requested_by: "test".into(), evidence: None };
        sluice_trainer::jobs::start(&app.ctx, &template, origin, sluice_trainer::jobs::Grant::Retrain)
    };
    let (a, b) = tokio::join!(start(), start());
    let coalesced = |r: &Result<Uuid, sluice_trainer::jobs::StartError>| {
        matches!(r, Err(sluice_trainer::jobs::StartError::Coalesced(_)))
    };
    assert!(a.is_ok() != b.is_ok() && (coalesced(&a) || coalesced(&b)), "{a:?} {b:?}");
    assert_eq!(app.count("SELECT count(*) FROM training_jobs WHERE origin = 'retrain'").await, 2);
}

/// Two worker processes share a job's trials; one is killed with SIGKILL mid-trial and the
/// survivor finishes that trial from its last epoch checkpoint, recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_trial_is_replaced_by_the_survivor_resuming_from_its_checkpoint() {
    // Long enough that the kill lands mid-trial on a quiet machine too (24 epochs took under 4 s).
    const EPOCHS: i64 = 80;
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    seed_dataset(&app, "shapes", 2, 60, 32, 9).await;
    let mut first = trainer_worker(&env);
    let mut second = trainer_worker(&env);
    let base = trainer_routes(app.ctx.clone()).await;
    let body = json!({"model": "sturdy", "dataset": "shapes", "architecture": "cnn", "seed": 5, "promote": "never",
        "search": {"strategy": "grid", "space": {"learning_rate": [0.002, 0.003], "epochs": EPOCHS, "patience": 0}}});
    let post = app.http.post(format!("{base}/v1/training-jobs")).bearer_auth(&app.admin_token).json(&body);
    let (status, created) = json_of(post.send().await.expect("post")).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    // Both workers train at once (round-robin partitions), then the first one's trial is cut.
    let workers: Vec<String> = eventually(Duration::from_secs(120), "both trials running on two workers", || async {
        let rows = app
            .ctx
            .db
            .get()
            .await
            .ok()?
            .query(
                "SELECT worker FROM training_trials WHERE status = 'running' AND epoch >= 2 AND worker IS NOT NULL",
                &[],
            )
            .await
            .ok()?;
        let workers: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        (workers.len() == 2 && workers[0] != workers[1]).then_some(workers)
    })
    .await;
    let victim =
        workers.iter().find(|w| w.ends_with(&format!("-{}", first.id()))).expect("the first worker's trial").clone();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    first.wait().expect("reap");
    let cut_at: i32 = app
        .ctx
        .db
        .get()
        .await
        .expect("connection")
        .query_one("SELECT epoch FROM training_trials WHERE worker = $1", &[&victim])
        .await
        .expect("victim trial")
        .get(0);
    let job = eventually(Duration::from_secs(300), "the job to succeed", || async {
        let response =
            app.http.get(format!("{base}/v1/training-jobs/{id}")).bearer_auth(&app.admin_token).send().await.ok()?;
        let (_, job) = json_of(response).await;
        (job["status"] != "queued" && job["status"] != "running").then_some(job)
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let trials = job["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 2);
    // Every epoch is recorded once; the victim's trial went on from the victim's last
    // checkpoint on the survivor instead of starting over.
    let victim_trial = trials
        .iter()
        .find(|t| t["history"].as_array().expect("history").iter().any(|h| h["worker"] == victim.as_str()))
        .expect("the victim's trial");
    let history = victim_trial["history"].as_array().expect("history");
    let last_by_victim =
        history.iter().filter(|h| h["worker"] == victim.as_str()).map(|h| h["epoch"].as_i64().expect("an epoch")).max();
    let survivor_entries: Vec<&Value> = history.iter().filter(|h| h["worker"] != victim.as_str()).collect();
    assert!(!survivor_entries.is_empty(), "{victim_trial:#}");
    // The survivor resumed from the victim's last checkpoint: at least the last epoch the victim
    // reported (it may have checkpointed one more and died before reporting it), never from 0.
    let resumed_from = survivor_entries[0]["resumed_from"].as_i64().expect("resumed_from");
    assert!(survivor_entries.iter().all(|h| h["resumed_from"] == resumed_from), "{victim_trial:#}");
    assert!(Some(resumed_from) >= last_by_victim && resumed_from >= 2, "{victim_trial:#}");
    assert!(last_by_victim >= Some(cut_at.into()) && cut_at >= 2, "{victim_trial:#}");
    for trial in trials {
        assert_eq!(trial["status"], "succeeded");
        let epochs: Vec<i64> = trial["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|h| h["epoch"].as_i64().expect("an epoch"))
            .collect();
        // Each epoch recorded once, in order; only the epoch a killed worker checkpointed but
        // never reported may be missing.
        let expected: Vec<i64> = (1..=EPOCHS)
            .filter(|&e| trial["id"] != victim_trial["id"] || e != resumed_from || epochs.contains(&e))
            .collect();
        assert_eq!(epochs, expected, "each epoch recorded once: {trial:#}");
        assert_ne!(trial["worker"], victim, "the survivor finished every trial");
    }
    let (status, _) = json_of(
        app.http.get(format!("{base}/v1/training-jobs/{id}")).bearer_auth(&app.admin_token).send().await.expect("get"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_better_keeps_production_when_the_new_model_loses_on_the_same_split() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer, Service::Registry]).await;
    seed_dataset(&app, "shapes", 2, 40, 24, 10).await;
    let space = json!({"epochs": 20, "learning_rate": 0.003, "batch_size": 8, "hidden": 32, "patience": 0});
    let good = grid("guarded", "shapes", space, "always");
    let first = run_job(&app, &good, Duration::from_secs(180)).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    assert!(first["trials"][0]["metrics"]["val_accuracy"].as_f64() >= Some(0.75), "{first:#}");
    let weak = grid("guarded", "shapes", json!({"epochs": 1, "learning_rate": 0.00001, "hidden": 8}), "if_better");
    let second = run_job(&app, &weak, Duration::from_secs(180)).await;
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert_eq!(second["registered_version"], 2);
    let promotion = &second["promotion"];
    assert_eq!(promotion["promoted"], false, "{promotion}");
    assert_eq!(promotion["production_version"], 1);
    assert!(promotion["production_accuracy"].as_f64() > promotion["candidate_accuracy"].as_f64(), "{promotion}");
    // Both were scored on the same held-out items, with a paired test.
    assert!(promotion["items"].as_u64() > Some(0), "{promotion}");
    assert!(promotion["p_value"].as_f64().is_some_and(|p| p > 0.05), "{promotion}");
    assert!(promotion["reason"].as_str().is_some_and(|r| r.contains("McNemar")), "{promotion}");
    let alias =
        app.http.get(app.url("/v1/models/guarded")).bearer_auth(&app.admin_token).send().await.expect("get model");
    let (_, model) = json_of(alias).await;
    assert_eq!(model["aliases"]["production"], 1, "{model}");
}

/// A candidate about as good as production (the same recipe, another seed) is not promoted:
/// a slightly higher test accuracy is not evidence. The history keeps production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_better_needs_a_significant_win_on_held_out_items() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer, Service::Registry]).await;
    seed_dataset(&app, "shapes", 2, 40, 24, 10).await;
    let space = json!({"epochs": 12, "learning_rate": 0.003, "batch_size": 8, "hidden": 32, "patience": 0});
    let first = run_job(&app, &grid("peers", "shapes", space.clone(), "always"), Duration::from_secs(180)).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    let mut twin = grid("peers", "shapes", space, "if_better");
    twin["seed"] = json!(8);
    let second = run_job(&app, &twin, Duration::from_secs(180)).await;
    assert_eq!(second["status"], "succeeded", "{second:#}");
    let promotion = &second["promotion"];
    assert_eq!(promotion["promoted"], false, "{promotion}");
    assert!(promotion["p_value"].as_f64().expect("a p-value") > 0.05, "{promotion}");
    assert!(promotion["items"].as_u64() > Some(0), "{promotion}");
    let model = app.http.get(app.url("/v1/models/peers")).bearer_auth(&app.admin_token).send().await.expect("model");
    let (_, model) = json_of(model).await;
    assert_eq!(model["aliases"]["production"], 1, "{model}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_train_starts_a_job_follows_it_and_prints_the_outcome() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 8, 16, 12).await;
    let (url, token) = (app.base_url.clone(), app.admin_token.clone());
    let output = tokio::task::spawn_blocking(move || {
        sluice_command()
            .args(["train", "--model", "cli", "--dataset", "shapes", "--architecture", "mlp"])
            .args(["--param", "learning_rate=0.01,0.02", "--param", "epochs=2", "--promote", "never", "--json"])
            .args(["--url", &url, "--token", &token])
            .output()
            .expect("run sluice train")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let job: Value = serde_json::from_slice(&output.stdout).expect("the final job as JSON");
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["trials"].as_array().expect("trials").len(), 2);
    // Without a terminal it logs each trial's progress as it changes, then the final table.
    assert!(stderr.contains("queued"), "{stderr}");
    assert!(stderr.contains("trial 0 succeeded epoch 2/2"), "{stderr}");
    assert!(stderr.contains("registered cli version 1"), "{stderr}");
}

/// A grid over `hidden` on an MLP over 128×128 RGB inputs: 65,536 hidden units make a
/// 12.9 GB weight matrix (3.2 billion parameters), 8 make a small network.
fn huge_and_small(model: &str, dataset: &str) -> Value {
    json!({"model": model, "dataset": dataset, "architecture": "mlp", "seed": 3, "promote": "never",
           "search": {"strategy": "grid", "space": {"hidden": [65536, 8], "epochs": 2, "batch_size": 4}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_too_large_for_its_input_is_refused_before_anything_is_queued() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "large", 2, 3, 128, 11).await;
    let (status, answer) = post_job(&app, &app.admin_token, &huge_and_small("huge", "large")).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
    let message = answer["error"]["message"].as_str().expect("message");
    assert!(message.contains("hidden = 65536") && message.contains("trainer.max_trial_parameters"), "{message}");
    assert_eq!(app.count("SELECT count(*) FROM training_jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0, "no trial was queued");
}

/// A batch whose activations pass `trainer.max_trial_batch_mib` is refused the same way; a
/// batch holds at most the dataset's items, so the check counts those, not `batch_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_large_for_memory_is_refused_before_anything_is_queued() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.trainer.max_trial_batch_mib = 32;
    let app = RunningApp::spawn_services(config, &[Service::Trainer]).await;
    seed_dataset(&app, "large", 2, 3, 128, 12).await;
    let body = json!({"model": "batched", "dataset": "large", "architecture": "cnn", "seed": 3, "promote": "never",
        "search": {"strategy": "grid", "space": {"batch_size": 65536, "epochs": 1}}});
    let (status, answer) = post_job(&app, &app.admin_token, &body).await;
    assert_eq!(status, 422, "{answer}");
    let message = answer["error"]["message"].as_str().expect("message");
    assert!(message.contains("batches of 6 3×128×128") && message.contains("trainer.max_trial_batch_mib"), "{message}");
    assert_eq!(app.count("SELECT count(*) FROM training_jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0, "no trial was queued");
}

/// The size check is lifted so the poison reaches the workers: a trial whose network cannot be
/// allocated aborts every trainer process that takes it (each started, like a supervisor would,
/// with an 8 GiB address-space limit so the allocation fails on any machine). Its attempts are
/// counted before it runs, so after `trainer.max_trial_attempts` deaths the next worker fails it
/// without running it, and the other trial of the job trains and is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_that_kills_its_workers_is_parked_and_the_next_trial_completes() {
    use std::os::unix::process::ExitStatusExt;
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.trainer.max_trial_parameters = 1_000_000_000_000_000;
    let app = RunningApp::spawn_services(config, &[Service::Registry]).await;
    seed_dataset(&app, "large", 2, 3, 128, 12).await;
    let base = trainer_routes(app.ctx.clone()).await;
    let spawn_worker = || {
        let mut command = sluice_command_after("ulimit -v 8388608 && ulimit -c 0");
        command
            .args(["serve", "trainer"])
            .envs(sluice_env(&env))
            .env("SLUICE_KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("SLUICE_TRAINER_MAX_TRIAL_ATTEMPTS", "2")
            .env("SLUICE_TRAINER_MAX_TRIAL_PARAMETERS", "1000000000000000");
        command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn a trainer worker")
    };
    let post = app.http.post(format!("{base}/v1/training-jobs")).bearer_auth(&app.admin_token);
    let (status, created) = json_of(post.json(&huge_and_small("fragile", "large")).send().await.expect("post")).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    // A supervisor: whenever the worker dies, another one starts.
    let mut worker = spawn_worker();
    let mut deaths = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let job = loop {
        if let Some(status) = worker.try_wait().expect("worker status") {
            deaths.push(status);
            assert!(deaths.len() <= 3, "the poison trial was never parked: {deaths:?}");
            worker = spawn_worker();
        }
        let response = app.http.get(format!("{base}/v1/training-jobs/{id}")).bearer_auth(&app.admin_token).send();
        let (_, job) = json_of(response.await.expect("get job")).await;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never ended: {job:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(deaths.len(), 2, "two workers died on the trial, the third parked it: {deaths:?}");
    assert!(deaths.iter().all(|d| d.signal() == Some(6)), "each died of the allocation abort: {deaths:?}");
    let trials = job["trials"].as_array().expect("trials");
    let poison = trials.iter().find(|t| t["params"]["hidden"] == 65536).expect("the poison trial");
    let small = trials.iter().find(|t| t["params"]["hidden"] == 8).expect("the small trial");
    assert_eq!(poison["status"], "failed", "{job:#}");
    assert_eq!(poison["error"], "gave up after 2 attempts: each one stopped its worker before it ended", "{job:#}");
    assert_eq!(small["status"], "succeeded", "{job:#}");
    assert_eq!(job["best_trial"], small["id"], "the job went on with the trial that could run");
    assert_eq!(job["registered_version"], 1, "{job:#}");
    let parked = parked_events(&app, "trial", 1).await;
    assert_eq!(parked[0]["data"]["id"], poison["id"], "{parked:#?}");
    assert_eq!(parked[0]["data"]["attempts"], 2);
}

/// The coordinator's re-plan can fail for good: here a halving job accepted under one limit
/// (routes of a process allowing 200 epochs) meets a coordinator whose configuration now allows
/// 2, so planning its next rung (3 epochs) fails every time. After `trainer.max_step_attempts`
/// the job fails with the reason and a `work.parked` event, and the next job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_step_that_keeps_failing_fails_the_job_and_the_next_job_completes() {
    let env = TestEnv::new().await;
    let mut strict = env.config.clone();
    strict.trainer.max_epochs = 2;
    strict.trainer.max_step_attempts = 2;
    let app = RunningApp::spawn_services(strict, &[Service::Trainer, Service::Registry]).await;
    seed_dataset(&app, "shapes", 2, 8, 16, 13).await;
    let lenient = sluice_core::Context::new(env.config.clone()).await.expect("context");
    let base = trainer_routes(lenient).await;
    let halving = json!({"model": "replanned", "dataset": "shapes", "architecture": "mlp", "seed": 4, "promote": "never",
        "search": {"strategy": "halving", "max_trials": 2, "reduction_factor": 2, "min_epochs": 1,
                   "space": {"epochs": 3, "hidden": 8, "learning_rate": {"log_uniform": [0.001, 0.05]}}}});
    let post = app.http.post(format!("{base}/v1/training-jobs")).bearer_auth(&app.admin_token).json(&halving);
    let (status, created) = json_of(post.send().await.expect("post")).await;
    assert_eq!(status, 202, "{created}");
    let stuck = wait_job(&app, created["id"].as_str().expect("id"), Duration::from_secs(120)).await;
    assert_eq!(stuck["status"], "failed", "{stuck:#}");
    let error = stuck["error"].as_str().expect("error");
    assert!(error.starts_with("gave up after 2 attempts; the last one failed"), "{error}");
    assert!(error.contains("epochs must be at most 2"), "{error}");
    assert!(stuck["trials"].as_array().expect("trials").iter().all(|t| t["rung"] == 0), "no rung was planned");

    let next = json!({"model": "after", "dataset": "shapes", "architecture": "mlp", "seed": 5, "promote": "never",
        "search": {"strategy": "grid", "space": {"epochs": 1, "hidden": 8}}});
    let done = run_job(&app, &next, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let parked = parked_events(&app, "coordinator_step", 1).await;
    assert_eq!(parked[0]["data"]["id"], stuck["id"], "{parked:#?}");
    assert_eq!(parked[0]["data"]["attempts"], 2);
    let metrics = app.get("/metrics").await.1;
    assert!(metrics.as_str().expect("text").contains("sluice_trainer_steps_parked_total 1"), "{metrics}");
}

/// A result on `training.results` that claims success without what registration needs (forged,
/// or from a broken worker) ends its trial as failed with the reason, and the coordinator goes
/// on: such a result used to panic every coordinator that read it, one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_success_result_fails_its_trial_and_the_coordinator_goes_on() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 16, 16, 2).await;
    let (status, created) =
        post_job(&app, &app.admin_token, &grid("forged", "shapes", json!({"epochs": 200, "patience": 0}), "never"))
            .await;
    assert_eq!(status, 202, "{created}");
    let job_id: Uuid = created["id"].as_str().expect("job id").parse().expect("a uuid");
    let trial_id: Uuid = eventually(Duration::from_secs(30), "the job's trial", || async {
        let client = app.ctx.db.get().await.ok()?;
        client.query_opt("SELECT id FROM training_trials WHERE job_id = $1", &[&job_id]).await.ok()?.map(|r| r.get(0))
    })
    .await;
    let forged = Envelope::new(TrialFinished {
        job_id,
        trial_id,
        worker: "forger".into(),
        outcome: TrialOutcome::Succeeded,
        metrics: json!([1]),
        artifact: None,
        reference: Value::Null,
        error: None,
        duration_ms: 1,
        test: None,
    });
    let topic = app.ctx.topic(Topic::TrainingResults);
    let payload = String::from_utf8(forged.to_json()).expect("utf-8");
    crate::support::produce(&app.ctx.producer, topic.as_str(), &[(0, payload)]).await;
    let ended = wait_job(&app, &job_id.to_string(), Duration::from_secs(60)).await;
    assert_eq!(ended["status"], "failed", "{ended:#}");
    let trial = &ended["trials"][0];
    assert_eq!(trial["status"], "failed", "{trial:#}");
    let error = trial["error"].as_str().expect("the trial's error");
    assert!(error.contains("malformed") && error.contains("without an artifact"), "{error}");

    let next = run_job(&app, &grid("after", "shapes", json!({"epochs": 1}), "never"), Duration::from_secs(120)).await;
    assert_eq!(next["status"], "succeeded", "the coordinator still finishes jobs: {next:#}");
}

/// A worker that joins while another trains gets its share of the trials at once: the busy
/// worker's consumer goes on polling during its trial, so the group's rebalance does not wait
/// for the trial to end (a member that does not poll holds up the whole group's rebalance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_mid_trial_takes_the_next_trial_while_the_first_trains() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    seed_dataset(&app, "shapes", 2, 120, 32, 13).await;
    let mut first = trainer_worker(&env);
    let base = trainer_routes(app.ctx.clone()).await;
    let body = json!({"model": "joined", "dataset": "shapes", "architecture": "cnn", "seed": 5, "promote": "never",
        "search": {"strategy": "grid", "space": {"learning_rate": [0.002, 0.003], "epochs": 200, "patience": 0}}});
    let post = app.http.post(format!("{base}/v1/training-jobs")).bearer_auth(&app.admin_token).json(&body);
    let (status, created) = json_of(post.send().await.expect("post")).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let running = || async {
        let client = app.ctx.db.get().await.ok()?;
        let rows = client
            .query("SELECT worker, epoch FROM training_trials WHERE status = 'running' AND epoch >= 1", &[])
            .await
            .ok()?;
        Some(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1))).collect::<Vec<_>>())
    };
    eventually(Duration::from_secs(120), "the first worker training a trial", || async {
        running().await.filter(|trials| trials.len() == 1)
    })
    .await;
    let mut second = trainer_worker(&env);
    let joined = std::time::Instant::now();
    let both = eventually(Duration::from_secs(60), "both workers training at once", || async {
        running().await.filter(|trials| trials.len() == 2 && trials[0].0 != trials[1].0)
    })
    .await;
    let waited = joined.elapsed();
    let cancel = app.http.post(format!("{base}/v1/training-jobs/{id}/cancel")).bearer_auth(&app.admin_token);
    let _ = cancel.send().await;
    for worker in [&mut first, &mut second] {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    // The first trial was still far from its 200th epoch when the second started.
    let first_epoch = both.iter().map(|(_, epoch)| *epoch).max().expect("epochs");
    assert!(first_epoch < 200, "{both:?} after {waited:?}");
}

/// A run whose trial another run took over (as after a rebalance gave its partition away) stops
/// at its next epoch and publishes nothing. Here the other run is a stand-in that never trains,
/// and the partition is still this worker's: the stopped run leaves the message unfinished, the
/// consumer reconnects, and the trial is delivered again and resumed from its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_trial_was_taken_over_stops_and_the_trial_still_finishes_once() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Trainer]).await;
    seed_dataset(&app, "shapes", 2, 60, 32, 14).await;
    let (status, created) =
        post_job(&app, &app.admin_token, &grid("taken", "shapes", json!({"epochs": 60, "patience": 0}), "never")).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    eventually(Duration::from_secs(60), "the trial past its second epoch", || async {
        (app.count("SELECT count(*) FROM training_trials WHERE status = 'running' AND epoch >= 2").await == 1)
            .then_some(())
    })
    .await;
    let client = app.ctx.db.get().await.expect("connection");
    client.execute("UPDATE training_trials SET run_id = gen_random_uuid()", &[]).await.expect("take it over");
    drop(client);
    let job = wait_job(&app, &id, Duration::from_secs(180)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let history = job["trials"][0]["history"].as_array().expect("history");
    let epochs: Vec<i64> = history.iter().map(|h| h["epoch"].as_i64().expect("an epoch")).collect();
    assert_eq!(epochs, (1..=60).collect::<Vec<_>>(), "each epoch recorded once: {history:?}");
    assert!(history.iter().any(|h| h["resumed_from"].as_i64() > Some(0)), "resumed from its checkpoint: {history:?}");
    let metrics = app.get("/metrics").await.1;
    assert!(metrics.as_str().expect("text").contains("sluice_trainer_trials_taken_over_total"), "counted");
    // The run that yielded gave its attempt back, so only the run that finished counts one. Not
    // asserted: on a loaded machine a try that failed on a timeout counts one more, which is
    // right, and looks the same as an attempt not given back (CI saw 2 once).
    eprintln!("attempts after the takeover: {}", app.count("SELECT attempts::bigint FROM training_trials").await);
}
