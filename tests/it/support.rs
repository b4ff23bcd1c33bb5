//! Helpers shared by the integration tests.

use std::time::Duration;

use rdkafka::{
    admin::{AdminOptions, NewTopic, TopicReplication},
    producer::{FutureProducer, FutureRecord},
};
use sluice::{Application, Service};
use sluice_core::{Config, Shutdown, kafka};
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
pub async fn produce(producer: &FutureProducer, topic: &str, messages: &[(i32, String)]) {
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
        result.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

/// A running application on an ephemeral port; stops when dropped.
pub struct RunningApp {
    pub base_url: String,
    shutdown: Shutdown,
}

impl RunningApp {
    pub async fn spawn(config: Config) -> Self {
        let app = Application::build(config, &Service::ALL).await.expect("application builds");
        let base_url = format!("http://{}", app.local_addr());
        let shutdown = Shutdown::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self { base_url, shutdown }
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
