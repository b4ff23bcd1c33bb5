//! What preprocess hands to the rest of Sluice: the `media` and `media_outputs` tables.
//!
//! An item is ready for training once its row says `processed` under the dataset's current
//! pipeline spec and its outputs are listed. Readers outside preprocess (the trainer freezing a
//! snapshot) go through these functions, never through SQL of their own on preprocess's tables.
//! The `media.processed` event announces the same hand-off to outside subscribers (see
//! `API.md`); nothing inside Sluice needs to consume it, because the tables are the record.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::{db::DbError, training::SnapshotItem, uploads::MediaStatus};

/// Whether the dataset exists (it does once anything was pushed to it).
#[tracing::instrument(level = "debug", skip(client))]
pub async fn dataset_exists(client: &impl GenericClient, dataset: &str) -> Result<bool, DbError> {
    let row = client.query_opt("SELECT 1 AS found FROM datasets WHERE name = $1", &[&dataset]).await?;
    Ok(row.is_some())
}

/// The dataset's processed, labelled items under the spec `spec_hash`, each with its output
/// keys in frame order.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn labelled_outputs(
    client: &impl GenericClient,
    dataset: &str,
    spec_hash: &str,
) -> Result<Vec<SnapshotItem>, DbError> {
    let rows = client
        .query(
            "SELECT m.id, m.label, array_agg(o.key ORDER BY o.frame_index NULLS FIRST, o.key) AS keys
             FROM media m JOIN media_outputs o ON o.media_id = m.id AND o.spec_hash = $2
             WHERE m.dataset = $1 AND m.status = $3 AND m.spec_hash = $2 AND m.label IS NOT NULL
             GROUP BY m.id, m.label",
            &[&dataset, &spec_hash, &MediaStatus::Processed],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| SnapshotItem { media_id: row.get::<_, Uuid>("id"), label: row.get("label"), keys: row.get("keys") })
        .collect())
}

/// How many of the dataset's items are in each status (statuses with none are absent).
#[tracing::instrument(level = "debug", skip(client))]
pub async fn status_counts(client: &impl GenericClient, dataset: &str) -> Result<HashMap<MediaStatus, i64>, DbError> {
    let rows = client
        .query("SELECT status, count(*) AS items FROM media WHERE dataset = $1 GROUP BY status", &[&dataset])
        .await?;
    Ok(rows.iter().map(|row| (row.get("status"), row.get("items"))).collect())
}

/// One processed item and its first output (a video's first frame).
#[derive(Debug, Clone, PartialEq)]
pub struct FirstOutput {
    pub media_id: Uuid,
    pub label: Option<String>,
    pub key: String,
}

/// Up to `limit` of the dataset's processed items under the spec `spec_hash`, labelled or not,
/// each with its first output, in media id order.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn first_outputs(
    client: &impl GenericClient,
    dataset: &str,
    spec_hash: &str,
    limit: i64,
) -> Result<Vec<FirstOutput>, DbError> {
    let rows = client
        .query(
            "SELECT DISTINCT ON (m.id) m.id, m.label, o.key
             FROM media m JOIN media_outputs o ON o.media_id = m.id AND o.spec_hash = $2
             WHERE m.dataset = $1 AND m.status = $3 AND m.spec_hash = $2
             ORDER BY m.id, o.frame_index NULLS FIRST, o.key
             LIMIT $4",
            &[&dataset, &spec_hash, &MediaStatus::Processed, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| FirstOutput { media_id: row.get("id"), label: row.get("label"), key: row.get("key") })
        .collect())
}
