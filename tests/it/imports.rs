//! Bulk import from an S3 prefix: over HTTP, and resumed after a worker dies mid-way.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use sluice_core::{Context, domain::DatasetName};
use sluice_ingest::imports;
use sluice_testkit::{TestEnv, eventually};

use crate::{
    ingest::{jpeg, png},
    support::{RunningApp, json_of, parked_events, put_locked_object},
};

/// Puts the fixture layout under `incoming/`: five good images in two label folders, one file
/// at the top (unlabelled), one non-image.
async fn put_fixture(client: &aws_sdk_s3::Client, bucket: &str) {
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("incoming/cat/1.png", png(10, 10, 1)),
        ("incoming/cat/2.jpg", jpeg(10, 10, 2)),
        ("incoming/cat/3.png", png(11, 10, 3)),
        ("incoming/dog/4.png", png(12, 10, 4)),
        ("incoming/dog/5.jpg", jpeg(13, 10, 5)),
        ("incoming/loose.png", png(14, 10, 6)),
        ("incoming/dog/readme.txt", b"not an image".to_vec()),
        ("elsewhere/cat/9.png", png(15, 10, 9)),
    ];
    for (key, body) in objects {
        client.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send().await.expect("put fixture");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_ingests_a_labelled_prefix_and_reports_progress() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    put_fixture(&app.ctx.s3, &app.ctx.config.s3.bucket).await;

    let response = app
        .http
        .post(app.url("/v1/datasets/pets/imports"))
        .bearer_auth(&app.admin_token)
        .json(&serde_json::json!({"bucket": app.ctx.config.s3.bucket, "prefix": "incoming"}))
        .send()
        .await
        .expect("post import");
    let (status, created) = json_of(response).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    let done = eventually(Duration::from_secs(30), "the import to finish", || async {
        let (_, status) = json_of(
            app.http
                .get(app.url(&format!("/v1/imports/{id}")))
                .bearer_auth(&app.admin_token)
                .send()
                .await
                .expect("get"),
        )
        .await;
        (status["status"] == "succeeded").then_some(status)
    })
    .await;
    assert_eq!(done["accepted"], 6, "{done}");
    assert_eq!(done["rejected"], 1, "{done}");
    assert_eq!(done["errors"][0]["key"], "incoming/dog/readme.txt", "{done}");
    assert_eq!(done["errors"][0]["code"], "unsupported_media_type", "{done}");

    let (_, dataset) =
        json_of(app.http.get(app.url("/v1/datasets/pets")).bearer_auth(&app.admin_token).send().await.expect("get"))
            .await;
    assert_eq!(dataset["by_label"]["cat"], 3, "{dataset}");
    assert_eq!(dataset["by_label"]["dog"], 2, "{dataset}");
    assert_eq!(dataset["unlabelled"], 1, "{dataset}");

    let response = app
        .http
        .post(app.url("/v1/datasets/pets/imports"))
        .bearer_auth(&app.admin_token)
        .json(&serde_json::json!({"bucket": "no-such-bucket-here", "prefix": "x"}))
        .send()
        .await
        .expect("post import");
    assert_eq!(response.status().as_u16(), 403, "a bucket outside the allowlist is refused");
    for prefix in ["raw/", "raw", "", "processed/pets", "models/", "checkpoints"] {
        let response = app
            .http
            .post(app.url("/v1/datasets/pets/imports"))
            .bearer_auth(&app.admin_token)
            .json(&serde_json::json!({"bucket": app.ctx.config.s3.bucket, "prefix": prefix}))
            .send()
            .await
            .expect("post import");
        assert_eq!(response.status().as_u16(), 400, "prefix {prefix:?} overlaps Sluice's own objects");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_resumes_after_its_worker_dies_without_double_counting() {
    let env = TestEnv::new().await;
    // No application: this test is the only import worker, so it can stop one mid-way.
    let ctx = Context::new(env.config.clone()).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    put_fixture(&ctx.s3, &ctx.config.s3.bucket).await;
    let dataset = DatasetName::parse("resume").expect("name");
    let id = imports::create(&ctx, &dataset, &ctx.config.s3.bucket, "incoming/").await.expect("create");

    // The first worker handles three objects and dies (its lease is left held).
    assert!(imports::run_once(&ctx, Some(3)).await.expect("first worker"));
    let db = ctx.db.get().await.expect("conn");
    assert!(!imports::run_once(&ctx, None).await.expect("second worker waits for the lease"));
    // Time passes: the dead worker's lease expires.
    db.execute("UPDATE imports SET lease_until = now() - interval '1 second' WHERE id = $1", &[&id])
        .await
        .expect("expire lease");
    assert!(imports::run_once(&ctx, None).await.expect("second worker"));

    let status = imports::status_json(&ctx, id).await.expect("status").expect("exists");
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["accepted"], 6, "{status}");
    assert_eq!(status["duplicates"], 0, "nothing handled twice: {status}");
    assert_eq!(status["rejected"], 1, "{status}");
    let media: i64 = db.query_one("SELECT count(*) FROM media", &[]).await.expect("count").get(0);
    assert_eq!(media, 6);
}

/// A worker that was slow rather than dead (its lease expired while it still worked) finds at
/// its next renewal that another worker took the import over, and stops: its renewals, cursor
/// advances and ending change nothing, so the two never work on the same objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_over_stops_at_its_next_step() {
    let env = TestEnv::new().await;
    let ctx = Context::new(env.config.clone()).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    put_fixture(&ctx.s3, &ctx.config.s3.bucket).await;
    let dataset = DatasetName::parse("takeover").expect("name");
    let id = imports::create(&ctx, &dataset, &ctx.config.s3.bucket, "incoming/").await.expect("create");
    let db = ctx.db.get().await.expect("conn");
    let expire = || async {
        db.execute("UPDATE imports SET lease_until = now() - interval '1 second' WHERE id = $1", &[&id])
            .await
            .expect("expire lease");
    };

    let (slow, _) = imports::store::claim(&ctx).await.expect("claim").expect("the import");
    assert!(imports::store::claim(&ctx).await.expect("claim").is_none(), "held while its lease runs");
    assert!(imports::store::renew(&ctx, &slow).await.expect("renew"), "its own lease renews");
    expire().await;
    let (new, _) = imports::store::claim(&ctx).await.expect("claim").expect("taken over");
    assert_eq!(new.id, slow.id);
    assert_ne!(new.lease, slow.lease);
    assert!(!imports::store::renew(&ctx, &slow).await.expect("renew"), "the old holder's renewal fails");
    assert!(!imports::store::advance(&ctx, &slow, "incoming/zzz").await.expect("advance"));
    assert!(!imports::store::succeed(&ctx, &slow).await.expect("succeed"), "nor can it end the import");
    let cursor: Option<String> =
        db.query_one("SELECT cursor FROM imports WHERE id = $1", &[&id]).await.expect("row").get(0);
    assert_eq!(cursor, None, "the old holder moved nothing");
    assert!(imports::store::renew(&ctx, &new).await.expect("renew"), "the new holder's lease renews");

    // The whole worker: the new holder's lease expires too and a third worker runs the import to
    // its end; the second one's ending then changes nothing.
    expire().await;
    assert!(imports::run_once(&ctx, None).await.expect("third worker"));
    assert!(!imports::store::succeed(&ctx, &new).await.expect("succeed"));
    let status = imports::status_json(&ctx, id).await.expect("status").expect("exists");
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!((status["accepted"].as_i64(), status["duplicates"].as_i64()), (Some(6), Some(0)), "{status}");
}

/// An object the store refuses to serve (encrypted with a key Sluice does not hold) stops the
/// import on every pass until it has used `ingest.import_max_attempts`; then it is recorded as
/// rejected (`gave_up`) with a `work.parked` event, and the objects after it are imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_keeps_failing_is_given_up_and_the_rest_is_imported() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.ingest.import_max_attempts = 2;
    let app = RunningApp::spawn(config).await;
    let bucket = app.ctx.config.s3.bucket.clone();
    put_locked_object(&app.ctx.s3, &bucket, "incoming/cat/0-locked.png", png(10, 10, 20)).await;
    for (key, body) in [("incoming/cat/1.png", png(11, 10, 21)), ("incoming/dog/2.png", png(12, 10, 22))] {
        app.ctx.s3.put_object().bucket(&bucket).key(key).body(ByteStream::from(body)).send().await.expect("put");
    }
    let response = app
        .http
        .post(app.url("/v1/datasets/locked/imports"))
        .bearer_auth(&app.admin_token)
        .json(&serde_json::json!({"bucket": bucket, "prefix": "incoming"}))
        .send()
        .await
        .expect("post import");
    let (status, created) = json_of(response).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let done = eventually(Duration::from_secs(60), "the import to finish", || async {
        let response = app.http.get(app.url(&format!("/v1/imports/{id}"))).bearer_auth(&app.admin_token).send();
        let (_, status) = json_of(response.await.expect("get")).await;
        (status["status"] != "queued" && status["status"] != "running").then_some(status)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!((done["accepted"].as_i64(), done["rejected"].as_i64()), (Some(2), Some(1)), "{done}");
    assert_eq!(done["errors"][0]["key"], "incoming/cat/0-locked.png", "{done}");
    assert_eq!(done["errors"][0]["code"], "gave_up", "{done}");
    let message = done["errors"][0]["message"].as_str().expect("message");
    assert!(message.starts_with("gave up after 2 attempts; the last one failed"), "{message}");
    let parked = parked_events(&app, "import_object", 1).await;
    assert_eq!(parked[0]["data"]["id"], format!("{id}/incoming/cat/0-locked.png"), "{parked:#?}");
    assert_eq!(parked[0]["data"]["detail"]["bucket"], bucket.as_str());
    let metrics = app.get("/metrics").await.1;
    assert!(metrics.as_str().expect("text").contains("sluice_ingest_import_objects_parked_total 1"), "{metrics}");
}

/// An object over the upload limit by its listed size is refused without being downloaded;
/// the rest of the prefix is imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_over_the_upload_limit_is_refused_from_its_listing() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.max_body_bytes = 64 * 1024;
    let app = RunningApp::spawn(config).await;
    let bucket = app.ctx.config.s3.bucket.clone();
    for (key, body) in [("big-in/cat/small.png", png(10, 10, 1)), ("big-in/cat/huge.png", vec![0u8; 200 * 1024])] {
        app.ctx.s3.put_object().bucket(&bucket).key(key).body(ByteStream::from(body)).send().await.expect("put");
    }
    let post = app.http.post(app.url("/v1/datasets/big/imports")).bearer_auth(&app.admin_token);
    let (status, created) =
        json_of(post.json(&serde_json::json!({"bucket": bucket, "prefix": "big-in"})).send().await.expect("post"))
            .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let done = eventually(Duration::from_secs(30), "the import to finish", || async {
        let get = app.http.get(app.url(&format!("/v1/imports/{id}"))).bearer_auth(&app.admin_token);
        let (_, status) = json_of(get.send().await.expect("get")).await;
        (status["status"] == "succeeded").then_some(status)
    })
    .await;
    assert_eq!((&done["accepted"], &done["rejected"]), (&serde_json::json!(1), &serde_json::json!(1)), "{done}");
    assert_eq!(done["errors"][0]["key"], "big-in/cat/huge.png", "{done}");
    assert_eq!(done["errors"][0]["code"], "too_large", "{done}");
    let message = done["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("by its listing") && message.contains("not downloaded"), "{done}");
}

/// An object key holding a NUL character (S3 allows any UTF-8; PostgreSQL stores no NUL) fails
/// the import with a reason instead of having it retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_key_with_a_nul_fails_the_import_with_a_reason() {
    let env = TestEnv::new().await;
    let ctx = Context::new(env.config.clone()).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    let bucket = &ctx.config.s3.bucket;
    // Keys a listing must encode: a space, a plus, a percent sign, an accent, a control character.
    for (key, seed) in [("nul/cats/a b+c%d.png", 2), ("nul/cats/caf\u{e9}\u{1}.png", 3), ("nul/cats/z\u{0}.png", 1)] {
        ctx.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(png(8, 8, seed)))
            .send()
            .await
            .expect("the store takes the key");
    }
    let dataset = DatasetName::parse("nul").expect("name");
    let id = imports::create(&ctx, &dataset, bucket, "nul/").await.expect("create");
    assert!(imports::run_once(&ctx, None).await.expect("the worker ends the import"));
    let status = imports::status_json(&ctx, id).await.expect("status").expect("exists");
    assert_eq!(status["status"], "failed", "{status}");
    assert!(status["error"].as_str().is_some_and(|e| e.contains("NUL")), "{status}");

    // Without it, every other key is read back exactly as it was written.
    ctx.s3.delete_object().bucket(bucket).key("nul/cats/z\u{0}.png").send().await.expect("delete");
    let id = imports::create(&ctx, &dataset, bucket, "nul/").await.expect("create");
    assert!(imports::run_once(&ctx, None).await.expect("the worker ends the import"));
    let status = imports::status_json(&ctx, id).await.expect("status").expect("exists");
    assert_eq!((status["status"].as_str(), status["accepted"].as_i64()), (Some("succeeded"), Some(2)), "{status}");
}
