//! Deletes raw objects that no media row references (their transaction failed and the
//! immediate clean-up could not reach S3), captured inputs left behind (their event never
//! went out, or their delete failed), and multipart uploads abandoned mid-way.

use std::time::Duration;

use aws_smithy_types_convert::date_time::DateTimeExt;
use chrono::{DateTime, Utc};
use sluice_core::{Context, Shutdown, capture::CAPTURES_PREFIX, s3::S3Error, uploads::RAW_PREFIX};

use crate::{error::IngestError, store};

/// Runs [`sweep_once`] every half grace period (at most every 5 minutes) until `shutdown`.
pub async fn run(ctx: Context, shutdown: Shutdown) {
    let every = Duration::from_secs((ctx.config.ingest.orphan_grace_secs / 2).clamp(1, 300));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        match sweep_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "orphan sweeper removed unreferenced raw objects"),
            Err(err) => tracing::warn!(error = %err, "orphan sweep failed"),
        }
    }
}

/// One pass: returns how many objects and uploads it removed.
pub async fn sweep_once(ctx: &Context) -> Result<usize, IngestError> {
    let grace = chrono::Duration::seconds(ctx.config.ingest.orphan_grace_secs as i64);
    let cutoff = Utc::now() - grace;
    let bucket = &ctx.config.s3.bucket;
    let mut removed =
        sweep_prefix(ctx, RAW_PREFIX, cutoff, |old| async move { Ok(store::recorded_keys(ctx, &old).await?) }).await?;
    // A captured input waits under `captures/` for ingest, which deletes it once stored (seconds
    // later). One still there after the grace period was left by an inference process that died
    // before its event, or by a delete that failed: none is kept.
    removed += sweep_prefix(ctx, CAPTURES_PREFIX, cutoff, |_| async { Ok(Vec::new()) }).await?;
    let (mut key_marker, mut id_marker) = (None, None);
    loop {
        let uploads = ctx
            .s3
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(RAW_PREFIX)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
            .map_err(|e| IngestError::Storage(S3Error::from_sdk("ListMultipartUploads", e)))?;
        for upload in uploads.uploads() {
            let stale = upload.initiated().and_then(|t| t.to_chrono_utc().ok()).is_some_and(|t| t < cutoff);
            if let (true, Some(key), Some(id)) = (stale, upload.key(), upload.upload_id())
                && ctx.s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(id).send().await.is_ok()
            {
                removed += 1;
            }
        }
        if !uploads.is_truncated().unwrap_or(false) {
            break;
        }
        key_marker = uploads.next_key_marker().map(str::to_owned);
        id_marker = uploads.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() {
            break;
        }
    }
    metrics::counter!("sluice_ingest_orphans_removed_total").increment(removed as u64);
    Ok(removed)
}

/// Deletes the objects under `prefix` last written before `cutoff`, except those `kept` names
/// (asked a page of old keys at a time); returns how many it deleted.
async fn sweep_prefix<F, Fut>(ctx: &Context, prefix: &str, cutoff: DateTime<Utc>, kept: F) -> Result<usize, IngestError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<Vec<String>, IngestError>>,
{
    let bucket = &ctx.config.s3.bucket;
    let mut removed = 0;
    let mut token = None;
    loop {
        let page = ctx
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| IngestError::Storage(S3Error::from_sdk("ListObjectsV2", e)))?;
        let old: Vec<String> = page
            .contents()
            .iter()
            .filter(|o| o.last_modified().and_then(|t| t.to_chrono_utc().ok()).is_some_and(|t| t < cutoff))
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        if !old.is_empty() {
            let known = kept(old.clone()).await?;
            for key in old.iter().filter(|k| !known.contains(k)) {
                ctx.s3
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| IngestError::Storage(S3Error::from_sdk("DeleteObject", e)))?;
                removed += 1;
            }
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(removed);
        }
    }
}
