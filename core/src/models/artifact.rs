//! Loading a version's artifact from S3, refusing bytes that differ from what was registered.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::{ModelVersion, RegistryError};
use crate::s3::S3Error;

/// Downloads `v`'s artifact and checks its size and SHA-256 against the registration; a mismatch
/// is [`RegistryError::Tampered`]. Reading stops as soon as the object outgrows the registered
/// size, so a replaced, larger object never fills memory.
pub async fn load_artifact(s3: &aws_sdk_s3::Client, bucket: &str, v: &ModelVersion) -> Result<Bytes, RegistryError> {
    let key = &v.artifact_key;
    let object = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => object,
        Err(err) => {
            let err = S3Error::from_sdk("GetObject", err);
            return Err(match err.code() {
                Some("NoSuchKey" | "NotFound") => RegistryError::MissingArtifact { key: key.clone() },
                _ => RegistryError::S3(err),
            });
        }
    };
    let tampered = |detail: String| RegistryError::Tampered { key: key.clone(), detail };
    let expected = u64::try_from(v.size_bytes).map_err(|_| tampered("negative registered size".into()))?;
    let mut body = object.body;
    let mut bytes = BytesMut::with_capacity(usize::try_from(expected.min(256 << 20)).unwrap_or(0));
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.try_next().await.map_err(|err| {
        RegistryError::S3(S3Error::Call { operation: "GetObject", code: None, message: crate::error_chain(&err) })
    })? {
        if (bytes.len() + chunk.len()) as u64 > expected {
            return Err(tampered(format!("more than the registered {expected} bytes")));
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    check(bytes.len() as u64, &hex::encode(hasher.finalize()), expected, &v.sha256).map_err(tampered)?;
    Ok(bytes.freeze())
}

/// Compares what was read with what was registered.
fn check(size: u64, sha256: &str, expected_size: u64, expected_sha256: &str) -> Result<(), String> {
    if size != expected_size {
        return Err(format!("{size} bytes, registered {expected_size}"));
    }
    if sha256 != expected_sha256 {
        return Err(format!("sha256 {sha256}, registered {expected_sha256}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn a_different_size_or_digest_is_refused() {
        let digest = "a".repeat(64);
        assert!(check(10, &digest, 10, &digest).is_ok());
        assert!(check(9, &digest, 10, &digest).expect_err("size").contains("9 bytes, registered 10"));
        assert!(check(10, &"b".repeat(64), 10, &digest).expect_err("digest").contains("sha256"));
    }
}
