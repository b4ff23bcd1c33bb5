//! Typed, layered configuration: built-in defaults, then an optional TOML file, then `SLUICE_*`
//! environment variables. Unknown keys are errors; secrets never print.
//!
//! Environment variables name a section and a key: `SLUICE_HTTP_ADDR` is `http.addr`,
//! `SLUICE_DATABASE_URL` is `database.url`, `SLUICE_S3_SECRET_ACCESS_KEY` is
//! `s3.secret_access_key`. A variable that names no known key is rejected like an unknown key in
//! the file, so a typo never silently falls back to a default.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Sections of the configuration; an env var `SLUICE_<SECTION>_<KEY>` sets `<section>.<key>`.
const SECTIONS: &[&str] = &[
    "http",
    "kafka",
    "s3",
    "database",
    "telemetry",
    "auth",
    "ingest",
    "outbox",
    "preprocess",
    "trainer",
    "inference",
    "webhooks",
];

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown, a value has the wrong type, or the file is not valid TOML. Each problem
    /// names the key and where it came from (the file, or the exact `SLUICE_*` variable).
    #[error("invalid configuration: {}", describe(.0))]
    Invalid(Box<figment::Error>),
    /// Values parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Rule(String),
    /// `--config` named a file that does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

/// Everything a Sluice process needs to find its dependencies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Local state (the admin token, the local stack's data); git-ignored.
    pub state_dir: PathBuf,
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub s3: S3Config,
    pub database: DatabaseConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub ingest: IngestConfig,
    pub outbox: OutboxConfig,
    pub preprocess: PreprocessConfig,
    pub trainer: TrainerConfig,
    pub inference: InferenceConfig,
    pub webhooks: WebhooksConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Consumer group that turns events into deliveries (`models.events`, `notifications`).
    pub group_id: String,
    /// Networks (CIDR) webhooks may be delivered to even though they are loopback, private,
    /// link-local, shared (CGNAT) or otherwise not public; every other such address is refused.
    pub allowed_networks: Vec<String>,
    /// One delivery attempt (connect, send, answer) is abandoned after this long.
    pub timeout_ms: u64,
    /// Attempts at one delivery before it is recorded as failed.
    pub max_attempts: u32,
    /// Wait before the first retry; it doubles (with ±50 % jitter) up to `retry_max_ms`.
    pub retry_first_ms: u64,
    pub retry_max_ms: u64,
    /// Deliveries one process attempts at once.
    pub concurrency: usize,
    /// Deliveries to one URL in flight at once, across every process.
    pub max_in_flight_per_url: u32,
    /// Most webhooks that may exist.
    pub max_webhooks: u32,
    /// How often due deliveries are looked for (new events wake the worker at once).
    pub poll_interval_ms: u64,
    /// Finished deliveries and their attempts are kept this long.
    pub history_days: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most outbox rows one relay publishes per batch.
    pub batch: i64,
    /// Refusals by Kafka (while it accepts other rows) before a row is parked as failed.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Kafka consumer group shared by every preprocess worker.
    pub group_id: String,
    /// Media items one worker processes at once (CPU work runs on the blocking pool).
    pub concurrency: usize,
    /// ffmpeg is killed after this many milliseconds on one video.
    pub ffmpeg_timeout_ms: u64,
    /// ffmpeg's address-space limit, in MiB.
    pub ffmpeg_memory_mib: u64,
    /// Media left in `accepted` or `processing` longer than this are checked: enqueued again when
    /// their event was lost, left alone while it is still queued in the outbox or in Kafka.
    pub reconcile_after_secs: u64,
    /// Deliveries that may start an item without finishing it (its worker died) before it is
    /// failed and dead-lettered instead of crashing workers forever.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// Most images scored in one batch (1 disables micro-batching).
    pub max_batch: usize,
    /// Longest a request waits for its batch to fill, in microseconds.
    pub max_wait_us: u64,
    /// Images whose header claims more pixels are refused.
    pub max_image_pixels: u64,
    /// Most pixels (by their headers) one request's images may hold together; the decoding a
    /// request can ask for is bounded by this, not by its count of images times the above.
    pub max_request_pixels: u64,
    /// Largest predict request body (one image, or multipart with several), in bytes.
    pub max_predict_bytes: usize,
    /// Most model versions held in memory at once; the least recently used one is dropped.
    pub max_loaded_versions: usize,
    /// Most bytes of model weights held in memory at once.
    pub max_loaded_bytes: u64,
    /// Predictions written per database batch.
    pub record_batch: usize,
    /// Longest a prediction waits before being written, in milliseconds.
    pub record_interval_ms: u64,
    /// Predictions per drift check; windows do not overlap.
    pub drift_window: usize,
    /// Batches (of whole requests) a window is cut into for the batch-means tests.
    pub drift_batches: usize,
    /// Family-wise false-alarm probability of one drift check (Bonferroni over its tests).
    pub drift_alpha: f64,
    /// Consecutive drifted checks before a retrain request.
    pub drift_sustain_checks: u32,
    /// Whether a shift of the class mix alone (inputs that still look familiar) requests
    /// retraining; covariate shift always does (with `retrain_on_drift`).
    pub retrain_on_label_shift: bool,
    /// Whether sustained drift or low live accuracy publishes retrain requests.
    pub retrain_on_drift: bool,
    /// Live accuracy below this requests retraining (0 disables).
    pub retrain_below_accuracy: f64,
    /// Feedback answers in the live accuracy window.
    pub live_accuracy_window: i64,
    /// Feedback answers needed before live accuracy can trigger retraining.
    pub live_accuracy_min_feedback: i64,
    /// Least time between two retrain requests for one model from one process.
    pub retrain_cooldown_secs: u64,
    /// How often served aliases are re-read from PostgreSQL.
    pub alias_reconcile_secs: u64,
    /// Consumer group of the batch prediction workers.
    pub batch_group_id: String,
    /// Consumer group of the cluster-wide drift monitor (`inference.observations`).
    pub monitor_group_id: String,
    /// `promote: if_better_live`: answered inputs with feedback (scored by both versions) before
    /// the live gate decides.
    pub live_promotion_min_feedback: u64,
    /// Items per batch-prediction chunk.
    pub batch_chunk: usize,
    /// Attempts at one chunk (counted before each) before it is parked as failed.
    pub batch_max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Consumer group of the trainer workers.
    pub group_id: String,
    /// Consumer group of the coordinator (results, job completion).
    pub coordinator_group_id: String,
    /// Consumer group turning `retrain.requests` into jobs.
    pub retrain_group_id: String,
    /// Most trials one job may ask for.
    pub max_trials: u32,
    /// Most epochs one trial may train for.
    pub max_epochs: u32,
    /// Longest one trial may run (the workers' `max.poll.interval.ms`).
    pub max_trial_secs: u64,
    /// Parallel S3 downloads while loading a snapshot.
    pub load_concurrency: usize,
    /// Retrain requests within this long of the last retraining start no new job.
    pub retrain_cooldown_secs: u64,
    /// Deliveries that may start a trial (counted before it runs, so a worker that dies on it
    /// counts) before it is failed and parked.
    pub max_trial_attempts: u32,
    /// Failed attempts at a job's next step before the coordinator fails the job.
    pub max_step_attempts: u32,
    /// Largest network a trial may build, in parameters; checked before any memory is taken.
    pub max_trial_parameters: u64,
    /// Most memory one training step's activations may take (the batch times the network's
    /// per-sample activations, estimated), in MiB; checked before any memory is taken.
    pub max_trial_batch_mib: u64,
    /// Most classes a training dataset may have: each trial's report (a confusion matrix) and
    /// drift reference grow with them; checked when a job is submitted.
    pub max_classes: usize,
    /// Most memory a dataset's decoded frames may take in a worker (held whole, and once more
    /// split by split), in MiB; checked when a job is submitted.
    pub max_snapshot_mib: u64,
    /// A retrain starts only when at least this many labelled items are new (or relabelled)
    /// since production's snapshot; otherwise it is recorded as skipped.
    pub retrain_min_new_items: u64,
    /// `promote: if_better`: the level of the one-sided exact McNemar test the candidate must
    /// pass against production on held-out test items.
    pub promotion_alpha: f64,
    /// `promote: if_better`: the least test-accuracy gain over production that promotes.
    pub promotion_min_margin: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Images whose header claims more pixels are refused (decompression bombs).
    pub max_image_pixels: u64,
    /// Uploads up to this size are buffered and sent with one PUT; larger ones stream as an S3
    /// multipart upload in parts of this size (at least 5 MiB, S3's minimum part size).
    pub multipart_part_bytes: usize,
    /// Raw objects with no media row, and captured inputs, older than this are deleted by the
    /// orphan sweeper.
    pub orphan_grace_secs: u64,
    /// Buckets besides Sluice's own that bulk imports may read from.
    pub import_buckets: Vec<String>,
    /// Attempts at one import object (counted before each) before it is recorded as rejected.
    pub import_max_attempts: u32,
    /// Consumer group storing served inputs that capture policies keep (`media.captures`).
    pub capture_group_id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listener for every HTTP API of this process; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Largest media upload accepted (`POST /v1/media`, streamed to S3), in bytes.
    pub max_body_bytes: u64,
    /// Largest body of every other route unless the route sets its own (JSON requests), in bytes.
    pub max_request_bytes: usize,
    /// Most `file` parts in one multipart upload or predict request.
    pub max_parts: usize,
    /// Longest a request may take end to end before it is answered 503, in seconds.
    pub request_timeout_secs: u64,
    /// Longest a client may take to send a request's headers (and an idle keep-alive connection
    /// may wait for the next request) before the connection is closed, in seconds.
    pub header_timeout_secs: u64,
    /// Most client connections open at once; past it, new connections wait in the listen queue.
    pub max_connections: usize,
    /// Failed authentications one client address may make in a burst (refilled at one per
    /// second) before its requests get 429; 0 turns the limit off (behind a proxy that hides
    /// client addresses, for example).
    pub auth_failure_burst: u32,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client: the
    /// failed-authentication limit counts per client, not per proxy.
    pub trusted_proxies: Vec<String>,
    /// Marks the console's session cookie `Secure` on every answer, for deployments served over
    /// HTTPS by a proxy that does not send `X-Forwarded-Proto: https` (with it, the cookie is
    /// `Secure` anyway).
    pub secure_cookies: bool,
    /// How long a console sign-in lasts before the browser must sign in again, in hours.
    pub console_session_hours: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`; use `127.0.0.1`, not `localhost`, for the local broker.
    pub brokers: String,
    /// Prepended to every topic name, so several deployments (or tests) share one cluster.
    pub topic_prefix: String,
    /// Partitions for topics Sluice creates; bounds how many consumers of a group can work.
    pub partitions: i32,
    pub replication_factor: i32,
    /// A consumer that stops heartbeating for this long loses its partitions.
    pub session_timeout_ms: u32,
    /// `fetch.wait.max.ms` of the work consumers (preprocess, the trainer's workers and
    /// coordinator, the models.events follower).
    pub fetch_wait_ms: u32,
    /// `fetch.wait.max.ms` of the background consumers ([`crate::kafka::background`]).
    pub background_fetch_wait_ms: u32,
    /// A work-queue consumer that received nothing for this long pauses its fetches
    /// ([`crate::idle`]); 0 never pauses.
    pub idle_pause_ms: u64,
    /// How often a paused consumer compares its partitions' ends with its position at first;
    /// each check that finds nothing doubles the wait, up to `idle_check_max_ms`.
    pub idle_check_ms: u32,
    /// The longest wait between two checks of a paused consumer.
    pub idle_check_max_ms: u32,
    /// Extra librdkafka properties (for example `security.protocol`, `sasl.*`) for managed
    /// clusters. Values are secret: they often hold passwords.
    #[serde(serialize_with = "redacted_map")]
    pub extra: std::collections::BTreeMap<String, SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Custom endpoint (Garage, MinIO); empty means AWS's regional endpoint.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Static credentials; when both are empty the AWS default chain (env, profile, IAM role) is used.
    pub access_key_id: String,
    #[serde(serialize_with = "redacted")]
    pub secret_access_key: SecretString,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted servers.
    pub force_path_style: bool,
    /// Seconds an S3 request may go unanswered before it is abandoned and retried.
    pub attempt_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`; secret because it usually holds a password.
    #[serde(serialize_with = "redacted_url")]
    pub url: SecretString,
    pub max_connections: usize,
    /// Ask the server (startup options) to probe and drop connections whose client vanished, so a
    /// host cut off mid-transaction does not hold its row locks for hours. Off only behind a
    /// pooler that refuses startup options.
    pub server_keepalives: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable text when it is.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `tracing` filter directives, for example `info,sluice_ingest=debug`.
    pub log_filter: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Where `sluice up` writes the local admin token and the CLI reads it from;
    /// relative paths are under `state_dir`.
    pub token_file: PathBuf,
}

/// A secret as `sluice config show` prints it: `***` when set.
fn redacted<S: serde::Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if secret.expose_secret().is_empty() { "" } else { "***" })
}

fn redacted_map<S: serde::Serializer>(
    map: &std::collections::BTreeMap<String, SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = serializer.serialize_map(Some(map.len()))?;
    for key in map.keys() {
        out.serialize_entry(key, "***")?;
    }
    out.end()
}

fn redacted_url<S: serde::Serializer>(url: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url.expose_secret()))
}

impl Config {
    /// The effective configuration as TOML, secrets redacted (`sluice config show`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }
}

/// `SLUICE_CONFIG` names the TOML file; it is not itself a configuration key.
const CONFIG_FILE_KEY: &str = "config";
/// `SLUICE_TOKEN` is the CLI's bearer token, not a configuration key either.
const CLIENT_TOKEN_KEY: &str = "token";

/// The built-in defaults, also the annotated reference of every key (`sluice config defaults`).
pub const DEFAULTS_TOML: &str = include_str!("default.toml");

impl Default for Config {
    fn default() -> Self {
        Self::extract(Figment::from(Toml::string(DEFAULTS_TOML)))
            .expect("the built-in defaults are a valid configuration")
    }
}

impl Config {
    /// Loads defaults, then `file` (if given, it must exist), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed("SLUICE_").ignore(&[CONFIG_FILE_KEY, CLIENT_TOKEN_KEY]))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env.map(|key| env_key_to_path(&key.as_str().to_ascii_lowercase()).into()));
        Self::extract(figment)
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Self = figment.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules, checked at start-up rather than at first use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rule = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(ConfigError::Rule(msg.into())) };
        rule(!self.kafka.brokers.trim().is_empty(), "kafka.brokers must name at least one broker")?;
        rule(self.kafka.partitions >= 1, "kafka.partitions must be at least 1")?;
        rule(self.kafka.replication_factor >= 1, "kafka.replication_factor must be at least 1")?;
        rule(
            self.kafka.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "kafka.topic_prefix may only hold ASCII letters, digits, '.', '_' and '-'",
        )?;
        rule(
            (1_000..=300_000).contains(&self.kafka.session_timeout_ms),
            "kafka.session_timeout_ms must be between 1000 and 300000",
        )?;
        rule((100..=4_000).contains(&self.kafka.fetch_wait_ms), "kafka.fetch_wait_ms must be between 100 and 4000")?;
        rule(
            (100..=4_000).contains(&self.kafka.background_fetch_wait_ms),
            "kafka.background_fetch_wait_ms must be between 100 and 4000",
        )?;
        rule(
            self.kafka.idle_pause_ms == 0 || (1_000..=86_400_000).contains(&self.kafka.idle_pause_ms),
            "kafka.idle_pause_ms must be 0 (never pause) or between 1000 and 86400000",
        )?;
        rule((100..=60_000).contains(&self.kafka.idle_check_ms), "kafka.idle_check_ms must be between 100 and 60000")?;
        rule(
            (self.kafka.idle_check_ms..=60_000).contains(&self.kafka.idle_check_max_ms),
            "kafka.idle_check_max_ms must be between kafka.idle_check_ms and 60000",
        )?;
        rule(
            (1..=3_600).contains(&self.s3.attempt_timeout_secs),
            "s3.attempt_timeout_secs must be between 1 and 3600",
        )?;
        rule(
            crate::s3::is_valid_bucket_name(&self.s3.bucket),
            "s3.bucket must be 3-63 characters of lower-case letters, digits, '.' and '-'",
        )?;
        rule(
            self.s3.access_key_id.is_empty() == self.s3.secret_access_key.expose_secret().is_empty(),
            "s3.access_key_id and s3.secret_access_key must be set together (or both empty for the AWS default chain)",
        )?;
        if !self.s3.endpoint.is_empty() {
            let url = url::Url::parse(&self.s3.endpoint)
                .map_err(|e| ConfigError::Rule(format!("s3.endpoint is not a URL: {e}")))?;
            rule(matches!(url.scheme(), "http" | "https"), "s3.endpoint must be an http:// or https:// URL")?;
        }
        self.database
            .url
            .expose_secret()
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::Rule(format!("database.url is not a PostgreSQL URL: {e}")))?;
        rule(self.database.max_connections >= 1, "database.max_connections must be at least 1")?;
        rule(self.http.max_body_bytes >= 1, "http.max_body_bytes must be at least 1")?;
        rule(self.http.max_request_bytes >= 1024, "http.max_request_bytes must be at least 1024")?;
        rule(self.http.max_parts >= 1, "http.max_parts must be at least 1")?;
        rule(self.http.request_timeout_secs >= 1, "http.request_timeout_secs must be at least 1")?;
        rule(self.http.header_timeout_secs >= 1, "http.header_timeout_secs must be at least 1")?;
        rule(
            self.http
                .trusted_proxies
                .iter()
                .all(|p| p.parse::<ipnet::IpNet>().is_ok() || p.parse::<std::net::IpAddr>().is_ok()),
            "http.trusted_proxies must hold IP addresses or CIDR ranges",
        )?;
        rule(self.http.max_connections >= 1, "http.max_connections must be at least 1")?;
        rule(
            (1..=24 * 30).contains(&self.http.console_session_hours),
            "http.console_session_hours must be between 1 and 720",
        )?;
        rule(self.ingest.max_image_pixels >= 1, "ingest.max_image_pixels must be at least 1")?;
        rule(
            self.ingest.multipart_part_bytes >= 5 * 1024 * 1024,
            "ingest.multipart_part_bytes must be at least 5 MiB (S3's minimum part size)",
        )?;
        rule(self.outbox.batch >= 1, "outbox.batch must be at least 1")?;
        rule(self.outbox.max_attempts >= 1, "outbox.max_attempts must be at least 1")?;
        rule(self.ingest.import_max_attempts >= 1, "ingest.import_max_attempts must be at least 1")?;
        rule(self.preprocess.concurrency >= 1, "preprocess.concurrency must be at least 1")?;
        rule(!self.preprocess.group_id.is_empty(), "preprocess.group_id must not be empty")?;
        rule(!self.ingest.capture_group_id.is_empty(), "ingest.capture_group_id must not be empty")?;
        rule(self.preprocess.max_attempts >= 1, "preprocess.max_attempts must be at least 1")?;
        let trainer = &self.trainer;
        rule(
            ![&trainer.group_id, &trainer.coordinator_group_id, &trainer.retrain_group_id].iter().any(|g| g.is_empty()),
            "trainer.group_id, trainer.coordinator_group_id and trainer.retrain_group_id must not be empty",
        )?;
        rule(
            trainer.group_id != trainer.coordinator_group_id && trainer.group_id != trainer.retrain_group_id,
            "trainer.group_id must differ from the coordinator's and the retrain consumer's groups",
        )?;
        rule(trainer.max_trials >= 1, "trainer.max_trials must be at least 1")?;
        rule(trainer.max_epochs >= 1, "trainer.max_epochs must be at least 1")?;
        // It is the trial consumer's max.poll.interval.ms too, which librdkafka bounds by a day
        // and by the session timeout.
        rule(
            (60..=86_400).contains(&trainer.max_trial_secs)
                && trainer.max_trial_secs * 1000 >= u64::from(self.kafka.session_timeout_ms),
            "trainer.max_trial_secs must be between 60 and 86400, and at least kafka.session_timeout_ms",
        )?;
        rule(trainer.load_concurrency >= 1, "trainer.load_concurrency must be at least 1")?;
        rule(trainer.max_trial_attempts >= 1, "trainer.max_trial_attempts must be at least 1")?;
        rule(trainer.max_step_attempts >= 1, "trainer.max_step_attempts must be at least 1")?;
        rule(trainer.max_trial_parameters >= 1, "trainer.max_trial_parameters must be at least 1")?;
        rule(trainer.max_trial_batch_mib >= 1, "trainer.max_trial_batch_mib must be at least 1")?;
        rule(trainer.max_classes >= 2, "trainer.max_classes must be at least 2")?;
        rule(trainer.max_snapshot_mib >= 1, "trainer.max_snapshot_mib must be at least 1")?;
        rule(
            trainer.promotion_alpha > 0.0 && trainer.promotion_alpha <= 1.0,
            "trainer.promotion_alpha must be above 0 and at most 1",
        )?;
        rule(
            (0.0..1.0).contains(&trainer.promotion_min_margin),
            "trainer.promotion_min_margin must be at least 0 and below 1",
        )?;
        let inference = &self.inference;
        rule((1..=1024).contains(&inference.max_batch), "inference.max_batch must be between 1 and 1024")?;
        rule(inference.max_loaded_versions >= 1, "inference.max_loaded_versions must be at least 1")?;
        rule(inference.max_predict_bytes >= 1024, "inference.max_predict_bytes must be at least 1024")?;
        rule(
            inference.max_request_pixels >= inference.max_image_pixels,
            "inference.max_request_pixels must be at least inference.max_image_pixels",
        )?;
        rule(inference.max_wait_us <= 1_000_000, "inference.max_wait_us must be at most 1000000 (1 s)")?;
        rule(inference.record_batch >= 1, "inference.record_batch must be at least 1")?;
        rule(inference.drift_window >= 20, "inference.drift_window must be at least 20")?;
        rule(
            (5..=1000).contains(&inference.drift_batches) && inference.drift_batches <= inference.drift_window,
            "inference.drift_batches must be between 5 and 1000 and at most inference.drift_window",
        )?;
        rule(
            inference.drift_alpha > 0.0 && inference.drift_alpha < 1.0,
            "inference.drift_alpha must be between 0 and 1",
        )?;
        rule(inference.drift_sustain_checks >= 1, "inference.drift_sustain_checks must be at least 1")?;
        rule(
            (0.0..=1.0).contains(&inference.retrain_below_accuracy),
            "inference.retrain_below_accuracy must be between 0 and 1",
        )?;
        rule(inference.live_accuracy_window >= 1, "inference.live_accuracy_window must be at least 1")?;
        rule(inference.batch_chunk >= 1, "inference.batch_chunk must be at least 1")?;
        rule(inference.batch_max_attempts >= 1, "inference.batch_max_attempts must be at least 1")?;
        rule(inference.alias_reconcile_secs >= 1, "inference.alias_reconcile_secs must be at least 1")?;
        let webhooks = &self.webhooks;
        rule(!webhooks.group_id.is_empty(), "webhooks.group_id must not be empty")?;
        for network in &webhooks.allowed_networks {
            network.parse::<ipnet::IpNet>().map_err(|_| {
                ConfigError::Rule(format!(
                    "webhooks.allowed_networks: {network:?} is not a network in CIDR form (10.0.0.0/8, fd00::/8)"
                ))
            })?;
        }
        rule((100..=300_000).contains(&webhooks.timeout_ms), "webhooks.timeout_ms must be between 100 and 300000")?;
        rule((1..=50).contains(&webhooks.max_attempts), "webhooks.max_attempts must be between 1 and 50")?;
        rule(
            webhooks.retry_first_ms >= 1 && webhooks.retry_first_ms <= webhooks.retry_max_ms,
            "webhooks.retry_first_ms must be at least 1 and at most webhooks.retry_max_ms",
        )?;
        rule(webhooks.retry_max_ms <= 86_400_000, "webhooks.retry_max_ms must be at most 86400000 (a day)")?;
        rule((1..=1024).contains(&webhooks.concurrency), "webhooks.concurrency must be between 1 and 1024")?;
        rule(webhooks.max_in_flight_per_url >= 1, "webhooks.max_in_flight_per_url must be at least 1")?;
        rule(webhooks.max_webhooks >= 1, "webhooks.max_webhooks must be at least 1")?;
        rule(
            (10..=60_000).contains(&webhooks.poll_interval_ms),
            "webhooks.poll_interval_ms must be between 10 and 60000",
        )?;
        rule((1..=36_500).contains(&webhooks.history_days), "webhooks.history_days must be 1 to 36500")?;
        Ok(())
    }

    /// The admin token file, resolved against `state_dir`.
    pub fn token_path(&self) -> PathBuf {
        self.state_dir.join(&self.auth.token_file)
    }
}

/// One line per problem: what is wrong, the dotted key, and its source.
fn describe(err: &figment::Error) -> String {
    let problems: Vec<String> = err
        .clone()
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            if let figment::error::Kind::UnknownField(field, _) = &e.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let key = path.join(".");
            let source = match &e.metadata {
                Some(md) if md.name.contains("environment variable") => {
                    format!("environment variable SLUICE_{}", path.join("_").to_ascii_uppercase())
                }
                Some(md) => match &md.source {
                    Some(figment::Source::File(file)) => format!("file {}", file.display()),
                    _ => md.name.to_string(),
                },
                None => "configuration".into(),
            };
            format!("{} (key `{key}`, from {source})", e.kind)
        })
        .collect();
    problems.join("; ")
}

/// Maps a lower-cased env var name without its prefix to a dotted key path:
/// `database_url` → `database.url`; names of no section stay top-level (`state_dir`).
fn env_key_to_path(key: &str) -> String {
    for section in SECTIONS {
        if let Some(rest) = key.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            return format!("{section}.{rest}");
        }
    }
    key.to_owned()
}

/// Shows a PostgreSQL URL with its password replaced, for logs and `sluice doctor`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable URL>".into(),
    }
}

#[cfg(test)]
// figment::Error (Jail's error type) is large; it only ever travels inside these tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_configuration_prints_as_toml_that_loads_again_without_secrets() {
        let mut config = Config::default();
        config.s3.secret_access_key = SecretString::from("s3cr3t".to_owned());
        config.database.url = SecretString::from("postgres://sluice:hunter2@db:5432/sluice".to_owned());
        let text = config.to_toml();
        assert!(!text.contains("s3cr3t") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("[inference]") && text.contains("drift_window = 400"), "{text}");
        let parsed: Config = toml::from_str(&text).expect("the printed TOML is a configuration");
        assert_eq!(parsed.inference.drift_window, config.inference.drift_window);
    }

    #[test]
    fn env_names_map_onto_sections() {
        assert_eq!(env_key_to_path("database_url"), "database.url");
        assert_eq!(env_key_to_path("s3_secret_access_key"), "s3.secret_access_key");
        assert_eq!(env_key_to_path("http_addr"), "http.addr");
        assert_eq!(env_key_to_path("state_dir"), "state_dir");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = Config::default();
        let shown = format!("{config:?}");
        assert!(!shown.contains("5111ce5111ce"), "{shown}");
        assert!(!shown.contains("postgres:postgres@"), "{shown}");
    }

    #[test]
    fn redacts_database_password() {
        assert_eq!(redact_url("postgres://postgres:hunter2@db:5432/sluice"), "postgres://postgres:***@db:5432/sluice");
    }

    /// Runs `f` with a private working directory and environment (figment's `Jail` serialises
    /// tests that touch the process environment).
    fn jailed(f: impl FnOnce(&mut figment::Jail) -> Result<(), figment::Error>) {
        figment::Jail::expect_with(f);
    }

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        jailed(|jail| {
            jail.create_file(
                "sluice.toml",
                "[http]\naddr = \"127.0.0.1:9000\"\n[kafka]\npartitions = 3\ntopic_prefix = \"file.\"\n",
            )?;
            jail.set_env("SLUICE_KAFKA_PARTITIONS", "7");
            let config = Config::load(Some(Path::new("sluice.toml"))).expect("valid config");
            assert_eq!(config.kafka.partitions, 7, "env beats file");
            assert_eq!(config.kafka.topic_prefix, "file.", "file beats defaults");
            assert_eq!(config.http.addr.port(), 9000, "file beats defaults");
            assert_eq!(config.s3.bucket, "sluice", "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn database_url_comes_from_sluice_database_url() {
        jailed(|jail| {
            jail.set_env("SLUICE_DATABASE_URL", "postgres://u:p@db.internal:6543/x");
            let config = Config::load(None).expect("valid config");
            assert_eq!(config.database.url.expose_secret(), "postgres://u:p@db.internal:6543/x");
            Ok(())
        });
    }

    #[test]
    fn rejects_an_unknown_key_in_the_file_naming_it() {
        jailed(|jail| {
            jail.create_file("sluice.toml", "[kafka]\nbrokerz = \"x:1\"\n")?;
            let err = Config::load(Some(Path::new("sluice.toml"))).expect_err("unknown key");
            let text = err.to_string();
            assert!(text.contains("brokerz"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn rejects_an_unknown_sluice_env_var_naming_it() {
        jailed(|jail| {
            jail.set_env("SLUICE_KAFKA_BROKER", "127.0.0.1:9092");
            let text = Config::load(None).expect_err("unknown env key").to_string();
            assert!(text.contains("broker") && text.contains("SLUICE_KAFKA_BROKER"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn rejects_a_malformed_value_naming_key_and_source() {
        jailed(|jail| {
            jail.set_env("SLUICE_HTTP_ADDR", "not-an-address");
            let text = Config::load(None).expect_err("bad address").to_string();
            assert!(text.contains("addr") && text.contains("SLUICE_HTTP_ADDR"), "{text}");
            jail.clear_env();
            jail.create_file("bad.toml", "[kafka]\npartitions = \"many\"\n")?;
            let text = Config::load(Some(Path::new("bad.toml"))).expect_err("bad type").to_string();
            assert!(text.contains("partitions") && text.contains("bad.toml"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn rejects_values_that_break_cross_field_rules() {
        jailed(|jail| {
            jail.set_env("SLUICE_KAFKA_PARTITIONS", "0");
            let text = Config::load(None).expect_err("zero partitions").to_string();
            assert!(text.contains("kafka.partitions"), "{text}");
            jail.clear_env();
            jail.set_env("SLUICE_S3_BUCKET", "Not_A_Bucket");
            let text = Config::load(None).expect_err("bad bucket").to_string();
            assert!(text.contains("s3.bucket"), "{text}");
            jail.clear_env();
            // The trial consumer's poll interval: librdkafka refuses more than a day, or less
            // than the session timeout, and the worker would never start.
            for (secs, session_ms) in [("86401", "45000"), ("60", "90000")] {
                jail.set_env("SLUICE_TRAINER_MAX_TRIAL_SECS", secs);
                jail.set_env("SLUICE_KAFKA_SESSION_TIMEOUT_MS", session_ms);
                let text = Config::load(None).expect_err("no usable poll interval").to_string();
                assert!(text.contains("trainer.max_trial_secs"), "{text}");
            }
            Ok(())
        });
    }

    #[test]
    fn webhook_networks_must_be_cidr_and_lists_come_from_the_environment() {
        jailed(|jail| {
            jail.set_env("SLUICE_WEBHOOKS_ALLOWED_NETWORKS", "[\"10.20.0.0/16\", \"fd00::/8\"]");
            let config = Config::load(None).expect("valid networks");
            assert_eq!(config.webhooks.allowed_networks, ["10.20.0.0/16", "fd00::/8"]);
            jail.set_env("SLUICE_WEBHOOKS_ALLOWED_NETWORKS", "[\"10.20.0.0\"]");
            let text = Config::load(None).expect_err("no prefix length").to_string();
            assert!(text.contains("webhooks.allowed_networks") && text.contains("10.20.0.0"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        jailed(|_| {
            let err = Config::load(Some(Path::new("nope.toml"))).expect_err("missing file");
            assert!(err.to_string().contains("nope.toml"));
            Ok(())
        });
    }
}

#[cfg(test)]
mod reference_doc {
    /// docs/configuration.md lists every key of the built-in defaults with its default.
    #[test]
    fn the_configuration_reference_lists_every_default_key() {
        let doc = include_str!("../../docs/configuration.md");
        let mut section = String::new();
        let mut missing = Vec::new();
        for line in super::DEFAULTS_TOML.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{name}.");
                if !doc.contains(&format!("`{name}`")) && !doc.contains(&format!("`{name}.")) {
                    missing.push(name.to_owned());
                }
            } else if let Some((key, value)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                let row = format!("| `{section}{}` | `{}` |", key.trim(), value.trim());
                if !doc.contains(&row) {
                    missing.push(row);
                }
            }
        }
        assert!(missing.is_empty(), "docs/configuration.md lacks: {missing:#?}");
    }
}
