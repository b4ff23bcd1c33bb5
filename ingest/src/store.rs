//! PostgreSQL records of media and datasets: every statement ingest runs on `datasets`, `media`
//! and `media_outputs`. New media are written together with their `media.ingested` outbox events.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use sluice_core::{
    Context, capture,
    db::DbError,
    domain::{DatasetName, Label},
    events::Envelope,
    outbox::{self, OutboxRow},
    topics::{Topic, TopicName},
    uploads::{MediaIngested, MediaStatus},
};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{
    imports::store::{self as import_store, ItemOutcome},
    upload::Stored,
};

/// One uploaded file, validated and in S3, waiting to be recorded.
#[derive(Debug)]
pub struct NewMedia {
    pub stored: Stored,
    pub dataset: DatasetName,
    pub label: Option<Label>,
    pub source: Option<String>,
    pub metadata: Value,
    /// The bulk import and source key this item came from, recorded in the same transaction.
    pub import: Option<(Uuid, String)>,
    /// The prediction whose input this is (a served input kept by a capture policy).
    pub captured_from: Option<Uuid>,
}

/// The answer for one file of a `POST /v1/media`.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub id: Uuid,
    pub dataset: String,
    pub label: Option<String>,
    pub kind: String,
    pub content_type: String,
    pub bytes: i64,
    pub sha256: String,
    pub status: MediaStatus,
    pub duplicate: bool,
}

/// Inserts the dataset (if new), the media row and its outbox row in one statement, so a
/// single-file upload costs one round trip and commits atomically on its own. Returns the media
/// id when inserted, nothing when the bytes already exist in the dataset.
static INSERT_MEDIA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ds AS (
            INSERT INTO datasets (name) VALUES ($2) ON CONFLICT DO NOTHING
        ), m AS (
            INSERT INTO media (id, dataset, label, kind, content_type, bytes, sha256, width, height, raw_key, source,
                               metadata, captured_from)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT (dataset, sha256) DO NOTHING
            RETURNING id
        ), o AS (
            {}
        )
        SELECT id FROM m",
        outbox::insert_per_row("m", 14)
    )
});

const SELECT_EXISTING: &str =
    "SELECT id, label, kind, content_type, bytes, status FROM media WHERE dataset = $1 AND sha256 = $2";

/// Records every item atomically, each new one with its `media.ingested` outbox row: one
/// statement for a single upload, one transaction for several files or an import item.
/// Items whose bytes already exist in their dataset are answered with the existing record; their
/// freshly written objects are returned so the caller deletes them.
#[tracing::instrument(level = "debug", skip_all, fields(items = items.len()))]
pub async fn record(ctx: &Context, items: Vec<NewMedia>) -> Result<(Vec<Accepted>, Vec<String>), DbError> {
    let topic = ctx.topic(Topic::MediaIngested);
    let events = items.iter().map(|item| ingested(&topic, item)).collect::<Result<Vec<_>, _>>()?;
    record_all(ctx, &items, &events).await
}

/// The `media.ingested` event of `item`, checked for the outbox.
fn ingested(topic: &TopicName, item: &NewMedia) -> Result<OutboxRow, DbError> {
    let stored = &item.stored;
    let event = Envelope::new(MediaIngested {
        media_id: stored.id,
        dataset: item.dataset.to_string(),
        label: item.label.as_ref().map(Label::to_string),
        kind: stored.format.kind().as_str().to_owned(),
        content_type: stored.format.content_type().to_owned(),
        raw_key: stored.key.clone(),
        bytes: stored.bytes,
        sha256: stored.sha256.clone(),
        width: stored.width,
        height: stored.height,
    });
    Ok(OutboxRow::new(topic, &stored.id.to_string(), &event)?)
}

async fn record_all(
    ctx: &Context,
    items: &[NewMedia],
    events: &[OutboxRow],
) -> Result<(Vec<Accepted>, Vec<String>), DbError> {
    let mut client = ctx.db.get().await?;
    let mut accepted = Vec::with_capacity(items.len());
    let mut redundant = Vec::new();
    if let ([item], [event]) = (items, events)
        && item.import.is_none()
    {
        let (answer, extra) = record_one(&client, item, event).await?;
        accepted.push(answer);
        redundant.extend(extra);
        return Ok((accepted, redundant));
    }
    let tx = client.transaction().await?;
    for (item, event) in items.iter().zip(events) {
        let (answer, extra) = record_one(&tx, item, event).await?;
        if let Some((import_id, source_key)) = &item.import {
            let outcome = if answer.duplicate { ItemOutcome::Duplicate } else { ItemOutcome::Accepted };
            import_store::record_item(&tx, *import_id, source_key, outcome, answer.id).await?;
        }
        accepted.push(answer);
        redundant.extend(extra);
    }
    tx.commit().await?;
    Ok((accepted, redundant))
}

#[tracing::instrument(level = "debug", skip_all, fields(media_id = %item.stored.id, dataset = %item.dataset))]
async fn record_one<C: GenericClient>(
    client: &C,
    item: &NewMedia,
    event: &OutboxRow,
) -> Result<(Accepted, Option<String>), DbError> {
    let stored = &item.stored;
    let kind = stored.format.kind().as_str();
    let content_type = stored.format.content_type();
    let label = item.label.as_ref().map(Label::as_str);
    let dataset = item.dataset.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &stored.id,
        &dataset,
        &label,
        &kind,
        &content_type,
        &stored.bytes,
        &stored.sha256,
        &stored.width,
        &stored.height,
        &stored.key,
        &item.source,
        &item.metadata,
        &item.captured_from,
    ];
    params.extend(event.params());
    let statement = client.prepare_cached(&INSERT_MEDIA).await?;
    let inserted = client.query_opt(&statement, &params).await?;
    if inserted.is_some() {
        let answer = Accepted {
            id: stored.id,
            dataset: item.dataset.to_string(),
            label: label.map(str::to_owned),
            kind: kind.to_owned(),
            content_type: content_type.to_owned(),
            bytes: stored.bytes,
            sha256: stored.sha256.clone(),
            status: MediaStatus::Accepted,
            duplicate: false,
        };
        return Ok((answer, None));
    }
    let statement = client.prepare_cached(SELECT_EXISTING).await?;
    let row = client.query_one(&statement, &[&dataset, &stored.sha256]).await?;
    let answer = Accepted {
        id: row.get("id"),
        dataset: item.dataset.to_string(),
        label: row.get("label"),
        kind: row.get("kind"),
        content_type: row.get("content_type"),
        bytes: row.get("bytes"),
        sha256: stored.sha256.clone(),
        status: row.get("status"),
        duplicate: true,
    };
    Ok((answer, Some(stored.key.clone())))
}

/// A media row and its processed outputs (`GET /v1/media/{id}`).
#[derive(Debug)]
pub struct Media {
    pub id: Uuid,
    pub dataset: String,
    pub label: Option<String>,
    pub kind: String,
    pub content_type: String,
    pub status: MediaStatus,
    /// Why preprocessing failed, when it did.
    pub error: Option<String>,
    pub raw_key: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub metadata: Value,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    /// Resized images and extracted frames, unframed first, then by frame and key.
    pub outputs: Vec<Output>,
}

/// One processed output of a media item (`media_outputs`).
#[derive(Debug)]
pub struct Output {
    pub key: String,
    pub width: i32,
    pub height: i32,
    pub frame_index: Option<i32>,
    pub timestamp_ms: Option<i64>,
}

/// The media item `id` with its outputs, or `None`.
#[tracing::instrument(level = "debug", skip_all, fields(media_id = %id))]
pub async fn media(ctx: &Context, id: Uuid) -> Result<Option<Media>, DbError> {
    let client = ctx.db.get().await?;
    let Some(row) = client
        .query_opt(
            "SELECT id, dataset, label, kind, content_type, status, error, raw_key, bytes, sha256, width, height,
                    metadata, source, created_at, processed_at
             FROM media WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let outputs = client
        .query(
            "SELECT key, width, height, frame_index, timestamp_ms FROM media_outputs
             WHERE media_id = $1 ORDER BY frame_index NULLS FIRST, key",
            &[&id],
        )
        .await?
        .iter()
        .map(|o| Output {
            key: o.get("key"),
            width: o.get("width"),
            height: o.get("height"),
            frame_index: o.get("frame_index"),
            timestamp_ms: o.get("timestamp_ms"),
        })
        .collect();
    Ok(Some(Media {
        id: row.get("id"),
        dataset: row.get("dataset"),
        label: row.get("label"),
        kind: row.get("kind"),
        content_type: row.get("content_type"),
        status: row.get("status"),
        error: row.get("error"),
        raw_key: row.get("raw_key"),
        bytes: row.get("bytes"),
        sha256: row.get("sha256"),
        width: row.get("width"),
        height: row.get("height"),
        metadata: row.get("metadata"),
        source: row.get("source"),
        created_at: row.get("created_at"),
        processed_at: row.get("processed_at"),
        outputs,
    }))
}

/// Sets or clears a label; `false` when the media does not exist.
#[tracing::instrument(level = "debug", skip_all, fields(media_id = %id))]
pub async fn set_label(ctx: &Context, id: Uuid, label: Option<&Label>) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    let changed = client
        .execute("UPDATE media SET label = $2, updated_at = now() WHERE id = $1", &[&id, &label.map(Label::as_str)])
        .await?;
    Ok(changed == 1)
}

/// How many media of one dataset have one status and label (`count` is 0, with no status or
/// label, for a dataset without media).
#[derive(Debug)]
pub struct DatasetCount {
    pub dataset: String,
    pub created_at: DateTime<Utc>,
    pub status: Option<MediaStatus>,
    pub label: Option<String>,
    pub count: i64,
}

/// Media counts by dataset, status and label, ordered by dataset; one dataset when `name` is given.
#[tracing::instrument(level = "debug", skip_all, fields(dataset = name.map(tracing::field::display)))]
pub async fn dataset_counts(ctx: &Context, name: Option<&DatasetName>) -> Result<Vec<DatasetCount>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT d.name, d.created_at, m.status, m.label, count(m.id) AS count
             FROM datasets d LEFT JOIN media m ON m.dataset = d.name
             WHERE $1::text IS NULL OR d.name = $1
             GROUP BY d.name, d.created_at, m.status, m.label
             ORDER BY d.name",
            &[&name.map(DatasetName::as_str)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DatasetCount {
            dataset: r.get("name"),
            created_at: r.get("created_at"),
            status: r.get("status"),
            label: r.get("label"),
            count: r.get("count"),
        })
        .collect())
}

/// Whether `dataset` exists (it does once anything was pushed to it).
async fn dataset_exists(client: &impl GenericClient, dataset: &DatasetName) -> Result<bool, DbError> {
    Ok(client.query_opt("SELECT 1 FROM datasets WHERE name = $1", &[&dataset.as_str()]).await?.is_some())
}

/// A dataset's unlabelled items, most informative first.
#[derive(Debug)]
pub struct LabellingQueue {
    /// All of the dataset's unlabelled items, not only those in `items`.
    pub unlabelled: i64,
    pub items: Vec<Unlabelled>,
}

/// One unlabelled media item.
#[derive(Debug)]
pub struct Unlabelled {
    pub id: Uuid,
    pub kind: String,
    pub status: MediaStatus,
    pub source: Option<String>,
    /// Holds `capture` (model, version, confidence…) for a captured input.
    pub metadata: Value,
    pub captured_from: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` unlabelled items of `dataset`: captured inputs by ascending model confidence,
/// then everything else newest first. `None` for an unknown dataset.
#[tracing::instrument(level = "debug", skip_all, fields(dataset = %dataset, limit = limit))]
pub async fn labelling_queue(
    ctx: &Context,
    dataset: &DatasetName,
    limit: i64,
) -> Result<Option<LabellingQueue>, DbError> {
    let client = ctx.db.get().await?;
    if !dataset_exists(&client, dataset).await? {
        return Ok(None);
    }
    let unlabelled: i64 = client
        .query_one(
            "SELECT count(*) AS unlabelled FROM media WHERE dataset = $1 AND label IS NULL",
            &[&dataset.as_str()],
        )
        .await?
        .get("unlabelled");
    let rows = client
        .query(
            "SELECT id, kind, status, source, metadata, captured_from, created_at,
                    (metadata -> 'capture' ->> 'confidence')::float8 AS confidence
             FROM media WHERE dataset = $1 AND label IS NULL
             ORDER BY confidence ASC NULLS LAST, created_at DESC LIMIT $2",
            &[&dataset.as_str(), &limit],
        )
        .await?;
    let items = rows
        .iter()
        .map(|r| Unlabelled {
            id: r.get("id"),
            kind: r.get("kind"),
            status: r.get("status"),
            source: r.get("source"),
            metadata: r.get("metadata"),
            captured_from: r.get("captured_from"),
            created_at: r.get("created_at"),
        })
        .collect();
    Ok(Some(LabellingQueue { unlabelled, items }))
}

/// Whether a media item was already recorded from the prediction `prediction_id`'s input.
#[tracing::instrument(level = "debug", skip_all, fields(prediction_id = %prediction_id))]
pub async fn is_captured(ctx: &Context, prediction_id: Uuid) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    Ok(client.query_opt("SELECT id FROM media WHERE captured_from = $1", &[&prediction_id]).await?.is_some())
}

/// The label given to the prediction `prediction_id` as feedback, if any.
#[tracing::instrument(level = "debug", skip_all, fields(prediction_id = %prediction_id))]
pub async fn feedback_label(ctx: &Context, prediction_id: Uuid) -> Result<Option<String>, DbError> {
    let client = ctx.db.get().await?;
    capture::feedback_label(&client, prediction_id).await
}

/// Labels the item captured from `prediction_id` with the feedback on that prediction, if any
/// (a no-op when it has that label already). Feedback given while the capture was being stored
/// found no row to label; this catches it up once the row is committed.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn label_from_feedback(ctx: &Context, prediction_id: Uuid) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    // One statement, so the label written is the feedback as it stands (the feedback route
    // validated it against the version's classes), not one read before a newer answer.
    client
        .execute(
            "UPDATE media m SET label = p.feedback_label, updated_at = now()
             FROM predictions p
             WHERE p.id = $1 AND m.captured_from = $1 AND p.feedback_label IS NOT NULL
               AND m.label IS DISTINCT FROM p.feedback_label",
            &[&prediction_id],
        )
        .await?;
    Ok(())
}

/// Which of `keys` a media row references (as its raw object).
#[tracing::instrument(level = "debug", skip_all, fields(keys = keys.len()))]
pub async fn recorded_keys(ctx: &Context, keys: &[String]) -> Result<Vec<String>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client.query("SELECT raw_key FROM media WHERE raw_key = ANY($1)", &[&keys]).await?;
    Ok(rows.iter().map(|r| r.get("raw_key")).collect())
}

/// Which of a dataset's items [`dataset_media`] lists.
#[derive(Debug, Default)]
pub struct MediaFilter {
    pub status: Option<MediaStatus>,
    /// Only items with this label.
    pub label: Option<Label>,
    /// Only items without a label.
    pub unlabelled: bool,
    /// Only items older than this one (the previous page's last item).
    pub before: Option<Uuid>,
}

/// One item of a dataset page.
#[derive(Debug)]
pub struct ListedMedia {
    pub id: Uuid,
    pub kind: String,
    pub content_type: String,
    pub status: MediaStatus,
    pub label: Option<String>,
    pub error: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub bytes: i64,
    /// How many processed outputs it has under its current pipeline spec.
    pub outputs: i64,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` of `dataset`'s items, newest first, that pass `filter`; `None` for an unknown
/// dataset. Keyset-paged on (created_at, id), so any page costs the same on a large dataset.
#[tracing::instrument(level = "debug", skip_all, fields(dataset = %dataset, limit = limit))]
pub async fn dataset_media(
    ctx: &Context,
    dataset: &DatasetName,
    filter: &MediaFilter,
    limit: i64,
) -> Result<Option<Vec<ListedMedia>>, DbError> {
    let client = ctx.db.get().await?;
    if !dataset_exists(&client, dataset).await? {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT m.id, m.kind, m.content_type, m.status, m.label, m.error, m.width, m.height, m.bytes, m.created_at,
                    (SELECT count(*) FROM media_outputs o WHERE o.media_id = m.id AND o.spec_hash = m.spec_hash) AS outputs
             FROM media m
             WHERE m.dataset = $1
               AND ($2::text IS NULL OR m.status = $2)
               AND ($3::text IS NULL OR m.label = $3)
               AND (NOT $4 OR m.label IS NULL)
               AND ($5::uuid IS NULL OR (m.created_at, m.id) < (SELECT b.created_at, b.id FROM media b WHERE b.id = $5))
             ORDER BY m.created_at DESC, m.id DESC
             LIMIT $6",
            &[
                &dataset.as_str(),
                &filter.status,
                &filter.label.as_ref().map(Label::as_str),
                &filter.unlabelled,
                &filter.before,
                &limit,
            ],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| ListedMedia {
                id: r.get("id"),
                kind: r.get("kind"),
                content_type: r.get("content_type"),
                status: r.get("status"),
                label: r.get("label"),
                error: r.get("error"),
                width: r.get("width"),
                height: r.get("height"),
                bytes: r.get("bytes"),
                outputs: r.get("outputs"),
                created_at: r.get("created_at"),
            })
            .collect(),
    ))
}

/// Where a media item's bytes are: the raw upload and its outputs under its current spec.
#[derive(Debug)]
pub struct MediaObjects {
    pub content_type: String,
    pub raw_key: String,
    /// Output keys in frame order.
    pub outputs: Vec<String>,
}

/// The S3 keys of media `id`'s raw bytes and current outputs; `None` for an unknown id.
#[tracing::instrument(level = "debug", skip_all, fields(media_id = %id))]
pub async fn media_objects(ctx: &Context, id: Uuid) -> Result<Option<MediaObjects>, DbError> {
    let client = ctx.db.get().await?;
    let Some(row) =
        client.query_opt("SELECT content_type, raw_key, spec_hash FROM media WHERE id = $1", &[&id]).await?
    else {
        return Ok(None);
    };
    let spec_hash: Option<String> = row.get("spec_hash");
    let outputs = client
        .query(
            "SELECT key FROM media_outputs WHERE media_id = $1 AND spec_hash = $2
             ORDER BY frame_index NULLS FIRST, key",
            &[&id, &spec_hash],
        )
        .await?
        .iter()
        .map(|r| r.get("key"))
        .collect();
    Ok(Some(MediaObjects { content_type: row.get("content_type"), raw_key: row.get("raw_key"), outputs }))
}
