//! The S3 client (path-style, endpoint from config) and bucket bootstrap.
//!
//! Sluice's PostgreSQL records are the source of truth for what is stored; S3 holds bytes only.
//! No code relies on bucket versioning or conditional PUTs (see `../shared/STACK.md`).

use std::time::Duration;

use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    error::{ProvideErrorMetadata, SdkError},
};
use secrecy::ExposeSecret;

use crate::config::S3Config;

/// Why an S3 call failed, flattened to what callers act on.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {operation} failed: {message}")]
    Call { operation: &'static str, code: Option<String>, message: String },
}

impl S3Error {
    /// Wraps an SDK error, keeping the service's error code (`NoSuchKey`, `AccessDenied`, ...).
    pub fn from_sdk<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_owned);
        let message = match &err {
            SdkError::ServiceError(service) => {
                let inner = service.err();
                format!("{} ({})", inner.message().unwrap_or("no message"), inner.code().unwrap_or("no code"))
            }
            other => crate::error_chain(other),
        };
        Self::Call { operation, code, message }
    }

    /// The S3 error code, when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Call { code, .. } => code.as_deref(),
        }
    }
}

/// An object being read: its length and a stream of its bytes.
#[derive(Debug)]
pub struct ObjectStream {
    pub length: Option<u64>,
    pub content_type: Option<String>,
    pub body: aws_sdk_s3::primitives::ByteStream,
}

impl ObjectStream {
    /// The body as a stream of chunks, to answer an HTTP request without holding the object.
    pub fn into_chunks(self) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
        futures::stream::unfold(self.body, |mut body| async move {
            body.next().await.map(|chunk| (chunk.map_err(std::io::Error::other), body))
        })
    }
}

/// Opens an object for reading without loading it; `None` when there is no such key.
pub async fn get_stream(client: &Client, bucket: &str, key: &str) -> Result<Option<ObjectStream>, S3Error> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => Ok(Some(ObjectStream {
            length: object.content_length.and_then(|n| u64::try_from(n).ok()),
            content_type: object.content_type,
            body: object.body,
        })),
        Err(err) => {
            let err = S3Error::from_sdk("GetObject", err);
            if err.code() == Some("NoSuchKey") { Ok(None) } else { Err(err) }
        }
    }
}

/// Reads a whole object; `None` when there is no such key. For Sluice's own objects, whose size
/// it chose when writing them; anything a client named is read with [`get_bytes_bounded`].
pub async fn get_bytes(client: &Client, bucket: &str, key: &str) -> Result<Option<bytes::Bytes>, S3Error> {
    match get_bytes_bounded(client, bucket, key, u64::MAX).await? {
        ObjectRead::Bytes(bytes) => Ok(Some(bytes)),
        ObjectRead::Missing => Ok(None),
        ObjectRead::TooLarge(size) => Err(S3Error::Call {
            operation: "GetObject",
            code: None,
            message: format!("{key} is {size} bytes, more than this machine can address"),
        }),
    }
}

/// Writes a whole object in one PUT (small objects: manifests, checkpoints, model artifacts).
pub async fn put_bytes(
    client: &Client,
    bucket: &str,
    key: &str,
    body: impl Into<bytes::Bytes>,
    content_type: &str,
) -> Result<(), S3Error> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .body(aws_sdk_s3::primitives::ByteStream::from(body.into()))
        .send()
        .await
        .map_err(|e| S3Error::from_sdk("PutObject", e))?;
    Ok(())
}

/// The keys under `prefix` in `bucket`, in S3's (lexicographic) order, folder markers (keys
/// ending in `/`) left out; stops once more than `limit` are found.
pub async fn list_keys(client: &Client, bucket: &str, prefix: &str, limit: usize) -> Result<Vec<String>, S3Error> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .send()
            .await
            .map_err(|e| S3Error::from_sdk("ListObjectsV2", e))?;
        for key in page.contents().iter().filter_map(|o| listed_key(o.key()?)).filter(|k| !k.ends_with('/')) {
            if key.contains('\0') {
                tracing::warn!(bucket, key = %key.escape_debug(), "a key holding a NUL cannot be recorded; left out");
                continue;
            }
            keys.push(key);
        }
        token = page.next_continuation_token().filter(|_| page.is_truncated() == Some(true)).map(str::to_owned);
        if token.is_none() || keys.len() > limit {
            return Ok(keys);
        }
    }
}

/// A key as a listing asked with `encoding-type=url` gives it, decoded (S3 writes a space as
/// `+`); `None` for one that does not decode to UTF-8. Listings ask for encoded keys because a
/// key may hold any character, and one XML 1.0 cannot carry (a control character) would make
/// the whole listing unreadable.
pub fn listed_key(encoded: &str) -> Option<String> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|key| key.into_owned())
}

/// Builds a client for `config`: static credentials when configured, else the AWS default chain.
pub async fn client(config: &S3Config) -> Client {
    let mut builder = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .force_path_style(config.force_path_style);
    if config.access_key_id.is_empty() {
        let shared =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(config.region.clone())).load().await;
        builder = aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.force_path_style);
    } else {
        builder = builder.credentials_provider(Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.expose_secret().to_owned(),
            None,
            None,
            "sluice-config",
        ));
    }
    if !config.endpoint.is_empty() {
        builder = builder.endpoint_url(config.endpoint.clone());
    }
    // Without these a request on a pooled connection to a server that dropped off the network
    // waits until TCP gives up (minutes). Each attempt is bounded, and so is the whole operation:
    // during an outage every retry lands on another stale pooled connection and would wait its
    // full attempt time (three attempts: a minute, measured in tests/it/hosts.rs).
    let attempt = Duration::from_secs(config.attempt_timeout_secs);
    builder = builder.timeout_config(
        aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(attempt)
            .operation_timeout(attempt * 2 + Duration::from_secs(5))
            .build(),
    );
    Client::from_conf(builder.build())
}

/// Creates `bucket` unless it exists and is ours. Safe to call from several processes at once.
pub async fn ensure_bucket(client: &Client, bucket: &str) -> Result<(), S3Error> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
        Err(err) => return Err(S3Error::from_sdk("HeadBucket", err)),
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.code(), Some("BucketAlreadyOwnedByYou")) => Ok(()),
        Err(err) => Err(S3Error::from_sdk("CreateBucket", err)),
    }
}

/// Whether the bucket is reachable with our credentials (readiness checks, `sluice doctor`).
pub async fn check_bucket(client: &Client, bucket: &str) -> Result<(), S3Error> {
    client.head_bucket().bucket(bucket).send().await.map(|_| ()).map_err(|err| S3Error::from_sdk("HeadBucket", err))
}

/// Why the S3 server refuses `bucket` outright (it answered that the bucket does not exist, or
/// that Sluice may not read it), or `None` when it serves the bucket or could not be asked (an
/// outage is not a refusal).
pub async fn bucket_refuses(client: &Client, bucket: &str) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), client.head_bucket().bucket(bucket).send()).await {
        Ok(Err(SdkError::ServiceError(service))) if matches!(service.raw().status().as_u16(), 403 | 404) => {
            Some(match service.raw().status().as_u16() {
                404 => format!("bucket {bucket} does not exist"),
                _ => format!("bucket {bucket} refuses Sluice's reads (403)"),
            })
        }
        _ => None,
    }
}

/// The top-level prefixes of Sluice's own objects in its bucket: uploads, preprocessed outputs,
/// training snapshots, checkpoints, model artifacts, captured inputs, batch results and
/// `sluice bench`'s objects. What reads a user's objects from Sluice's bucket (imports, batch
/// predictions) must list outside them: media of any size and internal files are there.
pub const OWN_AREAS: [&str; 8] =
    ["raw/", "processed/", "snapshots/", "checkpoints/", "models/", "captures/", "batch-predictions/", "bench/"];

/// The first of [`OWN_AREAS`] that listing `prefix` (as given, not normalised) would reach into:
/// `prefix` lies inside the area, or the area lies under `prefix` (the empty prefix holds them all).
pub fn own_area_overlap(prefix: &str) -> Option<&'static str> {
    OWN_AREAS.into_iter().find(|area| prefix.starts_with(area) || area.starts_with(prefix))
}

/// Reads a whole object of at most `max_bytes`: [`ObjectRead::TooLarge`] (with the size) as soon as
/// its declared length or its bytes pass that, without reading the rest.
pub async fn get_bytes_bounded(
    client: &Client,
    bucket: &str,
    key: &str,
    max_bytes: u64,
) -> Result<ObjectRead, S3Error> {
    let Some(object) = get_stream(client, bucket, key).await? else { return Ok(ObjectRead::Missing) };
    let declared = object.length;
    if let Some(len) = declared.filter(|&len| len > max_bytes) {
        return Ok(ObjectRead::TooLarge(len));
    }
    let mut body = object.body;
    let mut bytes = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(max_bytes) as usize);
    while let Some(chunk) = body.try_next().await.map_err(|e| S3Error::Call {
        operation: "GetObject",
        code: None,
        message: format!("reading the body of {key}: {e}"),
    })? {
        let read = (bytes.len() as u64).saturating_add(chunk.len() as u64);
        if read > max_bytes {
            return Ok(ObjectRead::TooLarge(read));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(ObjectRead::Bytes(bytes.freeze()))
}

/// What [`get_bytes_bounded`] found.
#[derive(Debug)]
pub enum ObjectRead {
    Bytes(bytes::Bytes),
    Missing,
    /// Over the bound: the declared length, or the bytes read when it was passed.
    TooLarge(u64),
}

/// S3's bucket naming rules (the DNS-compatible subset every S3 implementation accepts).
pub fn is_valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && name.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::{OWN_AREAS, is_valid_bucket_name, own_area_overlap};
    use crate::domain::DatasetName;
    use uuid::Uuid;

    #[test]
    fn every_key_sluice_writes_lies_in_one_of_its_own_areas() {
        let (id, dataset) = (Uuid::nil(), "pets");
        let name = DatasetName::parse(dataset).expect("name");
        let keys = [
            crate::uploads::raw_key(&name, id, "jpg"),
            crate::pipeline::output_key(dataset, "spec", id, 0),
            crate::training::snapshot_key(dataset, "snap"),
            crate::training::checkpoint_key(id, id),
            crate::training::artifact_key("m", id, id, "00ff"),
            crate::training::manifest_key("m", id, id, "00ff"),
            crate::capture::capture_key("m", id),
            crate::batch_predictions::batch_part_key(id, 0),
        ];
        for key in keys {
            assert!(OWN_AREAS.iter().any(|area| key.starts_with(area)), "{key} is outside OWN_AREAS");
            assert!(own_area_overlap(&key).is_some());
        }
    }

    #[test]
    fn a_listing_prefix_overlaps_an_area_from_inside_or_above_it() {
        for prefix in ["", "r", "raw", "raw/", "raw/pets/", "models", "batch-predictions/x/", "bench/1/"] {
            assert!(own_area_overlap(prefix).is_some(), "{prefix:?} reaches Sluice's own objects");
        }
        for prefix in ["incoming/", "rawdata/", "models-archive/", "x", "photos/raw/"] {
            assert_eq!(own_area_overlap(prefix), None, "{prefix:?} is outside Sluice's areas");
        }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        assert!(is_valid_bucket_name("sluice"));
        assert!(is_valid_bucket_name("sluice-test-0a1b"));
        for bad in ["ab", "Sluice", "-sluice", "sluice-", "a..b", "with_underscore", &"a".repeat(64)] {
            assert!(!is_valid_bucket_name(bad), "{bad} should be rejected");
        }
    }
}
