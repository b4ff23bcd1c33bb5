//! PostgreSQL records of media, written together with their outbox events.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_core::{
    Context,
    domain::{DatasetName, Label},
    events::Envelope,
    topics::Topic,
    uploads::MediaIngested,
};
use uuid::Uuid;

use crate::{error::IngestError, upload::Stored};

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
    pub status: String,
    pub duplicate: bool,
}

/// Inserts the dataset (if new), the media row and its outbox row in one statement, so a
/// single-file upload costs one round trip and commits atomically on its own. Returns the media
/// id when inserted, nothing when the bytes already exist in the dataset.
const INSERT_MEDIA: &str = "
    WITH ds AS (
        INSERT INTO datasets (name) VALUES ($2) ON CONFLICT DO NOTHING
    ), m AS (
        INSERT INTO media (id, dataset, label, kind, content_type, bytes, sha256, width, height, raw_key, source, metadata,
                           captured_from)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $17)
        ON CONFLICT (dataset, sha256) DO NOTHING
        RETURNING id
    ), o AS (
        INSERT INTO outbox (id, topic, key, payload)
        SELECT $13, $14, $15, $16 FROM m
    )
    SELECT id FROM m";

const INSERT_IMPORT_ITEM: &str =
    "INSERT INTO import_items (import_id, source_key, outcome, media_id) VALUES ($1, $2, $3, $4)";

const SELECT_EXISTING: &str =
    "SELECT id, label, kind, content_type, bytes, status FROM media WHERE dataset = $1 AND sha256 = $2";

/// Records every item atomically, each new one with its `media.ingested` outbox row: one
/// statement for a single upload, one transaction for several files or an import item.
/// Items whose bytes already exist in their dataset are answered with the existing record; their
/// freshly written objects are returned so the caller deletes them.
pub async fn record(ctx: &Context, items: Vec<NewMedia>) -> Result<(Vec<Accepted>, Vec<String>), IngestError> {
    let mut client = ctx.db.get().await?;
    let topic = ctx.topic(Topic::MediaIngested).to_string();
    let mut accepted = Vec::with_capacity(items.len());
    let mut redundant = Vec::new();
    if let [item] = items.as_slice()
        && item.import.is_none()
    {
        let (answer, extra) = record_one(&client, &topic, item).await?;
        accepted.push(answer);
        redundant.extend(extra);
        return Ok((accepted, redundant));
    }
    let tx = client.transaction().await?;
    for item in &items {
        let (answer, extra) = record_one(&tx, &topic, item).await?;
        if let Some((import_id, source_key)) = &item.import {
            let outcome = if answer.duplicate { "duplicate" } else { "accepted" };
            let statement = tx.prepare_cached(INSERT_IMPORT_ITEM).await?;
            tx.execute(&statement, &[import_id, source_key, &outcome, &answer.id]).await?;
        }
        accepted.push(answer);
        redundant.extend(extra);
    }
    tx.commit().await?;
    Ok((accepted, redundant))
}

async fn record_one<C: GenericClient>(
    client: &C,
    topic: &str,
    item: &NewMedia,
) -> Result<(Accepted, Option<String>), IngestError> {
    let stored = &item.stored;
    let kind = stored.format.kind().as_str();
    let content_type = stored.format.content_type();
    let label = item.label.as_ref().map(Label::as_str);
    let event = Envelope::new(MediaIngested {
        media_id: stored.id,
        dataset: item.dataset.to_string(),
        label: label.map(str::to_owned),
        kind: kind.to_owned(),
        content_type: content_type.to_owned(),
        raw_key: stored.key.clone(),
        bytes: stored.bytes,
        sha256: stored.sha256.clone(),
        width: stored.width,
        height: stored.height,
    });
    let payload = serde_json::to_value(&event).expect("events serialise");
    let statement = client.prepare_cached(INSERT_MEDIA).await?;
    let inserted = client
        .query_opt(
            &statement,
            &[
                &stored.id,
                &item.dataset.as_str(),
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
                &event.event_id,
                &topic,
                &stored.id.to_string(),
                &payload,
                &item.captured_from,
            ],
        )
        .await?;
    if inserted.is_some() {
        let answer = Accepted {
            id: stored.id,
            dataset: item.dataset.to_string(),
            label: label.map(str::to_owned),
            kind: kind.to_owned(),
            content_type: content_type.to_owned(),
            bytes: stored.bytes,
            sha256: stored.sha256.clone(),
            status: "accepted".into(),
            duplicate: false,
        };
        return Ok((answer, None));
    }
    let statement = client.prepare_cached(SELECT_EXISTING).await?;
    let row = client.query_one(&statement, &[&item.dataset.as_str(), &stored.sha256]).await?;
    let answer = Accepted {
        id: row.get(0),
        dataset: item.dataset.to_string(),
        label: row.get(1),
        kind: row.get(2),
        content_type: row.get(3),
        bytes: row.get(4),
        sha256: stored.sha256.clone(),
        status: row.get(5),
        duplicate: true,
    };
    Ok((answer, Some(stored.key.clone())))
}

fn rfc3339(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
}

/// `GET /v1/media/{id}` as JSON, or `None`.
pub async fn media_json(ctx: &Context, id: Uuid) -> Result<Option<Value>, IngestError> {
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
    let outputs: Vec<Value> = client
        .query(
            "SELECT key, width, height, frame_index, timestamp_ms FROM media_outputs
             WHERE media_id = $1 ORDER BY frame_index NULLS FIRST, key",
            &[&id],
        )
        .await?
        .iter()
        .map(|o| {
            json!({
                "key": o.get::<_, String>(0), "width": o.get::<_, i32>(1), "height": o.get::<_, i32>(2),
                "frame_index": o.get::<_, Option<i32>>(3), "timestamp_ms": o.get::<_, Option<i64>>(4),
            })
        })
        .collect();
    Ok(Some(json!({
        "id": row.get::<_, Uuid>(0),
        "dataset": row.get::<_, String>(1),
        "label": row.get::<_, Option<String>>(2),
        "kind": row.get::<_, String>(3),
        "content_type": row.get::<_, String>(4),
        "status": row.get::<_, String>(5),
        "error": row.get::<_, Option<String>>(6),
        "raw": {"key": row.get::<_, String>(7), "bytes": row.get::<_, i64>(8), "sha256": row.get::<_, String>(9)},
        "width": row.get::<_, Option<i32>>(10),
        "height": row.get::<_, Option<i32>>(11),
        "metadata": row.get::<_, Value>(12),
        "source": row.get::<_, Option<String>>(13),
        "outputs": outputs,
        "created_at": rfc3339(Some(row.get(14))),
        "processed_at": rfc3339(row.get(15)),
    })))
}

/// Sets or clears a label; `false` when the media does not exist.
pub async fn set_label(ctx: &Context, id: Uuid, label: Option<&Label>) -> Result<bool, IngestError> {
    let client = ctx.db.get().await?;
    let changed = client
        .execute("UPDATE media SET label = $2, updated_at = now() WHERE id = $1", &[&id, &label.map(Label::as_str)])
        .await?;
    Ok(changed == 1)
}

/// Per-dataset counts by status and by label; one dataset when `name` is given.
pub async fn dataset_stats(ctx: &Context, name: Option<&DatasetName>) -> Result<Vec<Value>, IngestError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT d.name, d.created_at, m.status, m.label, count(m.id)
             FROM datasets d LEFT JOIN media m ON m.dataset = d.name
             WHERE $1::text IS NULL OR d.name = $1
             GROUP BY d.name, d.created_at, m.status, m.label
             ORDER BY d.name",
            &[&name.map(DatasetName::as_str)],
        )
        .await?;
    let mut datasets: Vec<Value> = Vec::new();
    for row in rows {
        let dataset: String = row.get(0);
        if datasets.last().is_none_or(|d| d["name"] != dataset.as_str()) {
            datasets.push(json!({
                "name": dataset, "created_at": rfc3339(Some(row.get(1))),
                "total": 0, "by_status": {}, "by_label": {}, "unlabelled": 0,
            }));
        }
        let entry = datasets.last_mut().expect("pushed above");
        let count: i64 = row.get(4);
        if count == 0 {
            continue;
        }
        entry["total"] = json!(entry["total"].as_i64().unwrap_or(0) + count);
        let status: String = row.get(2);
        let by_status = &mut entry["by_status"][status.as_str()];
        *by_status = json!(by_status.as_i64().unwrap_or(0) + count);
        let label: Option<String> = row.get(3);
        let slot = match label.as_deref() {
            Some(label) => &mut entry["by_label"][label],
            None => &mut entry["unlabelled"],
        };
        *slot = json!(slot.as_i64().unwrap_or(0) + count);
    }
    Ok(datasets)
}

/// A dataset's unlabelled items, most informative first: captured inputs by ascending model
/// confidence, then everything else newest first. `None` for an unknown dataset.
pub async fn labelling_queue(ctx: &Context, dataset: &DatasetName, limit: i64) -> Result<Option<Value>, IngestError> {
    let client = ctx.db.get().await?;
    let exists = client.query_opt("SELECT 1 FROM datasets WHERE name = $1", &[&dataset.as_str()]).await?.is_some();
    if !exists {
        return Ok(None);
    }
    let unlabelled: i64 = client
        .query_one("SELECT count(*) FROM media WHERE dataset = $1 AND label IS NULL", &[&dataset.as_str()])
        .await?
        .get(0);
    let rows = client
        .query(
            "SELECT id, kind, status, source, metadata, captured_from, created_at,
                    (metadata -> 'capture' ->> 'confidence')::float8 AS confidence
             FROM media WHERE dataset = $1 AND label IS NULL
             ORDER BY confidence ASC NULLS LAST, created_at DESC LIMIT $2",
            &[&dataset.as_str(), &limit],
        )
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let metadata: Value = r.get("metadata");
            json!({
                "id": r.get::<_, Uuid>("id"), "kind": r.get::<_, String>("kind"),
                "status": r.get::<_, String>("status"), "source": r.get::<_, Option<String>>("source"),
                "captured_from": r.get::<_, Option<Uuid>>("captured_from"),
                "capture": metadata.get("capture").cloned(),
                "created_at": rfc3339(r.get("created_at")),
            })
        })
        .collect();
    Ok(Some(json!({"dataset": dataset.as_str(), "unlabelled": unlabelled, "items": items})))
}
