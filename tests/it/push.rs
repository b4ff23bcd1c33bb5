//! `sluice push` against a running application.

use std::{process::Command, time::Duration};

use sluice_testkit::TestEnv;

use crate::{
    ingest::{jpeg, png},
    support::{Cut, RunningApp, json_of, sluice_command, through_proxy},
};

fn push(app: &RunningApp, args: &[&str]) -> Command {
    let mut command = sluice_command();
    command.arg("push").args(args).args(["--url", &app.base_url, "--token", &app.admin_token]);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_uploads_a_labelled_folder_and_summarises_what_happened() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("cat")).expect("mkdir");
    std::fs::create_dir_all(root.join("dog/puppies")).expect("mkdir");
    std::fs::write(root.join("cat/a.png"), png(10, 10, 1)).expect("write");
    std::fs::write(root.join("cat/b.jpg"), jpeg(12, 12, 2)).expect("write");
    std::fs::write(root.join("dog/puppies/c.png"), png(14, 14, 3)).expect("write");
    std::fs::write(root.join("dog/same-as-a.png"), png(10, 10, 1)).expect("write");
    std::fs::write(root.join("notes.txt"), "not an image").expect("write");

    let output = push(&app, &[root.to_str().expect("utf-8 path"), "--dataset", "pets"]).output().expect("run push");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "a rejected file makes push fail:\n{stdout}");
    assert!(stdout.contains("accepted 3, duplicate 1, rejected 1"), "{stdout}");
    assert!(stdout.contains("unsupported_media_type") && stdout.contains("notes.txt"), "{stdout}");

    let (status, dataset) =
        json_of(app.http.get(app.url("/v1/datasets/pets")).bearer_auth(&app.admin_token).send().await.expect("get"))
            .await;
    assert_eq!(status, 200, "{dataset}");
    assert_eq!(dataset["total"], 3);
    // cat/a.png and dog/same-as-a.png are the same bytes, uploaded concurrently: whichever commits
    // first keeps its label. Nested folders take the top sub-folder's name.
    let (cat, dog) = (dataset["by_label"]["cat"].as_i64(), dataset["by_label"]["dog"].as_i64());
    assert!(matches!((cat, dog), (Some(2), Some(1)) | (Some(1), Some(2))), "{dataset}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_retries_while_the_server_answers_503() {
    let env = TestEnv::new().await;
    let (config, proxy) = through_proxy(&env, Cut::S3).await;
    let app = RunningApp::spawn(config).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.png"), png(9, 9, 7)).expect("write");
    std::fs::write(dir.path().join("b.png"), png(9, 9, 8)).expect("write");

    proxy.stop().await;
    let child = push(&app, &[dir.path().to_str().expect("utf-8"), "--dataset", "retry", "--label", "x"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn push");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.resume().await;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("join").expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("accepted 2, duplicate 0, rejected 0"), "{stdout}");
}

/// A server that asks to come back later (429 with `Retry-After: 1`) is retried no sooner; the
/// token can come from `SLUICE_TOKEN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_honours_retry_after_and_reads_the_token_from_the_environment() {
    use std::sync::{Arc, Mutex};
    /// When each upload came, and its bearer token.
    type Seen = Vec<(std::time::Instant, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    let router = axum::Router::new().route(
        "/v1/media",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let log = log.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let first = {
                    let mut log = log.lock().expect("log");
                    log.push((std::time::Instant::now(), auth));
                    log.len() == 1
                };
                if first {
                    (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        axum::Json(serde_json::json!({"error": {"code": "rate_limited", "message": "later"}})),
                    )
                } else {
                    (
                        axum::http::StatusCode::ACCEPTED,
                        [("retry-after", "0")],
                        axum::Json(serde_json::json!({"items": [{"duplicate": false}]})),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.png"), png(9, 9, 7)).expect("write");
    let mut command = sluice_command();
    command
        .args(["push", dir.path().to_str().expect("utf-8"), "--dataset", "later", "--url", &url])
        .env("SLUICE_TOKEN", "from-the-environment")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("accepted 1"), "{stdout}");
    let seen = seen.lock().expect("log");
    assert_eq!(seen.len(), 2);
    assert!(seen[1].0 - seen[0].0 >= Duration::from_secs(1), "retried before Retry-After");
    assert_eq!(seen[0].1.as_deref(), Some("Bearer from-the-environment"));
}

/// Listing a folder follows symbolic links to files (uploaded with their target's length, as
/// git-annex and symlink farms lay datasets out) and to folders, but enters each folder once:
/// a link back up the tree ends, and a dangling link is skipped.
#[test]
fn push_lists_linked_files_whole_and_survives_link_loops() {
    let root = tempfile::tempdir().expect("temp dir");
    let store = tempfile::tempdir().expect("temp dir");
    let blob = store.path().join("blob.png");
    std::fs::write(&blob, vec![7u8; 5000]).expect("write");
    let cat = root.path().join("cat");
    std::fs::create_dir(&cat).expect("mkdir");
    std::fs::write(cat.join("a.png"), vec![1u8; 10]).expect("write");
    std::os::unix::fs::symlink(&blob, cat.join("linked.png")).expect("link a file");
    std::os::unix::fs::symlink(root.path(), cat.join("loop")).expect("link back up");
    std::os::unix::fs::symlink(&cat, cat.join("self")).expect("link to itself");
    std::os::unix::fs::symlink(store.path().join("gone.png"), cat.join("dangling.png")).expect("dangling");
    let jobs = sluice::push::collect(&[root.path().to_owned()], None).expect("listed");
    let mut listed: Vec<(String, u64)> = jobs
        .iter()
        .map(|j| (j.path.strip_prefix(root.path()).expect("inside").display().to_string(), j.bytes))
        .collect();
    listed.sort();
    assert_eq!(listed, [("cat/a.png".to_owned(), 10), ("cat/linked.png".to_owned(), 5000)], "{listed:?}");
}
