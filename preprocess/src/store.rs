//! PostgreSQL state of preprocessing: specs, media status, outputs, and the events that go
//! with them through the outbox.

use sluice_core::{
    Context,
    db::DbError,
    events::Envelope,
    kafka, outbox,
    pipeline::{MediaFailed, MediaProcessed, Output, PipelineSpec},
    topics::Topic,
    uploads::MediaIngested,
};
use uuid::Uuid;

/// A failure of PostgreSQL (transient: retried).
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct StoreError(String);

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self(sluice_core::error_chain(&err))
    }
}
impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self(err.to_string())
    }
}
impl From<outbox::RelayError> for StoreError {
    fn from(err: outbox::RelayError) -> Self {
        Self(err.to_string())
    }
}
impl From<DbError> for StoreError {
    fn from(err: DbError) -> Self {
        Self(err.to_string())
    }
}

/// The dataset's spec, or the default when none was set.
pub async fn spec(ctx: &Context, dataset: &str) -> Result<PipelineSpec, StoreError> {
    let client = ctx.db.get().await?;
    Ok(sluice_core::pipeline::current_spec(&client, dataset).await?)
}

/// Sets a dataset's spec (creating the dataset if it has no media yet).
pub async fn put_spec(ctx: &Context, dataset: &str, spec: &PipelineSpec) -> Result<(), StoreError> {
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

/// `(status, spec hash)` of a media item, or `None` when it does not exist.
pub async fn state(ctx: &Context, id: Uuid) -> Result<Option<(String, Option<String>)>, StoreError> {
    let client = ctx.db.get().await?;
    let statement = client.prepare_cached("SELECT status, spec_hash FROM media WHERE id = $1").await?;
    Ok(client.query_opt(&statement, &[&id]).await?.map(|row| (row.get(0), row.get(1))))
}

/// Marks the item `processing`; with `new_attempt`, also counts one more delivery that started
/// work on it, and returns the count. The count is reset when the item ends (processed or
/// failed), so it counts the deliveries that never finished: each one a worker that died on it.
pub async fn mark_processing(ctx: &Context, id: Uuid, new_attempt: bool) -> Result<i32, StoreError> {
    let client = ctx.db.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE media SET status = 'processing', updated_at = now(), attempts = attempts + $2::int
             WHERE id = $1 AND status <> 'processed' RETURNING attempts",
        )
        .await?;
    let row = client.query_opt(&statement, &[&id, &i32::from(new_attempt)]).await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Records the outputs (upserts on the natural key), marks the item processed under `spec_hash`
/// and enqueues `media.processed`, in one transaction.
pub async fn finish(
    ctx: &Context,
    item: &MediaIngested,
    spec_hash: &str,
    outputs: &[Output],
    duration_ms: i64,
) -> Result<(), StoreError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
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
            "UPDATE media SET status = 'processed', spec_hash = $2, error = NULL, processed_at = now(), updated_at = now(),
                    attempts = 0
             WHERE id = $1 AND NOT (status = 'processed' AND spec_hash IS NOT DISTINCT FROM $2)
             RETURNING id",
            &[&item.media_id, &spec_hash],
        )
        .await?;
    if updated.is_none() {
        tx.commit().await?;
        return Ok(());
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
    Ok(())
}

/// Marks an item failed under `spec_hash` with `reason` (when it is known) and sends the event
/// to `media.dlq`. An item another worker already processed under the spec stays processed and
/// no DLQ event goes out.
pub async fn fail(ctx: &Context, failed: MediaFailed, spec_hash: Option<&str>) -> Result<(), StoreError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    if let Some(id) = failed.media_id {
        let changed = tx
            .execute(
                "UPDATE media SET status = 'failed', error = $2, spec_hash = $3, updated_at = now(), attempts = 0
                 WHERE id = $1 AND NOT (status = 'processed' AND spec_hash IS NOT DISTINCT FROM $3)",
                &[&id, &failed.reason, &spec_hash],
            )
            .await?;
        if changed == 0 {
            tx.commit().await?;
            return Ok(());
        }
    }
    let key = failed.media_id.map_or_else(|| failed.source.clone(), |id| id.to_string());
    outbox::enqueue(&tx, &ctx.topic(Topic::MediaDlq), &key, &Envelope::new(failed)).await?;
    tx.commit().await?;
    Ok(())
}

/// Enqueues `media.ingested` again for items matching `filter` (a WHERE clause over `media`
/// with `$1` bound to `param`); returns how many.
async fn reenqueue(
    ctx: &Context,
    filter: &str,
    param: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<u64, StoreError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "UPDATE media SET updated_at = now() WHERE {filter}
                 RETURNING id, dataset, label, kind, content_type, raw_key, bytes, sha256, width, height"
            ),
            &[param],
        )
        .await?;
    let topic = ctx.topic(Topic::MediaIngested);
    for row in &rows {
        let event = Envelope::new(MediaIngested {
            media_id: row.get(0),
            dataset: row.get(1),
            label: row.get(2),
            kind: row.get(3),
            content_type: row.get(4),
            raw_key: row.get(5),
            bytes: row.get(6),
            sha256: row.get(7),
            width: row.get(8),
            height: row.get(9),
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

/// Looks at items in `accepted` or `processing` for longer than `older_than_secs` and enqueues
/// again those whose `media.ingested` event was lost: published at an offset the broker no longer
/// has (truncated or deleted unread), or one the group has committed past without finishing the
/// item, or with no outbox record at all. Items merely queued behind a backlog are left alone, so
/// a long backlog is not doubled by re-enqueues. While Kafka cannot be asked, only items with no
/// outbox record are re-enqueued.
pub async fn reconcile(ctx: &Context, older_than_secs: f64) -> Result<Reconciled, StoreError> {
    let topic = ctx.topic(Topic::MediaIngested).to_string();
    let rows = ctx
        .db
        .get()
        .await?
        .query(
            "SELECT m.id, o.id IS NOT NULL, o.sent_at IS NOT NULL OR o.failed_at IS NOT NULL, o.sent_partition,
                    o.sent_offset
             FROM media m
             LEFT JOIN LATERAL (
                 SELECT id, sent_at, failed_at, sent_partition, sent_offset FROM outbox
                 WHERE key = m.id::text AND topic = $2 ORDER BY created_at DESC LIMIT 1
             ) o ON true
             WHERE m.status IN ('accepted', 'processing') AND m.updated_at < now() - make_interval(secs => $1)
             ORDER BY m.updated_at LIMIT 10000",
            &[&older_than_secs, &topic],
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
    let mut lost = Vec::new();
    let mut queued = 0;
    for row in &rows {
        let (id, recorded, sent): (Uuid, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let at: Option<(i32, i64)> = row.get::<_, Option<i32>>(3).zip(row.get::<_, Option<i64>>(4));
        let still_queued = match (recorded, sent, at) {
            // The relay has not published it yet (Kafka away): it will.
            (true, false, _) => true,
            (true, true, Some((partition, offset))) => match &positions {
                Some(positions) => positions.get(&partition).is_some_and(|p| p.still_queued(offset)),
                None => true,
            },
            // No record of the event (pruned, or never written), one the relay parked (Kafka
            // refused it), or one from before delivery positions were recorded: the deadline
            // alone decides.
            _ => false,
        };
        if still_queued {
            queued += 1;
        } else {
            lost.push(id);
        }
    }
    let reenqueued = if lost.is_empty() {
        0
    } else {
        reenqueue(ctx, "id = ANY($1) AND status IN ('accepted', 'processing')", &lost).await?
    };
    Ok(Reconciled { reenqueued, queued })
}

/// Re-runs the dataset's current spec over every item of the dataset.
pub async fn reprocess(ctx: &Context, dataset: &str) -> Result<u64, StoreError> {
    reenqueue(ctx, "dataset = $1", &dataset).await
}
