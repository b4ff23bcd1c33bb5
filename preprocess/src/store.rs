//! PostgreSQL state of preprocessing: specs, media status, outputs, and the events that go
//! with them through the outbox. Every function returns [`DbError`]; the worker retries it.

use std::collections::HashMap;

use sluice_core::{
    Context,
    db::DbError,
    events::Envelope,
    kafka, outbox,
    pipeline::{MediaFailed, MediaProcessed, Output, PipelineSpec},
    topics::Topic,
    uploads::{MediaIngested, MediaStatus},
};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// Where a media item stands: its status and the spec it was last processed (or failed) under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaState {
    pub status: MediaStatus,
    /// `None` until the item was first processed or failed.
    pub spec_hash: Option<String>,
    /// Deliveries that started work on the item and never finished it ([`mark_processing`]).
    pub attempts: i32,
}

impl MediaState {
    /// The item already ended (processed or failed) under `spec_hash`: nothing left to do.
    pub fn settled_under(&self, spec_hash: &str) -> bool {
        matches!(self.status, MediaStatus::Processed | MediaStatus::Failed)
            && self.spec_hash.as_deref() == Some(spec_hash)
    }
}

/// The statuses of items whose work is not finished: the reconciler looks among them.
const UNFINISHED: [MediaStatus; 2] = [MediaStatus::Accepted, MediaStatus::Processing];

/// The dataset's spec, or the default when none was set.
#[tracing::instrument(level = "debug", skip_all, fields(dataset = %dataset))]
pub async fn spec(ctx: &Context, dataset: &str) -> Result<PipelineSpec, DbError> {
    let client = ctx.db.get().await?;
    Ok(sluice_core::pipeline::current_spec(&client, dataset).await?)
}

/// Sets a dataset's spec (creating the dataset if it has no media yet).
#[tracing::instrument(level = "debug", skip_all, fields(dataset = %dataset))]
pub async fn put_spec(ctx: &Context, dataset: &str, spec: &PipelineSpec) -> Result<(), DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO datasets (name) VALUES ($1) ON CONFLICT DO NOTHING", &[&dataset]).await?;
    let json = serde_json::to_value(spec).expect("specs serialise");
    tx.execute(
        "INSERT INTO pipelines (dataset, spec, spec_hash) VALUES ($1, $2, $3)
         ON CONFLICT (dataset) DO UPDATE SET spec = $2, spec_hash = $3, updated_at = now()",
        &[&dataset, &json, &spec.hash()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The item as its row records it, with its state; `None` when it does not exist. What is
/// processed comes from here, never from the event (which only names the item): a message
/// cannot point a worker at another object or dataset.
#[tracing::instrument(level = "debug", skip_all, fields(media = %id))]
pub async fn item(ctx: &Context, id: Uuid) -> Result<Option<(MediaIngested, MediaState)>, DbError> {
    let client = ctx.db.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT dataset, label, kind, content_type, raw_key, bytes, sha256, width, height, status, spec_hash,
                    attempts
             FROM media WHERE id = $1",
        )
        .await?;
    let Some(row) = client.query_opt(&statement, &[&id]).await? else { return Ok(None) };
    let item = MediaIngested {
        media_id: id,
        dataset: row.try_get("dataset")?,
        label: row.try_get("label")?,
        kind: row.try_get("kind")?,
        content_type: row.try_get("content_type")?,
        raw_key: row.try_get("raw_key")?,
        bytes: row.try_get("bytes")?,
        sha256: row.try_get("sha256")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
    };
    let state = MediaState {
        status: row.try_get("status")?,
        spec_hash: row.try_get("spec_hash")?,
        attempts: row.try_get("attempts")?,
    };
    Ok(Some((item, state)))
}

/// Marks the item `processing` (an item `processed` under an earlier spec keeps that status
/// while it is reprocessed); with `new_attempt`, also counts one more delivery that started work
/// on it, and returns the count. The count is reset when the item ends (processed or failed), so
/// it counts the deliveries that never finished: each one a worker that died on it, reprocessing
/// included (uncounted there, an item that kills its worker would be delivered forever).
#[tracing::instrument(level = "debug", skip_all, fields(media = %id, new_attempt = new_attempt))]
pub async fn mark_processing(ctx: &Context, id: Uuid, new_attempt: bool) -> Result<i32, DbError> {
    let client = ctx.db.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE media SET status = CASE WHEN status = $4 THEN status ELSE $3 END, updated_at = now(),
                              attempts = attempts + $2::int
             WHERE id = $1 RETURNING attempts",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&id, &i32::from(new_attempt), &MediaStatus::Processing, &MediaStatus::Processed])
        .await?;
    Ok(row.map_or(0, |r| r.get("attempts")))
}

/// Records the outputs (upserts on the natural key), marks the item processed under `spec_hash`
/// and enqueues `media.processed`, in one transaction; `false` (nothing written) when the
/// dataset's spec is no longer `spec_hash`: the item is to be done again under the new one.
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(media = %item.media_id, spec_hash = spec_hash, outputs = outputs.len())
)]
pub async fn finish(
    ctx: &Context,
    item: &MediaIngested,
    spec_hash: &str,
    outputs: &[Output],
    duration_ms: i64,
) -> Result<bool, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    if !sluice_core::pipeline::spec_is_current(&tx, &item.dataset, spec_hash).await? {
        return Ok(false);
    }
    let upsert = tx
        .prepare_cached(
            "INSERT INTO media_outputs (media_id, key, width, height, frame_index, timestamp_ms, spec_hash, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (media_id, key) DO UPDATE SET width = $3, height = $4, timestamp_ms = $6, duration_ms = $8",
        )
        .await?;
    for output in outputs {
        let (w, h, f) = (output.width as i32, output.height as i32, output.frame_index as i32);
        tx.execute(&upsert, &[&item.media_id, &output.key, &w, &h, &f, &output.timestamp_ms, &spec_hash, &duration_ms])
            .await?;
    }
    // Only the first worker to finish an item under this spec announces it: a second copy (a
    // rebalance replay, a duplicate event) finds it processed and publishes nothing.
    let updated = tx
        .query_opt(
            "UPDATE media SET status = $3, spec_hash = $2, error = NULL, processed_at = now(), updated_at = now(),
                    attempts = 0
             WHERE id = $1 AND NOT (status = $3 AND spec_hash IS NOT DISTINCT FROM $2)
             RETURNING id",
            &[&item.media_id, &spec_hash, &MediaStatus::Processed],
        )
        .await?;
    if updated.is_none() {
        tx.commit().await?;
        return Ok(true);
    }
    // Outputs of earlier specs are superseded.
    tx.execute("DELETE FROM media_outputs WHERE media_id = $1 AND spec_hash <> $2", &[&item.media_id, &spec_hash])
        .await?;
    let event = Envelope::new(MediaProcessed {
        media_id: item.media_id,
        dataset: item.dataset.clone(),
        label: item.label.clone(),
        kind: item.kind.clone(),
        spec_hash: spec_hash.to_owned(),
        outputs: outputs.to_vec(),
    });
    outbox::enqueue(&tx, &ctx.topic(Topic::MediaProcessed), &item.media_id.to_string(), &event).await?;
    tx.commit().await?;
    Ok(true)
}

/// Marks an item failed under `spec_hash` with `reason` (when it is known) and sends the event
/// to `media.dlq`. An item another worker already processed under the spec stays processed and
/// no DLQ event goes out. `false` (nothing written) when `spec_hash` is no longer the dataset's
/// spec: the item is to be done again under the new one.
#[tracing::instrument(level = "debug", skip_all, fields(media = ?failed.media_id, spec_hash = spec_hash))]
pub async fn fail(ctx: &Context, failed: MediaFailed, spec_hash: Option<&str>) -> Result<bool, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    if let (Some(dataset), Some(spec_hash)) = (&failed.dataset, spec_hash)
        && !sluice_core::pipeline::spec_is_current(&tx, dataset, spec_hash).await?
    {
        return Ok(false);
    }
    if let Some(id) = failed.media_id {
        let changed = tx
            .execute(
                "UPDATE media SET status = $4, error = $2, spec_hash = $3, updated_at = now(), attempts = 0
                 WHERE id = $1 AND NOT (status = $5 AND spec_hash IS NOT DISTINCT FROM $3)",
                &[&id, &failed.reason, &spec_hash, &MediaStatus::Failed, &MediaStatus::Processed],
            )
            .await?;
        if changed == 0 {
            tx.commit().await?;
            return Ok(true);
        }
    }
    // An undecodable message has no row to guard it: its event is named by the message, so
    // handling it twice (killed before the offset was stored) repeats the same event.
    let (key, event) = match failed.media_id {
        Some(id) => (id.to_string(), Envelope::new(failed)),
        None => (failed.source.clone(), Envelope::caused_by(&failed.source.clone(), failed)),
    };
    outbox::enqueue(&tx, &ctx.topic(Topic::MediaDlq), &key, &event).await?;
    tx.commit().await?;
    Ok(true)
}

/// Enqueues `media.ingested` again for items matching `filter` (a WHERE clause over `media`
/// with `$1`, `$2`, ... bound to `params`); returns how many.
#[tracing::instrument(level = "debug", skip_all)]
async fn reenqueue(ctx: &Context, filter: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "UPDATE media SET updated_at = now() WHERE {filter}
                 RETURNING id, dataset, label, kind, content_type, raw_key, bytes, sha256, width, height"
            ),
            params,
        )
        .await?;
    let topic = ctx.topic(Topic::MediaIngested);
    for row in &rows {
        let event = Envelope::new(MediaIngested {
            media_id: row.get("id"),
            dataset: row.get("dataset"),
            label: row.get("label"),
            kind: row.get("kind"),
            content_type: row.get("content_type"),
            raw_key: row.get("raw_key"),
            bytes: row.get("bytes"),
            sha256: row.get("sha256"),
            width: row.get("width"),
            height: row.get("height"),
        });
        outbox::enqueue(&tx, &topic, &event.data.media_id.to_string(), &event).await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// What one reconciler pass found among the items past their deadline.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Items whose event was lost (or cannot be found): enqueued again.
    pub reenqueued: u64,
    /// Items whose event is still on its way: in the outbox, or in Kafka ahead of the group's
    /// committed offset (a backlog, or a worker still on it). Left alone.
    pub queued: u64,
}

/// An overdue item and what the outbox knows of its latest `media.ingested` event.
#[derive(Debug)]
struct Overdue {
    media_id: Uuid,
    /// The outbox holds a record of the event.
    recorded: bool,
    /// The relay is done with it: published, or parked as undeliverable.
    settled: bool,
    /// Where it was published: `(partition, offset)`, when recorded.
    at: Option<(i32, i64)>,
}

impl Overdue {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        let partition: Option<i32> = row.get("sent_partition");
        let offset: Option<i64> = row.get("sent_offset");
        Self {
            media_id: row.get("media_id"),
            recorded: row.get("recorded"),
            settled: row.get("settled"),
            at: partition.zip(offset),
        }
    }

    /// Whether the event is still on its way, given the group's committed positions (`None`
    /// while Kafka cannot be asked).
    fn still_queued(&self, positions: Option<&HashMap<i32, kafka::GroupPosition>>) -> bool {
        match (self.recorded, self.settled, self.at) {
            // The relay has not published it yet (Kafka away): it will.
            (true, false, _) => true,
            (true, true, Some((partition, offset))) => match positions {
                Some(positions) => positions.get(&partition).is_some_and(|p| p.still_queued(offset)),
                None => true,
            },
            // No record of the event (pruned, or never written), one the relay parked (Kafka
            // refused it), or one from before delivery positions were recorded: the deadline
            // alone decides.
            _ => false,
        }
    }
}

/// Looks at items in `accepted` or `processing` for longer than `older_than_secs` and enqueues
/// again those whose `media.ingested` event was lost: published at an offset the broker no longer
/// has (truncated or deleted unread), or one the group has committed past without finishing the
/// item, or with no outbox record at all. Items merely queued behind a backlog are left alone, so
/// a long backlog is not doubled by re-enqueues. While Kafka cannot be asked, only items with no
/// outbox record are re-enqueued.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn reconcile(ctx: &Context, older_than_secs: f64) -> Result<Reconciled, DbError> {
    let topic = ctx.topic(Topic::MediaIngested).to_string();
    let rows = ctx
        .db
        .get()
        .await?
        .query(
            "SELECT m.id AS media_id, o.id IS NOT NULL AS recorded,
                    (o.sent_at IS NOT NULL OR o.failed_at IS NOT NULL) AS settled, o.sent_partition, o.sent_offset
             FROM media m
             LEFT JOIN LATERAL (
                 SELECT id, sent_at, failed_at, sent_partition, sent_offset FROM outbox
                 WHERE key = m.id::text AND topic = $2 ORDER BY created_at DESC LIMIT 1
             ) o ON true
             WHERE m.status = ANY($3) AND m.updated_at < now() - make_interval(secs => $1)
             ORDER BY m.updated_at LIMIT 10000",
            &[&older_than_secs, &topic, &UNFINISHED.as_slice()],
        )
        .await?;
    if rows.is_empty() {
        return Ok(Reconciled::default());
    }
    let positions = match kafka::group_positions(&ctx.config.kafka, &ctx.config.preprocess.group_id, &topic).await {
        Ok(positions) => Some(positions),
        Err(err) => {
            tracing::warn!(error = %err, "reconciler cannot read the group's offsets; only items without an event are re-enqueued");
            None
        }
    };
    let (mut lost, mut queued) = (Vec::new(), 0);
    for overdue in rows.iter().map(Overdue::from_row) {
        if overdue.still_queued(positions.as_ref()) {
            queued += 1;
        } else {
            lost.push(overdue.media_id);
        }
    }
    let reenqueued = if lost.is_empty() {
        0
    } else {
        reenqueue(ctx, "id = ANY($1) AND status = ANY($2)", &[&lost, &UNFINISHED.as_slice()]).await?
    };
    Ok(Reconciled { reenqueued, queued })
}

/// Re-runs the dataset's current spec over every item of the dataset.
#[tracing::instrument(level = "debug", skip_all, fields(dataset = %dataset))]
pub async fn reprocess(ctx: &Context, dataset: &str) -> Result<u64, DbError> {
    reenqueue(ctx, "dataset = $1", &[&dataset]).await
}

/// Whether `dataset` exists (an upload, an import or a pipeline spec made it).
pub async fn dataset_exists(ctx: &Context, dataset: &str) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    let row = client.query_one("SELECT EXISTS (SELECT 1 FROM datasets WHERE name = $1)", &[&dataset]).await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_is_settled_only_once_it_ended_under_the_same_spec() {
        let state = |status, hash: Option<&str>| MediaState { status, spec_hash: hash.map(str::to_owned), attempts: 0 };
        assert!(state(MediaStatus::Processed, Some("a")).settled_under("a"));
        assert!(state(MediaStatus::Failed, Some("a")).settled_under("a"));
        assert!(!state(MediaStatus::Processed, Some("b")).settled_under("a"), "another spec is redone");
        assert!(!state(MediaStatus::Processing, Some("a")).settled_under("a"), "a worker died on it");
        assert!(!state(MediaStatus::Accepted, None).settled_under("a"));
    }

    #[test]
    fn an_overdue_event_is_lost_unless_the_outbox_or_the_group_still_holds_it() {
        let overdue = |recorded, settled, at| Overdue { media_id: Uuid::nil(), recorded, settled, at };
        let positions = HashMap::from([(0, kafka::GroupPosition { committed: Some(10), low: 5, high: 20 })]);
        assert!(overdue(true, false, None).still_queued(Some(&positions)), "not yet published");
        assert!(overdue(true, true, Some((0, 12))).still_queued(Some(&positions)), "behind a backlog");
        assert!(overdue(true, true, Some((0, 12))).still_queued(None), "Kafka cannot be asked");
        assert!(!overdue(true, true, Some((0, 9))).still_queued(Some(&positions)), "committed past");
        assert!(!overdue(true, true, Some((0, 3))).still_queued(Some(&positions)), "truncated");
        assert!(!overdue(true, true, Some((1, 12))).still_queued(Some(&positions)), "unknown partition");
        assert!(!overdue(false, false, None).still_queued(Some(&positions)), "no record");
        assert!(!overdue(true, true, None).still_queued(None), "parked or unpositioned");
    }
}
