//! The ingest API end to end: uploads through HTTP into the real S3, PostgreSQL and Kafka.

use std::{io::Cursor, time::Duration};

use reqwest::{
    StatusCode,
    multipart::{Form, Part},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_core::{auth::Scope, topics::Topic};
use sluice_testkit::TestEnv;

use crate::support::{RunningApp, json_of, read_topic, topic_message_count};

pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(7).wrapping_add(seed), (y as u8).wrapping_mul(3), seed])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encode PNG");
    out.into_inner()
}

pub fn jpeg(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x as u8).wrapping_add(seed), (y as u8).wrapping_mul(5), seed.wrapping_mul(3)])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).expect("encode JPEG");
    out.into_inner()
}

/// POSTs `body` raw with `content_type` and `query`.
pub async fn post_raw(app: &RunningApp, query: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(&format!("/v1/media{query}")))
        .bearer_auth(&app.admin_token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    json_of(response).await
}

pub async fn raw_objects(app: &RunningApp) -> Vec<String> {
    let listing = app
        .ctx
        .s3
        .list_objects_v2()
        .bucket(&app.ctx.config.s3.bucket)
        .prefix("raw/")
        .send()
        .await
        .expect("list raw objects");
    listing.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
}

async fn get(app: &RunningApp, path: &str) -> (u16, Value) {
    json_of(app.http.get(app.url(path)).bearer_auth(&app.admin_token).send().await.expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_jpeg_is_stored_recorded_and_published_once() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let body = jpeg(64, 48, 1);
    let (status, answer) =
        post_raw(&app, "?dataset=cats&label=tabby&source=camera-1", "image/jpeg", body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let item = &answer["items"][0];
    assert_eq!(item["dataset"], "cats");
    assert_eq!(item["label"], "tabby");
    assert_eq!(item["kind"], "image");
    assert_eq!(item["content_type"], "image/jpeg");
    assert_eq!(item["duplicate"], false);
    assert_eq!(item["status"], "accepted");
    assert_eq!(item["bytes"], body.len());
    assert_eq!(item["sha256"], hex::encode(Sha256::digest(&body)));
    let id = item["id"].as_str().expect("id").to_owned();

    let (status, media) = get(&app, &format!("/v1/media/{id}")).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["raw"]["key"], format!("raw/cats/{id}.jpg"));
    assert_eq!((media["width"].as_i64(), media["height"].as_i64()), (Some(64), Some(48)));
    // Preprocess (running in the same app) may already have picked it up.
    assert!(["accepted", "processing", "processed"].contains(&media["status"].as_str().unwrap_or_default()), "{media}");

    let object = app
        .ctx
        .s3
        .get_object()
        .bucket(&app.ctx.config.s3.bucket)
        .key(format!("raw/cats/{id}.jpg"))
        .send()
        .await
        .expect("raw object exists");
    let stored = object.body.collect().await.expect("read").into_bytes();
    assert_eq!(stored.as_ref(), body.as_slice());

    let topic = app.ctx.topic(Topic::MediaIngested).to_string();
    let events = read_topic(&app.ctx.config, &topic, 1, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (key, event) = &events[0];
    assert_eq!(key, &id);
    assert_eq!(event["type"], "media.ingested");
    assert_eq!(event["data"]["media_id"], id.as_str());
    assert_eq!(event["data"]["raw_key"], format!("raw/cats/{id}.jpg"));
    sluice_testkit::eventually(Duration::from_secs(10), "the outbox to drain", || async {
        (app.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL").await == 0).then_some(())
    })
    .await;
    assert_eq!(topic_message_count(&app.ctx.config, &topic).await, 1, "published once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_with_several_files_records_each_with_the_shared_fields() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let form = Form::new()
        .text("dataset", "dogs")
        .text("label", "corgi")
        .text("metadata", r#"{"camera": "a", "n": 1}"#)
        .part("file", Part::bytes(png(20, 10, 1)).file_name("a.png").mime_str("image/png").expect("mime"))
        .part("file", Part::bytes(jpeg(30, 15, 2)).file_name("b.jpg").mime_str("image/jpeg").expect("mime"));
    let response =
        app.http.post(app.url("/v1/media")).bearer_auth(&app.admin_token).multipart(form).send().await.expect("send");
    let (status, answer) = json_of(response).await;
    assert_eq!(status, 202, "{answer}");
    let items = answer["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["content_type"], "image/png");
    assert_eq!(items[1]["content_type"], "image/jpeg");
    let (_, media) = get(&app, &format!("/v1/media/{}", items[1]["id"].as_str().expect("id"))).await;
    assert_eq!(media["metadata"]["camera"], "a");
    assert_eq!(media["label"], "corgi");

    let (status, dataset) = get(&app, "/v1/datasets/dogs").await;
    assert_eq!(status, 200, "{dataset}");
    assert_eq!(dataset["total"], 2);
    assert_eq!(dataset["by_label"]["corgi"], 2);
    let by_status = dataset["by_status"].as_object().expect("by_status");
    assert_eq!(by_status.values().filter_map(Value::as_i64).sum::<i64>(), 2, "{dataset}");
    let (_, all) = get(&app, "/v1/datasets").await;
    assert_eq!(all["datasets"].as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(raw_objects(&app).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_in_one_dataset_are_stored_once() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let body = png(16, 16, 9);
    let (_, first) = post_raw(&app, "?dataset=a", "image/png", body.clone()).await;
    let (status, second) = post_raw(&app, "?dataset=a", "image/png", body.clone()).await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["items"][0]["duplicate"], true);
    assert_eq!(second["items"][0]["id"], first["items"][0]["id"]);
    let (_, other) = post_raw(&app, "?dataset=b", "image/png", body).await;
    assert_eq!(other["items"][0]["duplicate"], false, "another dataset stores its own copy");
    assert_ne!(other["items"][0]["id"], first["items"][0]["id"]);
    assert_eq!(raw_objects(&app).await.len(), 2, "the duplicate's object was removed");
    assert_eq!(app.count("SELECT count(*) FROM media").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 2, "a duplicate publishes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_data_even_when_they_look_like_sql_and_can_be_changed() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let label = "x'); DROP TABLE media; --";
    let query = format!("?label={}", percent_encode(label));
    let (status, answer) = post_raw(&app, &query, "image/png", png(8, 8, 3)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["items"][0]["label"], label);
    assert_eq!(answer["items"][0]["dataset"], "default");
    let id = answer["items"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(app.count("SELECT count(*) FROM media").await, 1, "the media table is intact");

    let response = app
        .http
        .patch(app.url(&format!("/v1/media/{id}")))
        .bearer_auth(&app.admin_token)
        .json(&serde_json::json!({"label": "siamese"}))
        .send()
        .await
        .expect("patch");
    let (status, media) = json_of(response).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["label"], "siamese");
    let (status, _) = get(&app, "/v1/media/00000000-0000-0000-0000-000000000000").await;
    assert_eq!(status, 404);
    let (status, _) = get(&app, "/v1/media/not-a-uuid").await;
    assert_eq!(status, 400);
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// One bad request and what it must be answered with.
struct Bad {
    name: &'static str,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_leaves_nothing_anywhere() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.max_body_bytes = 1024 * 1024;
    let app = RunningApp::spawn(config).await;
    let no_ingest = app.token(&[Scope::Predict]).await;
    let post = |query: &str| app.http.post(app.url(&format!("/v1/media{query}"))).bearer_auth(&app.admin_token);
    let raw =
        |query: &str, content_type: &str, body: Vec<u8>| post(query).header("content-type", content_type).body(body);
    let good = png(32, 32, 5);
    let jpg = jpeg(64, 64, 5);
    let mut bomb = png(1, 1, 0);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut wide = png(1, 1, 0);
    wide[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    wide[20..24].copy_from_slice(&1_000u32.to_be_bytes());
    // Few pixels, but a side past 65,535 (resizing it would take gigabytes of filter weights).
    let mut hairline = png(1, 1, 0);
    hairline[16..20].copy_from_slice(&5_000_000u32.to_be_bytes());
    // A TIFF whose data is JPEG-compressed (tag 259 = 7).
    let mut jpeg_tiff = crate::crafted::tiff(&[], &[(256, 3, 8), (257, 3, 8), (259, 3, 7)]);
    jpeg_tiff.extend([0u8; 64]);
    // A TIFF whose directory follows 400 KB of data (past the first look) and claims 10^10 pixels.
    let late_bomb = crate::crafted::tiff(&[7u8; 400_000], &[(256, 4, 100_000), (257, 4, 100_000)]);
    let head = good[..good.len().min(1024)].to_vec();
    let huge_stream = futures::stream::iter((0..40).map(move |i| {
        let mut chunk = vec![0u8; 64 * 1024];
        if i == 0 {
            chunk[..head.len()].copy_from_slice(&head);
        }
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
    }));
    let file_form = |form: Form| post("").multipart(form);
    let cases = vec![
        Bad { name: "empty body", request: raw("", "image/png", Vec::new()), status: 400, code: "empty_upload" },
        Bad {
            name: "zero-byte file part",
            request: file_form(Form::new().part("file", Part::bytes(Vec::new()).file_name("a.png"))),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "multipart without a file part",
            request: file_form(Form::new().text("dataset", "x")),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "HTML sent as image/jpeg",
            request: raw("", "image/jpeg", b"<html><body>hello</body></html>".to_vec()),
            status: 415,
            code: "unsupported_media_type",
        },
        Bad {
            name: "plain text sent as image/jpeg",
            request: raw("", "image/jpeg", b"just some text".to_vec()),
            status: 415,
            code: "unsupported_media_type",
        },
        Bad {
            name: "PNG declared as video",
            request: raw("", "video/mp4", good.clone()),
            status: 415,
            code: "content_type_mismatch",
        },
        Bad {
            name: "truncated JPEG",
            request: raw("", "image/jpeg", jpg[..jpg.len() / 2].to_vec()),
            status: 422,
            code: "truncated_media",
        },
        Bad {
            name: "truncated PNG",
            request: raw("", "image/png", good[..good.len() - 20].to_vec()),
            status: 422,
            code: "truncated_media",
        },
        Bad { name: "PNG 5000000x1", request: raw("", "image/png", hairline), status: 422, code: "too_many_pixels" },
        Bad {
            name: "TIFF bomb with its directory at the end",
            request: raw("", "image/tiff", late_bomb),
            status: 422,
            code: "too_many_pixels",
        },
        Bad {
            name: "JPEG-compressed TIFF",
            request: raw("", "image/tiff", jpeg_tiff),
            status: 415,
            code: "unsupported_media_type",
        },
        Bad {
            name: "PNG bomb 100000x100000",
            request: raw("", "image/png", bomb),
            status: 422,
            code: "too_many_pixels",
        },
        Bad {
            name: "PNG over the pixel limit",
            request: raw("", "image/png", wide),
            status: 422,
            code: "too_many_pixels",
        },
        Bad {
            name: "body over the size limit, declared",
            request: raw("", "image/png", vec![0u8; 2 * 1024 * 1024]),
            status: 413,
            code: "too_large",
        },
        Bad {
            name: "body over the size limit, streamed without a length",
            request: post("").header("content-type", "image/png").body(reqwest::Body::wrap_stream(huge_stream)),
            status: 413,
            code: "too_large",
        },
        Bad {
            name: "a request Content-Type that is not media or a form",
            request: raw("", "text/plain", good.clone()),
            status: 415,
            code: "unsupported_media_type",
        },
        Bad {
            name: "dataset ../",
            request: raw("?dataset=..%2Fetc", "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "dataset with /",
            request: raw("?dataset=a%2Fb", "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "dataset with spaces",
            request: raw("?dataset=a+b", "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "dataset upper case",
            request: raw("?dataset=Cats", "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "dataset of 200 characters",
            request: raw(&format!("?dataset={}", "a".repeat(200)), "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "dataset not UTF-8",
            request: raw("?dataset=%FF%FE", "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "multipart dataset not UTF-8",
            request: file_form(
                Form::new()
                    .part("dataset", Part::bytes(vec![0xFF, 0xFE]))
                    .part("file", Part::bytes(good.clone()).file_name("a.png")),
            ),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "label of 10 KB",
            request: raw(&format!("?label={}", "x".repeat(10 * 1024)), "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "label with control characters",
            request: raw("?label=a%0Ab", "image/png", good.clone()),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "metadata not JSON",
            request: file_form(
                Form::new().text("metadata", "{nope").part("file", Part::bytes(good.clone()).file_name("a.png")),
            ),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "metadata not an object",
            request: file_form(
                Form::new().text("metadata", "[1, 2]").part("file", Part::bytes(good.clone()).file_name("a.png")),
            ),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "metadata with a NUL character",
            request: file_form(
                Form::new()
                    .text("metadata", r#"{"a": "\u0000"}"#)
                    .part("file", Part::bytes(good.clone()).file_name("a.png")),
            ),
            status: 400,
            code: "invalid_request",
        },
        Bad {
            name: "a bad second file rejects the whole request",
            request: file_form(
                Form::new()
                    .part("file", Part::bytes(good.clone()).file_name("a.png"))
                    .part("file", Part::bytes(b"not media".to_vec()).file_name("b.png")),
            ),
            status: 415,
            code: "unsupported_media_type",
        },
        Bad {
            name: "missing token",
            request: app.http.post(app.url("/v1/media")).header("content-type", "image/png").body(good.clone()),
            status: 401,
            code: "unauthorized",
        },
        Bad {
            name: "wrong token",
            request: app
                .http
                .post(app.url("/v1/media"))
                .bearer_auth("slc_not-a-real-token")
                .header("content-type", "image/png")
                .body(good.clone()),
            status: 401,
            code: "unauthorized",
        },
        Bad {
            name: "token without the ingest scope",
            request: app
                .http
                .post(app.url("/v1/media"))
                .bearer_auth(&no_ingest)
                .header("content-type", "image/png")
                .body(good.clone()),
            status: 403,
            code: "forbidden",
        },
    ];

    let topic = app.ctx.topic(Topic::MediaIngested).to_string();
    for case in cases {
        let (status, body) = json_of(case.request.send().await.expect(case.name)).await;
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.name);
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| m.len() > 10),
            "{}: a message a person can act on: {body}",
            case.name
        );
        assert!(raw_objects(&app).await.is_empty(), "{}: left an S3 object", case.name);
        assert_eq!(app.count("SELECT count(*) FROM media").await, 0, "{}: left a media row", case.name);
        assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0, "{}: left an outbox row", case.name);
    }
    // Give the relay time to publish anything it might (it must have nothing).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topic_message_count(&app.ctx.config, &topic).await, 0, "no Kafka message");
    assert_eq!(
        StatusCode::ACCEPTED,
        post_raw(&app, "", "image/png", good).await.0,
        "the same app still accepts good input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_larger_than_a_part_leaves_no_object_and_no_open_upload() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.ingest.multipart_part_bytes = 5 * 1024 * 1024;
    let app = RunningApp::spawn(config).await;
    // A real PNG header, then 11 MiB of noise and no IEND chunk: three parts, then truncation.
    let mut body = png(64, 64, 1);
    body.truncate(body.len() - 12);
    let mut noise = vec![0u8; 11 * 1024 * 1024];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut noise);
    body.extend_from_slice(&noise);
    let (status, answer) = post_raw(&app, "", "image/png", body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "truncated_media");
    assert!(raw_objects(&app).await.is_empty());
    let uploads =
        app.ctx.s3.list_multipart_uploads().bucket(&app.ctx.config.s3.bucket).send().await.expect("list uploads");
    assert!(uploads.uploads().is_empty(), "the multipart upload was aborted: {:?}", uploads.uploads());
    assert_eq!(app.count("SELECT count(*) FROM media").await, 0);
}

/// Uploads `first` to dataset `stalled`, then sends nothing more until the request's deadline
/// answers 503.
async fn stall_past_the_deadline(app: &RunningApp, content_type: &str, first: Vec<u8>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    let request = app
        .http
        .post(app.url("/v1/media?dataset=stalled"))
        .bearer_auth(&app.admin_token)
        .header("content-type", content_type)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let request = tokio::spawn(request);
    tx.send(Ok(bytes::Bytes::from(first))).await.expect("the first bytes");
    let (status, answer) = json_of(request.await.expect("join").expect("an answer")).await;
    assert_eq!((status, &answer["error"]["code"]), (503, &Value::from("timeout")), "{answer}");
}

/// An upload that stalls past the request deadline after one of its files was stored: the
/// answer is 503, and the stored file is deleted (the request's future is dropped, so no error
/// path of the handler runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_by_its_deadline_leaves_no_object() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.request_timeout_secs = 2;
    let app = RunningApp::spawn(config).await;
    let mut first = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n".to_vec();
    first.extend_from_slice(&png(32, 32, 7));
    first.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.png\"\r\n\r\n");
    stall_past_the_deadline(&app, "multipart/form-data; boundary=XyZ", first).await;
    let bucket = app.ctx.config.s3.bucket.clone();
    sluice_testkit::eventually(Duration::from_secs(10), "the stored file to be deleted", || async {
        let keys = sluice_core::s3::list_keys(&app.ctx.s3, &bucket, "raw/stalled/", 10).await.expect("list");
        keys.is_empty().then_some(())
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM media").await, 0);
}

/// A body larger than a part, cut off by the deadline after its first part went to S3: the
/// multipart upload is aborted, not left for the orphan sweeper (a day later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_cut_off_by_its_deadline_leaves_no_open_upload() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.http.request_timeout_secs = 3;
    config.ingest.multipart_part_bytes = 5 * 1024 * 1024;
    let app = RunningApp::spawn(config).await;
    let mut first = png(32, 32, 7)[..33].to_vec();
    first.resize(6 * 1024 * 1024, 0);
    stall_past_the_deadline(&app, "image/png", first).await;
    let bucket = app.ctx.config.s3.bucket.clone();
    sluice_testkit::eventually(Duration::from_secs(10), "the open upload to be aborted", || async {
        let uploads = app.ctx.s3.list_multipart_uploads().bucket(&bucket).prefix("raw/stalled/").send().await;
        uploads.expect("list uploads").uploads().is_empty().then_some(())
    })
    .await;
    let keys = sluice_core::s3::list_keys(&app.ctx.s3, &bucket, "raw/stalled/", 10).await.expect("list");
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(app.count("SELECT count(*) FROM media").await, 0);
}
