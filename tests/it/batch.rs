//! Batch predictions on the real stack: a dataset and an S3 prefix scored into JSON lines in S3,
//! a job resumed after its last written chunk, a worker process killed mid-job, and refused
//! requests that leave nothing behind.

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use serde_json::{Value, json};
use sluice::Service;
use sluice_core::{Config, auth::Scope, batch_predictions::batch_part_key};
use sluice_testkit::{TestEnv, eventually};
use uuid::Uuid;

use crate::{
    inference::{move_alias, png, register_trained, samples},
    support::{RunningApp, json_of, parked_events, put_locked_object, sluice_command, sluice_env},
    training::seed_dataset,
};

/// `env`'s configuration with batch chunks of `chunk` items.
fn chunked(env: &TestEnv, chunk: usize) -> Config {
    let mut config = env.config.clone();
    config.inference.batch_chunk = chunk;
    config
}

/// An app serving inference (routes and workers) and the registry.
async fn batch_app(config: Config) -> RunningApp {
    RunningApp::spawn_services(config, &[Service::Inference, Service::Registry]).await
}

/// A trained model `model` with `production` on its first version.
async fn served_model(app: &RunningApp, model: &str, seed: u64) -> i32 {
    let version = register_trained(app, model, seed, 2).await;
    move_alias(app, model, "production", version).await;
    version
}

async fn submit(app: &RunningApp, base: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = app.http.post(format!("{base}/v1/batch-predictions")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    json_of(request.send().await.expect("post batch prediction")).await
}

async fn job(app: &RunningApp, base: &str, id: &str) -> Value {
    let response = app.http.get(format!("{base}/v1/batch-predictions/{id}")).bearer_auth(&app.admin_token).send();
    let (status, job) = json_of(response.await.expect("get batch prediction")).await;
    assert_eq!(status, 200, "{job}");
    job
}

/// Submits `body` to the routes at `base`, expecting 202 `queued`; returns the job id.
async fn queue(app: &RunningApp, base: &str, body: &Value) -> Uuid {
    let (status, created) = submit(app, base, Some(&app.admin_token), body).await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["status"], "queued");
    created["id"].as_str().expect("id").parse().expect("uuid")
}

/// Submits `body` and waits for the job to end; returns its final view.
async fn run_batch(app: &RunningApp, body: &Value) -> Value {
    let id = queue(app, &app.base_url, body).await;
    wait(app, &app.base_url, &id.to_string()).await
}

async fn wait(app: &RunningApp, base: &str, id: &str) -> Value {
    eventually(Duration::from_secs(120), "the batch prediction to end", || async {
        let job = job(app, base, id).await;
        matches!(job["status"].as_str(), Some("succeeded" | "failed")).then_some(job)
    })
    .await
}

/// Runs `inference`'s workers until `until` ends (a job waited for), then stops them.
async fn with_workers<T>(inference: sluice_inference::Inference, until: impl Future<Output = T>) -> T {
    let stop = sluice_core::Shutdown::new();
    let workers = inference.spawn_workers(&stop);
    let out = until.await;
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    out
}

async fn object(app: &RunningApp, key: &str) -> Vec<u8> {
    let bytes = sluice_core::s3::get_bytes(&app.ctx.s3, &app.ctx.config.s3.bucket, key).await.expect("get object");
    bytes.unwrap_or_else(|| panic!("{key} is missing")).to_vec()
}

/// Every line of the job's parts, in part order.
async fn lines(app: &RunningApp, job: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for part in job["parts"].as_array().expect("parts") {
        let body = object(app, part.as_str().expect("part key")).await;
        for line in String::from_utf8(body).expect("utf-8").lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")));
        }
    }
    out
}

fn indices(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|line| line["index"].as_u64().expect("index")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_batch_writes_one_labelled_line_per_processed_item() {
    let env = TestEnv::new().await;
    let app = batch_app(chunked(&env, 4)).await;
    let version = served_model(&app, "batchy", 31).await;
    seed_dataset(&app, "shapes", 3, 5, 24, 32).await;
    let job = run_batch(&app, &json!({"model": "batchy", "dataset": "shapes", "top_k": 2})).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!((job["version"].as_i64(), job["alias"].as_str()), (Some(version.into()), Some("production")));
    assert_eq!(
        (job["total"].as_i64(), job["chunks"].as_i64(), job["chunks_done"].as_i64()),
        (Some(15), Some(4), Some(4))
    );
    assert_eq!(job["progress"], 1.0);
    let id: Uuid = job["id"].as_str().expect("id").parse().expect("uuid");
    let parts: Vec<String> = (0..4).map(|chunk| batch_part_key(id, chunk)).collect();
    assert_eq!(job["parts"], json!(parts));
    assert!(parts.iter().all(|p| p.starts_with(job["result_prefix"].as_str().expect("prefix"))));
    assert!(job["finished_at"].is_string() && job["started_at"].is_string(), "{job:#}");

    let lines = lines(&app, &job).await;
    assert_eq!(indices(&lines), (0..15).collect::<Vec<_>>(), "one line per item, in order");
    let client = app.ctx.db.get().await.expect("connection");
    let rows = client.query("SELECT id::text, label FROM media WHERE dataset = 'shapes'", &[]).await.expect("media");
    let media: BTreeSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let scored: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| (l["media_id"].as_str().expect("media_id").to_owned(), l["label"].as_str().expect("label").to_owned()))
        .collect();
    assert_eq!(scored, media, "every processed item once, with its label");
    let classes = sluice_nn::synthetic::labels(3);
    for line in &lines {
        assert!(line.get("error").is_none(), "{line}");
        let top = line["top"].as_array().expect("top");
        assert_eq!(top.len(), 2, "{line}");
        assert!(top[0]["score"].as_f64() >= top[1]["score"].as_f64(), "{line}");
        assert_eq!(line["predicted"], top[0]["label"]);
        assert!(line["key"].as_str().expect("key").starts_with("processed/"), "{line}");
        assert!(line["prediction_id"].is_string(), "{line}");
        assert!(classes.iter().any(|c| line["predicted"] == c.as_str()), "{line}");
    }
    let recorded = format!("SELECT count(*) FROM predictions WHERE batch_id = '{id}' AND version = {version}");
    assert_eq!(app.count(&recorded).await, 15, "every prediction recorded under its id");
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics
            .as_str()
            .expect("text")
            .contains("sluice_inference_batch_items_total{model=\"batchy\",outcome=\"predicted\"} 15"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_batch_scores_objects_in_key_order_and_notes_undecodable_and_oversized_ones() {
    let env = TestEnv::new().await;
    let mut config = chunked(&env, 3);
    // Each object is read within what one predict request may send, never whole past it.
    config.inference.max_predict_bytes = 64 * 1024;
    let app = batch_app(config).await;
    let first = served_model(&app, "prefixed", 41).await;
    let second = register_trained(&app, "prefixed", 42, 1).await;
    let images = samples(5, 43);
    let bucket = app.ctx.config.s3.bucket.clone();
    let put = |key: String, body: Vec<u8>| {
        let (s3, bucket) = (app.ctx.s3.clone(), bucket.clone());
        async move { sluice_core::s3::put_bytes(&s3, &bucket, &key, body, "application/octet-stream").await }
    };
    for i in 0..5 {
        put(format!("incoming/img-{i}.png"), png(&images, i, 0)).await.expect("put image");
    }
    put("incoming/notes.txt".into(), b"not an image".to_vec()).await.expect("put text");
    let mut oversized = png(&images, 0, 0);
    oversized.resize(64 * 1024 + 1, 0);
    put("incoming/oversized.png".into(), oversized).await.expect("put an object over the bound");
    put("elsewhere/img.png".into(), png(&images, 0, 0)).await.expect("put outside the prefix");
    let job =
        run_batch(&app, &json!({"model": "prefixed", "version": second, "bucket": bucket, "prefix": "incoming/"}))
            .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!((job["version"].as_i64(), &job["alias"]), (Some(second.into()), &Value::Null), "{job:#}");
    assert_ne!(first, second);
    assert_eq!(job["source"], json!({"bucket": bucket, "prefix": "incoming/"}));
    let lines = lines(&app, &job).await;
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().expect("key")).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "key order");
    assert_eq!(keys.len(), 7, "{lines:#?}");
    for line in &lines {
        assert!(line.get("media_id").is_none() && line.get("label").is_none(), "{line}");
        if line["key"] == "incoming/oversized.png" {
            let error = line["error"].as_str().unwrap_or_default();
            assert!(error.contains("over inference.max_predict_bytes (65536 bytes"), "{line}");
            assert!(line.get("prediction_id").is_none(), "{line}");
        } else if line["key"] == "incoming/notes.txt" {
            assert!(line["error"].is_string() && line.get("prediction_id").is_none(), "{line}");
        } else {
            assert!(line.get("error").is_none() && line["top"].as_array().map(Vec::len) == Some(3), "{line}");
        }
    }
    let metrics = app.get("/metrics").await.1;
    let metrics = metrics.as_str().expect("text");
    assert!(metrics.contains("sluice_inference_batch_items_total{model=\"prefixed\",outcome=\"predicted\"} 5"));
    assert!(metrics.contains("sluice_inference_batch_items_total{model=\"prefixed\",outcome=\"undecodable\"} 1"));
    assert!(metrics.contains("sluice_inference_batch_items_total{model=\"prefixed\",outcome=\"too_large\"} 1"));
}

/// A job on a fresh `model` over a 3-class dataset of `per_class` items a class, queued through
/// inference routes served without workers (so no job starts until a worker does) beside an app
/// whose registry relays the outbox. Returns the app, the routes' base URL, the inference service
/// (to start its workers) and the job id.
async fn parked_job(
    env: &TestEnv,
    chunk: usize,
    model: &str,
    per_class: usize,
    seed: u64,
) -> (RunningApp, String, sluice_inference::Inference, Uuid) {
    let app = RunningApp::spawn_services(chunked(env, chunk), &[Service::Registry]).await;
    served_model(&app, model, seed).await;
    seed_dataset(&app, "shapes", 3, per_class, 24, seed + 1).await;
    let inference = sluice_inference::Inference::new(app.ctx.clone());
    let router: axum::Router = inference.router().into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let id = queue(&app, &base, &json!({"model": model, "dataset": "shapes"})).await;
    (app, base, inference, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumes_after_its_last_written_chunk_and_never_rewrites_it() {
    let env = TestEnv::new().await;
    let (app, base, inference, id) = parked_job(&env, 4, "resumed", 5, 51).await;
    // As a worker that wrote chunk 0 and died would have left it.
    let sentinel = b"sentinel: written before the crash\n".to_vec();
    sluice_core::s3::put_bytes(
        &app.ctx.s3,
        &app.ctx.config.s3.bucket,
        &batch_part_key(id, 0),
        sentinel.clone(),
        "text/plain",
    )
    .await
    .expect("put sentinel");
    let client = app.ctx.db.get().await.expect("connection");
    client
        .execute("UPDATE batch_predictions SET chunks_done = 1, status = 'running' WHERE id = $1", &[&id])
        .await
        .expect("advance");
    let job = with_workers(inference, wait(&app, &base, &id.to_string())).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(object(&app, &batch_part_key(id, 0)).await, sentinel, "chunk 0 is never rewritten");
    let mut after = Vec::new();
    for chunk in 1..4 {
        let body = String::from_utf8(object(&app, &batch_part_key(id, chunk)).await).expect("utf-8");
        after.extend(body.lines().map(|l| serde_json::from_str::<Value>(l).expect("line")));
    }
    assert_eq!(indices(&after), (4..15).collect::<Vec<_>>());
    assert_eq!(app.count(&format!("SELECT count(*) FROM predictions WHERE batch_id = '{id}'")).await, 11);
}

/// A `sluice serve inference` process is killed with SIGKILL mid-job; a second one finishes the
/// job from its last recorded chunk, and every item has exactly one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_replaced_without_duplicate_lines() {
    let env = TestEnv::new().await;
    let (app, base, _inference, id) = parked_job(&env, 2, "sturdy", 60, 61).await;
    let spawn_worker = || {
        let mut command = sluice_command();
        command.args(["serve", "inference"]).envs(sluice_env(&env));
        command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn an inference worker")
    };
    let progress = || async {
        let client = app.ctx.db.get().await.ok()?;
        let sql = "SELECT chunks_done, chunks FROM batch_predictions WHERE id = $1";
        client.query_one(sql, &[&id]).await.ok().map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
    };
    let mut first = spawn_worker();
    eventually(Duration::from_secs(60), "the first worker to write a few chunks", || async {
        progress().await.filter(|(done, _)| *done >= 3).map(|_| ())
    })
    .await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    first.wait().expect("reap");
    let (cut_at, chunks) = progress().await.expect("progress");
    assert!(cut_at < chunks, "the job ended before the kill ({cut_at} of {chunks} chunks); make it longer");
    let mut second = spawn_worker();
    let job = wait(&app, &base, &id.to_string()).await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let lines = lines(&app, &job).await;
    assert_eq!(indices(&lines), (0..180).collect::<Vec<_>>(), "exactly one line per item");
    let media: BTreeSet<&str> = lines.iter().map(|l| l["media_id"].as_str().expect("media_id")).collect();
    assert_eq!(media.len(), 180);
    assert_eq!(app.count(&format!("SELECT count(*) FROM predictions WHERE batch_id = '{id}'")).await, 180);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batch_requests_leave_no_job_event_or_object() {
    let env = TestEnv::new().await;
    let app = batch_app(env.config.clone()).await;
    served_model(&app, "guarded", 71).await;
    seed_dataset(&app, "shapes", 3, 2, 24, 72).await;
    app.ctx
        .db
        .get()
        .await
        .expect("connection")
        .execute("INSERT INTO datasets (name) VALUES ('empty')", &[])
        .await
        .expect("empty dataset");
    let bucket = app.ctx.config.s3.bucket.clone();
    let ingest_only = app.token(&[Scope::Ingest]).await;
    let predict_only = app.token(&[Scope::Predict]).await;
    let admin = app.admin_token.clone();
    let cases: Vec<(&str, Option<&str>, Value, u16)> = vec![
        ("an unknown model", Some(&admin), json!({"model": "nope", "dataset": "shapes"}), 404),
        ("an unknown alias", Some(&admin), json!({"model": "guarded", "alias": "staging", "dataset": "shapes"}), 404),
        ("an unknown version", Some(&admin), json!({"model": "guarded", "version": 9, "dataset": "shapes"}), 404),
        ("an invalid model name", Some(&admin), json!({"model": "Bad!", "dataset": "shapes"}), 400),
        (
            "alias and version",
            Some(&admin),
            json!({"model": "guarded", "alias": "production", "version": 1, "dataset": "shapes"}),
            400,
        ),
        (
            "both sources",
            Some(&admin),
            json!({"model": "guarded", "dataset": "shapes", "bucket": bucket, "prefix": "x/"}),
            400,
        ),
        ("no source", Some(&admin), json!({"model": "guarded"}), 400),
        ("a bucket without a prefix", Some(&admin), json!({"model": "guarded", "bucket": bucket}), 400),
        ("Sluice's uploads", Some(&admin), json!({"model": "guarded", "bucket": bucket, "prefix": "raw/"}), 400),
        ("above Sluice's models", Some(&admin), json!({"model": "guarded", "bucket": bucket, "prefix": "mod"}), 400),
        ("the whole bucket", Some(&admin), json!({"model": "guarded", "bucket": bucket, "prefix": ""}), 400),
        ("an unknown field", Some(&admin), json!({"model": "guarded", "dataset": "shapes", "colour": "red"}), 400),
        ("an unknown dataset", Some(&admin), json!({"model": "guarded", "dataset": "missing"}), 404),
        ("a dataset with nothing processed", Some(&admin), json!({"model": "guarded", "dataset": "empty"}), 422),
        ("a foreign bucket", Some(&admin), json!({"model": "guarded", "bucket": "someone-elses", "prefix": "x/"}), 403),
        (
            "an empty prefix listing",
            Some(&admin),
            json!({"model": "guarded", "bucket": bucket, "prefix": "nothing/"}),
            422,
        ),
        ("no token", None, json!({"model": "guarded", "dataset": "shapes"}), 401),
        ("an ingest-only token", Some(&ingest_only), json!({"model": "guarded", "dataset": "shapes"}), 403),
        // Scoring a dataset reads it: a predict-only token learns nothing of it, not even that it exists.
        (
            "a predict-only token on a dataset",
            Some(&predict_only),
            json!({"model": "guarded", "dataset": "shapes"}),
            403,
        ),
        (
            "a predict-only token on no dataset",
            Some(&predict_only),
            json!({"model": "guarded", "dataset": "missing"}),
            403,
        ),
    ];
    let mut failures = Vec::new();
    for (what, token, body, status) in cases {
        let (got, answer) = submit(&app, &app.base_url, token, &body).await;
        if got != status || !answer["error"]["code"].is_string() || !answer["error"]["message"].is_string() {
            failures.push(format!("{what}: expected {status}, got {got} {answer}"));
        }
    }
    let response = app.http.post(app.url("/v1/batch-predictions")).bearer_auth(&admin).body("{not json").send();
    let (status, _) = json_of(response.await.expect("post")).await;
    if status != 400 {
        failures.push(format!("malformed JSON: expected 400, got {status}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(app.count("SELECT count(*) FROM batch_predictions").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox WHERE topic LIKE '%predictions.batch'").await, 0);
    let listed = app.ctx.s3.list_objects_v2().bucket(&bucket).prefix("batch-predictions/").send().await.expect("list");
    assert!(listed.contents().is_empty(), "{:?}", listed.contents());
    let (status, _) = json_of(
        app.http
            .get(app.url(&format!("/v1/batch-predictions/{}", Uuid::new_v4())))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 404);
}

/// An object the store refuses to serve (encrypted with a key Sluice does not hold) poisons the
/// first chunk: after `inference.batch_max_attempts` attempts it is parked, with the reason on
/// each of its items' lines and a `work.parked` event, and the next chunk is scored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_keeps_failing_is_parked_and_the_next_chunk_is_scored() {
    let env = TestEnv::new().await;
    let mut config = chunked(&env, 2);
    config.inference.batch_max_attempts = 2;
    let app = batch_app(config).await;
    served_model(&app, "poisoned", 81).await;
    let images = samples(4, 82);
    let bucket = app.ctx.config.s3.bucket.clone();
    put_locked_object(&app.ctx.s3, &bucket, "incoming/a-locked.png", png(&images, 0, 0)).await;
    for (i, name) in ["b", "c", "d"].iter().enumerate() {
        sluice_core::s3::put_bytes(
            &app.ctx.s3,
            &bucket,
            &format!("incoming/{name}.png"),
            png(&images, i + 1, 0),
            "image/png",
        )
        .await
        .expect("put image");
    }
    let job = run_batch(&app, &json!({"model": "poisoned", "bucket": bucket, "prefix": "incoming/"})).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!((job["chunks"].as_i64(), job["chunks_done"].as_i64()), (Some(2), Some(2)), "{job:#}");
    let failed = job["failed_chunks"].as_array().expect("failed_chunks");
    assert_eq!(failed.len(), 1, "{job:#}");
    assert_eq!((failed[0]["chunk"].as_i64(), failed[0]["attempts"].as_i64()), (Some(0), Some(2)), "{job:#}");
    let reason = failed[0]["reason"].as_str().expect("reason");
    assert!(reason.starts_with("gave up after 2 attempts; the last one failed"), "{reason}");

    let lines = lines(&app, &job).await;
    assert_eq!(indices(&lines), [0, 1, 2, 3], "every item still has exactly one line");
    for line in &lines[..2] {
        assert_eq!(line["error"], reason, "the parked chunk's lines carry its reason: {line}");
        assert!(line.get("prediction_id").is_none(), "{line}");
    }
    for line in &lines[2..] {
        assert!(line.get("error").is_none() && line["prediction_id"].is_string(), "the next chunk is scored: {line}");
    }
    let id = job["id"].as_str().expect("id");
    assert_eq!(app.count(&format!("SELECT count(*) FROM predictions WHERE batch_id = '{id}'")).await, 2);
    let parked = parked_events(&app, "batch_chunk", 1).await;
    assert_eq!(parked[0]["data"]["id"], format!("{id}/0"), "{parked:#?}");
    assert_eq!(parked[0]["data"]["attempts"], 2);
    let metrics = app.get("/metrics").await.1;
    let metrics = metrics.as_str().expect("text");
    assert!(metrics.contains("sluice_inference_batch_chunks_parked_total 1"), "{metrics}");
    assert!(metrics.contains("sluice_inference_batch_items_total{model=\"poisoned\",outcome=\"parked\"} 2"));
}

/// A job over a user's bucket that is deleted before the job runs fails saying so: the bucket
/// answering "no such bucket" is not an outage to wait out with the attempts given back, which
/// kept the job running, and the worker's other jobs waiting, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_source_bucket_is_gone_fails_saying_so() {
    let env = TestEnv::new().await;
    let source = format!("{}-src", env.config.s3.bucket);
    let mut config = chunked(&env, 2);
    config.ingest.import_buckets = vec![source.clone()];
    let app = RunningApp::spawn_services(config, &[Service::Registry]).await;
    served_model(&app, "abandoned", 61).await;
    let s3 = app.ctx.s3.clone();
    sluice_core::s3::ensure_bucket(&s3, &source).await.expect("the user's bucket");
    let images = samples(3, 62);
    for i in 0..3 {
        let key = format!("in/img-{i}.png");
        sluice_core::s3::put_bytes(&s3, &source, &key, png(&images, i, 0), "image/png").await.expect("put image");
    }
    let inference = sluice_inference::Inference::new(app.ctx.clone());
    let router: axum::Router = inference.router().into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let id = queue(&app, &base, &json!({"model": "abandoned", "bucket": source, "prefix": "in/"})).await;
    for i in 0..3 {
        s3.delete_object().bucket(&source).key(format!("in/img-{i}.png")).send().await.expect("empty the bucket");
    }
    s3.delete_bucket().bucket(&source).send().await.expect("delete the bucket");

    let job = with_workers(inference, wait(&app, &base, &id.to_string())).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["error"].as_str().expect("the job's error");
    assert!(error.contains(&format!("bucket {source} does not exist")), "{error}");
}

/// A run whose job another run took over (as after a rebalance gave its partition to a replica
/// that joined) stops before its next chunk. Here the other run is a stand-in that never scores,
/// and the partition is still this worker's: the stopped run leaves the message unfinished, the
/// consumer reconnects, and the job is delivered again and goes on from its last written chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_job_was_taken_over_stops_and_the_job_still_ends_once() {
    let env = TestEnv::new().await;
    // Enough chunks that the job cannot end before the test takes it over.
    let (app, base, inference, id) = parked_job(&env, 2, "handed", 100, 71).await;
    let taken = async {
        eventually(Duration::from_secs(60), "two chunks written", || async {
            (app.count(&format!("SELECT chunks_done::bigint FROM batch_predictions WHERE id = '{id}'")).await >= 2)
                .then_some(())
        })
        .await;
        let client = app.ctx.db.get().await.expect("connection");
        let stand_in: Uuid = client
            .query_one(
                "UPDATE batch_predictions SET run_id = gen_random_uuid() WHERE status = 'running' RETURNING run_id",
                &[],
            )
            .await
            .expect("take the running job over")
            .get(0);
        drop(client);
        (stand_in, wait(&app, &base, &id.to_string()).await)
    };
    let (stand_in, job) = with_workers(inference, taken).await;
    let holder: Uuid = app
        .ctx
        .db
        .get()
        .await
        .expect("connection")
        .query_one("SELECT run_id FROM batch_predictions WHERE id = $1", &[&id])
        .await
        .expect("the job")
        .get(0);
    assert_ne!(holder, stand_in, "a new delivery took the job back and finished it");
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let lines = lines(&app, &job).await;
    assert_eq!(indices(&lines), (0..300).collect::<Vec<_>>(), "each item once, in order");
    assert_eq!(app.count(&format!("SELECT count(*) FROM predictions WHERE batch_id = '{id}'")).await, 300);
}
