//! An upload request as ingest reads it (`sluice_ingest::form::read`): query string, content
//! type, raw body or multipart form, text parts and files, streamed in chunks of varying size into
//! an in-memory sink with tiny limits, so every branch (one PUT, multipart parts, limits, part
//! floods, truncation) is reachable. Properties: no panic; on success the stored objects are
//! exactly the files' bytes, their hashes match, and the limits held; every multipart upload is
//! either completed or aborted.
//!
//! Input layout: byte 0 picks the content type, byte 1 the chunk size, byte 2 the query's length,
//! then the query, then the body (a multipart body uses the boundary `XBOUNDARY`).

#![no_main]

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use sluice_ingest::{
    error::IngestError,
    form::{self, FormLimits},
    upload::{Limits, PartTag, Sink},
};

const LIMITS: FormLimits =
    FormLimits { upload: Limits { max_bytes: 64 * 1024, part_bytes: 4096, max_image_pixels: 1 << 20 }, max_parts: 4 };

#[derive(Default)]
struct Memory {
    objects: Mutex<HashMap<String, Vec<u8>>>,
    /// Open multipart uploads: key → parts so far.
    open: Mutex<HashMap<String, Vec<(i32, Bytes)>>>,
    aborted: Mutex<usize>,
}

impl Sink for Memory {
    async fn put(&self, key: &str, _content_type: &'static str, bytes: Bytes) -> Result<(), IngestError> {
        let previous = self.objects.lock().unwrap().insert(key.to_owned(), bytes.to_vec());
        assert!(previous.is_none(), "two objects under {key}");
        Ok(())
    }

    async fn start(&self, key: &str, _content_type: &'static str) -> Result<String, IngestError> {
        let previous = self.open.lock().unwrap().insert(key.to_owned(), Vec::new());
        assert!(previous.is_none(), "two uploads under {key}");
        Ok(format!("upload-{key}"))
    }

    async fn part(&self, key: &str, upload: &str, number: i32, bytes: Bytes) -> Result<PartTag, IngestError> {
        assert_eq!(upload, format!("upload-{key}"));
        let mut open = self.open.lock().unwrap();
        let parts = open.get_mut(key).expect("a part of an upload that was started");
        assert_eq!(number as usize, parts.len() + 1, "parts are numbered 1, 2, …");
        assert!(bytes.len() <= LIMITS.upload.part_bytes, "a part larger than the part size");
        parts.push((number, bytes));
        Ok(PartTag { number, etag: Some(format!("etag-{number}")) })
    }

    async fn complete(&self, key: &str, _upload: &str, tags: Vec<PartTag>) -> Result<(), IngestError> {
        let parts = self.open.lock().unwrap().remove(key).expect("completing an upload that was started");
        assert_eq!(tags.len(), parts.len());
        let object: Vec<u8> = parts.iter().flat_map(|(_, bytes)| bytes.iter().copied()).collect();
        self.objects.lock().unwrap().insert(key.to_owned(), object);
        Ok(())
    }

    async fn abort(&self, key: &str, upload: &str) {
        self.abort_detached(key, upload);
    }

    fn abort_detached(&self, key: &str, _upload: &str) {
        self.open.lock().unwrap().remove(key).expect("aborting an upload that was started");
        *self.aborted.lock().unwrap() += 1;
    }
}

const CONTENT_TYPES: [&str; 6] = [
    "multipart/form-data; boundary=XBOUNDARY",
    "image/jpeg",
    "application/octet-stream",
    "image/png",
    "video/mp4",
    "text/plain",
];

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
}

fuzz_target!(|data: &[u8]| {
    let [kind, chunk, query_len, rest @ ..] = data else { return };
    let content_type = CONTENT_TYPES[usize::from(*kind) % CONTENT_TYPES.len()];
    let chunk = usize::from(*chunk).max(1) * 7;
    let query_len = usize::from(*query_len).min(rest.len()) % 64;
    let (query, body) = rest.split_at(query_len);
    let Ok(query) = std::str::from_utf8(query) else { return };
    let Ok(uri) = format!("/v1/media?{query}").parse::<axum::http::Uri>() else { return };
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let request = Request::post(uri)
        .header("content-type", content_type)
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("a request");

    let sink = Memory::default();
    let mut files = Vec::new();
    let result = RUNTIME.with(|rt| rt.block_on(form::read(&sink, request, LIMITS, &mut files)));

    assert!(sink.open.lock().unwrap().is_empty(), "a multipart upload left neither completed nor aborted");
    let objects = sink.objects.lock().unwrap();
    for file in &files {
        let stored = objects.get(&file.key).expect("every stored file is an object");
        assert_eq!(stored.len() as i64, file.bytes);
        assert_eq!(hex::encode(Sha256::digest(stored)), file.sha256);
    }
    // A refused file leaves nothing behind; the files before it are the caller's to discard.
    assert_eq!(objects.len(), files.len(), "an object no file accounts for");
    if result.is_ok() {
        assert!(!files.is_empty() && files.len() <= LIMITS.max_parts);
        let total: i64 = files.iter().map(|f| f.bytes).sum();
        assert!(total as u64 <= LIMITS.upload.max_bytes);
        if let (Some(w), Some(h)) = (files[0].width, files[0].height) {
            assert!(w > 0 && h > 0 && (w as u64) * (h as u64) <= LIMITS.upload.max_image_pixels);
        }
    }
});
