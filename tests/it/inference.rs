//! Inference on the real stack: predictions through the version's own preprocessing, bad input,
//! hot swaps under load, canary and shadow routing, feedback, drift and label-free accuracy.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice::Service;
use sluice_core::{
    auth::Scope,
    live::{self, LiveOutcome, Pending},
    models::{self, AliasName, Lineage, ModelName, NewVersion},
    pipeline::PipelineSpec,
    reference::Reference,
    topics::Topic,
    training::artifact_key,
};
use sluice_inference::serving::{Served, Target};
use sluice_nn::{
    Architecture, Hyper, Samples, Session, SessionSpec,
    synthetic::{self, SyntheticSpec},
};
use sluice_testkit::{TestEnv, eventually};
use uuid::Uuid;

use crate::support::{RunningApp, json_of, read_topic};

const SIZE: usize = 24;
const CLASSES: usize = 3;

fn spec() -> PipelineSpec {
    PipelineSpec { width: SIZE as u32, height: SIZE as u32, ..PipelineSpec::default() }
}

pub(crate) fn samples(count: usize, seed: u64) -> Samples {
    synthetic::generate(&SyntheticSpec::rgb(SIZE, CLASSES, count, seed)).expect("synthetic images")
}

/// Image `i` of `samples` as PNG bytes, with `shift` added to every pixel (a distribution shift).
pub(crate) fn png(samples: &Samples, i: usize, shift: i16) -> Vec<u8> {
    let frame = samples.shape.len();
    let chw: Vec<u8> = samples.images[i * frame..(i + 1) * frame]
        .iter()
        .map(|&v| (i16::from(v) + shift).clamp(0, 255) as u8)
        .collect();
    sluice_media::png_from_chw(&chw, SIZE as u32, SIZE as u32).expect("an image")
}

/// Trains a small CNN in-process and registers it as the next version of `model`, with the
/// reference statistics of its validation split (as the trainer would).
pub(crate) async fn register_trained(app: &RunningApp, model: &str, seed: u64, epochs: usize) -> i32 {
    let hyper = Hyper { epochs, batch_size: 16, learning_rate: 0.003, hidden: 32, patience: 0, ..Hyper::default() };
    let shape = samples(1, 0).shape;
    let session_spec = SessionSpec { architecture: Architecture::Cnn, shape, classes: CLASSES, hyper, seed };
    let (train, val) = (samples(300, seed), samples(150, seed + 1000));
    let (artifact, reference, accuracy) = tokio::task::spawn_blocking(move || {
        let mut session = Session::new(session_spec).expect("session");
        while !session.finished() {
            session.run_epoch(&train, &val).expect("epoch");
        }
        let evaluation = session.evaluate_best(&val).expect("evaluate");
        let mut reference = Reference::compute(&val.images, 3, &val.labels, &evaluation.logits, CLASSES);
        let (logits, embeddings) = session.scores_best(&val).expect("scores");
        reference.add_embeddings(&logits, &embeddings);
        reference.add_embedding_sample(&logits, &embeddings);
        (session.export_best().expect("export"), reference, evaluation.accuracy)
    })
    .await
    .expect("training");
    let (job_id, trial_id) = (Uuid::now_v7(), Uuid::now_v7());
    let key = artifact_key(model, job_id, trial_id, &hex::encode(Sha256::digest(&artifact)));
    sluice_core::s3::put_bytes(
        &app.ctx.s3,
        &app.ctx.config.s3.bucket,
        &key,
        artifact.clone(),
        "application/octet-stream",
    )
    .await
    .expect("put artifact");
    let version = NewVersion {
        model: ModelName::parse(model).expect("model name"),
        artifact_key: key,
        sha256: hex::encode(Sha256::digest(&artifact)),
        size_bytes: artifact.len() as i64,
        architecture: "cnn".into(),
        input_spec: spec(),
        labels: synthetic::labels(CLASSES),
        hyperparameters: json!({}),
        metrics: json!({"val_accuracy": accuracy}),
        reference: serde_json::to_value(&reference).expect("reference"),
        lineage: Lineage {
            job_id,
            trial_id,
            snapshot_id: "test".into(),
            dataset: "shapes".into(),
            spec_hash: spec().hash(),
            sluice_version: "test".into(),
        },
    };
    let mut client = app.ctx.db.get().await.expect("connection");
    let tx = client.transaction().await.expect("tx");
    let registered = models::register(&tx, &app.ctx.config.kafka.topic_prefix, &version).await.expect("register");
    tx.commit().await.expect("commit");
    registered.version
}

pub(crate) async fn move_alias(app: &RunningApp, model: &str, alias: &str, version: i32) {
    let mut client = app.ctx.db.get().await.expect("connection");
    let tx = client.transaction().await.expect("tx");
    let (model, alias) = (ModelName::parse(model).expect("model"), AliasName::parse(alias).expect("alias"));
    models::move_alias(&tx, &app.ctx.config.kafka.topic_prefix, &model, &alias, version, "test", "test")
        .await
        .expect("move alias");
    tx.commit().await.expect("commit");
}

async fn predict(app: &RunningApp, token: &str, model: &str, query: &str, body: Vec<u8>) -> (u16, Value) {
    let url = app.url(&format!("/v1/models/{model}/predict{query}"));
    json_of(app.http.post(url).bearer_auth(token).body(body).send().await.expect("predict")).await
}

pub(crate) async fn predict_many(app: &RunningApp, model: &str, images: Vec<Vec<u8>>) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (i, image) in images.into_iter().enumerate() {
        form = form.part("file", reqwest::multipart::Part::bytes(image).file_name(format!("{i}.png")));
    }
    let url = app.url(&format!("/v1/models/{model}/predict"));
    json_of(app.http.post(url).bearer_auth(&app.admin_token).multipart(form).send().await.expect("predict")).await
}

pub(crate) async fn inference_app(env: &TestEnv) -> RunningApp {
    RunningApp::spawn_services(env.config.clone(), &[Service::Inference, Service::Registry]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_use_the_training_preprocessing_and_are_recorded() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "shapes", 1, 4).await;
    move_alias(&app, "shapes", "production", version).await;
    let test = samples(30, 77);
    let (status, answer) = predict(&app, &app.admin_token, "shapes", "?top_k=2", png(&test, 0, 0)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "shapes");
    assert_eq!(answer["version"], version);
    let top = answer["predictions"][0]["top"].as_array().expect("top");
    assert_eq!(top.len(), 2);
    assert!(top[0]["score"].as_f64() >= top[1]["score"].as_f64());
    // The served answer is exactly what the registered network gives on the training-path pixels.
    let loaded = models::resolve_alias(
        &app.ctx.db.get().await.expect("db"),
        &ModelName::parse("shapes").expect("name"),
        &AliasName::parse("production").expect("alias"),
    )
    .await
    .expect("resolve")
    .expect("production");
    let bytes = models::load_artifact(&app.ctx.s3, &app.ctx.config.s3.bucket, &loaded).await.expect("artifact");
    let network = sluice_nn::Network::load(&bytes).expect("network");
    let pixels = sluice_media::prepare(&png(&test, 0, 0), &loaded.input_spec, 50_000_000).expect("prepare");
    let logits = network.logits(&pixels, 1).expect("logits");
    let best = logits[0].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).expect("a class");
    assert_eq!(top[0]["label"], loaded.labels[best]);

    let (status, many) = predict_many(&app, "shapes", (1..=5).map(|i| png(&test, i, 0)).collect()).await;
    assert_eq!(status, 200, "{many}");
    assert_eq!(many["predictions"].as_array().expect("predictions").len(), 5);
    eventually(Duration::from_secs(10), "six recorded predictions", || async {
        (app.count("SELECT count(*) FROM predictions WHERE model = 'shapes' AND NOT shadow").await == 6).then_some(())
    })
    .await;
    let id = answer["predictions"][0]["id"].as_str().expect("id");
    let truth = synthetic::labels(CLASSES)[test.labels[0] as usize].clone();
    let response = app
        .http
        .post(app.url("/v1/feedback"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"prediction_id": id, "label": truth}))
        .send()
        .await
        .expect("feedback");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let response = app
        .http
        .post(app.url("/v1/feedback"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"prediction_id": id, "label": "hexagon"}))
        .send()
        .await
        .expect("feedback");
    assert_eq!(json_of(response).await.0, 422);
    let response = app
        .http
        .post(app.url("/v1/feedback"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"prediction_id": Uuid::new_v4(), "label": truth}))
        .send()
        .await
        .expect("feedback");
    assert_eq!(json_of(response).await.0, 404);
    let (_, drift) = json_of(
        app.http.get(app.url("/v1/models/shapes/drift")).bearer_auth(&app.admin_token).send().await.expect("drift"),
    )
    .await;
    assert_eq!(drift["live_accuracy_answers"], 1, "{drift}");
    // The newest served predictions, with the feedback each got; paged by `before`.
    let recent = |query: String| {
        let app = &app;
        async move {
            let url = app.url(&format!("/v1/models/shapes/predictions{query}"));
            json_of(app.http.get(url).bearer_auth(&app.admin_token).send().await.expect("predictions")).await
        }
    };
    let (status, listed) = recent(String::new()).await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed["predictions"].as_array().expect("predictions").clone();
    assert_eq!(listed.len(), 6, "{listed:?}");
    let times: Vec<&str> = listed.iter().map(|p| p["created_at"].as_str().expect("time")).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let with_feedback: Vec<&Value> = listed.iter().filter(|p| p["feedback_label"] == truth.as_str()).collect();
    assert_eq!(with_feedback.len(), 1, "{listed:?}");
    assert_eq!(with_feedback[0]["id"], id);
    assert!(listed.iter().all(|p| p["version"] == version && p["captured_media_id"].is_null()), "{listed:?}");
    let (_, first) = recent("?limit=4".into()).await;
    let (_, rest) = recent(format!("?limit=4&before={}", first["predictions"][3]["id"].as_str().expect("id"))).await;
    assert_eq!(rest["predictions"].as_array().expect("rest").len(), 2, "{rest}");
    assert_eq!(rest["predictions"][1]["id"], listed[5]["id"]);
    for bad in ["?limit=0", "?limit=201", "?before=nope"] {
        assert_eq!(recent(bad.into()).await.0, 400, "{bad}");
    }
    let metrics = app.get("/metrics").await.1;
    let metrics = metrics.as_str().expect("text");
    assert!(metrics.contains("sluice_inference_predictions_total{"), "{metrics}");
    assert!(metrics.contains("sluice_inference_batch_size_bucket{"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_predict_requests_get_clear_4xx_and_record_nothing() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "shapes", 2, 1).await;
    move_alias(&app, "shapes", "production", version).await;
    let good = png(&samples(1, 3), 0, 0);
    let truncated = good[..good.len() / 2].to_vec();
    // A PNG header claiming 100000×100000 pixels.
    let mut bomb = good[..33].to_vec();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let predict_only = app.token(&[Scope::Predict]).await;
    let ingest_only = app.token(&[Scope::Ingest]).await;
    let admin = app.admin_token.clone();
    // (what, model, query, body, token, expected status)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, &'a str, u16);
    let cases: Vec<Case> = vec![
        ("not an image", "shapes", "", b"hello, world".to_vec(), &admin, 415),
        ("a truncated PNG", "shapes", "", truncated, &admin, 422),
        ("a pixel bomb", "shapes", "", bomb, &admin, 422),
        ("an empty body", "shapes", "", Vec::new(), &admin, 400),
        ("an unknown model", "nope", "", good.clone(), &admin, 404),
        ("an unknown version", "shapes", "?version=9", good.clone(), &admin, 404),
        ("an unknown alias", "shapes", "?alias=staging", good.clone(), &admin, 404),
        ("an invalid model name", "Bad!", "", good.clone(), &admin, 400),
        ("top_k 0", "shapes", "?top_k=0", good.clone(), &admin, 400),
        ("alias and version", "shapes", "?alias=production&version=1", good.clone(), &admin, 400),
        ("no predict scope", "shapes", "", good.clone(), &ingest_only, 403),
        ("a wrong token", "shapes", "", good.clone(), "wrong", 401),
    ];
    let mut failures = Vec::new();
    for (what, model, query, body, token, status) in cases {
        let (got, answer) = predict(&app, token, model, query, body).await;
        if got != status || !answer["error"]["code"].is_string() || !answer["error"]["message"].is_string() {
            failures.push(format!("{what}: expected {status}, got {got} {answer}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Each header claims 42 MP (under the 50 MP an image may have): four are decoded (and found
    // truncated), five claim more than a request's 200 MP together and are refused undecoded.
    let claim = headers_only_png(6000, 7000);
    let (status, answer) = predict_many(&app, "shapes", vec![claim.clone(); 4]).await;
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = predict_many(&app, "shapes", vec![claim; 5]).await;
    assert_eq!((status, &answer["error"]["code"]), (413, &json!("request_too_large")), "{answer}");
    let (status, _) = predict(&app, &predict_only, "shapes", "", good).await;
    assert_eq!(status, 200);
    // Predictions are recorded asynchronously, in arrival order: once the good one is there,
    // any bad one sent before it would be too.
    eventually(Duration::from_secs(30), "the good prediction to be recorded", || async {
        (app.count("SELECT count(*) FROM predictions").await >= 1).then_some(())
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM predictions").await, 1, "only the good request is recorded");
}

/// A PNG of its signature, a valid IHDR chunk claiming `width`×`height` and the start of its data.
fn headers_only_png(width: u32, height: u32) -> Vec<u8> {
    // The start of the image data (a zlib header and no more): decoders read the size up to it.
    crate::crafted::png(&[(b"IHDR", &crate::crafted::ihdr(width, height)), (b"IDAT", b"\x78\x9c")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_production_under_load_fails_no_request() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let first = register_trained(&app, "swap", 3, 1).await;
    let second = register_trained(&app, "swap", 4, 1).await;
    move_alias(&app, "swap", "production", first).await;
    let body = png(&samples(1, 5), 0, 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, token, body, stop) = (
                app.http.clone(),
                app.url("/v1/models/swap/predict"),
                app.admin_token.clone(),
                body.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = http.post(&url).bearer_auth(&token).body(body.clone()).send().await.expect("send");
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.unwrap_or(Value::Null);
                    seen.push((status, answer["version"].as_i64()));
                }
                seen
            })
        })
        .collect();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        move_alias(&app, "swap", "production", if round % 2 == 0 { second } else { first }).await;
    }
    // The last move (to `first`) reaches the serving path through the outbox and the models.events
    // follower, which a busy machine can hold up past a fixed sleep: wait until a request sees it,
    // then keep the load on a moment longer.
    eventually(Duration::from_secs(30), "the last move to be served", || async {
        let (status, answer) = predict(&app, &app.admin_token, "swap", "", body.clone()).await;
        (status == 200 && answer["version"] == first).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.expect("client"));
    }
    let failed: Vec<_> = all.iter().filter(|(status, _)| *status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(5)]
    );
    let versions: std::collections::BTreeSet<i64> = all.iter().filter_map(|(_, v)| *v).collect();
    assert_eq!(versions, [i64::from(first), i64::from(second)].into(), "both versions served");
    // Six moves ended on `first`; the last requests were served by it.
    assert_eq!(all.last().and_then(|(_, v)| *v), Some(i64::from(first)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_splits_traffic_and_shadow_scores_without_answering() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let stable = register_trained(&app, "routed", 6, 1).await;
    let candidate = register_trained(&app, "routed", 7, 1).await;
    move_alias(&app, "routed", "production", stable).await;
    move_alias(&app, "routed", "staging", candidate).await;
    let routing = json!({"canary": {"alias": "staging", "percent": 30.0}, "shadow": "staging"});
    let put = app.http.put(app.url("/v1/models/routed/routing")).bearer_auth(&app.admin_token).json(&routing);
    let (status, body) = json_of(put.send().await.expect("put routing")).await;
    assert_eq!(status, 200, "{body}");
    let train_only = app.token(&[Scope::Train]).await;
    let put = app.http.put(app.url("/v1/models/routed/routing")).bearer_auth(&train_only).json(&routing);
    assert_eq!(json_of(put.send().await.expect("put routing")).await.0, 403);
    let body = png(&samples(1, 8), 0, 0);
    let mut canary = 0;
    let mut shadowed = Vec::new();
    for _ in 0..200 {
        let (status, answer) = predict(&app, &app.admin_token, "routed", "", body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        canary += usize::from(answer["version"] == candidate);
        if answer["version"] == stable {
            shadowed.push(answer["predictions"][0]["id"].as_str().expect("id").to_owned());
        }
    }
    assert!((30..=95).contains(&canary), "{canary} of 200 requests went to the 30% canary");
    // Requests that went to the canary are already scored by staging; the rest are shadowed,
    // except those answered while `SHADOWS_IN_FLIGHT` scorings were running (a loaded machine
    // falls behind), which are counted as skipped instead.
    let skipped = || async {
        let metrics = app.get("/metrics").await.1;
        let metrics = metrics.as_str().expect("text").to_owned();
        metrics
            .lines()
            .filter(|l| l.starts_with("sluice_inference_shadow_skipped_total{") && l.contains("model=\"routed\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64
    };
    let (shadow, skipped) = eventually(Duration::from_secs(30), "shadow predictions recorded", || async {
        let shadow = app.count("SELECT count(*) FROM predictions WHERE shadow").await;
        let skipped = skipped().await;
        (shadow + skipped == 200 - canary as i64).then_some((shadow, skipped))
    })
    .await;
    assert!(shadow >= skipped, "most answers are shadowed: {shadow} shadowed, {skipped} skipped");
    // Answers are recorded in the background too (the batch writer), within a second or so.
    eventually(Duration::from_secs(30), "every answer recorded", || async {
        (app.count("SELECT count(*) FROM predictions WHERE NOT shadow").await == 200).then_some(())
    })
    .await;
    // Each shadow prediction names the answer it shadowed; feedback on the answer scores both.
    assert_eq!(app.count("SELECT count(*) FROM predictions WHERE shadow AND shadow_of IS NULL").await, 0);
    let id = &shadowed[0];
    let feedback = app.http.post(app.url("/v1/feedback")).bearer_auth(&app.admin_token);
    let label = synthetic::labels(CLASSES)[0].clone();
    let (status, body) =
        json_of(feedback.json(&json!({"prediction_id": id, "label": label})).send().await.expect("feedback")).await;
    assert_eq!(status, 200, "{body}");
    let sql = format!(
        "SELECT count(*) FROM predictions WHERE (id = '{id}' OR shadow_of = '{id}') AND feedback_label IS NOT NULL"
    );
    assert_eq!(app.count(&sql).await, 2, "the answer and its shadow are both scored");
    let routing = app.http.get(app.url("/v1/models/routed/routing")).bearer_auth(&app.admin_token).send().await;
    let (_, routing) = json_of(routing.expect("routing")).await;
    let comparison = &routing["shadow_comparison"];
    assert_eq!(comparison["pairs"], shadow, "only the shadowed answers are pairs: {routing:#}");
    assert_eq!(comparison["with_feedback"], 1, "{routing:#}");
    assert!((0.0..=1.0).contains(&comparison["agreement"].as_f64().expect("agreement")), "{routing:#}");
}

/// Streams `count` images (drawn with `seed`, shifted by `shift`) in batches of 50.
pub(crate) async fn stream(
    app: &RunningApp,
    model: &str,
    count: usize,
    seed: u64,
    shift: i16,
) -> Vec<(String, String)> {
    let images = samples(count, seed);
    let labels = synthetic::labels(CLASSES);
    let mut answers = Vec::new();
    for start in (0..count).step_by(50) {
        let batch: Vec<Vec<u8>> = (start..(start + 50).min(count)).map(|i| png(&images, i, shift)).collect();
        let (status, answer) = predict_many(app, model, batch).await;
        assert_eq!(status, 200, "{answer}");
        for (k, prediction) in answer["predictions"].as_array().expect("predictions").iter().enumerate() {
            let predicted = prediction["top"][0]["label"].as_str().expect("label").to_owned();
            answers.push((predicted, labels[images.labels[start + k] as usize].clone()));
        }
    }
    answers
}

pub(crate) async fn drift_state(app: &RunningApp, model: &str) -> Value {
    let response =
        app.http.get(app.url(&format!("/v1/models/{model}/drift"))).bearer_auth(&app.admin_token).send().await;
    json_of(response.expect("drift")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stationary_stream_raises_no_alarm_and_its_accuracy_is_estimated_without_labels() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "steady", 11, 6).await;
    move_alias(&app, "steady", "production", version).await;
    let answers = stream(&app, "steady", 5000, 12, 0).await;
    // The monitor checks asynchronously (the statistics go through Kafka): wait for the 12th check.
    let drift = eventually(Duration::from_secs(60), "twelve drift checks", || async {
        let drift = drift_state(&app, "steady").await;
        (drift["checks"] == 12).then_some(drift)
    })
    .await;
    assert_eq!(drift["state"], "ok", "{drift:#}");
    // The last completed window: 400 predictions in eight requests of 50 (each request one unit).
    assert_eq!(drift["window"], 400);
    assert_eq!(drift["requests"], 8);
    assert_eq!(drift["scope"], "cluster: one verdict per model version across all inference replicas");
    // The embedding sketches travelled with the statistics: the kernel test ran on the window's
    // eight units (each request one) against the version's held-out sample.
    let statistics = drift["statistics"].as_array().expect("statistics");
    let kernel = statistics.iter().find(|s| s["name"] == "embedding:mmd").expect("the kernel test");
    assert_eq!(kernel["df"], 8.0, "{kernel:#}");
    assert_eq!(kernel["drifted"], false, "{kernel:#}");
    let retrain = app.ctx.topic(Topic::RetrainRequests);
    assert!(
        read_topic(&app.ctx.config, retrain.as_str(), 1, Duration::from_secs(2)).await.is_empty(),
        "no retrain request"
    );
    // The label-free estimate (mean calibrated confidence) is close to the true accuracy of the
    // window's 400 predictions (the last full window: 4,400 to 4,800), which the test knows and
    // the server does not.
    let recent = &answers[4400..4800];
    let accuracy = recent.iter().filter(|(p, t)| p == t).count() as f64 / recent.len() as f64;
    let expected = drift["expected_accuracy"].as_f64().expect("an estimate");
    eprintln!("label-free accuracy estimate {expected:.3}, realised {accuracy:.3} over 400 predictions");
    assert!((expected - accuracy).abs() < 0.05, "estimated {expected:.3}, true {accuracy:.3}: {drift:#}");
}

/// A monitor still holding a model's window when the model comes back to it (its partition moved
/// to another monitor, which recorded checks, and back) must not record its stale counts over
/// the other's: its check is refused and a fresh window continues from the recorded counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_window_outdated_by_another_monitor_is_reopened_not_recorded() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "moved", 31, 3).await;
    move_alias(&app, "moved", "production", version).await;
    stream(&app, "moved", 400, 32, 0).await;
    eventually(Duration::from_secs(60), "the first check", || async {
        (drift_state(&app, "moved").await["checks"] == 1).then_some(())
    })
    .await;
    // Another monitor held the model meanwhile and recorded checks 2 to 7.
    let client = app.ctx.db.get().await.expect("connection");
    client.execute("UPDATE drift_verdicts SET checks = 7 WHERE model = 'moved'", &[]).await.expect("other monitor");
    drop(client);
    stream(&app, "moved", 400, 33, 0).await;
    // The stale window's check (its second) is refused; the next window continues from 7.
    stream(&app, "moved", 400, 34, 0).await;
    let drift = eventually(Duration::from_secs(60), "the check after the other monitor's", || async {
        let drift = drift_state(&app, "moved").await;
        (drift["checks"] == 8).then_some(drift)
    })
    .await;
    assert_eq!(drift["state"], "ok", "{drift:#}");
    let recorded = app.count("SELECT count(*) FROM drift_checks WHERE model = 'moved' AND check_no = 2").await;
    assert_eq!(recorded, 0, "the stale window's check was not recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_stream_is_detected_and_one_retrain_request_is_published() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "shifty", 21, 3).await;
    move_alias(&app, "shifty", "production", version).await;
    stream(&app, "shifty", 400, 22, 0).await;
    let first = eventually(Duration::from_secs(60), "the first check", || async {
        let drift = drift_state(&app, "shifty").await;
        (drift["checks"] == 1).then_some(drift)
    })
    .await;
    assert_eq!(first["state"], "ok", "{first:#}");
    stream(&app, "shifty", 800, 23, 90).await;
    let drift = eventually(Duration::from_secs(60), "two more checks", || async {
        let drift = drift_state(&app, "shifty").await;
        (drift["checks"] == 3).then_some(drift)
    })
    .await;
    assert_eq!(drift["state"], "drift", "{drift:#}");
    assert_eq!(drift["kind"], "covariate_shift", "{drift:#}");
    let fired: Vec<&str> = drift["fired"].as_array().expect("fired").iter().filter_map(Value::as_str).collect();
    assert!(fired.contains(&"brightness"), "{drift:#}");
    assert_eq!(drift["expected_accuracy_reliable"], false, "{drift:#}");
    let retrain = app.ctx.topic(Topic::RetrainRequests);
    let requests = read_topic(&app.ctx.config, retrain.as_str(), 2, Duration::from_secs(3)).await;
    assert_eq!(requests.len(), 1, "one request despite many drifted checks (cooldown): {requests:?}");
    let (key, event) = &requests[0];
    assert_eq!(key, "shifty");
    assert_eq!(event["data"]["reason"], "drift");
    assert_eq!(event["data"]["evidence"]["verdict"]["state"], "drift");
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.as_str().expect("text").contains("sluice_inference_drift_detected{model=\"shifty\",version=\"1\"} 1")
    );

    // Every check is kept, newest first, each with its statistics and accuracies.
    let history_of = |query: String| {
        let app = &app;
        async move {
            let url = app.url(&format!("/v1/models/{query}"));
            json_of(app.http.get(url).bearer_auth(&app.admin_token).send().await.expect("history")).await
        }
    };
    let (status, history) = history_of("shifty/drift/history".into()).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["version"], version, "{history}");
    let checks = history["checks"].as_array().expect("checks");
    let summary: Vec<(i64, &str)> =
        checks.iter().map(|c| (c["check"].as_i64().expect("number"), c["state"].as_str().expect("state"))).collect();
    assert_eq!(summary, [(3, "drift"), (2, "drift"), (1, "ok")], "{history:#}");
    assert_eq!(checks[0]["kind"], "covariate_shift", "{history:#}");
    assert_eq!(checks[0]["statistics"], drift["statistics"], "the newest check is the verdict's");
    assert_eq!(checks[2]["expected_accuracy"], first["expected_accuracy"], "{history:#}");
    assert!(checks.iter().all(|c| c["live_accuracy"].is_null() && c["live_accuracy_answers"] == 0), "no feedback yet");
    let (status, page) = history_of("shifty/drift/history?limit=1&before=3".into()).await;
    assert_eq!((status, page["checks"].as_array().map(Vec::len)), (200, Some(1)), "{page}");
    assert_eq!(page["checks"][0]["check"], 2, "{page}");
    let (status, by_version) = history_of(format!("shifty/drift/history?version={version}&limit=2")).await;
    assert_eq!((status, by_version["checks"].as_array().map(Vec::len)), (200, Some(2)), "{by_version}");
    for (query, expected) in [
        ("?version=99", 404),
        ("?alias=staging", 404),
        ("?limit=0", 400),
        ("?limit=1001", 400),
        ("?before=0", 400),
        ("?before=x", 400),
        ("?version=1&alias=production", 400),
    ] {
        let (status, body) = history_of(format!("shifty/drift/history{query}")).await;
        assert_eq!(status, expected, "{query}: {body}");
    }
    assert_eq!(history_of("nobody/drift/history".into()).await.0, 404);
}

/// Image `i` of `samples` as PNG bytes, rolled `dx` pixels to the right (wrapping round, so
/// brightness and most of the sharpness stay as they were).
fn rolled_png(samples: &Samples, i: usize, dx: usize) -> Vec<u8> {
    let frame = samples.shape.len();
    let image = &samples.images[i * frame..(i + 1) * frame];
    let mut chw = vec![0u8; frame];
    for (row, out) in image.chunks(SIZE).zip(chw.chunks_mut(SIZE)) {
        for x in 0..SIZE {
            out[(x + dx) % SIZE] = row[x];
        }
    }
    sluice_media::png_from_chw(&chw, SIZE as u32, SIZE as u32).expect("an image")
}

/// A translation leaves every pixel statistic where it was; the kernel test on what the network
/// sees (its embedding sketches against the version's held-out sample) catches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translation_is_caught_by_the_embedding_test() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "moved", 51, 4).await;
    move_alias(&app, "moved", "production", version).await;
    // Requests of five mixed images: 80 units per window of 400.
    let send = |images: Samples, dx: usize| {
        let app = &app;
        async move {
            for start in (0..images.labels.len()).step_by(5) {
                let batch = (start..start + 5).map(|i| rolled_png(&images, i, dx)).collect();
                let (status, answer) = predict_many(app, "moved", batch).await;
                assert_eq!(status, 200, "{answer}");
            }
        }
    };
    send(samples(400, 52), 0).await;
    let first = eventually(Duration::from_secs(60), "the first check", || async {
        let drift = drift_state(&app, "moved").await;
        (drift["checks"] == 1).then_some(drift)
    })
    .await;
    assert_eq!(first["state"], "ok", "{first:#}");
    send(samples(800, 53), 9).await;
    let drift = eventually(Duration::from_secs(60), "two more checks", || async {
        let drift = drift_state(&app, "moved").await;
        (drift["checks"] == 3).then_some(drift)
    })
    .await;
    let statistic =
        |name: &str| drift["statistics"].as_array().expect("statistics").iter().find(|s| s["name"] == name).cloned();
    eprintln!("translated: fired {} kernel {:#}", drift["fired"], statistic("embedding:mmd").unwrap_or_default());
    assert_eq!(drift["state"], "drift", "{drift:#}");
    assert_eq!(drift["kind"], "covariate_shift", "{drift:#}");
    let fired: Vec<&str> = drift["fired"].as_array().expect("fired").iter().filter_map(Value::as_str).collect();
    assert!(fired.contains(&"embedding:mmd"), "{drift:#}");
    assert!(!fired.contains(&"brightness"), "a roll keeps the brightness: {drift:#}");
}

/// Feedback sent right after a prediction, long before the recorder's next scheduled write, asks
/// this replica's writer to write the prediction now instead of waiting for it; feedback on an id
/// no one holds is refused at once, not after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_right_after_a_prediction_has_it_written_now_not_at_the_next_interval() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    // A batch gathers for 30 s: only a flush records the prediction before then.
    config.inference.record_interval_ms = 30_000;
    let app = RunningApp::spawn_services(config, &[Service::Inference, Service::Registry]).await;
    let version = register_trained(&app, "prompt", 41, 1).await;
    move_alias(&app, "prompt", "production", version).await;
    let test = samples(3, 42);
    let (status, answer) = predict(&app, &app.admin_token, "prompt", "", png(&test, 0, 0)).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["predictions"][0]["id"].as_str().expect("id");
    let truth = synthetic::labels(CLASSES)[test.labels[0] as usize].clone();
    let feedback =
        |body: Value| app.http.post(app.url("/v1/feedback")).bearer_auth(&app.admin_token).json(&body).send();

    let started = std::time::Instant::now();
    let (status, body) = json_of(feedback(json!({"prediction_id": id, "label": truth})).await.expect("feedback")).await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prediction_id"], id);
    assert!(waited < Duration::from_secs(10), "answered after {waited:?}: the writer was not asked to write now");
    let recorded = format!("SELECT count(*) FROM predictions WHERE id = '{id}' AND feedback_label IS NOT NULL");
    assert_eq!(app.count(&recorded).await, 1);

    let started = std::time::Instant::now();
    let (status, body) =
        json_of(feedback(json!({"prediction_id": Uuid::now_v7(), "label": truth})).await.expect("feedback")).await;
    let waited = started.elapsed();
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("retry shortly"), "{body}");
    assert!(waited < Duration::from_secs(10), "refused after {waited:?}: an id no one holds was waited for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_live_accuracy_from_feedback_requests_retraining_once() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.inference.live_accuracy_min_feedback = 20;
    config.inference.retrain_on_drift = true;
    let app = RunningApp::spawn_services(config, &[Service::Inference, Service::Registry]).await;
    let version = register_trained(&app, "graded", 31, 1).await;
    move_alias(&app, "graded", "production", version).await;
    let images = samples(30, 32);
    let (status, answer) = predict_many(&app, "graded", (0..30).map(|i| png(&images, i, 0)).collect()).await;
    assert_eq!(status, 200, "{answer}");
    // Ground truth that always disagrees with the model: live accuracy 0 over 30 answers.
    let labels = synthetic::labels(CLASSES);
    for prediction in answer["predictions"].as_array().expect("predictions") {
        let predicted = prediction["top"][0]["label"].as_str().expect("label");
        let wrong = labels.iter().find(|l| l.as_str() != predicted).expect("another class");
        let (status, answer) =
            crate::support::feedback(&app, &json!({"prediction_id": prediction["id"], "label": wrong})).await;
        assert_eq!(status, 200, "{answer}");
    }
    let drift = drift_state(&app, "graded").await;
    assert_eq!(drift["live_accuracy"], 0.0, "{drift:#}");
    assert_eq!(drift["live_accuracy_answers"], 30);
    let retrain = app.ctx.topic(Topic::RetrainRequests);
    let requests = read_topic(&app.ctx.config, retrain.as_str(), 2, Duration::from_secs(3)).await;
    assert_eq!(requests.len(), 1, "one request, then the cooldown: {requests:?}");
    assert_eq!(requests[0].1["data"]["reason"], "live_accuracy");
    assert_eq!(requests[0].1["data"]["evidence"]["answers"], 20, "sent once the minimum was reached");
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.as_str().expect("text").contains("sluice_inference_live_accuracy{model=\"graded\",version=\"1\"} 0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_move_without_an_event_is_picked_up_from_postgres() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.inference.alias_reconcile_secs = 1;
    let app = RunningApp::spawn_services(config, &[Service::Inference]).await;
    let first = register_trained(&app, "quiet", 41, 1).await;
    let second = register_trained(&app, "quiet", 42, 1).await;
    move_alias(&app, "quiet", "production", first).await;
    let body = png(&samples(1, 43), 0, 0);
    assert_eq!(predict(&app, &app.admin_token, "quiet", "", body.clone()).await.1["version"], first);
    // Moved behind the follower's back: the row changes, no models.events message is published.
    let client = app.ctx.db.get().await.expect("connection");
    client
        .execute("UPDATE model_aliases SET version = $1 WHERE model = 'quiet' AND alias = 'production'", &[&second])
        .await
        .expect("move");
    client.execute("UPDATE models SET revision = revision + 1 WHERE name = 'quiet'", &[]).await.expect("revision");
    client.execute("DELETE FROM outbox", &[]).await.expect("no events");
    eventually(Duration::from_secs(10), "the reconciler to serve the new version", || async {
        let (status, answer) = predict(&app, &app.admin_token, "quiet", "", body.clone()).await;
        (status == 200 && answer["version"] == second).then_some(())
    })
    .await;
}

/// A move whose new version cannot be loaded yet (its artifact unreadable for a moment) keeps
/// the old version served, and is applied once the artifact is back, by the reconciler's next
/// pass over PostgreSQL, without another move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_version_cannot_load_yet_is_applied_once_it_can() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.inference.alias_reconcile_secs = 1;
    let app = RunningApp::spawn_services(config, &[Service::Inference, Service::Registry]).await;
    let first = register_trained(&app, "flaky", 51, 1).await;
    let second = register_trained(&app, "flaky", 52, 1).await;
    move_alias(&app, "flaky", "production", first).await;
    let body = png(&samples(1, 53), 0, 0);
    assert_eq!(predict(&app, &app.admin_token, "flaky", "", body.clone()).await.1["version"], first);
    // Let the follower apply the registrations' and the move's events before the next move.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(predict(&app, &app.admin_token, "flaky", "", body.clone()).await.1["version"], first);
    let client = app.ctx.db.get().await.expect("connection");
    let key: String = client
        .query_one("SELECT artifact_key FROM model_versions WHERE model = 'flaky' AND version = $1", &[&second])
        .await
        .expect("artifact key")
        .get(0);
    let (s3, bucket) = (&app.ctx.s3, app.ctx.config.s3.bucket.as_str());
    let artifact = sluice_core::s3::get_bytes(s3, bucket, &key).await.expect("read").expect("the artifact");
    s3.delete_object().bucket(bucket).key(&key).send().await.expect("hide the artifact");
    move_alias(&app, "flaky", "production", second).await;
    // The event arrives and the load fails: the old version keeps answering.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, answer) = predict(&app, &app.admin_token, "flaky", "", body.clone()).await;
    assert_eq!((status, &answer["version"]), (200, &json!(first)), "{answer}");
    sluice_core::s3::put_bytes(s3, bucket, &key, artifact, "application/octet-stream").await.expect("restore");
    eventually(Duration::from_secs(15), "the move to be applied once the version loads", || async {
        let (status, answer) = predict(&app, &app.admin_token, "flaky", "", body.clone()).await;
        (status == 200 && answer["version"] == second).then_some(())
    })
    .await;
}

/// An alias state that finishes loading after a newer one was applied (its version's artifact
/// slow to read, the newer one already loaded) does not move the alias back to its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_alias_state_that_loads_last_does_not_overwrite_a_newer_one() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn_services(env.config.clone(), &[Service::Registry]).await;
    let versions = [
        register_trained(&app, "racing", 61, 1).await,
        register_trained(&app, "racing", 62, 1).await,
        register_trained(&app, "racing", 63, 1).await,
    ];
    move_alias(&app, "racing", "production", versions[0]).await;
    let served = Served::new(app.ctx.clone());
    let (name, production) =
        (ModelName::parse("racing").expect("name"), AliasName::parse("production").expect("alias"));
    let target = Target::Alias(production.clone());
    served.resolve(&name, &target).await.expect("the first version serves");
    served.load(&name, versions[2]).await.expect("the newest version is loaded already");
    let state = |version: i32| std::collections::BTreeMap::from([(production.to_string(), version)]);
    let (older, newer) = (state(versions[1]), state(versions[2]));
    // The older state starts first and waits on PostgreSQL and S3 for its version; the newer one
    // moves the alias at once.
    tokio::join!(served.apply_aliases("racing", 10, &older, false), served.apply_aliases("racing", 11, &newer, false));
    assert_eq!(served.version_of(&name, &target).await.expect("served"), versions[2]);
    assert_eq!(served.resolve(&name, &target).await.expect("served").version.version, versions[2]);
}

/// A version whose artifact was read and refused is not read again for a while, however many
/// requests name it and however often the reconciler retries its alias: each read costs the
/// whole artifact, and the bytes are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_artifact_is_not_read_again_during_its_back_off() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.inference.alias_reconcile_secs = 1;
    let app = RunningApp::spawn_services(config, &[Service::Inference, Service::Registry]).await;
    let good = register_trained(&app, "refusing", 71, 1).await;
    let bad = register_trained(&app, "refusing", 72, 1).await;
    move_alias(&app, "refusing", "production", good).await;
    let body = png(&samples(1, 73), 0, 0);
    assert_eq!(predict(&app, &app.admin_token, "refusing", "", body.clone()).await.1["version"], good);
    let client = app.ctx.db.get().await.expect("connection");
    let key: String = client
        .query_one("SELECT artifact_key FROM model_versions WHERE model = 'refusing' AND version = $1", &[&bad])
        .await
        .expect("artifact key")
        .get(0);
    let (s3, bucket) = (&app.ctx.s3, app.ctx.config.s3.bucket.as_str());
    let mut artifact =
        sluice_core::s3::get_bytes(s3, bucket, &key).await.expect("read").expect("the artifact").to_vec();
    artifact[100] ^= 1;
    sluice_core::s3::put_bytes(s3, bucket, &key, artifact, "application/octet-stream").await.expect("tamper");

    let query = format!("?version={bad}");
    for attempt in 0..5 {
        let (status, answer) = predict(&app, &app.admin_token, "refusing", &query, body.clone()).await;
        assert_eq!((status, &answer["error"]["code"]), (422, &json!("model_unloadable")), "{answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.contains("does not match its registration"), "says why: {message}");
        assert_eq!(message.contains("not read again"), attempt > 0, "{message}");
    }
    move_alias(&app, "refusing", "production", bad).await;
    // The follower's event and three reconciler passes all find the version backing off.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, answer) = predict(&app, &app.admin_token, "refusing", "", body.clone()).await;
    assert_eq!((status, &answer["version"]), (200, &json!(good)), "the old version still serves: {answer}");
    let metrics = app.get("/metrics").await.1;
    let refused = metrics
        .as_str()
        .expect("text")
        .lines()
        .find(|line| {
            line.starts_with("sluice_inference_model_loads_total{")
                && line.contains("model=\"refusing\"")
                && line.contains(&format!("version=\"{bad}\""))
                && line.contains("outcome=\"refused\"")
        })
        .map(|line| line.rsplit(' ').next().expect("value").to_owned());
    assert_eq!(refused.as_deref(), Some("1"), "one read of the artifact, then the back-off");
}

/// Two inference replicas serve one model, each getting half the requests: the drift monitor
/// keeps one window for the version, so both answer the same cluster-wide verdict, the checks
/// count every request of both, and a shift requests retraining once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_drift_verdict() {
    let env = TestEnv::new().await;
    let first = inference_app(&env).await;
    let second = RunningApp::spawn_services(env.config.clone(), &[Service::Inference]).await;
    let version = register_trained(&first, "twin", 31, 3).await;
    move_alias(&first, "twin", "production", version).await;
    let images = samples(800, 32);
    for start in (0..800).step_by(50) {
        let replica = if (start / 50) % 2 == 0 { &first } else { &second };
        let batch: Vec<Vec<u8>> = (start..start + 50).map(|i| png(&images, i, 90)).collect();
        let (status, answer) = predict_many(replica, "twin", batch).await;
        assert_eq!(status, 200, "{answer}");
    }
    // 800 predictions across both replicas: two checks of one window series, not one per replica.
    let one = eventually(Duration::from_secs(60), "two checks", || async {
        let drift = drift_state(&first, "twin").await;
        (drift["checks"] == 2).then_some(drift)
    })
    .await;
    let other = drift_state(&second, "twin").await;
    assert_eq!(one["checks"], other["checks"]);
    assert_eq!(one["checked_at"], other["checked_at"], "the same verdict from either replica");
    assert_eq!(one["state"], "drift", "{one:#}");
    assert_eq!(first.count("SELECT count(*) FROM drift_verdicts WHERE model = 'twin'").await, 1);
    let retrain = first.ctx.topic(Topic::RetrainRequests);
    let requests = read_topic(&first.ctx.config, retrain.as_str(), 2, Duration::from_secs(3)).await;
    assert_eq!(requests.len(), 1, "one retrain request for the model, not one per replica: {requests:?}");
}

/// A drift check whose recording fails for a while (PostgreSQL refusing the statement) is
/// recorded once PostgreSQL takes it again, and the request that completed its window is not fed
/// to the next window a second time: retrying the whole observation used to lose the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_check_whose_recording_fails_for_a_while_is_recorded_once() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.inference.drift_window = 200;
    let app = RunningApp::spawn_services(config, &[Service::Inference, Service::Registry]).await;
    let version = register_trained(&app, "stubborn", 81, 2).await;
    move_alias(&app, "stubborn", "production", version).await;
    // On a connection of the test's own: the app's pool is small, and holding one of its
    // connections starves the monitor.
    let pool = env.pool();
    let client = pool.get().await.expect("connection");
    let checks = "SELECT count(*) FROM drift_checks WHERE model = 'stubborn'";
    client.batch_execute("ALTER TABLE drift_checks RENAME TO drift_checks_away").await.expect("take the table away");
    let images = samples(400, 82);
    let send = |range: std::ops::Range<usize>| {
        let batch: Vec<Vec<u8>> = range.map(|i| png(&images, i, 0)).collect();
        predict_many(&app, "stubborn", batch)
    };
    for start in (0..200).step_by(10) {
        assert_eq!(send(start..start + 10).await.0, 200);
    }
    // The window fills and its check runs; recording it fails and is retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.batch_execute("ALTER TABLE drift_checks_away RENAME TO drift_checks").await.expect("bring it back");
    eventually(Duration::from_secs(30), "the first check to be recorded", || async {
        (app.count(checks).await == 1).then_some(())
    })
    .await;
    for start in (200..400).step_by(10) {
        assert_eq!(send(start..start + 10).await.0, 200);
    }
    eventually(Duration::from_secs(30), "the second window's check", || async {
        (app.count(checks).await == 2).then_some(())
    })
    .await;
    let numbers = client
        .query("SELECT check_no FROM drift_checks WHERE model = 'stubborn' ORDER BY check_no", &[])
        .await
        .expect("checks");
    assert_eq!(numbers.iter().map(|row| row.get::<_, i64>(0)).collect::<Vec<_>>(), [1, 2], "each window checked once");
    assert_eq!(drift_state(&app, "stubborn").await["checks"], 2);
}

/// A pending live promotion whose production is moved by anything but the live gate (a rollback
/// here) ends as superseded and its shadowing stops: the gate compares the candidate with the
/// production it started against, so it would never decide, and the candidate would shadow every
/// request. The gate's own move to the candidate leaves the promotion to the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_promotion_is_superseded_when_production_moves_to_another_version() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let first = register_trained(&app, "gated", 11, 1).await;
    let second = register_trained(&app, "gated", 12, 1).await;
    let third = register_trained(&app, "gated", 13, 1).await;
    move_alias(&app, "gated", "production", second).await;
    move_alias(&app, "gated", "candidate", third).await;
    let client = app.ctx.db.get().await.expect("connection");
    live::start(&client, "gated", third, second, Uuid::now_v7()).await.expect("a pending live promotion");
    let state = || async {
        let client = app.ctx.db.get().await.expect("connection");
        let row = client
            .query_one("SELECT decided_at IS NOT NULL, outcome FROM live_promotions WHERE model = 'gated'", &[])
            .await
            .expect("the promotion");
        let shadow: Option<String> = client
            .query_opt("SELECT shadow_alias FROM model_routing WHERE model = 'gated'", &[])
            .await
            .expect("routing")
            .and_then(|r| r.get(0));
        (row.get::<_, bool>(0), row.get::<_, Option<String>>(1), shadow)
    };
    assert_eq!(state().await, (false, None, Some("candidate".to_owned())), "pending and shadowing");
    // A rollback to the first version: the comparison's baseline is gone.
    move_alias(&app, "gated", "production", first).await;
    assert_eq!(state().await, (true, Some("superseded".to_owned()), None));

    // Moving production to the candidate itself (as the gate does) supersedes nothing.
    live::start(&client, "gated", third, first, Uuid::now_v7()).await.expect("pending again");
    move_alias(&app, "gated", "production", third).await;
    assert!(!state().await.0, "left to the gate to decide");

    // The gate decides the promotion its evidence was gathered for, not one a job started in
    // between with another candidate.
    let gathered = Pending { candidate: second, production: third };
    live::start(&client, "gated", second, third, Uuid::now_v7()).await.expect("pending");
    live::start(&client, "gated", first, third, Uuid::now_v7()).await.expect("restarted with another candidate");
    let decided = live::decide(&client, "gated", gathered, LiveOutcome::Promoted, "evidence on v2").await;
    assert!(!decided.expect("decide"), "the promotion pending now is another one");
    assert_eq!(state().await, (false, None, Some("candidate".to_owned())), "still pending and shadowing");
    let now = Pending { candidate: first, production: third };
    assert!(live::decide(&client, "gated", now, LiveOutcome::Rejected, "evidence on v1").await.expect("decide"));
    assert_eq!(state().await, (true, Some("rejected".to_owned()), None));
}
