//! `/healthz`, `/readyz` and `/metrics` on a running application, including readiness while a
//! dependency is down. The shared servers keep running for the other tests: PostgreSQL and S3 are
//! cut off by stopping a TCP proxy this application alone talks through, and Kafka is a private
//! broker process that is killed and restarted.

use std::time::Duration;

use sluice_testkit::{TestEnv, broker::PrivateBroker, eventually};

use crate::support::{Cut, RunningApp, through_proxy};

async fn wait_for_readyz(app: &RunningApp, want: u16, what: &str) -> serde_json::Value {
    eventually(Duration::from_secs(45), what, || async {
        let (status, body) = app.get("/readyz").await;
        (status == want).then_some(body)
    })
    .await
}

fn assert_names(body: &serde_json::Value, dependency: &str) {
    assert_eq!(body["failed"], serde_json::json!([dependency]), "{body}");
    assert_eq!(body["checks"][dependency]["ok"], false, "{body}");
    assert_eq!(body["error"]["code"], "dependency_unavailable", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains(dependency), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer_without_a_token() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    assert_eq!(app.get("/healthz").await.0, 200);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    for dependency in ["kafka", "s3", "postgres"] {
        assert_eq!(body["checks"][dependency]["ok"], true, "{body}");
    }
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    let text = metrics.as_str().expect("text");
    assert!(text.contains("sluice_http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/readyz\""), "{text}");
    assert!(text.contains("sluice_dependency_up{dependency=\"kafka\"} 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_postgres_while_it_is_unreachable_and_recovers() {
    let env = TestEnv::new().await;
    let (config, proxy) = through_proxy(&env, Cut::Postgres).await;
    let app = RunningApp::spawn(config).await;
    wait_for_readyz(&app, 200, "ready before the outage").await;

    proxy.stop().await;
    let body = wait_for_readyz(&app, 503, "503 while PostgreSQL is unreachable").await;
    assert_names(&body, "postgres");
    proxy.resume().await;
    wait_for_readyz(&app, 200, "ready again after PostgreSQL returns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_s3_while_it_is_unreachable_and_recovers() {
    let env = TestEnv::new().await;
    let (config, proxy) = through_proxy(&env, Cut::S3).await;
    let app = RunningApp::spawn(config).await;
    wait_for_readyz(&app, 200, "ready before the outage").await;

    proxy.stop().await;
    let body = wait_for_readyz(&app, 503, "503 while S3 is unreachable").await;
    assert_names(&body, "s3");
    proxy.resume().await;
    wait_for_readyz(&app, 200, "ready again after S3 returns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_kafka_while_the_broker_is_down_and_recovers() {
    let env = TestEnv::new().await;
    let mut broker = PrivateBroker::start();
    let mut config = env.config.clone();
    config.kafka.brokers = broker.brokers();
    let app = RunningApp::spawn(config).await;
    wait_for_readyz(&app, 200, "ready before the outage").await;

    broker.kill();
    let body = wait_for_readyz(&app, 503, "503 while Kafka is down").await;
    assert_names(&body, "kafka");
    broker.resume();
    wait_for_readyz(&app, 200, "ready again after Kafka restarts").await;
}
