//! Integration-test support on the real local stack (Kafka-protocol broker, S3 server,
//! PostgreSQL), started by `deploy/local/stack.sh up`.
//!
//! [`TestEnv::new`] gives each test its own topic prefix, its own database and its own bucket, and
//! removes them when dropped. If the stack is unreachable it panics with the command that starts
//! it: a test never passes by skipping.

pub mod broker;
pub mod proxy;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sluice_core::{Config, db, kafka, s3};

/// What to run when the stack is down.
pub const START_HINT: &str =
    "start the local stack with `deploy/local/stack.sh up` (or run the whole suite with `./dev test`, which starts it)";

/// One test's isolated slice of the local stack.
#[derive(Debug)]
pub struct TestEnv {
    /// Configuration pointing at this test's database, topic prefix and bucket.
    pub config: Config,
    /// Short random id used in every name this test creates.
    pub id: String,
    admin_url: String,
    database: String,
}

impl TestEnv {
    /// Creates an empty database `sluice_test_<id>`, a bucket `sluice-test-<id>` and a topic
    /// prefix `test.<id>.` on the local stack. Panics, naming the fix, if the stack is down.
    pub async fn new() -> Self {
        let base = Config::load(None).expect("configuration for tests loads");
        let id = random_id();
        let admin_url = base.database.url.expose_secret().to_owned();
        let database = format!("sluice_test_{id}");

        let admin_pool = db::pool_for_url(&admin_url, 1).expect("valid database URL");
        let admin = admin_pool.get().await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {} is unreachable ({e}); {START_HINT}", sluice_core::config::redact_url(&admin_url))
        });
        admin.batch_execute(&format!("CREATE DATABASE {database}")).await.expect("create the test database");

        let mut config = base;
        config.database.url = SecretString::from(with_database(&admin_url, &database));
        config.database.max_connections = 4;
        config.kafka.topic_prefix = format!("test.{id}.");
        config.kafka.session_timeout_ms = 6_000;
        // Groups whose members every test's app starts: one group per test, so one test's apps
        // joining and leaving never rebalance another's.
        config.ingest.capture_group_id = format!("test.{id}.ingest-captures");
        config.inference.monitor_group_id = format!("test.{id}.inference-monitor");
        config.webhooks.group_id = format!("test.{id}.webhooks");
        config.s3.bucket = format!("sluice-test-{id}");
        config.http.addr = ([127, 0, 0, 1], 0).into();
        config.state_dir = std::env::temp_dir().join(format!("sluice-test-{id}"));

        check_kafka(&config).await;
        let client = s3::client(&config.s3).await;
        s3::ensure_bucket(&client, &config.s3.bucket).await.unwrap_or_else(|e| {
            panic!("S3 at {} refused to create a test bucket ({e}); {START_HINT}", config.s3.endpoint)
        });
        Self { config, id, admin_url, database }
    }

    /// A pool on this test's database.
    pub fn pool(&self) -> db::Pool {
        db::pool(&self.config.database).expect("valid test database URL")
    }

    /// An S3 client for this test's bucket.
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        s3::client(&self.config.s3).await
    }

    /// The full name of a test topic under this test's prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.config.kafka.topic_prefix)
    }
}

impl Drop for TestEnv {
    /// Removes the test's database, topics and bucket. Runs on its own thread and runtime so it
    /// works from inside any test runtime, and also after a failed (panicking) test.
    fn drop(&mut self) {
        let config = self.config.clone();
        let admin_url = self.admin_url.clone();
        let database = self.database.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                if let Ok(pool) = db::pool_for_url(&admin_url, 1)
                    && let Ok(client) = pool.get().await
                {
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
                }
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    kafka::delete_topics_with_prefix(&config.kafka, &config.kafka.topic_prefix),
                )
                .await;
                let client = s3::client(&config.s3).await;
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), empty_and_delete_bucket(&client, &config.s3.bucket))
                        .await;
            });
        });
        let _ = cleanup.join();
        let _ = std::fs::remove_dir_all(&self.config.state_dir);
    }
}

async fn empty_and_delete_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    loop {
        let Ok(listing) = client.list_objects_v2().bucket(bucket).send().await else { break };
        let keys: Vec<_> = listing.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let _ = client.delete_object().bucket(bucket).key(key).send().await;
        }
    }
    let uploads = client.list_multipart_uploads().bucket(bucket).send().await;
    if let Ok(uploads) = uploads {
        for upload in uploads.uploads() {
            if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(id).send().await;
            }
        }
    }
    let _ = client.delete_bucket().bucket(bucket).send().await;
}

async fn check_kafka(config: &Config) {
    let producer = kafka::producer(&config.kafka).expect("valid Kafka client config");
    if let Err(e) = kafka::check_reachable(&producer, None, Duration::from_secs(5)).await {
        panic!("Kafka at {} is unreachable ({e}); {START_HINT}", config.kafka.brokers);
    }
}

/// Eight random lower-case hex characters.
pub fn random_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// `url` with its database (path) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("database URL parses");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// `url` pointing at `127.0.0.1:port` instead of its host and port (to route through a proxy).
pub fn with_port(url: &str, port: u16) -> String {
    let mut parsed = url::Url::parse(url).expect("URL parses");
    parsed.set_host(Some("127.0.0.1")).expect("URL has a host");
    parsed.set_port(Some(port)).expect("URL takes a port");
    parsed.to_string()
}

/// The socket address a URL points at (`localhost` as 127.0.0.1), to put a proxy in front of it.
pub fn socket_addr(url: &str, default_port: u16) -> std::net::SocketAddr {
    let parsed = url::Url::parse(url).expect("URL parses");
    let host = match parsed.host_str() {
        Some("localhost") | None => "127.0.0.1",
        Some(host) => host,
    };
    format!("{host}:{}", parsed.port().unwrap_or(default_port)).parse().expect("an IP address and port")
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
