//! Preprocess end to end: uploads through ingest become outputs in S3 and PostgreSQL.

use std::{io::Cursor, process::Command, time::Duration};

use serde_json::{Value, json};
use sluice_core::{Context, outbox, topics::Topic};
use sluice_preprocess::store::{self, Reconciled};
use sluice_testkit::{TestEnv, eventually};

use crate::{
    ingest::{jpeg, png, post_raw},
    support::{Cut, RunningApp, json_of, read_topic, sluice_command, sluice_env, through_proxy},
};

async fn put_pipeline(app: &RunningApp, dataset: &str, spec: Value) -> Value {
    let response = app
        .http
        .put(app.url(&format!("/v1/datasets/{dataset}/pipeline")))
        .bearer_auth(&app.admin_token)
        .json(&spec)
        .send()
        .await
        .expect("put pipeline");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn reprocess(app: &RunningApp, dataset: &str) {
    let response = app
        .http
        .post(app.url(&format!("/v1/datasets/{dataset}/reprocess")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .expect("post reprocess");
    assert_eq!(response.status().as_u16(), 202);
}

async fn media(app: &RunningApp, id: &str) -> Value {
    json_of(app.http.get(app.url(&format!("/v1/media/{id}"))).bearer_auth(&app.admin_token).send().await.expect("get"))
        .await
        .1
}

/// Waits until the item leaves `accepted`/`processing` and returns it.
async fn settled(app: &RunningApp, id: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("{id} to be processed or failed"), || async {
        let item = media(app, id).await;
        matches!(item["status"].as_str(), Some("processed" | "failed")).then_some(item)
    })
    .await
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

async fn upload(app: &RunningApp, dataset: &str, content_type: &str, body: Vec<u8>) -> String {
    let (status, answer) = post_raw(app, &format!("?dataset={dataset}"), content_type, body).await;
    assert_eq!(status, 202, "{answer}");
    answer["items"][0]["id"].as_str().expect("id").to_owned()
}

async fn object(app: &RunningApp, key: &str) -> Vec<u8> {
    let got = app.ctx.s3.get_object().bucket(&app.ctx.config.s3.bucket).key(key).send().await.expect("output object");
    got.body.collect().await.expect("read").into_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_every_kind_come_out_at_the_spec_size() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let spec = put_pipeline(&app, "pics", serde_json::json!({"width": 32, "height": 24, "fit": "contain"})).await;
    assert_eq!(spec["spec"]["video"]["max_frames"], 32, "unspecified fields keep their defaults: {spec}");
    let rgba = image::RgbaImage::from_fn(90, 60, |x, y| image::Rgba([x as u8, y as u8, 9, 200]));
    let gray16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(70, 70, |x, _| image::Luma([x as u16 * 900]));
    let inputs = vec![
        ("image/png", png(100, 50, 1)),
        ("image/jpeg", jpeg(80, 80, 2)),
        ("image/png", encode(image::DynamicImage::ImageRgba8(rgba.clone()), image::ImageFormat::Png)),
        ("image/png", encode(image::DynamicImage::ImageLuma16(gray16), image::ImageFormat::Png)),
        ("image/webp", encode(image::DynamicImage::ImageRgba8(rgba.clone()), image::ImageFormat::WebP)),
        ("image/gif", encode(image::DynamicImage::ImageRgba8(rgba), image::ImageFormat::Gif)),
        ("image/jpeg", include_bytes!("../../media/testdata/progressive_422.jpg").to_vec()),
        ("image/jpeg", include_bytes!("../../media/testdata/restart_422.jpg").to_vec()),
    ];
    let mut ids = Vec::new();
    for (content_type, body) in inputs {
        ids.push((content_type, upload(&app, "pics", content_type, body).await));
    }
    for (content_type, id) in ids {
        let item = settled(&app, &id).await;
        assert_eq!(item["status"], "processed", "{content_type}: {item}");
        let output = &item["outputs"][0];
        assert_eq!((output["width"].as_i64(), output["height"].as_i64()), (Some(32), Some(24)), "{item}");
        let key = output["key"].as_str().expect("key");
        assert!(key.starts_with(&format!("processed/pics/{}/{id}/", spec["spec_hash"].as_str().expect("hash"))));
        let decoded = image::load_from_memory(&object(&app, key).await).expect("output is a PNG");
        assert_eq!((decoded.width(), decoded.height()), (32, 24));
    }
}

fn ffmpeg_clip(dir: &std::path::Path, name: &str, codec_args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=3:size=160x120:rate=10"])
        .args(codec_args)
        .arg(&path)
        .status()
        .expect("ffmpeg runs (deploy/local/stack.sh installs it)");
    assert!(status.success());
    std::fs::read(path).expect("clip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mp4_and_webm_give_one_frame_per_second_at_their_timestamps() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mp4 = ffmpeg_clip(dir.path(), "clip.mp4", &["-pix_fmt", "yuv420p", "-c:v", "libx264"]);
    let webm = ffmpeg_clip(dir.path(), "clip.webm", &["-c:v", "libvpx", "-b:v", "200k"]);
    for (content_type, body) in [("video/mp4", mp4), ("video/webm", webm)] {
        let id = upload(&app, "clips", content_type, body).await;
        let item = settled(&app, &id).await;
        assert_eq!(item["status"], "processed", "{content_type}: {item}");
        let outputs = item["outputs"].as_array().expect("outputs");
        let frames: Vec<(i64, i64)> = outputs
            .iter()
            .map(|o| (o["frame_index"].as_i64().unwrap_or(-1), o["timestamp_ms"].as_i64().unwrap_or(-1)))
            .collect();
        assert_eq!(frames, [(0, 0), (1, 1000), (2, 2000)], "{content_type}: {item}");
        for output in outputs {
            let decoded =
                image::load_from_memory(&object(&app, output["key"].as_str().expect("key")).await).expect("png");
            assert_eq!((decoded.width(), decoded.height()), (64, 64));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_media_fail_with_a_reason_and_a_dlq_event_while_the_rest_flows() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    // Passes ingest's header and end checks, but the entropy-coded data is noise.
    let mut corrupt = jpeg(64, 64, 3);
    let len = corrupt.len();
    for byte in &mut corrupt[len / 3..len - 2] {
        *byte = 0xA5;
    }
    let mut random_video = vec![0x1A, 0x45, 0xDF, 0xA3];
    random_video.extend((0..4096).map(|i| (i * 7919 % 251) as u8));
    // A progressive scan bomb: a valid file whose last scan repeats 300 times.
    let file = include_bytes!("../../media/testdata/progressive_gray.jpg");
    let last_scan = file.windows(2).rposition(|w| w == [0xFF, 0xDA]).expect("a scan");
    let mut bomb = file[..file.len() - 2].to_vec();
    for _ in 0..300 {
        bomb.extend_from_slice(&file[last_scan..file.len() - 2]);
    }
    bomb.extend_from_slice(&[0xFF, 0xD9]);
    let bad_jpeg = upload(&app, "mixed", "image/jpeg", corrupt).await;
    let bad_video = upload(&app, "mixed", "video/x-matroska", random_video).await;
    let scan_bomb = upload(&app, "mixed", "image/jpeg", bomb).await;
    let good = upload(&app, "mixed", "image/png", png(40, 40, 4)).await;

    for id in [&bad_jpeg, &bad_video, &scan_bomb] {
        let item = settled(&app, id).await;
        assert_eq!(item["status"], "failed", "{item}");
        assert!(item["error"].as_str().is_some_and(|e| e.len() > 10), "a readable reason: {item}");
    }
    let bomb_item = settled(&app, &scan_bomb).await;
    assert!(bomb_item["error"].as_str().is_some_and(|e| e.contains("scans")), "{bomb_item}");
    assert_eq!(settled(&app, &good).await["status"], "processed");

    let dlq = app.ctx.topic(Topic::MediaDlq).to_string();
    let events = read_topic(&app.ctx.config, &dlq, 3, Duration::from_secs(20)).await;
    let mut failed: Vec<String> = events.iter().map(|(key, _)| key.clone()).collect();
    failed.sort();
    let mut expected = vec![bad_jpeg, bad_video, scan_bomb];
    expected.sort();
    assert_eq!(failed, expected, "{events:?}");
    assert!(events.iter().all(|(_, e)| e["data"]["reason"].as_str().is_some_and(|r| !r.is_empty())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_changes_nothing_and_reprocess_applies_a_new_spec() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let id = upload(&app, "again", "image/png", png(50, 50, 5)).await;
    let first = settled(&app, &id).await;
    assert_eq!(first["status"], "processed");
    assert_eq!(app.count("SELECT count(*) FROM media_outputs").await, 1);

    // No such dataset: 404. One made by its spec alone (no items yet) exists: nothing to enqueue.
    let status = |dataset: &'static str| {
        let request =
            app.http.post(app.url(&format!("/v1/datasets/{dataset}/reprocess"))).bearer_auth(&app.admin_token);
        async move { json_of(request.send().await.expect("post reprocess")).await }
    };
    let (code, body) = status("nowhere").await;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    put_pipeline(&app, "planned", json!({"width": 32})).await;
    let (code, body) = status("planned").await;
    assert_eq!((code, body["enqueued"].as_u64()), (202, Some(0)), "{body}");

    // Same spec: re-enqueueing the dataset delivers the event again; nothing changes. Wait until
    // the event is published and the group has consumed and committed it.
    reprocess(&app, "again").await;
    let topic = app.ctx.topic(Topic::MediaIngested).to_string();
    eventually(Duration::from_secs(30), "the redelivered event to be consumed", || async {
        let drained = app.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL").await == 0;
        (drained && crate::support::group_caught_up(&app.ctx.config, "preprocess", &topic).await).then_some(())
    })
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE topic LIKE '%media.ingested'").await,
        2,
        "it was sent twice"
    );
    assert_eq!(app.count("SELECT count(*) FROM media_outputs").await, 1, "a redelivered event adds no output");
    assert_eq!(media(&app, &id).await["processed_at"], first["processed_at"], "and does not re-process");

    // A new spec: reprocess makes outputs under its hash.
    let spec = put_pipeline(&app, "again", serde_json::json!({"width": 16, "height": 16, "color": "gray"})).await;
    reprocess(&app, "again").await;
    let hash = spec["spec_hash"].as_str().expect("hash").to_owned();
    let item = eventually(Duration::from_secs(30), "the item processed under the new spec", || async {
        let item = media(&app, &id).await;
        let outputs = item["outputs"].as_array().cloned().unwrap_or_default();
        outputs.iter().any(|o| o["key"].as_str().unwrap_or_default().contains(&hash)).then_some(item)
    })
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM media_outputs").await,
        1,
        "the old spec's output row is superseded: {item}"
    );
    let new_output = item["outputs"][0].clone();
    assert!(new_output["key"].as_str().unwrap_or_default().contains(&hash), "{item}");
    let decoded = image::load_from_memory(&object(&app, new_output["key"].as_str().expect("key")).await).expect("png");
    assert_eq!((decoded.width(), decoded.height(), decoded.color()), (16, 16, image::ColorType::L8));

    // A worker still on the first spec (its partition moved while it worked) finishes or fails
    // the item late: neither outcome is written over the one under the current spec.
    let media_id: uuid::Uuid = id.parse().expect("uuid");
    let (ingested, _) = store::item(&app.ctx, media_id).await.expect("item").expect("exists");
    let old = sluice_core::pipeline::PipelineSpec::default().hash();
    let output = sluice_core::pipeline::Output {
        key: sluice_core::pipeline::output_key("again", &old, media_id, 0),
        width: 64,
        height: 64,
        frame_index: 0,
        timestamp_ms: None,
    };
    assert!(!store::finish(&app.ctx, &ingested, &old, &[output], 1).await.expect("finish"), "a stale finish");
    let failed = sluice_core::pipeline::MediaFailed {
        media_id: Some(media_id),
        dataset: Some("again".into()),
        reason: "late".into(),
        source: "test".into(),
    };
    assert!(!store::fail(&app.ctx, failed, Some(&old)).await.expect("fail"), "a stale failure");
    let after = media(&app, &id).await;
    assert_eq!((after["status"].clone(), after["outputs"].clone()), (json!("processed"), item["outputs"].clone()));
    assert_eq!(app.count("SELECT count(*) FROM media_outputs").await, 1, "no stale output row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_halfway_has_its_partitions_finished_by_the_survivor() {
    let env = TestEnv::new().await;
    // Only ingest in this process: the two `sluice serve preprocess` processes are the workers.
    let app = RunningApp::spawn_services(env.config.clone(), &[sluice::Service::Ingest]).await;
    let spawn_worker = || {
        sluice_command()
            .args(["serve", "preprocess"])
            .envs(sluice_env(&env))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn a preprocess worker")
    };
    let mut doomed = spawn_worker();
    let mut survivor = spawn_worker();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let bodies: Vec<Vec<u8>> = (0..500u32)
        .map(|i| {
            let img = image::RgbImage::from_fn(24, 24, |x, y| {
                image::Rgb([(i % 251) as u8, (i / 251) as u8, (x * 10 + y) as u8])
            });
            encode(image::DynamicImage::ImageRgb8(img), image::ImageFormat::Png)
        })
        .collect();
    let uploads = futures::stream::iter(bodies.into_iter().map(|body| upload(&app, "bulk", "image/png", body)));
    let ids: Vec<String> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(uploads, 16)).await;
    assert_eq!(ids.len(), 500);

    eventually(Duration::from_secs(60), "about half the items processed", || async {
        (app.count("SELECT count(*) FROM media WHERE status = 'processed'").await >= 150).then_some(())
    })
    .await;
    doomed.kill().expect("SIGKILL one worker");
    doomed.wait().expect("reap");
    let processed_at_kill = app.count("SELECT count(*) FROM media WHERE status = 'processed'").await;

    eventually(Duration::from_secs(120), "every item processed by the survivor", || async {
        (app.count("SELECT count(*) FROM media WHERE status = 'processed'").await == 500).then_some(())
    })
    .await;
    assert!(survivor.try_wait().expect("status").is_none(), "the survivor kept running");
    survivor.kill().expect("stop survivor");
    survivor.wait().expect("reap");
    assert!(processed_at_kill < 500, "the kill happened mid-run ({processed_at_kill} of 500 done)");

    assert_eq!(app.count("SELECT count(*) FROM media_outputs").await, 500, "one output row per item");
    assert_eq!(app.count("SELECT count(DISTINCT key) FROM media_outputs").await, 500);
    let mut objects = 0;
    let mut token = None;
    loop {
        let page = app
            .ctx
            .s3
            .list_objects_v2()
            .bucket(&app.ctx.config.s3.bucket)
            .prefix("processed/bulk/")
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("list outputs");
        objects += page.contents().len();
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(objects, 500, "one output object per item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopping_mid_run_skips_no_item() {
    let env = TestEnv::new().await;
    let ingest = RunningApp::spawn_services(env.config.clone(), &[sluice::Service::Ingest]).await;
    // The preprocess worker alone reaches PostgreSQL through a proxy the test stops.
    let (config, proxy) = through_proxy(&env, Cut::Postgres).await;
    let worker = RunningApp::spawn_services(config, &[sluice::Service::Preprocess]).await;
    let mut ids = Vec::new();
    for i in 0..40u8 {
        ids.push(upload(&ingest, "outage", "image/png", png(20, 20, i)).await);
    }
    eventually(Duration::from_secs(60), "some items processed", || async {
        (ingest.count("SELECT count(*) FROM media WHERE status = 'processed'").await >= 5).then_some(())
    })
    .await;
    proxy.stop().await;
    for i in 40..80u8 {
        ids.push(upload(&ingest, "outage", "image/png", png(20, 20, i)).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.resume().await;
    eventually(Duration::from_secs(90), "every item processed after PostgreSQL returns", || async {
        (ingest.count("SELECT count(*) FROM media WHERE status = 'processed'").await == 80).then_some(())
    })
    .await;
    assert_eq!(ingest.count("SELECT count(*) FROM media_outputs").await, 80);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_that_outlasts_the_ffmpeg_timeout_fails_and_the_rest_flows() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.preprocess.ffmpeg_timeout_ms = 20;
    // A timeout beside other items is retried once, alone; a timeout alone fails the item.
    let app = RunningApp::spawn(config).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let clip = ffmpeg_clip(dir.path(), "slow.mp4", &["-pix_fmt", "yuv420p", "-c:v", "libx264"]);
    let slow = upload(&app, "slow", "video/mp4", clip).await;
    let good = upload(&app, "slow", "image/png", png(30, 30, 6)).await;
    let item = settled(&app, &slow).await;
    assert_eq!(item["status"], "failed", "{item}");
    assert!(
        item["error"].as_str().is_some_and(|e| e.contains("timeout") && e.contains("attempt 2, run alone: true")),
        "{item}"
    );
    assert_eq!(settled(&app, &good).await["status"], "processed");
    let dlq = app.ctx.topic(Topic::MediaDlq).to_string();
    let events = read_topic(&app.ctx.config, &dlq, 1, Duration::from_secs(20)).await;
    assert_eq!(events.first().map(|(k, _)| k.as_str()), Some(slow.as_str()), "{events:?}");
}

/// A JPEG whose left half is red and right half blue, tagged with EXIF orientation 6 (the
/// camera was turned: displayed rotated 90° clockwise, the red half on top).
fn rotated_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(
            w,
            h,
            |x, _| if x < w / 2 { image::Rgb([220, 20, 20]) } else { image::Rgb([20, 20, 220]) },
        );
    let plain = encode(image::DynamicImage::ImageRgb8(img), image::ImageFormat::Jpeg);
    let tiff = crate::crafted::tiff(&[], &[(0x0112, 3, 6)]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(app1.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exif_orientation_is_honoured_on_both_decode_paths() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    put_pipeline(&app, "turned", serde_json::json!({"width": 32, "height": 32, "fit": "fill"})).await;
    // 80x40 takes the general decoder; 1600x800 the DCT-scaled JPEG path.
    for (w, h) in [(80, 40), (1600, 800)] {
        let id = upload(&app, "turned", "image/jpeg", rotated_jpeg(w, h)).await;
        let item = settled(&app, &id).await;
        assert_eq!(item["status"], "processed", "{item}");
        let out = image::load_from_memory(&object(&app, item["outputs"][0]["key"].as_str().expect("key")).await)
            .expect("png")
            .to_rgb8();
        let (top, bottom) = (out.get_pixel(16, 4).0, out.get_pixel(16, 28).0);
        assert!(top[0] > 150 && top[2] < 100, "{w}x{h}: red on top after rotation, got {top:?}");
        assert!(bottom[2] > 150 && bottom[0] < 100, "{w}x{h}: blue below, got {bottom:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_recovers_an_item_whose_event_was_lost() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.preprocess.reconcile_after_secs = 2;
    let app = RunningApp::spawn(config).await;
    // An accepted item whose media.ingested event never reached Kafka (a broker that lost it):
    // its object and row exist, no event does.
    let id = uuid::Uuid::now_v7();
    let key = format!("raw/lost/{id}.png");
    let body = png(16, 16, 7);
    app.ctx
        .s3
        .put_object()
        .bucket(&app.ctx.config.s3.bucket)
        .key(&key)
        .body(body.clone().into())
        .send()
        .await
        .expect("put");
    let db = app.ctx.db.get().await.expect("conn");
    db.execute("INSERT INTO datasets (name) VALUES ('lost')", &[]).await.expect("dataset");
    db.execute(
        "INSERT INTO media (id, dataset, kind, content_type, bytes, sha256, width, height, raw_key, updated_at)
         VALUES ($1, 'lost', 'image', 'image/png', $2, 'x', 16, 16, $3, now() - interval '1 hour')",
        &[&id, &(body.len() as i64), &key],
    )
    .await
    .expect("media row");
    let item = settled(&app, &id.to_string()).await;
    assert_eq!(item["status"], "processed", "{item}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_re_enqueues_lost_events_but_leaves_a_backlog_alone() {
    let env = TestEnv::new().await;
    // No worker runs yet: the group has committed nothing, so a published event is a backlog.
    let ctx = Context::new(env.config.clone()).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    let db = ctx.db.get().await.expect("conn");
    db.execute("INSERT INTO datasets (name) VALUES ('overdue')", &[]).await.expect("dataset");
    let mut ids = Vec::new();
    for seed in 0..3 {
        let id = uuid::Uuid::now_v7();
        let key = format!("raw/overdue/{id}.png");
        let body = png(16, 16, seed);
        ctx.s3
            .put_object()
            .bucket(&ctx.config.s3.bucket)
            .key(&key)
            .body(body.clone().into())
            .send()
            .await
            .expect("put");
        db.execute(
            "INSERT INTO media (id, dataset, kind, content_type, bytes, sha256, width, height, raw_key)
             VALUES ($1, 'overdue', 'image', 'image/png', $2, $4, 16, 16, $3)",
            &[&id, &(body.len() as i64), &key, &format!("sha-{seed}")],
        )
        .await
        .expect("media row");
        ids.push(id);
    }
    // Each item's media.ingested goes through the outbox to Kafka, where it waits unread.
    assert_eq!(store::reprocess(&ctx, "overdue").await.expect("enqueue"), 3);
    assert_eq!(outbox::publish_batch(&ctx).await.expect("publish"), 3);
    let recorded: i64 = db
        .query_one("SELECT count(*) FROM outbox WHERE sent_offset IS NOT NULL AND sent_partition IS NOT NULL", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(recorded, 3, "the relay records where Kafka stored each event");
    // Item 1: the broker lost its event (the log ends before its offset). Item 2: no record of
    // an event at all. All three are an hour past their deadline.
    db.execute("UPDATE outbox SET sent_offset = sent_offset + 1000000 WHERE key = $1", &[&ids[1].to_string()])
        .await
        .expect("lose");
    db.execute("DELETE FROM outbox WHERE key = $1", &[&ids[2].to_string()]).await.expect("forget");
    db.execute("UPDATE media SET updated_at = now() - interval '1 hour' WHERE dataset = 'overdue'", &[])
        .await
        .expect("age");

    let found = store::reconcile(&ctx, 60.0).await.expect("reconcile");
    assert_eq!(found, Reconciled { reenqueued: 2, queued: 1 }, "only the queued item is left alone");
    let events_of = |id: uuid::Uuid| {
        let db = &db;
        async move {
            let n: i64 = db
                .query_one("SELECT count(*) FROM outbox WHERE key = $1", &[&id.to_string()])
                .await
                .expect("count")
                .get(0);
            n
        }
    };
    assert_eq!(
        (events_of(ids[0]).await, events_of(ids[1]).await, events_of(ids[2]).await),
        (1, 2, 1),
        "new events for the lost two only"
    );
    let again = store::reconcile(&ctx, 60.0).await.expect("reconcile");
    assert_eq!(again, Reconciled { reenqueued: 0, queued: 1 }, "nothing is enqueued twice");

    // A worker drains the backlog and the re-enqueued events: every item ends processed once.
    let app = RunningApp::spawn(env.config.clone()).await;
    for id in &ids {
        let item = settled(&app, &id.to_string()).await;
        assert_eq!(item["status"], "processed", "{item}");
        assert_eq!(item["outputs"].as_array().map(Vec::len), Some(1), "{item}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_sampling_keeps_exactly_the_key_frames() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    put_pipeline(&app, "keys", serde_json::json!({"video": {"keyframes": true, "max_frames": 10}})).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // 3 s at 10 fps with a key frame every 15 frames: key frames at 0 s and 1.5 s.
    let clip = ffmpeg_clip(
        dir.path(),
        "keys.mp4",
        &["-pix_fmt", "yuv420p", "-c:v", "libx264", "-x264-params", "keyint=15:min-keyint=15:scenecut=0"],
    );
    let id = upload(&app, "keys", "video/mp4", clip).await;
    let item = settled(&app, &id).await;
    assert_eq!(item["status"], "processed", "{item}");
    let frames: Vec<(i64, i64)> = item["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| (o["frame_index"].as_i64().unwrap_or(-1), o["timestamp_ms"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(frames, [(0, 0), (1, 1500)], "{item}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cmyk_jpeg_comes_out_in_the_right_colours() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    put_pipeline(&app, "print", serde_json::json!({"width": 48, "height": 32, "fit": "fill"})).await;
    // 48×32, left half red (220, 30, 30), right half blue (30, 30, 220), saved as CMYK by Pillow.
    let cmyk = include_bytes!("fixtures/cmyk.jpg").to_vec();
    let id = upload(&app, "print", "image/jpeg", cmyk).await;
    let item = settled(&app, &id).await;
    assert_eq!(item["status"], "processed", "{item}");
    let key = item["outputs"][0]["key"].as_str().expect("key").to_owned();
    let out = image::load_from_memory(&object(&app, &key).await).expect("png").to_rgb8();
    let close = |pixel: &image::Rgb<u8>, want: [u8; 3]| pixel.0.iter().zip(want).all(|(a, b)| a.abs_diff(b) < 40);
    assert!(close(out.get_pixel(6, 16), [220, 30, 30]), "left {:?}", out.get_pixel(6, 16));
    assert!(close(out.get_pixel(42, 16), [30, 30, 220]), "right {:?}", out.get_pixel(42, 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_over_its_memory_cap_fails_the_video_and_the_rest_flows() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    // Far below what ffmpeg needs to map its libraries and decode: the cap must stop it.
    config.preprocess.ffmpeg_memory_mib = 16;
    let app = RunningApp::spawn(config).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let clip = ffmpeg_clip(dir.path(), "big.mp4", &["-pix_fmt", "yuv420p", "-c:v", "libx264"]);
    let capped = upload(&app, "capped", "video/mp4", clip).await;
    let good = upload(&app, "capped", "image/png", png(30, 30, 7)).await;
    let item = settled(&app, &capped).await;
    assert_eq!(item["status"], "failed", "{item}");
    // The address-space limit is what stopped it (ffmpeg cannot even map its libraries).
    let error = item["error"].as_str().unwrap_or_default();
    assert!(error.contains("ffmpeg") && (error.contains("map") || error.contains("alloc")), "{item}");
    assert_eq!(settled(&app, &good).await["status"], "processed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_kept_killing_workers_is_dead_lettered_instead_of_retried_forever() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.preprocess.max_attempts = 3;
    // Accepted while no preprocess worker runs.
    let ingest = RunningApp::spawn_services(config.clone(), &[sluice::Service::Ingest]).await;
    let doomed = upload(&ingest, "crashy", "image/png", png(20, 20, 1)).await;
    let fine = upload(&ingest, "crashy", "image/png", png(20, 20, 2)).await;
    // As if three earlier deliveries of `doomed` had each started it and died; `fine` only two.
    let client = ingest.ctx.db.get().await.expect("connection");
    for (id, attempts) in [(&doomed, 3), (&fine, 2)] {
        let id = uuid::Uuid::parse_str(id).expect("id");
        client
            .execute("UPDATE media SET status = 'processing', attempts = $2 WHERE id = $1", &[&id, &attempts])
            .await
            .expect("set attempts");
    }
    let app = RunningApp::spawn_services(config, &[sluice::Service::Preprocess]).await;
    let item = settled(&ingest, &doomed).await;
    assert_eq!(item["status"], "failed", "{item}");
    assert!(item["error"].as_str().is_some_and(|e| e.contains("gave up after 3 attempts")), "{item}");
    assert_eq!(settled(&ingest, &fine).await["status"], "processed", "a third attempt is still allowed");
    let dlq = app.ctx.topic(Topic::MediaDlq).to_string();
    let events = read_topic(&app.ctx.config, &dlq, 2, Duration::from_secs(10)).await;
    assert_eq!(events.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), [doomed.as_str()], "{events:?}");
    assert_eq!(app.count("SELECT max(attempts)::bigint FROM media").await, 0, "ended items reset their count");
}

/// Reprocessing counts its attempts too: a processed item whose reprocessing kept killing its
/// workers is given up on like any other, not delivered forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_whose_reprocessing_kept_killing_workers_is_given_up() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.preprocess.max_attempts = 3;
    let app = RunningApp::spawn(config).await;
    let id = upload(&app, "recrash", "image/png", png(30, 30, 4)).await;
    assert_eq!(settled(&app, &id).await["status"], "processed");
    // As if three deliveries of its reprocessing had each started it and died.
    let uuid = uuid::Uuid::parse_str(&id).expect("id");
    let client = app.ctx.db.get().await.expect("connection");
    client.execute("UPDATE media SET attempts = 3 WHERE id = $1", &[&uuid]).await.expect("set attempts");
    put_pipeline(&app, "recrash", serde_json::json!({"width": 12, "height": 12})).await;
    reprocess(&app, "recrash").await;
    let item = eventually(Duration::from_secs(30), "the reprocessing to be given up", || async {
        let item = media(&app, &id).await;
        (item["status"] == "failed").then_some(item)
    })
    .await;
    assert!(item["error"].as_str().is_some_and(|e| e.contains("gave up after 3 attempts")), "{item}");
}

/// `GET /v1/datasets/{name}/media` pages newest first with filters; `GET /v1/media/{id}/content`
/// streams the raw upload and each processed output, typed and under a policy that runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datasets_items_are_paged_with_filters_and_their_bytes_served_raw_and_processed() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    put_pipeline(&app, "browse", serde_json::json!({"width": 20, "height": 10, "fit": "fill"})).await;
    let raw_cat = png(50, 40, 1);
    let (status, answer) = post_raw(&app, "?dataset=browse&label=cat", "image/png", raw_cat.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let cat = answer["items"][0]["id"].as_str().expect("id").to_owned();
    let (status, answer) = post_raw(&app, "?dataset=browse&label=dog", "image/jpeg", jpeg(30, 30, 2)).await;
    assert_eq!(status, 202, "{answer}");
    let dog = answer["items"][0]["id"].as_str().expect("id").to_owned();
    let mut corrupt = jpeg(64, 64, 3);
    let len = corrupt.len();
    corrupt[len / 3..len - 2].fill(0xA5);
    let broken = upload(&app, "browse", "image/jpeg", corrupt).await;
    for id in [&cat, &dog, &broken] {
        settled(&app, id).await;
    }

    let get = |path: String| {
        let app = &app;
        async move { json_of(app.http.get(app.url(&path)).bearer_auth(&app.admin_token).send().await.expect("get")).await }
    };
    let page = |query: &'static str| {
        let get = &get;
        async move {
            let (status, body) = get(format!("/v1/datasets/browse/media{query}")).await;
            assert_eq!(status, 200, "{query}: {body}");
            body
        }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["items"].as_array().expect("items").iter().map(|i| i["id"].as_str().expect("id").to_owned()).collect()
    };
    let all = page("").await;
    assert_eq!(ids(&all), [broken.as_str(), dog.as_str(), cat.as_str()], "newest first: {all}");
    assert_eq!(all["next_before"], Value::Null, "one page holds them all");
    let failed = &all["items"][0];
    assert_eq!((failed["status"].as_str(), failed["outputs"].as_i64()), (Some("failed"), Some(0)), "{failed}");
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()), "a failed item says why: {failed}");
    assert_eq!(all["items"][2]["outputs"], 1, "{all}");
    assert_eq!(ids(&page("?label=cat").await), [cat.as_str()]);
    assert_eq!(ids(&page("?status=failed").await), [broken.as_str()]);
    assert_eq!(ids(&page("?unlabelled=true").await), [broken.as_str()]);
    let first = page("?limit=2").await;
    assert_eq!(ids(&first), [broken.as_str(), dog.as_str()]);
    assert_eq!(first["next_before"], dog.as_str(), "{first}");
    let rest = get(format!("/v1/datasets/browse/media?limit=2&before={dog}")).await.1;
    assert_eq!(ids(&rest), [cat.as_str()], "the second page continues where the first ended");
    for bad in
        ["?status=done", "?limit=0", "?limit=201", "?before=nope", "?unlabelled=yes", "?label=cat&unlabelled=true"]
    {
        let (status, body) = get(format!("/v1/datasets/browse/media{bad}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {body}");
    }
    assert_eq!(get("/v1/datasets/nowhere/media".into()).await.0, 404);

    let content = |query: String| {
        let app = &app;
        async move { app.http.get(app.url(&query)).bearer_auth(&app.admin_token).send().await.expect("content") }
    };
    let processed = content(format!("/v1/media/{cat}/content")).await;
    assert_eq!(processed.status(), 200);
    assert_eq!(processed.headers()["content-type"], "image/png");
    assert_eq!(processed.headers()["x-content-type-options"], "nosniff");
    assert!(processed.headers()["content-security-policy"].to_str().expect("ascii").contains("sandbox"));
    let image = image::load_from_memory(&processed.bytes().await.expect("bytes")).expect("a PNG");
    assert_eq!((image.width(), image.height()), (20, 10), "the processed output, at the spec's size");
    let raw = content(format!("/v1/media/{cat}/content?variant=raw")).await;
    assert_eq!((raw.status().as_u16(), raw.headers()["content-type"].clone()), (200, "image/png".parse().expect("hv")));
    assert_eq!(raw.bytes().await.expect("bytes").to_vec(), raw_cat, "the raw bytes as uploaded");
    let raw_dog = content(format!("/v1/media/{dog}/content?variant=raw")).await;
    assert_eq!(raw_dog.headers()["content-type"], "image/jpeg");
    for (query, status) in [
        (format!("/v1/media/{broken}/content"), 404),
        (format!("/v1/media/{cat}/content?output=1"), 404),
        (format!("/v1/media/{cat}/content?output=-1"), 400),
        (format!("/v1/media/{cat}/content?variant=thumbnail"), 400),
        (format!("/v1/media/{}/content", uuid::Uuid::now_v7()), 404),
        ("/v1/media/nope/content".to_owned(), 400),
    ] {
        let answer = content(query.clone()).await;
        assert_eq!(answer.status().as_u16(), status, "{query}");
        assert_eq!(answer.headers()["content-type"], "application/json", "{query}");
    }
}
