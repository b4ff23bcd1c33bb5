//! Ingest under failure: Kafka, S3 or PostgreSQL away; relays crashing or racing; orphans.

use std::{collections::HashMap, time::Duration};

use sluice_core::outbox;
use sluice_core::{Context, topics::Topic};
use sluice_ingest::sweeper;
use sluice_testkit::{TestEnv, broker::PrivateBroker, eventually};

use crate::{
    ingest::{png, post_raw, raw_objects},
    support::{Cut, RunningApp, read_topic, through_proxy},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_accepted_while_kafka_is_down_and_published_when_it_returns() {
    let env = TestEnv::new().await;
    let mut broker = PrivateBroker::start();
    let mut config = env.config.clone();
    config.kafka.brokers = broker.brokers();
    let app = RunningApp::spawn(config.clone()).await;

    broker.kill();
    let mut ids = Vec::new();
    for seed in 0..5 {
        let (status, answer) = post_raw(&app, "?dataset=outage", "image/png", png(8, 8, seed)).await;
        assert_eq!(status, 202, "uploads keep working while Kafka is down: {answer}");
        ids.push(answer["items"][0]["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(app.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL").await, 5, "backlog waits in the outbox");

    broker.resume();
    eventually(Duration::from_secs(60), "the outbox backlog to drain", || async {
        (app.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL").await == 0).then_some(())
    })
    .await;
    let topic = app.ctx.topic(Topic::MediaIngested).to_string();
    let events = read_topic(&config, &topic, 5, Duration::from_secs(10)).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (key, _) in &events {
        *per_id.entry(key.clone()).or_default() += 1;
    }
    for id in &ids {
        assert!(per_id.contains_key(id), "{id} never published: {per_id:?}");
    }
    assert_eq!(per_id.len(), 5, "exactly the accepted ids: {per_id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_answers_503_and_records_nothing() {
    let env = TestEnv::new().await;
    let (config, proxy) = through_proxy(&env, Cut::S3).await;
    let app = RunningApp::spawn(config).await;

    proxy.stop().await;
    let response = app
        .http
        .post(app.url("/v1/media"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "image/png")
        .body(png(8, 8, 1))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "dependency_unavailable");
    assert_eq!(app.count("SELECT count(*) FROM media").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_503_and_the_object_it_wrote_is_swept() {
    let env = TestEnv::new().await;
    let (mut config, proxy) = through_proxy(&env, Cut::Postgres).await;
    config.ingest.orphan_grace_secs = 1;
    let app = RunningApp::spawn(config).await;
    let token = app.admin_token.clone();
    let observer = env.pool();
    // Warm the token cache, so the cut below hits the commit, not the token check.
    let warm = app.http.get(app.url("/v1/datasets")).bearer_auth(&token).send().await.expect("warm-up");
    assert_eq!(warm.status().as_u16(), 200);

    // Tokens are checked in PostgreSQL, so stop it between the token check and the commit: the
    // body is streamed slowly and the proxy stops while the server is still reading it; the
    // object reaches S3, the transaction cannot happen.
    let body = png(8, 8, 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let request = app
        .http
        .post(app.url("/v1/media"))
        .bearer_auth(&token)
        .header("content-type", "image/png")
        .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
        .send();
    let request = tokio::spawn(request);
    let sender = tokio::spawn(async move {
        tx.send(Ok(bytes::Bytes::from(body[..10].to_vec()))).await.expect("first chunk");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tx.send(Ok(bytes::Bytes::from(body[10..].to_vec()))).await.expect("rest");
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.stop().await;
    let response = request.await.expect("request task").expect("response");
    sender.await.expect("sender");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // Whether the commit happened is unknown while PostgreSQL is away, so the object stays for
    // the sweeper, which removes it once the database says no row references it.
    assert_eq!(raw_objects(&app).await.len(), 1, "the object reached S3 before the commit failed");
    proxy.resume().await;
    eventually(Duration::from_secs(20), "the sweeper to remove the unreferenced object", || async {
        raw_objects(&app).await.is_empty().then_some(())
    })
    .await;
    let rows: i64 =
        observer.get().await.expect("conn").query_one("SELECT count(*) FROM media", &[]).await.expect("q").get(0);
    assert_eq!(rows, 0);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publish_and_mark_publishes_again() {
    let env = TestEnv::new().await;
    // No application runs here, so the only relays are the ones this test drives.
    let ctx = Context::new(env.config.clone()).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    let topic = ctx.topic(Topic::MediaIngested).to_string();
    let event_id = uuid::Uuid::now_v7();
    ctx.db
        .get()
        .await
        .expect("conn")
        .execute(
            "INSERT INTO outbox (id, topic, key, payload) VALUES ($1, $2, 'media-1', $3)",
            &[&event_id, &topic, &serde_json::json!({"event_id": event_id})],
        )
        .await
        .expect("insert");

    // A relay claims the row and publishes it, then dies before marking it sent: its
    // transaction rolls back, exactly as when the process is killed.
    {
        let mut conn = ctx.db.get().await.expect("conn");
        let claimed = outbox::Claimed::claim(&mut conn, 10).await.expect("claim").expect("one row");
        let (sent, error) = claimed.publish(&ctx).await;
        assert_eq!((sent.len(), error), (1, None));
        drop(claimed);
    }
    let unsent = |ctx: Context| async move {
        let conn = ctx.db.get().await.expect("conn");
        let n: i64 = conn.query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[]).await.expect("q").get(0);
        n
    };
    assert_eq!(unsent(ctx.clone()).await, 1, "the row is still pending after the crash");

    // The next relay publishes it again and marks it.
    assert_eq!(outbox::publish_batch(&ctx).await.expect("batch"), 1);
    assert_eq!(unsent(ctx.clone()).await, 0);
    let events = read_topic(&ctx.config, &topic, 3, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 2, "published twice (at least once), never lost: {events:?}");
    assert!(events.iter().all(|(k, e)| k == "media-1" && e["event_id"] == event_id.to_string()), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_never_publish_the_same_row_twice() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.outbox.batch = 7;
    // The app's own relay is one of the racers; three more run below.
    let app = RunningApp::spawn(config).await;
    let topic = app.ctx.topic(Topic::MediaIngested).to_string();
    {
        let client = app.ctx.db.get().await.expect("conn");
        for i in 0..100 {
            let id = uuid::Uuid::now_v7();
            client
                .execute(
                    "INSERT INTO outbox (id, topic, key, payload) VALUES ($1, $2, $3, $4)",
                    &[&id, &topic, &format!("k{i}"), &serde_json::json!({"event_id": id, "n": i})],
                )
                .await
                .expect("insert");
        }
    }
    let racers: Vec<_> = (0..3)
        .map(|_| {
            let ctx = app.ctx.clone();
            tokio::spawn(async move {
                for _ in 0..30 {
                    outbox::publish_batch(&ctx).await.expect("batch");
                }
            })
        })
        .collect();
    for racer in racers {
        racer.await.expect("racer");
    }
    eventually(Duration::from_secs(20), "all rows marked", || async {
        (app.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL").await == 0).then_some(())
    })
    .await;
    let events = read_topic(&app.ctx.config, &topic, 101, Duration::from_secs(5)).await;
    let mut keys: Vec<_> = events.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), 100, "every row published");
    assert_eq!(before, 100, "no row published twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_objects_no_row_references() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.ingest.orphan_grace_secs = 1;
    let app = RunningApp::spawn(config).await;
    let (status, answer) = post_raw(&app, "?dataset=keep", "image/png", png(8, 8, 4)).await;
    assert_eq!(status, 202, "{answer}");
    app.ctx
        .s3
        .put_object()
        .bucket(&app.ctx.config.s3.bucket)
        .key("raw/keep/00000000-0000-0000-0000-000000000001.png")
        .body(png(8, 8, 5).into())
        .send()
        .await
        .expect("put orphan");
    // A captured input whose inference process died before its event: nothing will store it.
    let capture = sluice_core::capture::capture_key("served", uuid::Uuid::now_v7());
    let put = app.ctx.s3.put_object().bucket(&app.ctx.config.s3.bucket).key(&capture).body(png(8, 8, 6).into());
    put.send().await.expect("put capture");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sweeper::sweep_once(&app.ctx).await.expect("sweep");
    let left = app.ctx.s3.head_object().bucket(&app.ctx.config.s3.bucket).key(&capture).send().await;
    assert!(left.is_err(), "the left-behind capture was removed");
    let orphan = app
        .ctx
        .s3
        .head_object()
        .bucket(&app.ctx.config.s3.bucket)
        .key("raw/keep/00000000-0000-0000-0000-000000000001.png")
        .send()
        .await;
    assert!(orphan.is_err(), "the orphan was removed");
    assert_eq!(raw_objects(&app).await.len(), 1, "the referenced object stays");
}

/// Rows as an older build (or a writer bypassing `enqueue`) could have left them: a whole batch
/// of events over Kafka's message limit, then a good one behind them. Each refusal counts an
/// attempt while Kafka is up; after `outbox.max_attempts` the poison rows are parked with a
/// `work.parked` event each, and the good row is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_rows_are_parked_and_the_row_behind_them_is_published() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.outbox.batch = 2;
    config.outbox.max_attempts = 2;
    // No application: the only relay is the one this test drives.
    let ctx = Context::new(config).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    let topic = ctx.topic(Topic::MediaIngested).to_string();
    let client = ctx.db.get().await.expect("conn");
    let mut poison = Vec::new();
    for i in 0..3 {
        let id = uuid::Uuid::now_v7();
        let payload = serde_json::json!({"event_id": id, "blob": "x".repeat(1_100_000)});
        client
            .execute(
                "INSERT INTO outbox (id, topic, key, payload, created_at) VALUES ($1, $2, $3, $4, now() - interval '1 minute')",
                &[&id, &topic, &format!("huge-{i}"), &payload],
            )
            .await
            .expect("insert a poison row");
        poison.push(id);
    }
    let good = uuid::Uuid::now_v7();
    client
        .execute(
            "INSERT INTO outbox (id, topic, key, payload) VALUES ($1, $2, 'good', $3)",
            &[&good, &topic, &serde_json::json!({"event_id": good})],
        )
        .await
        .expect("insert the good row");

    // The relay's loop, driven by hand: batches until nothing is pending (the parked events
    // included), each claimed at once; a bounded number of them.
    let mut batches = 0;
    while outbox::pending(&ctx).await.expect("pending") > 0 {
        batches += 1;
        assert!(batches <= 12, "rows still pending after {batches} batches");
        let _ = outbox::publish_batch(&ctx).await;
    }
    let good_sent: bool =
        client.query_one("SELECT sent_at IS NOT NULL FROM outbox WHERE id = $1", &[&good]).await.expect("good").get(0);
    assert!(good_sent, "the row behind the poison was published");
    let rows = client
        .query(
            "SELECT attempts, failed_at IS NOT NULL, sent_at IS NULL, error FROM outbox WHERE id = ANY($1)",
            &[&poison],
        )
        .await
        .expect("poison rows");
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let (attempts, parked, unsent, error): (i32, bool, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((attempts, parked, unsent), (2, true, true), "parked after two refusals, never sent");
        assert!(error.as_deref().is_some_and(|e| e.contains("too large")), "{error:?}");
    }
    assert_eq!(outbox::publish_batch(&ctx).await.expect("an empty batch"), 0, "the relay skips parked rows");

    // The good row went out once, and the parked events too (through the outbox, like any event).
    let published = read_topic(&ctx.config, &topic, 2, Duration::from_secs(5)).await;
    assert_eq!(published.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["good"], "{published:?}");
    let dlq = ctx.topic(Topic::WorkDlq).to_string();
    let parked = read_topic(&ctx.config, &dlq, 3, Duration::from_secs(5)).await;
    let mut ids: Vec<String> = parked.iter().map(|(_, e)| e["data"]["id"].as_str().expect("id").to_owned()).collect();
    ids.sort();
    let mut expected: Vec<String> = poison.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(ids, expected, "{parked:#?}");
    for (key, event) in &parked {
        assert_eq!(event["type"], "work.parked");
        assert_eq!(event["data"]["kind"], "outbox_row");
        assert_eq!(event["data"]["attempts"], 2);
        assert_eq!(event["data"]["detail"]["topic"], topic.as_str());
        assert_eq!(key, event["data"]["id"].as_str().expect("id"));
        assert!(event["data"]["reason"].as_str().expect("reason").starts_with("gave up after 2 attempts"), "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_message_limit_is_refused_before_it_is_written() {
    let env = TestEnv::new().await;
    let ctx = Context::new(env.config.clone()).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    let client = ctx.db.get().await.expect("conn");
    let huge = sluice_core::events::Envelope::new(sluice_core::parking::WorkParked {
        kind: sluice_core::parking::WorkKind::OutboxRow,
        id: "x".into(),
        attempts: 1,
        reason: "r".repeat(outbox::MAX_EVENT_BYTES),
        detail: serde_json::json!({}),
    });
    let refused = outbox::enqueue(&client, &ctx.topic(Topic::WorkDlq), "x", &huge).await;
    assert!(matches!(refused, Err(outbox::RelayError::TooLarge { .. })), "{refused:?}");
    let rows: i64 = client.query_one("SELECT count(*) FROM outbox", &[]).await.expect("count").get(0);
    assert_eq!(rows, 0, "nothing written");
}

/// A partition hint past the topic's partitions (`kafka.partitions` raised after the topic was
/// created) is sent modulo the partitions the broker reports: every row goes out, spread as
/// the hints say, none refused and parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_hints_are_taken_modulo_the_topics_partitions() {
    let env = TestEnv::new().await;
    let ctx = Context::new(env.config.clone()).await.expect("context");
    ctx.bootstrap().await.expect("bootstrap");
    let topic = crate::support::create_topic(&env, "spread", 2).await;
    let conn = ctx.db.get().await.expect("conn");
    for hint in 0..6i32 {
        let id = uuid::Uuid::now_v7();
        conn.execute(
            "INSERT INTO outbox (id, topic, key, payload, partition) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &topic, &format!("trial-{hint}"), &serde_json::json!({"hint": hint}), &hint],
        )
        .await
        .expect("insert");
    }
    assert_eq!(outbox::publish_batch(&ctx).await.expect("batch"), 6);
    let rows = conn
        .query("SELECT partition, sent_partition FROM outbox WHERE sent_at IS NOT NULL AND failed_at IS NULL", &[])
        .await
        .expect("rows");
    let mut placed: Vec<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    placed.sort_unstable();
    assert_eq!(placed, [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0), (5, 1)]);
}
