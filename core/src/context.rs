//! The clients a Sluice process shares between its services, built once at start-up.

use std::sync::Arc;

use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{config::Config, db, kafka, migrate, s3, telemetry};

/// Why start-up could not reach or prepare a dependency.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] db::DbError),
    #[error("migrations: {0}")]
    Migrate(#[from] migrate::MigrateError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("S3: {0}")]
    S3(#[from] s3::S3Error),
}

/// Shared, cheaply clonable handles to every dependency.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub db: Pool,
    pub s3: aws_sdk_s3::Client,
    pub producer: kafka::SluiceProducer,
    pub metrics: PrometheusHandle,
    /// Recently verified API tokens (see [`crate::auth::TokenCache`]).
    pub tokens: Arc<crate::auth::TokenCache>,
    /// Failed authentications per client address (see [`crate::auth::FailureLimiter`]).
    pub auth_failures: Arc<crate::auth::FailureLimiter>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Context {
    /// Builds the clients. Nothing is contacted yet: see [`Context::bootstrap`].
    pub async fn new(config: Config) -> Result<Self, StartupError> {
        Ok(Self {
            db: db::pool(&config.database)?,
            s3: s3::client(&config.s3).await,
            producer: kafka::producer(&config.kafka)?,
            metrics: telemetry::metrics(),
            tokens: Arc::default(),
            auth_failures: Arc::new(crate::auth::FailureLimiter::new(config.http.auth_failure_burst)),
            config: Arc::new(config),
        })
    }

    /// Prepares every dependency, idempotently: schema migrations, topics, the bucket.
    /// Fails with the first dependency that is unreachable.
    pub async fn bootstrap(&self) -> Result<(), StartupError> {
        let report = migrate::run(&self.db).await?;
        if !report.applied.is_empty() {
            tracing::info!(applied = ?report.applied, "database schema migrated");
        }
        kafka::ensure_topics(&self.config.kafka).await?;
        s3::ensure_bucket(&self.s3, &self.config.s3.bucket).await?;
        Ok(())
    }

    /// Whether the Kafka cluster answers within `timeout`, and how many brokers it names
    /// (readiness, the attempt-parking dependency check): a metadata request about this
    /// deployment's models.events alone, which [`Self::bootstrap`] created; the producer never
    /// creates a topic it names.
    pub async fn kafka_reachable(&self, timeout: std::time::Duration) -> Result<usize, String> {
        let topic = self.topic(crate::topics::Topic::ModelsEvents);
        kafka::check_reachable(&self.producer, Some(topic.as_str()), timeout).await
    }

    /// The full name of `topic` under this deployment's prefix.
    pub fn topic(&self, topic: crate::topics::Topic) -> crate::topics::TopicName {
        topic.qualified(&self.config.kafka.topic_prefix)
    }
}
