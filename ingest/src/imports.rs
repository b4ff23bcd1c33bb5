//! Bulk import: ingest objects already in S3, laid out as `<prefix>/<label>/<file>` (files
//! directly under the prefix are unlabelled). Each object goes through the same validation and
//! deduplication as an upload.
//!
//! Resumable: a worker holds an import under a lease it renews after every page; each source
//! object is recorded (`import_items`) in the same transaction as its media row, and the cursor
//! advances once a page is done. A worker that dies stops renewing; when the lease expires
//! another worker (or the restarted one) continues after the cursor and skips recorded objects.
//!
//! A poison object does not hold the import: each attempt at an object is counted
//! (`import_attempts`) before it is tried, so one that kills its worker counts too, and given
//! back when it failed because a dependency was away. A failed attempt lets the import be taken
//! again after a back-off that doubles per attempt; once an object has used
//! `ingest.import_max_attempts` it is recorded as rejected (`gave_up`, with the reason) with a
//! `work.parked` event and `sluice_ingest_import_objects_parked_total`, and the import goes on.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::{
    Context, Shutdown,
    domain::{DatasetName, Label},
    outbox::RelayError,
    parking::{self, WorkKind, WorkParked},
    s3::S3Error,
};
use uuid::Uuid;

use crate::{
    error::IngestError,
    store::{self, NewMedia},
    upload,
};

/// How long a worker holds an import without renewing.
const LEASE: &str = "30 seconds";
/// Objects listed per page (and per lease renewal).
const PAGE: i32 = 100;
/// Longest wait before an import whose object failed is taken again, in seconds.
const MAX_RETRY_SECS: f64 = 30.0;

/// Queues an import; a worker picks it up.
pub async fn create(ctx: &Context, dataset: &DatasetName, bucket: &str, prefix: &str) -> Result<Uuid, IngestError> {
    let id = Uuid::now_v7();
    let client = ctx.db.get().await?;
    client
        .execute(
            "INSERT INTO imports (id, dataset, bucket, prefix) VALUES ($1, $2, $3, $4)",
            &[&id, &dataset.as_str(), &bucket, &normalize_prefix(prefix)],
        )
        .await?;
    Ok(id)
}

/// `""` stays empty; anything else ends with exactly one `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() { String::new() } else { format!("{trimmed}/") }
}

/// Runs until `shutdown`, working through queued imports and imports whose worker died.
pub async fn run(ctx: Context, shutdown: Shutdown) {
    loop {
        let worked = match run_once(&ctx, None).await {
            Ok(worked) => worked,
            Err(err) => {
                tracing::warn!(error = %err, "import worker failed; retrying");
                false
            }
        };
        let wait = if worked { Duration::ZERO } else { Duration::from_secs(1) };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Claims one import and works on it, handling at most `budget` objects (all when `None`).
/// Returns whether there was an import to work on.
pub async fn run_once(ctx: &Context, budget: Option<usize>) -> Result<bool, IngestError> {
    let claimed = ctx
        .db
        .get()
        .await?
        .query_opt(
            &format!(
                "UPDATE imports SET status = 'running', lease_until = now() + interval '{LEASE}', updated_at = now()
                 WHERE id = (SELECT id FROM imports
                             WHERE status IN ('queued', 'running') AND (lease_until IS NULL OR lease_until < now())
                             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, dataset, bucket, prefix, cursor"
            ),
            &[],
        )
        .await?;
    let Some(row) = claimed else { return Ok(false) };
    let import = Import { id: row.get(0), dataset: row.get(1), bucket: row.get(2), prefix: row.get(3) };
    let cursor: Option<String> = row.get(4);
    match import.work(ctx, cursor, budget).await {
        Ok(true) => {
            ctx.db
                .get()
                .await?
                .execute(
                    "WITH done AS (DELETE FROM import_attempts WHERE import_id = $1)
                     UPDATE imports SET status = 'succeeded', finished_at = now(), updated_at = now(), lease_until = NULL
                     WHERE id = $1",
                    &[&import.id],
                )
                .await?;
            tracing::info!(import = %import.id, "import finished");
        }
        Ok(false) => {}
        Err(IngestError::Storage(err)) if matches!(err.code(), Some("NoSuchBucket" | "AccessDenied")) => {
            ctx.db
                .get()
                .await?
                .execute(
                    "UPDATE imports SET status = 'failed', error = $2, finished_at = now(), updated_at = now(),
                            lease_until = NULL
                     WHERE id = $1",
                    &[&import.id, &err.to_string()],
                )
                .await?;
        }
        Err(err) => return Err(err),
    }
    Ok(true)
}

#[derive(Debug)]
struct Import {
    id: Uuid,
    dataset: String,
    bucket: String,
    prefix: String,
}

impl Import {
    /// Handles objects after `cursor`; `Ok(true)` when the listing is exhausted.
    async fn work(
        &self,
        ctx: &Context,
        mut cursor: Option<String>,
        budget: Option<usize>,
    ) -> Result<bool, IngestError> {
        let dataset = DatasetName::parse(&self.dataset).map_err(|e| IngestError::BadRequest(e.0))?;
        let mut handled = 0usize;
        loop {
            let page = ctx
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_start_after(cursor.clone())
                .max_keys(PAGE)
                .send()
                .await
                .map_err(|e| IngestError::Storage(S3Error::from_sdk("ListObjectsV2", e)))?;
            let keys: Vec<String> = page.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
            let done: Vec<String> = ctx
                .db
                .get()
                .await?
                .query(
                    "SELECT source_key FROM import_items WHERE import_id = $1 AND source_key = ANY($2)",
                    &[&self.id, &keys],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for key in keys.iter().filter(|k| !done.contains(k) && !k.ends_with('/')) {
                if budget.is_some_and(|b| handled >= b) {
                    return Ok(false);
                }
                self.import_one(ctx, &dataset, key).await?;
                handled += 1;
                self.renew(ctx).await?;
            }
            let Some(last) = keys.last() else { return Ok(true) };
            cursor = Some(last.clone());
            ctx.db
                .get()
                .await?
                .execute(
                    &format!(
                        "UPDATE imports SET cursor = $2, lease_until = now() + interval '{LEASE}', updated_at = now()
                         WHERE id = $1"
                    ),
                    &[&self.id, &cursor],
                )
                .await?;
            if !page.is_truncated().unwrap_or(false) {
                return Ok(true);
            }
        }
    }

    /// Extends this worker's lease; called after every object so a slow page never expires it.
    async fn renew(&self, ctx: &Context) -> Result<(), IngestError> {
        ctx.db
            .get()
            .await?
            .execute(
                &format!(
                    "UPDATE imports SET lease_until = now() + interval '{LEASE}', updated_at = now() WHERE id = $1"
                ),
                &[&self.id],
            )
            .await?;
        Ok(())
    }

    /// Validates and stores one object; client-side problems become a rejected item, dependency
    /// failures propagate (the import is retried), and an object out of attempts is parked.
    async fn import_one(&self, ctx: &Context, dataset: &DatasetName, key: &str) -> Result<(), IngestError> {
        // Counted before the object is tried, so an object that kills its worker counts too.
        let (attempts, last_error) = self.begin_attempt(ctx, key).await?;
        if attempts > ctx.config.ingest.import_max_attempts as i32 {
            return self.park(ctx, key, attempts - 1, &parking::gave_up(attempts - 1, last_error.as_deref())).await;
        }
        let outcome = self.try_import(ctx, dataset, key).await;
        let err = match outcome {
            Ok(()) => return Ok(()),
            Err(err @ (IngestError::Storage(_) | IngestError::Database(_) | IngestError::BodyRead(_))) => {
                self.attempt_failed(ctx, key, attempts, &err).await;
                return Err(err);
            }
            Err(err) => err,
        };
        let api = err.to_api();
        ctx.db
            .get()
            .await?
            .execute(
                "INSERT INTO import_items (import_id, source_key, outcome, error_code, error_message)
                 VALUES ($1, $2, 'rejected', $3, $4) ON CONFLICT DO NOTHING",
                &[&self.id, &key, &api.code, &api.message],
            )
            .await?;
        metrics::counter!("sluice_ingest_rejected_total", "reason" => err.reason()).increment(1);
        Ok(())
    }

    /// One more attempt at `key` starts; returns its attempts and the last failure kept.
    async fn begin_attempt(&self, ctx: &Context, key: &str) -> Result<(i32, Option<String>), IngestError> {
        let row = ctx
            .db
            .get()
            .await?
            .query_one(
                "INSERT INTO import_attempts (import_id, source_key, attempts) VALUES ($1, $2, 1)
                 ON CONFLICT (import_id, source_key) DO UPDATE SET attempts = import_attempts.attempts + 1
                 RETURNING attempts, last_error",
                &[&self.id, &key],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// An attempt at `key` failed. When the dependencies answer, the failure was the object's
    /// own: its error is kept and the import is taken again after a back-off that doubles with
    /// each attempt; when one does not, the attempt is given back (the lease's expiry paces the
    /// retry). Best effort: the import is retried either way.
    async fn attempt_failed(&self, ctx: &Context, key: &str, attempts: i32, err: &IngestError) {
        let counts = parking::dependencies_up(ctx, &[self.bucket.as_str()]).await;
        let recorded = async {
            let client = ctx.db.get().await?;
            if counts {
                let retry_in = 2f64.powi(attempts).min(MAX_RETRY_SECS);
                let error = parking::clip(err.to_string());
                client
                    .execute(
                        "UPDATE import_attempts SET last_error = $3 WHERE import_id = $1 AND source_key = $2",
                        &[&self.id, &key, &error],
                    )
                    .await?;
                client
                    .execute(
                        "UPDATE imports SET lease_until = now() + make_interval(secs => $2), updated_at = now()
                         WHERE id = $1",
                        &[&self.id, &retry_in],
                    )
                    .await?;
            } else {
                client
                    .execute(
                        "UPDATE import_attempts SET attempts = greatest(attempts - 1, 0)
                         WHERE import_id = $1 AND source_key = $2",
                        &[&self.id, &key],
                    )
                    .await?;
            }
            Ok::<_, IngestError>(())
        };
        if let Err(error) = recorded.await {
            tracing::warn!(import = %self.id, key, %error, "cannot record a failed import attempt");
        }
    }

    /// Records `key` as rejected for good (`gave_up`) with a `work.parked` event, in one
    /// transaction, so the import goes on without it.
    async fn park(&self, ctx: &Context, key: &str, attempts: i32, reason: &str) -> Result<(), IngestError> {
        tracing::error!(import = %self.id, key, attempts, reason, "import object parked");
        let mut client = ctx.db.get().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO import_items (import_id, source_key, outcome, error_code, error_message)
                 VALUES ($1, $2, 'rejected', 'gave_up', $3) ON CONFLICT DO NOTHING",
                &[&self.id, &key, &reason],
            )
            .await?;
        tx.execute("DELETE FROM import_attempts WHERE import_id = $1 AND source_key = $2", &[&self.id, &key]).await?;
        if inserted == 1 {
            let parked = WorkParked {
                kind: WorkKind::ImportObject,
                id: format!("{}/{key}", self.id),
                attempts,
                reason: reason.to_owned(),
                detail: json!({"import_id": self.id, "dataset": self.dataset, "bucket": self.bucket, "key": key}),
            };
            parking::enqueue(&tx, ctx, parked).await.map_err(|e| match e {
                RelayError::Db(err) => IngestError::Database(err),
                // A parked event is a few KB (its reason is clipped): never refused for its size.
                other => IngestError::BadRequest(other.to_string()),
            })?;
        }
        tx.commit().await?;
        if inserted == 1 {
            metrics::counter!("sluice_ingest_import_objects_parked_total").increment(1);
        }
        Ok(())
    }

    async fn try_import(&self, ctx: &Context, dataset: &DatasetName, key: &str) -> Result<(), IngestError> {
        let relative = key.strip_prefix(&self.prefix).unwrap_or(key);
        let label = match relative.split_once('/') {
            Some((label, _)) => Some(Label::parse(label).map_err(|e| IngestError::BadField {
                field: "label",
                message: format!("folder name {label:?}: {}", e.0),
            })?),
            None => None,
        };
        let object = ctx
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| IngestError::Storage(S3Error::from_sdk("GetObject", e)))?;
        let body = futures::stream::unfold(object.body, |mut body| async move {
            body.next().await.map(|chunk| (chunk.map_err(|e| e.to_string()), body))
        });
        let limits = upload::Limits::from_config(&ctx.config, ctx.config.http.max_body_bytes);
        let stored = upload::store(&upload::S3(ctx), limits, dataset, None, Box::pin(body)).await?;
        let item = NewMedia {
            stored: stored.clone(),
            dataset: dataset.clone(),
            label,
            source: Some(format!("s3://{}/{key}", self.bucket)),
            metadata: json!({}),
            import: Some((self.id, key.to_owned())),
            captured_from: None,
        };
        match store::record(ctx, vec![item]).await {
            Ok((_, redundant)) => {
                upload::discard(ctx, &redundant).await;
                Ok(())
            }
            Err(err) => {
                upload::discard_unrecorded(ctx, &[stored.key]).await;
                Err(err)
            }
        }
    }
}

/// `GET /v1/imports/{id}` as JSON, or `None`.
pub async fn status_json(ctx: &Context, id: Uuid) -> Result<Option<Value>, IngestError> {
    let client = ctx.db.get().await?;
    let Some(row) = client
        .query_opt(
            "SELECT dataset, bucket, prefix, status, error, created_at, finished_at FROM imports WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let counts = client
        .query("SELECT outcome, count(*) FROM import_items WHERE import_id = $1 GROUP BY outcome", &[&id])
        .await?;
    let count =
        |outcome: &str| counts.iter().find(|r| r.get::<_, String>(0) == outcome).map_or(0, |r| r.get::<_, i64>(1));
    let errors: Vec<Value> = client
        .query(
            "SELECT source_key, error_code, error_message FROM import_items
             WHERE import_id = $1 AND outcome = 'rejected' ORDER BY source_key LIMIT 100",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| json!({"key": r.get::<_, String>(0), "code": r.get::<_, Option<String>>(1), "message": r.get::<_, Option<String>>(2)}))
        .collect();
    let (accepted, duplicates, rejected) = (count("accepted"), count("duplicate"), count("rejected"));
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    Ok(Some(json!({
        "id": id,
        "dataset": row.get::<_, String>(0),
        "bucket": row.get::<_, String>(1),
        "prefix": row.get::<_, String>(2),
        "status": row.get::<_, String>(3),
        "error": row.get::<_, Option<String>>(4),
        "processed": accepted + duplicates + rejected,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
        "errors": errors,
        "created_at": time(Some(row.get(5))),
        "finished_at": time(row.get(6)),
    })))
}
