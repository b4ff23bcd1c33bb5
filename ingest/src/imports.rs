//! Bulk import: ingest objects already in S3, laid out as `<prefix>/<label>/<file>` (files
//! directly under the prefix are unlabelled). Each object goes through the same validation and
//! deduplication as an upload.
//!
//! Resumable: a worker holds an import under a lease of its own (`imports.lease_owner`), renewed
//! after every object and every few seconds while one is transferred; each source object is
//! recorded (`import_items`) in the same transaction as its media row, and the cursor advances
//! once a page is done. A worker that dies stops renewing; when the lease expires another worker
//! (or the restarted one) continues after the cursor and skips recorded objects. A worker that
//! was only slow or cut off finds at its next renewal that the lease is another's, and stops
//! (dropping a transfer in flight: the orphan sweeper removes what it stored), so no two workers
//! transfer the same objects.
//!
//! A poison object does not hold the import: each attempt at an object is counted
//! (`import_attempts`) before it is tried, so one that kills its worker counts too, and given
//! back when it failed because a dependency was away. A failed attempt lets the import be taken
//! again after a back-off that doubles per attempt; once an object has used
//! `ingest.import_max_attempts` it is recorded as rejected (`gave_up`, with the reason) with a
//! `work.parked` event and `sluice_ingest_import_objects_parked_total`, and the import goes on.

pub mod store;

use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::{
    Context, Shutdown,
    domain::{DatasetName, Label},
    parking,
    s3::{self, S3Error},
};
use uuid::Uuid;

use self::store::Import;
use crate::{
    error::IngestError,
    store::{self as media_store, NewMedia},
    upload,
};

/// Objects listed per page.
const PAGE: i32 = 100;
/// How often the lease (30 s) is renewed while one object is transferred.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Longest wait before an import whose object failed is taken again, in seconds.
const MAX_RETRY_SECS: f64 = 30.0;
/// How long an idle worker waits before looking again. An import queued in this process wakes it
/// at once ([`QUEUED`]); this bounds the wait for one queued elsewhere (each ingest process runs a
/// worker, so that is one whose process died) and for a failed one's back-off to be noticed.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Bumped when this process queues an import. A watch, like the outbox relay's, so that every
/// worker of the process sees it (tests run several apps in one process), including one that was
/// busy when it was bumped.
static QUEUED: std::sync::LazyLock<tokio::sync::watch::Sender<()>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(()).0);

/// Queues an import; a worker picks it up.
pub async fn create(ctx: &Context, dataset: &DatasetName, bucket: &str, prefix: &str) -> Result<Uuid, IngestError> {
    let id = Uuid::now_v7();
    store::create(ctx, id, dataset.as_str(), bucket, &normalize_prefix(prefix)).await?;
    QUEUED.send_replace(());
    Ok(id)
}

/// `""` stays empty; anything else ends with exactly one `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() { String::new() } else { format!("{trimmed}/") }
}

/// Runs until `shutdown`, working through queued imports and imports whose worker died.
pub async fn run(ctx: Context, shutdown: Shutdown) {
    let mut queued = QUEUED.subscribe();
    while !shutdown.is_cancelled() {
        queued.mark_unchanged();
        let worked = match run_once(&ctx, None).await {
            Ok(worked) => worked,
            Err(err) => {
                tracing::warn!(error = %sluice_core::error_chain(&err), "import worker failed; retrying");
                false
            }
        };
        if worked {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = queued.changed() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}

/// Claims one import and works on it, handling at most `budget` objects (all when `None`).
/// Returns whether there was an import to work on.
pub async fn run_once(ctx: &Context, budget: Option<usize>) -> Result<bool, IngestError> {
    let Some((import, cursor)) = store::claim(ctx).await? else { return Ok(false) };
    match import.work(ctx, cursor, budget).await {
        Ok(Worked::Exhausted) => {
            if store::succeed(ctx, &import).await? {
                tracing::info!(import = %import.id, "import finished");
            }
        }
        Ok(Worked::Budget) => {}
        Ok(Worked::TakenOver) => {
            tracing::warn!(import = %import.id, "the import's lease expired and another worker took it over; stopping");
        }
        Err(IngestError::Storage(err)) if matches!(err.code(), Some("NoSuchBucket" | "AccessDenied")) => {
            store::fail(ctx, &import, &err.to_string()).await?;
        }
        // The import itself cannot go on, whoever works on it (a key PostgreSQL cannot store).
        Err(IngestError::BadRequest(message)) => {
            tracing::warn!(import = %import.id, %message, "import failed");
            store::fail(ctx, &import, &message).await?;
        }
        Err(err) => return Err(err),
    }
    Ok(true)
}

/// How a worker's turn at an import ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worked {
    /// The listing is exhausted: the import is done.
    Exhausted,
    /// The budget of objects was used.
    Budget,
    /// The lease expired and another worker holds the import now.
    TakenOver,
}

impl Import {
    /// Handles objects after `cursor` while the lease is this worker's.
    #[tracing::instrument(skip_all, fields(import_id = %self.id, dataset = %self.dataset))]
    async fn work(
        &self,
        ctx: &Context,
        mut cursor: Option<String>,
        budget: Option<usize>,
    ) -> Result<Worked, IngestError> {
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
                // Keys come URL-encoded ([`s3::listed_key`]).
                .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                .send()
                .await
                .map_err(|e| IngestError::Storage(S3Error::from_sdk("ListObjectsV2", e)))?;
            let listed: Vec<(String, Option<i64>)> =
                page.contents().iter().filter_map(|o| Some((s3::listed_key(o.key()?)?, o.size()))).collect();
            let keys: Vec<String> = listed.iter().map(|(key, _)| key.clone()).collect();
            // S3 allows any UTF-8 in a key; PostgreSQL stores no NUL, so such a key could be
            // neither recorded nor passed as the cursor, and the import would be retried forever.
            if let Some(key) = keys.iter().find(|k| k.contains('\0')) {
                return Err(IngestError::BadRequest(format!(
                    "the object key {:?} holds a NUL character, which Sluice cannot record; rename the object and import again",
                    key.replace('\0', "\\0")
                )));
            }
            let sizes: std::collections::HashMap<&str, i64> =
                listed.iter().filter_map(|(key, size)| Some((key.as_str(), (*size)?))).collect();
            let done = store::recorded_keys(ctx, self.id, &keys).await?;
            for key in keys.iter().filter(|k| !done.contains(k) && !k.ends_with('/')) {
                if budget.is_some_and(|b| handled >= b) {
                    return Ok(Worked::Budget);
                }
                // Over the upload limit by its listed size: refused without downloading it.
                let limit = ctx.config.http.max_body_bytes;
                if let Some(&size) = sizes.get(key.as_str())
                    && u64::try_from(size).is_ok_and(|size| size > limit)
                {
                    let message = format!(
                        "The object is {size} bytes by its listing, over http.max_body_bytes ({limit}); not downloaded."
                    );
                    store::reject_item(ctx, self.id, key, "too_large", &message).await?;
                    metrics::counter!("sluice_ingest_rejected_total", "reason" => "too_large").increment(1);
                } else if !self.import_one(ctx, &dataset, key).await? {
                    return Ok(Worked::TakenOver);
                }
                handled += 1;
                // After every object, so a slow page never lets the lease expire.
                if !store::renew(ctx, self).await? {
                    return Ok(Worked::TakenOver);
                }
            }
            let Some(last) = keys.last() else { return Ok(Worked::Exhausted) };
            if !store::advance(ctx, self, last).await? {
                return Ok(Worked::TakenOver);
            }
            cursor = Some(last.clone());
            if !page.is_truncated().unwrap_or(false) {
                return Ok(Worked::Exhausted);
            }
        }
    }

    /// Validates and stores one object; client-side problems become a rejected item, dependency
    /// failures propagate (the import is retried), and an object out of attempts is parked.
    /// `Ok(false)` when the lease was lost during the transfer (which was then dropped).
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn import_one(&self, ctx: &Context, dataset: &DatasetName, key: &str) -> Result<bool, IngestError> {
        // Counted before the object is tried, so an object that kills its worker counts too.
        let store::Attempts { attempts, last_error } = store::begin_attempt(ctx, self.id, key).await?;
        if attempts > ctx.config.ingest.import_max_attempts as i32 {
            self.park(ctx, key, attempts - 1, &parking::gave_up(attempts - 1, last_error.as_deref())).await?;
            return Ok(true);
        }
        let outcome = {
            let transfer = self.try_import(ctx, dataset, key);
            tokio::pin!(transfer);
            let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
            loop {
                tokio::select! {
                    outcome = &mut transfer => break outcome,
                    _ = renewals.tick() => match store::renew(ctx, self).await {
                        Ok(true) => {}
                        Ok(false) => {
                            store::give_back_attempt(ctx, self.id, key).await?;
                            return Ok(false);
                        }
                        // PostgreSQL away for a moment is no fault of the object: the transfer
                        // goes on and the next tick renews (the lease outlasts two misses; if it
                        // expires and is taken over, that renewal says so).
                        Err(err) => {
                            tracing::warn!(import = %self.id, error = %sluice_core::error_chain(&err), "cannot renew the import's lease; trying again");
                        }
                    },
                }
            }
        };
        let err = match outcome {
            Ok(()) => return Ok(true),
            // This object alone cannot be read (no permission on it, or deleted since it was
            // listed): its item is rejected and the import goes on. A bucket that cannot be read
            // at all fails the listing, which fails the import.
            Err(IngestError::Storage(err)) if matches!(err.code(), Some("AccessDenied" | "NoSuchKey")) => {
                let message = format!("The object cannot be read: {err}.");
                store::reject_item(ctx, self.id, key, "unreadable_object", &message).await?;
                metrics::counter!("sluice_ingest_rejected_total", "reason" => "unreadable_object").increment(1);
                return Ok(true);
            }
            Err(err @ (IngestError::Storage(_) | IngestError::Database(_) | IngestError::BodyRead(_))) => {
                self.attempt_failed(ctx, key, attempts, &err).await;
                return Err(err);
            }
            Err(err) => err,
        };
        let api = err.to_api();
        store::reject_item(ctx, self.id, key, api.code, &api.message).await?;
        metrics::counter!("sluice_ingest_rejected_total", "reason" => err.reason()).increment(1);
        Ok(true)
    }

    /// An attempt at `key` failed. When the dependencies answer, the failure was the object's
    /// own: its error is kept and the import is taken again after a back-off that doubles with
    /// each attempt; when one does not, the attempt is given back (the lease's expiry paces the
    /// retry). Best effort: the import is retried either way.
    async fn attempt_failed(&self, ctx: &Context, key: &str, attempts: i32, err: &IngestError) {
        let counts = parking::dependencies_up(ctx, &[self.bucket.as_str()]).await;
        let recorded = if counts {
            let retry_in = 2f64.powi(attempts).min(MAX_RETRY_SECS);
            store::attempt_failed(ctx, self, key, &parking::clip(err.to_string()), retry_in).await
        } else {
            store::give_back_attempt(ctx, self.id, key).await
        };
        if let Err(error) = recorded {
            let error = sluice_core::error_chain(&error);
            tracing::warn!(import = %self.id, key, %error, "cannot record a failed import attempt");
        }
    }

    /// Records `key` as rejected for good (`gave_up`) with a `work.parked` event, in one
    /// transaction, so the import goes on without it.
    async fn park(&self, ctx: &Context, key: &str, attempts: i32, reason: &str) -> Result<(), IngestError> {
        tracing::error!(import = %self.id, key, attempts, reason, "import object parked");
        if store::park(ctx, self, key, attempts, reason).await? {
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
        match media_store::record(ctx, vec![item]).await {
            Ok((_, redundant)) => {
                upload::discard(ctx, &redundant).await;
                Ok(())
            }
            Err(err) => {
                upload::discard_unrecorded(ctx, &[stored.key]).await;
                Err(err.into())
            }
        }
    }
}

/// `GET /v1/imports/{id}` as JSON, or `None`.
pub async fn status_json(ctx: &Context, id: Uuid) -> Result<Option<Value>, IngestError> {
    let Some(progress) = store::progress(ctx, id).await? else { return Ok(None) };
    let errors: Vec<Value> =
        progress.errors.iter().map(|e| json!({"key": e.key, "code": e.code, "message": e.message})).collect();
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    Ok(Some(json!({
        "id": id,
        "dataset": progress.dataset,
        "bucket": progress.bucket,
        "prefix": progress.prefix,
        "status": progress.status,
        "error": progress.error,
        "processed": progress.accepted + progress.duplicates + progress.rejected,
        "accepted": progress.accepted,
        "duplicates": progress.duplicates,
        "rejected": progress.rejected,
        "errors": errors,
        "created_at": time(Some(progress.created_at)),
        "finished_at": time(progress.finished_at),
    })))
}
