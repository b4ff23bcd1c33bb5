//! `sluice push`: upload files or folders to ingest, concurrently, with progress, retries on
//! 429 and 502–504 (after the server's `Retry-After` at least, with jitter) and a summary. A folder of sub-folders is a labelled dataset: each sub-folder's name is
//! the label of the files under it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// One file to upload and the label it gets.
#[derive(Debug, Clone)]
pub struct Job {
    pub path: PathBuf,
    pub label: Option<String>,
    pub bytes: u64,
}

/// What happened to one file.
#[derive(Debug, Clone)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected { code: String, message: String },
}

/// Options of one push.
#[derive(Debug, Clone)]
pub struct Push {
    pub url: String,
    pub token: String,
    pub dataset: String,
    pub concurrency: usize,
    pub attempts: u32,
}

/// Expands `paths` into jobs: files as given (label `label`); in a folder, files directly inside
/// get `label` and files under each sub-folder get that sub-folder's name.
pub fn collect(paths: &[PathBuf], label: Option<&str>) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_file() {
            jobs.push(Job { path: path.clone(), label: label.map(str::to_owned), bytes: meta.len() });
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        seen.insert(std::fs::canonicalize(path)?);
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let child = entry.path();
            // `metadata` follows symbolic links: a linked file is uploaded with its target's length.
            let Ok(meta) = std::fs::metadata(&child) else { continue };
            if meta.is_dir() {
                let name = entry.file_name().to_string_lossy().into_owned();
                walk(&child, 1, &mut seen, &mut |file, bytes| {
                    jobs.push(Job { path: file.to_owned(), label: Some(name.clone()), bytes });
                })?;
            } else if meta.is_file() && !is_hidden(&child) {
                jobs.push(Job { path: child.clone(), label: label.map(str::to_owned), bytes: meta.len() });
            }
        }
    }
    Ok(jobs)
}

/// Deepest directory `push` descends into below a label's folder.
const MAX_DEPTH: usize = 32;

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Every file under `dir`, following symbolic links to files and folders, but entering each
/// folder once (by its canonical path: a link back up the tree is not a loop) and no deeper than
/// [`MAX_DEPTH`].
fn walk(
    dir: &Path,
    depth: usize,
    seen: &mut std::collections::HashSet<PathBuf>,
    found: &mut dyn FnMut(&Path, u64),
) -> anyhow::Result<()> {
    let canonical = std::fs::canonicalize(dir).with_context(|| format!("reading {}", dir.display()))?;
    if depth > MAX_DEPTH || !seen.insert(canonical) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        // A dangling link has no metadata: nothing to upload.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, depth + 1, seen, found)?;
        } else if meta.is_file() {
            found(&path, meta.len());
        }
    }
    Ok(())
}

/// Content type from the extension; the server sniffs the bytes either way.
fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "avi" => "video/x-msvideo",
        _ => "application/octet-stream",
    }
}

/// Uploads every job and returns each outcome, in job order.
pub async fn run(push: &Push, jobs: Vec<Job>, progress: &ProgressBar) -> Vec<(Job, Outcome)> {
    let client = crate::client::cli_http(Some(push.concurrency));
    let push = Arc::new(push.clone());
    let total = jobs.len();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    progress.set_prefix(format!("0/{total} files"));
    stream::iter(jobs)
        .map(|job| {
            let client = client.clone();
            let push = push.clone();
            let progress = progress.clone();
            let done = done.clone();
            async move {
                let outcome = upload_with_retries(&client, &push, &job).await;
                let finished = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress.inc(job.bytes);
                progress.set_prefix(format!("{finished}/{total} files"));
                (job, outcome)
            }
        })
        .buffered(push.concurrency.max(1))
        .collect()
        .await
}

async fn upload_with_retries(client: &reqwest::Client, push: &Push, job: &Job) -> Outcome {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let (retryable, retry_after) = match upload_once(client, push, job).await {
            Ok((202, body, _)) if body["duplicate"] == true => return Outcome::Duplicate,
            Ok((202, _, _)) => return Outcome::Accepted,
            Ok((429 | 502..=504, body, retry_after)) => (rejected(&body, "unavailable"), retry_after),
            Ok((_, body, _)) => return rejected(&body, "rejected"),
            Err(err) => (Outcome::Rejected { code: "connection".into(), message: err }, None),
        };
        if attempt >= push.attempts.max(1) {
            return retryable;
        }
        attempt += 1;
        // The server's Retry-After is a floor; jitter keeps many pushers from retrying in step.
        let wait = retry_after.unwrap_or_default().max(delay).mul_f64(rand::random_range(1.0..1.5));
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn rejected(body: &Value, fallback: &str) -> Outcome {
    Outcome::Rejected {
        code: body["error"]["code"].as_str().unwrap_or(fallback).to_owned(),
        message: body["error"]["message"].as_str().unwrap_or("no message").to_owned(),
    }
}

/// One upload: the status, the body, and the server's Retry-After (seconds) if it sent one.
async fn upload_once(
    client: &reqwest::Client,
    push: &Push,
    job: &Job,
) -> Result<(u16, Value, Option<Duration>), String> {
    let file = tokio::fs::File::open(&job.path).await.map_err(|e| format!("{}: {e}", job.path.display()))?;
    // The length of what is sent, from the open file: a file that changed since it was listed
    // is sent whole, never cut to a stale length.
    let bytes = file.metadata().await.map_err(|e| format!("{}: {e}", job.path.display()))?.len();
    let mut query = vec![("dataset", push.dataset.clone())];
    if let Some(label) = &job.label {
        query.push(("label", label.clone()));
    }
    if let Some(name) = job.path.file_name() {
        query.push(("source", name.to_string_lossy().into_owned()));
    }
    let response = client
        .post(format!("{}/v1/media", push.url.trim_end_matches('/')))
        .query(&query)
        .bearer_auth(&push.token)
        .header(reqwest::header::CONTENT_TYPE, content_type(&job.path))
        .header(reqwest::header::CONTENT_LENGTH, bytes)
        .body(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file)))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds.min(300)));
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 202 {
        let duplicate = body["items"][0]["duplicate"].as_bool().unwrap_or(false);
        return Ok((status, serde_json::json!({ "duplicate": duplicate }), None));
    }
    Ok((status, body, retry_after))
}

/// What a push did, file by file, added up.
#[derive(Debug, Default)]
pub struct Summary {
    pub accepted: usize,
    pub duplicates: usize,
    /// Rejected files grouped by error code, each with the server's message.
    pub rejected: BTreeMap<String, Vec<(PathBuf, String)>>,
}

impl Summary {
    pub fn of(results: &[(Job, Outcome)]) -> Self {
        let mut summary = Self::default();
        for (job, outcome) in results {
            match outcome {
                Outcome::Accepted => summary.accepted += 1,
                Outcome::Duplicate => summary.duplicates += 1,
                Outcome::Rejected { code, message } => {
                    summary.rejected.entry(code.clone()).or_default().push((job.path.clone(), message.clone()))
                }
            }
        }
        summary
    }

    pub fn rejected_count(&self) -> usize {
        self.rejected.values().map(Vec::len).sum()
    }
}

/// A progress bar over the bytes of `jobs`.
pub fn progress_bar(jobs: &[Job]) -> ProgressBar {
    let total: u64 = jobs.iter().map(|j| j.bytes).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {prefix} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}
