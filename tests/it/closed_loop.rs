//! The whole loop on the real stack, every service in one process: labelled images are uploaded
//! through ingest, preprocessed, trained on, registered and promoted, then served; the stream
//! shifts, drift is detected, inference asks for retraining, the trainer trains on the current
//! data (which now holds shifted images), the new version beats production on the new split, is
//! promoted, and the server hot-swaps to it, all visible in the metrics.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_nn::synthetic::{self, SyntheticSpec};
use sluice_testkit::{TestEnv, eventually};

use crate::{
    ingest::post_raw,
    support::{RunningApp, feedback, json_of},
    training::wait_job,
};

const SIZE: u32 = 32;
const CLASSES: usize = 3;

/// PNGs of synthetic shapes and their labels; with `shift` above 0, a washed-out, brighter world:
/// every pixel `v` becomes `v / 4 + shift` (contrast cut to a quarter, nothing clipped, so the
/// shapes stay learnable but look different to a model trained on the originals).
pub fn images(count: usize, seed: u64, shift: i16) -> Vec<(Vec<u8>, String)> {
    world(count, seed, |v| wash(v, shift))
}

/// `count` labelled images with `pixel` applied to every channel value.
fn world(count: usize, seed: u64, pixel: impl Fn(u8) -> u8) -> Vec<(Vec<u8>, String)> {
    let samples = synthetic::generate(&SyntheticSpec::rgb(SIZE as usize, CLASSES, count, seed)).expect("images");
    let labels = synthetic::labels(CLASSES);
    let plane = (SIZE * SIZE) as usize;
    (0..count)
        .map(|i| {
            let chw: Vec<u8> = samples.images[i * 3 * plane..(i + 1) * 3 * plane].iter().map(|&v| pixel(v)).collect();
            let png = sluice_media::png_from_chw(&chw, SIZE, SIZE).expect("an image");
            (png, labels[samples.labels[i] as usize].clone())
        })
        .collect()
}

/// A world the first version cannot bear but a retrain can learn: colours inverted, at half the
/// contrast, brighter. (A brighter world at a quarter of the contrast, as [`images`] makes, was
/// sometimes borne by the first version of the captured-inputs loop: 0.81 on held-out items in
/// one CI run of many, where it usually scores chance.)
fn inverted(count: usize, seed: u64) -> Vec<(Vec<u8>, String)> {
    world(count, seed, |v| (255 - v) / 2 + 128)
}

fn wash(value: u8, shift: i16) -> u8 {
    if shift > 0 { (i16::from(value) / 4 + shift).clamp(0, 255) as u8 } else { value }
}

pub(crate) async fn upload(app: &RunningApp, dataset: &str, batch: &[(Vec<u8>, String)]) {
    for (png, label) in batch {
        let (status, body) =
            post_raw(app, &format!("?dataset={dataset}&label={label}"), "image/png", png.clone()).await;
        assert_eq!(status, 202, "{body}");
    }
}

pub(crate) async fn processed(app: &RunningApp, dataset: &str, count: i64) {
    eventually(Duration::from_secs(120), "uploads to be preprocessed", || async {
        let sql = format!("SELECT count(*) FROM media WHERE dataset = '{dataset}' AND status = 'processed'");
        (app.count(&sql).await >= count).then_some(())
    })
    .await;
}

/// Predicts `batch` (multipart, 10 at a time: each request is one unit of the drift window);
/// returns (served version, accuracy).
async fn serve(app: &RunningApp, model: &str, batch: &[(Vec<u8>, String)]) -> (Vec<i64>, f64) {
    let (mut versions, mut correct) = (Vec::new(), 0usize);
    for chunk in batch.chunks(10) {
        let mut form = reqwest::multipart::Form::new();
        for (i, (png, _)) in chunk.iter().enumerate() {
            form = form.part("file", reqwest::multipart::Part::bytes(png.clone()).file_name(format!("{i}.png")));
        }
        let url = app.url(&format!("/v1/models/{model}/predict"));
        let response = app.http.post(url).bearer_auth(&app.admin_token).multipart(form);
        let (status, answer) = json_of(response.send().await.expect("predict")).await;
        assert_eq!(status, 200, "{answer}");
        versions.push(answer["version"].as_i64().expect("version"));
        for (prediction, (_, label)) in answer["predictions"].as_array().expect("predictions").iter().zip(chunk) {
            correct += usize::from(prediction["top"][0]["label"] == label.as_str());
        }
    }
    (versions, correct as f64 / batch.len() as f64)
}

async fn model(app: &RunningApp, name: &str) -> Value {
    let response = app.http.get(app.url(&format!("/v1/models/{name}"))).bearer_auth(&app.admin_token).send().await;
    json_of(response.expect("model")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_triggers_retraining_on_current_data_and_the_new_version_is_served() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.inference.drift_window = 100;
    config.inference.drift_sustain_checks = 2;
    let app = RunningApp::spawn(config).await;
    let pipeline = app.http.put(app.url("/v1/datasets/loop/pipeline")).bearer_auth(&app.admin_token);
    let (status, body) =
        json_of(pipeline.json(&json!({"width": SIZE, "height": SIZE})).send().await.expect("pipeline")).await;
    assert_eq!(status, 200, "{body}");
    // Retrains are started by inference, not by an admin: they may promote only under the
    // model's auto-promotion policy.
    let policy = app.http.put(app.url("/v1/models/loop/policy")).bearer_auth(&app.admin_token);
    let (status, body) =
        json_of(policy.json(&json!({"auto_promote": "if_better"})).send().await.expect("policy")).await;
    assert_eq!(status, 200, "{body}");

    // Ingest → preprocess → train → register → promote.
    upload(&app, "loop", &images(300, 1, 0)).await;
    processed(&app, "loop", 300).await;
    let job = json!({"model": "loop", "dataset": "loop", "architecture": "cnn", "seed": 3, "promote": "if_better",
        "search": {"strategy": "grid", "space": {"epochs": 12, "batch_size": 16, "learning_rate": 0.003, "patience": 0}}});
    let (status, created) = json_of(
        app.http.post(app.url("/v1/training-jobs")).bearer_auth(&app.admin_token).json(&job).send().await.expect("job"),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let first = wait_job(&app, created["id"].as_str().expect("id"), Duration::from_secs(300)).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    assert_eq!(model(&app, "loop").await["aliases"]["production"], 1);

    // Served and correct on fresh images from the training distribution.
    let (versions, accuracy) = serve(&app, "loop", &images(150, 2, 0)).await;
    assert!(versions.iter().all(|v| *v == 1));
    // Media ids are random, so the split (a hash of the id) and this accuracy vary by run:
    // usually 0.8-0.9, 0.79 in one fresh-clone run.
    assert!(accuracy >= 0.75, "accuracy {accuracy} on the training distribution");

    // The world changes: inverted, brighter images arrive, labelled ones are uploaded too (more than of the
    // old world, so the held-out items that decide promotion are mostly of the new one).
    let shifted = inverted(500, 3);
    upload(&app, "loop", &shifted).await;
    processed(&app, "loop", 800).await;
    let (_, shifted_accuracy) = serve(&app, "loop", &inverted(300, 4)).await;
    let drift = eventually(Duration::from_secs(60), "a drifted check", || async {
        let drift =
            json_of(app.http.get(app.url("/v1/models/loop/drift")).bearer_auth(&app.admin_token).send().await.ok()?)
                .await
                .1;
        (drift["state"] == "drift").then_some(drift)
    })
    .await;
    assert_eq!(drift["kind"], "covariate_shift", "{drift:#}");

    // Inference asked for retraining; the trainer trained on the current data and promoted it.
    let retrained = eventually(Duration::from_secs(60), "a retraining job", || async {
        let client = app.ctx.db.get().await.ok()?;
        let row = client.query_opt("SELECT id::text FROM training_jobs WHERE origin = 'retrain'", &[]).await.ok()??;
        Some(row.get::<_, String>(0))
    })
    .await;
    let second = wait_job(&app, &retrained, Duration::from_secs(300)).await;
    eprintln!("retrain promotion: {:#}", second["promotion"]);
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert_eq!(second["items"], 800, "trained on the current data: {second:#}");
    assert_eq!(second["evidence"]["reason"], "drift");
    assert_eq!(second["promotion"]["promoted"], true, "{second:#}");
    assert_eq!(model(&app, "loop").await["aliases"]["production"], 2);

    // The server hot-swapped: new requests are answered by version 2, better on the new data.
    let (versions, new_accuracy) = eventually(Duration::from_secs(30), "version 2 to be served", || async {
        let (versions, accuracy) = serve(&app, "loop", &inverted(100, 5)).await;
        versions.iter().all(|v| *v == 2).then_some((versions, accuracy))
    })
    .await;
    assert!(!versions.is_empty());
    eprintln!("on shifted images: v1 {shifted_accuracy:.2}, v2 {new_accuracy:.2}");
    // Media ids are random, so each run's train/validation split (a hash of the id) differs and
    // so do both accuracies: v2 0.75 in one fresh-clone run, at least 0.8 in the others; v1
    // usually near 0.35 but 0.72 in one run (a v1 that happened to bear the shift well).
    assert!(
        new_accuracy >= 0.7 && new_accuracy >= shifted_accuracy + 0.1,
        "v2 {new_accuracy} (v1 {shifted_accuracy}) on shifted images"
    );

    let metrics = app.get("/metrics").await.1;
    let metrics = metrics.as_str().expect("text");
    for needle in [
        "sluice_inference_drift_detected{model=\"loop\",version=\"1\"} 1",
        "sluice_inference_retrain_requests_total{model=\"loop\",reason=\"drift\"} 1",
        "sluice_inference_served_version{model=\"loop\",alias=\"production\"} 2",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}");
    }
    // Unlabelled, and shared by every test in this binary (one metrics recorder per process):
    // another test's retrain may count here too.
    let retrain_jobs: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_trainer_retrain_jobs_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sluice_trainer_retrain_jobs_total is exported");
    assert!(retrain_jobs >= 1.0, "{retrain_jobs}");
}

/// Production data back into training: a capture policy keeps served inputs; ingest stores them
/// as unlabelled media (preprocessed like uploads); they wait in the labelling queue, least
/// confident first; feedback on a prediction labels its input, which leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_inputs_are_captured_into_a_dataset_and_feedback_labels_them() {
    use crate::inference::{move_alias, png, register_trained, samples};
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let version = register_trained(&app, "seen", 31, 2).await;
    move_alias(&app, "seen", "production", version).await;
    let capture = app.http.put(app.url("/v1/models/seen/capture")).bearer_auth(&app.admin_token);
    let (status, body) =
        json_of(capture.json(&json!({"dataset": "field", "random_rate": 1.0})).send().await.expect("capture")).await;
    assert_eq!(status, 200, "{body}");
    let predict_token = app.token(&[sluice_core::auth::Scope::Predict]).await;
    let put = app.http.put(app.url("/v1/models/seen/capture")).bearer_auth(&predict_token).json(&json!(null));
    assert_eq!(put.send().await.expect("capture").status().as_u16(), 403, "only an admin sets capture");

    let images = samples(6, 32);
    let mut form = reqwest::multipart::Form::new();
    for i in 0..6 {
        form = form.part("file", reqwest::multipart::Part::bytes(png(&images, i, 0)).file_name(format!("{i}.png")));
    }
    let response = app.http.post(app.url("/v1/models/seen/predict")).bearer_auth(&app.admin_token).multipart(form);
    let (status, answer) = json_of(response.send().await.expect("predict")).await;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<String> = answer["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect();

    // Stored through ingest (S3, dedup, outbox) and preprocessed like any upload.
    eventually(Duration::from_secs(120), "six captured inputs processed", || async {
        (app.count(
            "SELECT count(*) FROM media WHERE dataset = 'field' AND captured_from IS NOT NULL AND status = 'processed'",
        )
        .await
            == 6)
            .then_some(())
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM media WHERE dataset = 'field' AND label IS NOT NULL").await, 0);
    let queue = || async {
        json_of(
            app.http
                .get(app.url("/v1/datasets/field/labelling-queue"))
                .bearer_auth(&app.admin_token)
                .send()
                .await
                .expect("queue"),
        )
        .await
    };
    let (status, listed) = queue().await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["unlabelled"], 6, "{listed:#}");
    let confidences: Vec<f64> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["capture"]["confidence"].as_f64().expect("a confidence"))
        .collect();
    assert!(confidences.windows(2).all(|w| w[0] <= w[1]), "least confident first: {confidences:?}");

    // Feedback labels the captured input.
    let truth = synthetic::labels(3);
    for (i, id) in ids.iter().take(2).enumerate() {
        let label = &truth[images.labels[i] as usize];
        let (status, body) = feedback(&app, &json!({"prediction_id": id, "label": label})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["labelled_captured_input"], true, "{body}");
    }
    let (_, listed) = queue().await;
    assert_eq!(listed["unlabelled"], 4, "{listed:#}");
    assert_eq!(app.count("SELECT count(*) FROM media WHERE dataset = 'field' AND label IS NOT NULL").await, 2);
    // The model's recent predictions point at the media holding their inputs, whose processed
    // bytes the console shows.
    let recent = app.http.get(app.url("/v1/models/seen/predictions")).bearer_auth(&app.admin_token);
    let (status, recent) = json_of(recent.send().await.expect("predictions")).await;
    assert_eq!(status, 200, "{recent}");
    let captured: Vec<&str> = recent["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .filter_map(|p| p["captured_media_id"].as_str())
        .collect();
    assert_eq!(captured.len(), 6, "every served input was captured: {recent:#}");
    assert_eq!(recent["next_before"], Value::Null, "one page holds them all: {recent:#}");
    // Paged: a full page names the next one's cursor; the last page none.
    let page = |query: String| {
        let request =
            app.http.get(app.url(&format!("/v1/models/seen/predictions?{query}"))).bearer_auth(&app.admin_token);
        async move { json_of(request.send().await.expect("predictions")).await.1 }
    };
    let first = page("limit=4".into()).await;
    let next = first["next_before"].as_str().expect("a cursor after a full page").to_owned();
    assert_eq!(first["predictions"].as_array().map(Vec::len), Some(4), "{first:#}");
    let second = page(format!("limit=4&before={next}")).await;
    assert_eq!(second["predictions"].as_array().map(Vec::len), Some(2), "{second:#}");
    assert_eq!(second["next_before"], Value::Null, "{second:#}");
    let pages: std::collections::HashSet<&str> = [&first, &second]
        .iter()
        .flat_map(|p| p["predictions"].as_array().expect("predictions"))
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(pages.len(), 6, "the pages hold each prediction once");
    let too_many = app.http.get(app.url("/v1/datasets/field/labelling-queue?limit=501")).bearer_auth(&app.admin_token);
    assert_eq!(too_many.send().await.expect("queue").status(), 400, "a limit outside 1-500 is refused, not clamped");
    let thumbnail = app.http.get(app.url(&format!("/v1/media/{}/content", captured[0]))).bearer_auth(&app.admin_token);
    let thumbnail = thumbnail.send().await.expect("content");
    assert_eq!(
        (thumbnail.status().as_u16(), thumbnail.headers()["content-type"].clone()),
        (200, "image/png".parse().expect("hv"))
    );
    // Nothing is left waiting under captures/.
    let left = app.ctx.s3.list_objects_v2().bucket(&app.ctx.config.s3.bucket).prefix("captures/").send().await;
    assert_eq!(left.expect("list").key_count(), Some(0));
}

/// `promote: if_better_live`: the new version is registered as `candidate` and shadows
/// production; feedback on the answers scores both, and once the candidate is significantly
/// better on that live traffic, production moves to it and the shadow stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_better_live_promotes_the_candidate_once_live_feedback_shows_it_better() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let pipeline = app.http.put(app.url("/v1/datasets/loop/pipeline")).bearer_auth(&app.admin_token);
    let (status, body) =
        json_of(pipeline.json(&json!({"width": SIZE, "height": SIZE})).send().await.expect("pipeline")).await;
    assert_eq!(status, 200, "{body}");
    upload(&app, "loop", &images(240, 1, 0)).await;
    processed(&app, "loop", 240).await;
    let job = |promote: &str, epochs: u32, learning_rate: f64| {
        json!({"model": "liveloop", "dataset": "loop", "architecture": "cnn", "seed": 3, "promote": promote,
               "search": {"strategy": "grid", "space": {"epochs": epochs, "batch_size": 16, "hidden": 16,
                                                        "learning_rate": learning_rate, "patience": 0}}})
    };
    let weak = crate::training::run_job(&app, &job("always", 1, 0.00001), Duration::from_secs(300)).await;
    assert_eq!(weak["status"], "succeeded", "{weak:#}");
    let strong = crate::training::run_job(&app, &job("if_better_live", 12, 0.003), Duration::from_secs(300)).await;
    assert_eq!(strong["status"], "succeeded", "{strong:#}");
    assert_eq!(strong["promotion"]["pending"], true, "{strong:#}");
    let aliases = model(&app, "liveloop").await["aliases"].clone();
    assert_eq!((aliases["production"].clone(), aliases["candidate"].clone()), (json!(1), json!(2)), "{aliases}");

    // Live traffic with ground truth: the candidate shadows every answer, until the gate moves
    // production (answers then come from version 2).
    let mut last = None;
    let mut answered_by_v1 = 0;
    // Up to 400 answers: on a loaded machine some shadow scorings are skipped (at most
    // `SHADOWS_IN_FLIGHT` run at once), so the gate may need more answers than on a quiet one.
    for (png, label) in images(400, 7, 0) {
        let response = app.http.post(app.url("/v1/models/liveloop/predict")).bearer_auth(&app.admin_token);
        let (status, answer) =
            json_of(response.header("content-type", "image/png").body(png).send().await.expect("predict")).await;
        assert_eq!(status, 200, "{answer}");
        if answer["version"] == 2 {
            break;
        }
        answered_by_v1 += 1;
        let id = answer["predictions"][0]["id"].as_str().expect("id").to_owned();
        let (status, body) = feedback(&app, &json!({"prediction_id": id, "label": label})).await;
        assert_eq!(status, 200, "{body}");
        last = Some((id, label));
    }
    let (id, label) = last.expect("a prediction");
    // What the gate saw, for a failure below (printed with the test's output).
    let routing = app.http.get(app.url("/v1/models/liveloop/routing")).bearer_auth(&app.admin_token).send().await;
    let comparison = json_of(routing.expect("routing")).await.1["shadow_comparison"].clone();
    eprintln!("after {answered_by_v1} answers with feedback, the shadow comparison: {comparison:#}");
    eventually(Duration::from_secs(30), "production to move to the candidate", || async {
        // Each feedback re-checks (the last shadow scores may have landed after it).
        let feedback = app.http.post(app.url("/v1/feedback")).bearer_auth(&app.admin_token);
        let _ = feedback.json(&json!({"prediction_id": id, "label": label})).send().await;
        (model(&app, "liveloop").await["aliases"]["production"] == 2).then_some(())
    })
    .await;
    assert!(answered_by_v1 >= 30, "no decision before 30 answers with feedback ({answered_by_v1})");
    assert_eq!(app.count("SELECT count(*) FROM live_promotions WHERE outcome = 'promoted'").await, 1);
    let routing = app.http.get(app.url("/v1/models/liveloop/routing")).bearer_auth(&app.admin_token).send().await;
    let (_, routing) = json_of(routing.expect("routing")).await;
    assert!(routing["shadow_alias"].is_null(), "the shadow stops: {routing:#}");
    let history = app.http.get(app.url("/v1/models/liveloop/aliases/production/history")).bearer_auth(&app.admin_token);
    let (_, history) = json_of(history.send().await.expect("history")).await;
    let reason = history["history"][0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.starts_with("live:") && reason.contains("McNemar"), "{history:#}");
}

/// The loop without anyone pushing data: served inputs are captured into the training dataset,
/// feedback on the predictions labels them, and the retrain drift asks for learns the new world
/// from them. (A retrain request that comes before any label is skipped as having nothing new;
/// a short inference cooldown lets the next drifted check ask again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_retrain_learns_from_captured_inputs_labelled_by_feedback() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    // Checks every 200 predictions: the retrain request comes after some 400 labelled captures.
    config.inference.drift_window = 200;
    config.inference.drift_sustain_checks = 2;
    config.inference.retrain_cooldown_secs = 1;
    // Requests that come before all 1,000 captured inputs are labelled and processed are
    // skipped; a later drifted check asks again. Waiting for all of them makes the retrain's
    // training set the same however far preprocessing trailed the traffic (with 500, a busy
    // machine's retrain saw half the new world and once stayed under the bar).
    config.trainer.retrain_min_new_items = 1000;
    let app = RunningApp::spawn(config).await;
    let pipeline = app.http.put(app.url("/v1/datasets/learn/pipeline")).bearer_auth(&app.admin_token);
    let (status, body) =
        json_of(pipeline.json(&json!({"width": SIZE, "height": SIZE})).send().await.expect("pipeline")).await;
    assert_eq!(status, 200, "{body}");
    let policy = app.http.put(app.url("/v1/models/learn/policy")).bearer_auth(&app.admin_token);
    assert_eq!(json_of(policy.json(&json!({"auto_promote": "if_better"})).send().await.expect("policy")).await.0, 200);
    upload(&app, "learn", &images(300, 1, 0)).await;
    processed(&app, "learn", 300).await;
    // A larger test split: the promotion gate decides on held-out items, and a small world gives few.
    let job = json!({"model": "learn", "dataset": "learn", "architecture": "cnn", "seed": 3, "promote": "if_better",
        "test_split": 0.3,
        "search": {"strategy": "grid", "space": {"epochs": 12, "batch_size": 16, "learning_rate": 0.003, "patience": 0}}});
    let first = crate::training::run_job(&app, &job, Duration::from_secs(300)).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    let capture = app.http.put(app.url("/v1/models/learn/capture")).bearer_auth(&app.admin_token);
    let policy = json!({"dataset": "learn", "random_rate": 1.0});
    assert_eq!(json_of(capture.json(&policy).send().await.expect("capture")).await.0, 200);

    // The world turns inverted and brighter; nobody uploads anything. Every answer gets feedback.
    let shifted = inverted(1000, 4);
    let mut before = Vec::new();
    for chunk in shifted.chunks(10) {
        let mut form = reqwest::multipart::Form::new();
        for (i, (png, _)) in chunk.iter().enumerate() {
            form = form.part("file", reqwest::multipart::Part::bytes(png.clone()).file_name(format!("{i}.png")));
        }
        let response = app.http.post(app.url("/v1/models/learn/predict")).bearer_auth(&app.admin_token).multipart(form);
        let (status, answer) = json_of(response.send().await.expect("predict")).await;
        assert_eq!(status, 200, "{answer}");
        for (prediction, (_, label)) in answer["predictions"].as_array().expect("predictions").iter().zip(chunk) {
            before.push(prediction["top"][0]["label"] == label.as_str());
            let body = json!({"prediction_id": prediction["id"], "label": label});
            assert_eq!(feedback(&app, &body).await.0, 200);
        }
    }
    let v1_accuracy = before.iter().filter(|&&right| right).count() as f64 / before.len() as f64;
    eprintln!("captured loop: v1 {v1_accuracy:.3} on the new world");

    // Drift asked for a retrain; once labelled captures existed, one started and learned them.
    // Preprocessing may trail the traffic on a busy machine, and a request that comes before
    // enough labelled captures are processed is skipped: the traffic goes on, as it would for a
    // live model, and the next drifted check asks again.
    let ready = "SELECT count(*) FROM media WHERE dataset = 'learn' AND captured_from IS NOT NULL \
                 AND label IS NOT NULL AND status = 'processed'";
    eventually(Duration::from_secs(300), "the labelled captures to be processed", || async {
        (app.count(ready).await >= 1000).then_some(())
    })
    .await;
    let retrain_job = || async {
        let client = app.ctx.db.get().await.ok()?;
        let row = client.query_opt("SELECT id::text FROM training_jobs WHERE origin = 'retrain'", &[]).await.ok()??;
        Some(row.get::<_, String>(0))
    };
    let mut rounds = 0;
    let retrained = loop {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let found = loop {
            match retrain_job().await {
                None if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                found => break found,
            }
        };
        if let Some(job) = found {
            break job;
        }
        rounds += 1;
        assert!(rounds <= 4, "no retraining job after {rounds} more windows of drifted traffic");
        serve(&app, "learn", &inverted(200, 10 + rounds)).await;
    };
    eprintln!("captured loop: a retraining job after {rounds} more windows of drifted traffic");
    let second = wait_job(&app, &retrained, Duration::from_secs(300)).await;
    eprintln!("retrain promotion: {:#}", second["promotion"]);
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert!(second["items"].as_i64() > Some(300), "the retrain saw captured, labelled inputs: {second:#}");
    let captured = app
        .count("SELECT count(*) FROM media WHERE dataset = 'learn' AND captured_from IS NOT NULL AND label IS NOT NULL")
        .await;
    assert!(captured > 0);
    assert_eq!(second["promotion"]["promoted"], true, "{second:#}");
    assert_eq!(model(&app, "learn").await["aliases"]["production"], 2);
    let (versions, v2_accuracy) = eventually(Duration::from_secs(30), "version 2 to be served", || async {
        let (versions, accuracy) = serve(&app, "learn", &inverted(100, 5)).await;
        versions.iter().all(|v| *v == 2).then_some((versions, accuracy))
    })
    .await;
    assert!(!versions.is_empty());
    eprintln!(
        "captured loop: v1 {v1_accuracy:.3} on the new world, v2 {v2_accuracy:.3} after learning from {captured} captured inputs"
    );
    // (Runs: v1 0.46-0.67, v2 0.89-0.92; splits hash random media ids, so the figures move.)
    assert!(v2_accuracy >= v1_accuracy + 0.1 && v2_accuracy >= 0.7, "v2 {v2_accuracy} vs v1 {v1_accuracy}");
}
