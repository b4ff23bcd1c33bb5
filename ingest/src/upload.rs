//! Streams one upload into S3 while hashing it: sniff and validate from the first bytes, send
//! small files in one PUT and large ones as a multipart upload, check the end for truncation.
//! A rejected or failed upload leaves no object behind.

use aws_sdk_s3::{
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use sluice_core::{Config, Context, domain::DatasetName, s3::S3Error, uploads::raw_key};
use uuid::Uuid;

use crate::{
    error::IngestError,
    sniff::{self, Format, HEAD_LEN},
};

/// An object now in S3, not yet recorded in PostgreSQL.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: Uuid,
    pub key: String,
    pub format: Format,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

/// What one upload may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest accepted file, in bytes.
    pub max_bytes: u64,
    /// Files up to this size go in one PUT; larger ones in parts of this size.
    pub part_bytes: usize,
    /// Images whose header claims more pixels are refused.
    pub max_image_pixels: u64,
}

impl Limits {
    pub fn from_config(config: &Config, max_bytes: u64) -> Self {
        Self {
            max_bytes,
            part_bytes: config.ingest.multipart_part_bytes,
            max_image_pixels: config.ingest.max_image_pixels,
        }
    }
}

/// One uploaded part of a multipart object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTag {
    pub number: i32,
    pub etag: Option<String>,
}

/// Where an upload's bytes go: [`S3`] in production; the fuzz targets keep them in memory, so
/// the whole request path runs without a server.
pub trait Sink: Sync {
    fn put(
        &self,
        key: &str,
        content_type: &'static str,
        bytes: Bytes,
    ) -> impl Future<Output = Result<(), IngestError>> + Send;
    /// Starts a multipart object; returns its upload id.
    fn start(&self, key: &str, content_type: &'static str) -> impl Future<Output = Result<String, IngestError>> + Send;
    fn part(
        &self,
        key: &str,
        upload: &str,
        number: i32,
        bytes: Bytes,
    ) -> impl Future<Output = Result<PartTag, IngestError>> + Send;
    fn complete(
        &self,
        key: &str,
        upload: &str,
        parts: Vec<PartTag>,
    ) -> impl Future<Output = Result<(), IngestError>> + Send;
    /// Best effort: an upload that cannot be aborted now is removed by S3's lifecycle rules or
    /// the orphan sweeper.
    fn abort(&self, key: &str, upload: &str) -> impl Future<Output = ()> + Send;
    /// Aborts from a destructor (no `.await` there): the future storing the upload was dropped
    /// (its request's deadline passed, or its client left) between the start and the end.
    fn abort_detached(&self, key: &str, upload: &str);
}

/// A started multipart upload not yet completed or aborted: dropped so (the future storing it
/// was dropped mid-body), it is aborted in the background, so its parts do not stay in S3 until
/// the orphan sweeper.
struct OpenUpload<'a, K: Sink> {
    sink: &'a K,
    key: &'a str,
    upload: &'a str,
}

impl<K: Sink> OpenUpload<'_, K> {
    /// The upload was completed or aborted by its own path.
    fn ended(self) {
        std::mem::forget(self);
    }
}

impl<K: Sink> Drop for OpenUpload<'_, K> {
    fn drop(&mut self) {
        tracing::info!(key = self.key, "an upload was dropped mid-body; aborting it");
        self.sink.abort_detached(self.key, self.upload);
    }
}

/// The configured bucket.
#[derive(Debug, Clone, Copy)]
pub struct S3<'a>(pub &'a Context);

impl Sink for S3<'_> {
    async fn put(&self, key: &str, content_type: &'static str, bytes: Bytes) -> Result<(), IngestError> {
        let ctx = self.0;
        ctx.s3
            .put_object()
            .bucket(&ctx.config.s3.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| IngestError::Storage(S3Error::from_sdk("PutObject", e)))?;
        Ok(())
    }

    async fn start(&self, key: &str, content_type: &'static str) -> Result<String, IngestError> {
        let ctx = self.0;
        let created = ctx
            .s3
            .create_multipart_upload()
            .bucket(&ctx.config.s3.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| IngestError::Storage(S3Error::from_sdk("CreateMultipartUpload", e)))?;
        Ok(created.upload_id().unwrap_or_default().to_owned())
    }

    async fn part(&self, key: &str, upload: &str, number: i32, bytes: Bytes) -> Result<PartTag, IngestError> {
        let ctx = self.0;
        let sent = ctx
            .s3
            .upload_part()
            .bucket(&ctx.config.s3.bucket)
            .key(key)
            .upload_id(upload)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| IngestError::Storage(S3Error::from_sdk("UploadPart", e)))?;
        Ok(PartTag { number, etag: sent.e_tag().map(str::to_owned) })
    }

    async fn complete(&self, key: &str, upload: &str, parts: Vec<PartTag>) -> Result<(), IngestError> {
        let ctx = self.0;
        let parts = parts
            .into_iter()
            .map(|part| CompletedPart::builder().part_number(part.number).set_e_tag(part.etag).build())
            .collect();
        ctx.s3
            .complete_multipart_upload()
            .bucket(&ctx.config.s3.bucket)
            .key(key)
            .upload_id(upload)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| IngestError::Storage(S3Error::from_sdk("CompleteMultipartUpload", e)))?;
        Ok(())
    }

    async fn abort(&self, key: &str, upload: &str) {
        let ctx = self.0;
        let aborted =
            ctx.s3.abort_multipart_upload().bucket(&ctx.config.s3.bucket).key(key).upload_id(upload).send().await;
        if let Err(err) = aborted {
            tracing::warn!(key, error = %S3Error::from_sdk("AbortMultipartUpload", err), "abort failed");
        }
    }

    fn abort_detached(&self, key: &str, upload: &str) {
        let (ctx, key, upload) = (self.0.clone(), key.to_owned(), upload.to_owned());
        // Outside a runtime (a process ending) the orphan sweeper removes it instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { S3(&ctx).abort(&key, &upload).await });
        }
    }
}

/// Reads `body` into `raw/<dataset>/<id>.<ext>`. `declared` is the client's content type, if any.
/// Nothing is stored unless every check passes.
pub async fn store<K, S, E>(
    sink: &K,
    limits: Limits,
    dataset: &DatasetName,
    declared: Option<&str>,
    body: S,
) -> Result<Stored, IngestError>
where
    K: Sink,
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let part_size = limits.part_bytes.max(1);
    let mut reader = Reader { body, total: 0, limit: limits.max_bytes, ended: false };
    let mut buffer = BytesMut::new();
    let mut hasher = Sha256::new();

    // Enough bytes to identify the format and read an image header, or the whole (small) body.
    reader.fill(&mut buffer, HEAD_LEN).await?;
    if reader.total == 0 {
        return Err(IngestError::Empty);
    }
    let head = buffer[..buffer.len().min(HEAD_LEN)].to_vec();
    let format = sniff::sniff(&head).ok_or(IngestError::Unsupported)?;
    if let Some(declared) = declared
        && !format.matches_declared(declared)
    {
        return Err(IngestError::TypeMismatch { declared: declared.to_owned(), actual: format.content_type() });
    }
    let mut later = None;
    let (mut width, mut height) = match format.kind() {
        sniff::MediaKind::Image => match sniff::image_dimensions(format, &head, limits.max_image_pixels) {
            Ok((w, h)) => (Some(w as i32), Some(h as i32)),
            // Checked when the body has streamed past it, before anything is completed.
            Err(sniff::HeaderError::Later { ifd, little_endian }) => {
                later = Some(sniff::TiffIfd::new(ifd, little_endian));
                (None, None)
            }
            Err(err) => return Err(err.into()),
        },
        sniff::MediaKind::Video => (None, None),
    };
    // Sides are at most 65,535 (`sluice_core::pipeline::MAX_IMAGE_SIDE`): they fit an i32.
    let dimensions = |ifd: &sniff::TiffIfd| -> Result<(Option<i32>, Option<i32>), IngestError> {
        let (w, h) = ifd.dimensions(limits.max_image_pixels)?;
        Ok((Some(w as i32), Some(h as i32)))
    };

    // Read on until the body ends or one part is full.
    reader.fill(&mut buffer, part_size).await?;

    let id = Uuid::now_v7();
    let key = raw_key(dataset, id, format.extension());
    if reader.ended {
        let mut end = sniff::EndCheck::new(format);
        end.feed(&buffer);
        if !end.is_complete(&head) {
            return Err(IngestError::Truncated(format.extension()));
        }
        if let Some(ifd) = later.as_mut() {
            ifd.feed(0, &buffer);
            (width, height) = dimensions(ifd)?;
        }
        hasher.update(&buffer);
        sink.put(&key, format.content_type(), buffer.freeze()).await?;
    } else {
        let upload = sink.start(&key, format.content_type()).await?;
        let open = OpenUpload { sink, key: &key, upload: &upload };
        let result = stream_parts(
            sink,
            &key,
            &upload,
            &mut reader,
            buffer,
            &mut hasher,
            part_size,
            format,
            &head,
            later.as_mut(),
        )
        .await
        .and_then(|parts| {
            // A header read late fails the upload before it is completed: nothing stays.
            if let Some(ifd) = later.as_ref() {
                (width, height) = dimensions(ifd)?;
            }
            Ok(parts)
        });
        let ended = match result {
            Ok(parts) => match sink.complete(&key, &upload, parts).await {
                Ok(()) => Ok(()),
                Err(err) => {
                    sink.abort(&key, &upload).await;
                    Err(err)
                }
            },
            Err(err) => {
                sink.abort(&key, &upload).await;
                Err(err)
            }
        };
        open.ended();
        ended?;
    }
    let total = reader.total;
    metrics::counter!("sluice_ingest_received_bytes_total").increment(total);
    Ok(Stored { id, key, format, bytes: total as i64, sha256: hex::encode(hasher.finalize()), width, height })
}

#[allow(clippy::too_many_arguments)]
async fn stream_parts<K, S, E>(
    sink: &K,
    key: &str,
    upload: &str,
    reader: &mut Reader<S>,
    mut buffer: BytesMut,
    hasher: &mut Sha256,
    part_size: usize,
    format: Format,
    head: &[u8],
    mut later: Option<&mut sniff::TiffIfd>,
) -> Result<Vec<PartTag>, IngestError>
where
    K: Sink,
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut parts = Vec::new();
    // Sees every byte in order, so a JPEG's end is found even with a video appended after it.
    let mut end = sniff::EndCheck::new(format);
    let mut offset = 0u64;
    loop {
        reader.fill(&mut buffer, part_size).await?;
        if buffer.is_empty() {
            break;
        }
        let part = buffer.split().freeze();
        hasher.update(&part);
        end.feed(&part);
        if let Some(ifd) = later.as_deref_mut() {
            ifd.feed(offset, &part);
        }
        offset += part.len() as u64;
        parts.push(sink.part(key, upload, parts.len() as i32 + 1, part).await?);
        if reader.ended {
            break;
        }
    }
    // The parts are uploaded but not assembled: a truncated file is aborted, never completed.
    if !end.is_complete(head) {
        return Err(IngestError::Truncated(format.extension()));
    }
    Ok(parts)
}

/// The request body, counted against the size limit as it is read.
struct Reader<S> {
    body: S,
    total: u64,
    limit: u64,
    ended: bool,
}

impl<S, E> Reader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// Reads into `buffer` until it holds `target` bytes or the body ends; refuses the upload as
    /// soon as it passes the limit, without reading the rest.
    async fn fill(&mut self, buffer: &mut BytesMut, target: usize) -> Result<(), IngestError> {
        while !self.ended && buffer.len() < target {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.total += chunk.len() as u64;
                    if self.total > self.limit {
                        return Err(IngestError::TooLarge { limit: self.limit });
                    }
                    buffer.extend_from_slice(&chunk);
                }
                Some(Err(err)) => return Err(IngestError::BodyRead(err.to_string())),
                None => self.ended = true,
            }
        }
        Ok(())
    }
}

/// Deletes objects of a request that did not commit. Failures are logged; the sweeper retries.
pub async fn discard(ctx: &Context, keys: &[String]) {
    for key in keys {
        if let Err(err) = ctx.s3.delete_object().bucket(&ctx.config.s3.bucket).key(key).send().await {
            tracing::warn!(key, error = %S3Error::from_sdk("DeleteObject", err), "could not delete uncommitted object; the sweeper will");
        }
    }
}

/// After a failed commit: deletes the objects no media row references. When the database
/// cannot tell (it is down, or the commit's outcome is unknown), nothing is deleted and the
/// orphan sweeper decides later, so an object whose row did commit is never removed.
pub async fn discard_unrecorded(ctx: &Context, keys: &[String]) {
    let recorded = crate::store::recorded_keys(ctx, keys);
    match tokio::time::timeout(std::time::Duration::from_secs(5), recorded).await {
        Ok(Ok(recorded)) => {
            let orphans: Vec<String> = keys.iter().filter(|k| !recorded.contains(k)).cloned().collect();
            discard(ctx, &orphans).await;
        }
        _ => tracing::warn!(
            objects = keys.len(),
            "cannot check which objects were recorded; leaving them to the sweeper"
        ),
    }
}
