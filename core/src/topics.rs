//! Kafka topic names (under the configured prefix) and how each is created.

use std::fmt;

/// Every topic Sluice uses. The wire name is `<prefix><name>`, for example `sluice.media.ingested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A media item was accepted (published by the ingest outbox relay).
    MediaIngested,
    /// A media item became training-ready data.
    MediaProcessed,
    /// Media events that can never succeed, with the reason.
    MediaDlq,
    /// Hyper-parameter trials for trainer workers.
    TrainingTrials,
    /// Trial outcomes back to the coordinator.
    TrainingResults,
    /// Model registrations and alias moves (drives inference hot-swaps).
    ModelsEvents,
    /// Requests to retrain a model (drift, schedules).
    RetrainRequests,
    /// Batch prediction work items.
    PredictionsBatch,
    /// Work of any kind parked after its attempts ran out (`work.parked`): an outbox row Kafka
    /// refused, a trial that killed its workers, a batch chunk, an import object, a
    /// coordinator step.
    WorkDlq,
    /// Served inputs a model's capture policy keeps, for ingest to store as unlabelled media.
    MediaCaptures,
    /// Every served request's prediction statistics, for the cluster-wide drift monitor.
    InferenceObservations,
    /// State changes announced to people outside Sluice (drift verdicts, finished training jobs,
    /// skipped retrains; [`crate::notifications`]), which webhooks deliver.
    Notifications,
}

impl Topic {
    pub const ALL: [Topic; 12] = [
        Topic::MediaIngested,
        Topic::MediaProcessed,
        Topic::MediaDlq,
        Topic::TrainingTrials,
        Topic::TrainingResults,
        Topic::ModelsEvents,
        Topic::RetrainRequests,
        Topic::PredictionsBatch,
        Topic::WorkDlq,
        Topic::MediaCaptures,
        Topic::InferenceObservations,
        Topic::Notifications,
    ];

    /// The name without prefix, as written in `../shared/API.md`.
    pub fn name(self) -> &'static str {
        match self {
            Topic::MediaIngested => "media.ingested",
            Topic::MediaProcessed => "media.processed",
            Topic::MediaDlq => "media.dlq",
            Topic::TrainingTrials => "training.trials",
            Topic::TrainingResults => "training.results",
            Topic::ModelsEvents => "models.events",
            Topic::RetrainRequests => "retrain.requests",
            Topic::PredictionsBatch => "predictions.batch",
            Topic::WorkDlq => "work.dlq",
            Topic::MediaCaptures => "media.captures",
            Topic::InferenceObservations => "inference.observations",
            Topic::Notifications => "notifications",
        }
    }

    /// Topic-level configs Sluice sets at creation. Model events are compacted by model name so
    /// a restarted inference server can rebuild the current aliases from the topic alone.
    pub fn configs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Topic::ModelsEvents => &[("cleanup.policy", "compact")],
            Topic::MediaDlq | Topic::WorkDlq => &[("retention.ms", "2592000000")],
            // Statistics only matter while a window forms: a day is plenty.
            Topic::InferenceObservations => &[("retention.ms", "86400000")],
            _ => &[],
        }
    }

    /// Partitions to create the topic with: `default` (`kafka.partitions`), except for the
    /// low-volume control topics, which one partition carries (every consumer fetch costs the
    /// broker a read per partition, idle or not).
    pub fn partitions(self, default: i32) -> i32 {
        match self {
            Topic::ModelsEvents | Topic::RetrainRequests | Topic::Notifications => 1,
            _ => default,
        }
    }

    /// The full topic name under `prefix`.
    pub fn qualified(self, prefix: &str) -> TopicName {
        TopicName(format!("{prefix}{}", self.name()))
    }
}

/// A fully qualified topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicName(String);

impl TopicName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Topic;

    #[test]
    fn names_are_prefixed_and_unique() {
        let names: std::collections::HashSet<_> =
            Topic::ALL.iter().map(|t| t.qualified("sluice.").to_string()).collect();
        assert_eq!(names.len(), Topic::ALL.len());
        assert!(names.contains("sluice.media.ingested"));
    }
}
