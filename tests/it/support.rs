//! Helpers shared by the integration tests.

use std::time::Duration;

use rdkafka::{
    admin::{AdminOptions, NewTopic, TopicReplication},
    producer::FutureRecord,
};
use sluice::{Application, Service};
use sluice_core::{
    Config, Context, Shutdown,
    auth::{self, Scope},
    kafka,
};
use sluice_testkit::TestEnv;

/// Creates `<prefix><name>` with `partitions` partitions and returns its full name.
pub async fn create_topic(env: &TestEnv, name: &str, partitions: i32) -> String {
    let full = env.topic(name);
    let admin = kafka::admin(&env.config.kafka).expect("admin client");
    let results = admin
        .create_topics(&[NewTopic::new(&full, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create topic request");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code}"));
    }
    full
}

/// Sends every `(partition, payload)` pipelined, then waits for all acknowledgements.
pub async fn produce(producer: &kafka::SluiceProducer, topic: &str, messages: &[(i32, String)]) {
    let sends: Vec<_> = messages
        .iter()
        .map(|(partition, payload)| {
            producer.send(
                FutureRecord::<(), _>::to(topic).partition(*partition).payload(payload.as_str()),
                Duration::from_secs(10),
            )
        })
        .collect();
    for result in futures::future::join_all(sends).await {
        result.unwrap_or_else(|e| panic!("produce to {topic}: {e}"));
    }
}

/// A running application on an ephemeral port; stops when dropped.
pub struct RunningApp {
    pub base_url: String,
    /// The application's own clients (same config), for assertions.
    pub ctx: Context,
    /// A token with every scope.
    pub admin_token: String,
    pub http: reqwest::Client,
    shutdown: Shutdown,
}

impl RunningApp {
    pub async fn spawn(config: Config) -> Self {
        Self::spawn_services(config, &Service::ALL).await
    }

    /// Runs only `services` (to control exactly which workers exist).
    pub async fn spawn_services(config: Config, services: &[Service]) -> Self {
        let app = Application::build(config, services).await.expect("application builds");
        let base_url = format!("http://{}", app.local_addr());
        let ctx = app.context().clone();
        let admin_token = auth::create_token(&ctx.db, "test-admin", &[Scope::Admin]).await.expect("admin token");
        let shutdown = Shutdown::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        // A request that hangs fails its test after a minute instead of stalling the suite.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
        Self { base_url, ctx, admin_token, http, shutdown }
    }

    /// The single `count(*)` (or other BIGINT) value `sql` selects, read through the app's pool.
    pub async fn count(&self, sql: &str) -> i64 {
        self.ctx.db.get().await.expect("connection").query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// A token holding exactly `scopes`.
    pub async fn token(&self, scopes: &[Scope]) -> String {
        auth::create_token(&self.ctx.db, "test", scopes).await.expect("token")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("{}{path}", self.base_url)).await.expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Status and parsed JSON body of a response.
pub async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Every message currently in `topic` (all partitions), read by a fresh consumer group until
/// `expected` have arrived or `wait` passes without a new one.
pub async fn read_topic(
    config: &Config,
    topic: &str,
    expected: usize,
    wait: Duration,
) -> Vec<(String, serde_json::Value)> {
    use futures::StreamExt;
    use rdkafka::{Message, consumer::Consumer};
    // A new group's first message waits for it to join (the local broker rebalances after a
    // pause): when the topic holds messages, `wait` is no bound for that on a busy machine.
    let first_wait =
        if topic_message_count(config, topic).await > 0 { wait.max(Duration::from_secs(30)) } else { wait };
    let group = format!("reader-{}", uuid::Uuid::new_v4());
    let consumer = kafka::consumer(&config.kafka, &group).expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut stream = consumer.stream();
    let mut out = Vec::new();
    while out.len() < expected {
        let wait = if out.is_empty() { first_wait } else { wait };
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(message))) => {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                let value = serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON event");
                out.push((key, value));
            }
            Ok(Some(Err(err))) => panic!("consuming {topic}: {err}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Total messages ever written to `topic` (sum of high watermarks).
pub async fn topic_message_count(config: &Config, topic: &str) -> i64 {
    let admin = kafka::admin(&config.kafka).expect("admin");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(Some(&topic), Duration::from_secs(5)).expect("metadata");
        let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
        (0..partitions as i32)
            .map(|p| {
                admin.inner().fetch_watermarks(&topic, p, Duration::from_secs(5)).map(|(_, high)| high).unwrap_or(0)
            })
            .sum()
    })
    .await
    .expect("watermark task")
}

/// A dependency an application can be cut off from.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    Postgres,
    S3,
}

/// `env`'s configuration with one dependency reached through a proxy the test can stop and
/// resume; the shared server keeps running for the other tests.
pub async fn through_proxy(env: &TestEnv, cut: Cut) -> (Config, sluice_testkit::proxy::TcpProxy) {
    use secrecy::ExposeSecret;
    use sluice_testkit::{proxy::TcpProxy, socket_addr, with_port};
    let mut config = env.config.clone();
    let proxy = match cut {
        Cut::Postgres => {
            let url = env.config.database.url.expose_secret().to_owned();
            let proxy = TcpProxy::start(socket_addr(&url, 5432)).await;
            config.database.url = secrecy::SecretString::from(with_port(&url, proxy.port()));
            proxy
        }
        Cut::S3 => {
            let proxy = TcpProxy::start(socket_addr(&env.config.s3.endpoint, 80)).await;
            config.s3.endpoint = with_port(&config.s3.endpoint, proxy.port()).trim_end_matches('/').to_owned();
            proxy
        }
    };
    (config, proxy)
}

/// The `SLUICE_*` variables that point a `sluice` child process at `env`'s isolated stack slice.
pub fn sluice_env(env: &TestEnv) -> Vec<(&'static str, String)> {
    use secrecy::ExposeSecret;
    vec![
        ("SLUICE_KAFKA_BROKERS", env.config.kafka.brokers.clone()),
        ("SLUICE_KAFKA_TOPIC_PREFIX", env.config.kafka.topic_prefix.clone()),
        ("SLUICE_KAFKA_SESSION_TIMEOUT_MS", env.config.kafka.session_timeout_ms.to_string()),
        ("SLUICE_S3_ENDPOINT", env.config.s3.endpoint.clone()),
        ("SLUICE_S3_BUCKET", env.config.s3.bucket.clone()),
        ("SLUICE_DATABASE_URL", env.config.database.url.expose_secret().to_owned()),
        ("SLUICE_STATE_DIR", env.config.state_dir.display().to_string()),
        ("SLUICE_HTTP_ADDR", "127.0.0.1:0".to_owned()),
    ]
}

/// Whether `group` has committed every message currently in `topic` (lag zero on every
/// partition), read with OffsetFetch without joining the group.
pub async fn group_caught_up(config: &Config, group: &str, topic: &str) -> bool {
    use rdkafka::{TopicPartitionList, consumer::Consumer};
    let consumer = kafka::consumer(&config.kafka, group).expect("consumer");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).ok()?;
        let partitions = metadata.topics().first()?.partitions().len() as i32;
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(5)).ok()?;
        Some((0..partitions).all(|p| {
            let high = consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)).map(|(_, h)| h).unwrap_or(-1);
            let at = committed.find_partition(&topic, p).and_then(|e| e.offset().to_raw()).unwrap_or(0).max(0);
            high <= at
        }))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// The `sluice` binary with the caller's `SLUICE_*` settings removed, so only what a test sets
/// reaches it.
pub fn sluice_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
        command.env_remove(key);
    }
    command
}

/// A customer key (SSE-C) only the test holds: 32 bytes, base64, and the base64 of its MD5.
const SSE_C_KEY: &str = "c2x1aWNlLXRlc3Qtc3NlLWMta2V5LTAxMjM0NTY3ODk=";
const SSE_C_KEY_MD5: &str = "rUyKxyRdERcWFodH05YJEQ==";

/// Puts an object encrypted with a customer key (SSE-C) that Sluice does not have: listings show
/// it like any other, but every GET without the key is refused (400, "Object is encrypted"), so
/// it is a real poison object for work that reads it, not a simulated one.
pub async fn put_locked_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .sse_customer_algorithm("AES256")
        .sse_customer_key(SSE_C_KEY)
        .sse_customer_key_md5(SSE_C_KEY_MD5)
        .body(body.into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("put the SSE-C object {key}: {}", sluice_core::error_chain(&e)));
    let refused = s3.get_object().bucket(bucket).key(key).send().await;
    assert!(refused.is_err(), "a GET without the customer key must be refused");
}

/// `work.parked` events on the test's `work.dlq` of `kind`, once the outbox has published them.
pub async fn parked_events(app: &RunningApp, kind: &str, expected: usize) -> Vec<serde_json::Value> {
    use sluice_core::topics::Topic;
    let topic = app.ctx.topic(Topic::WorkDlq).to_string();
    let events = sluice_testkit::eventually(Duration::from_secs(60), "work.parked events", || async {
        let events = read_topic(&app.ctx.config, &topic, expected, Duration::from_secs(3)).await;
        let matching: Vec<serde_json::Value> =
            events.into_iter().map(|(_, e)| e).filter(|e| e["data"]["kind"] == kind).collect();
        (matching.len() >= expected).then_some(matching)
    })
    .await;
    assert!(events.iter().all(|e| e["type"] == "work.parked"), "{events:#?}");
    events
}

/// [`sluice_command`] started through `sh` after `setup` (for example `ulimit -v 8388608`), so a
/// test can give the process limits without unsafe code; arguments added to it reach `sluice`.
pub fn sluice_command_after(setup: &str) -> std::process::Command {
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(format!("{setup} && exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_sluice"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
        command.env_remove(key);
    }
    command
}

/// The bin folder of the project-local Python environment with schemathesis and
/// openapi-python-client (`tests/clients/api-tools-env.sh` creates it on first use).
pub fn api_tools(root: &str) -> String {
    let installed = std::process::Command::new("bash")
        .arg(format!("{root}/tests/clients/api-tools-env.sh"))
        .output()
        .expect("api-tools-env.sh");
    assert!(installed.status.success(), "api-tools-env.sh: {}", String::from_utf8_lossy(&installed.stderr));
    String::from_utf8_lossy(&installed.stdout).trim().to_owned()
}

/// Waits for the relay to publish every committed event, then returns the events it published to
/// `models.events`, in the order Kafka stored them (the outbox keeps each event's offset). Checks
/// them against the topic: each reached Kafka once (its end moved by one per event), and what a
/// reader finds there is among them and ends with the newest. The topic is compacted, and the
/// local broker compacts every 10 minutes, recent events included, so a reader may find only the
/// newest event per model.
pub async fn published_model_events(app: &RunningApp) -> Vec<(String, serde_json::Value)> {
    sluice_testkit::eventually(Duration::from_secs(30), "the outbox to drain", || async {
        (app.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL").await == 0).then_some(())
    })
    .await;
    let topic = app.ctx.topic(sluice_core::topics::Topic::ModelsEvents).to_string();
    let client = app.ctx.db.get().await.expect("connection");
    let sql = "SELECT key, payload FROM outbox WHERE topic = $1 AND sent_at IS NOT NULL ORDER BY sent_offset";
    let rows = client.query(sql, &[&topic]).await.expect("published events");
    let events: Vec<(String, serde_json::Value)> = rows.iter().map(|r| (r.get("key"), r.get("payload"))).collect();
    let written = topic_message_count(&app.ctx.config, &topic).await;
    assert_eq!(written, events.len() as i64, "one Kafka message per event: {events:?}");
    let read = read_topic(&app.ctx.config, &topic, events.len() + 1, Duration::from_secs(3)).await;
    assert!(read.iter().all(|event| events.contains(event)), "read {read:?}, published {events:?}");
    assert_eq!(read.last(), events.last(), "the newest event is on the topic");
    events
}

/// Posts feedback, retrying while the prediction is not written yet: a 404 says "retry shortly"
/// (predictions are written in batches, and on a loaded machine the batch can outlast the
/// route's own wait).
pub(crate) async fn feedback(app: &RunningApp, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let request = app.http.post(app.url("/v1/feedback")).bearer_auth(&app.admin_token).json(body);
        let (status, answer) = json_of(request.send().await.expect("feedback")).await;
        if status != 404 || std::time::Instant::now() > deadline {
            return (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
