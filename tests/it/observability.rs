//! Observability as shipped: the deploy files pass their offline checks (promtool, compose, k8s),
//! and every PromQL expression of every dashboard panel and every rule parses and returns data
//! from a real Prometheus scraping a real Sluice that has run the demo's kind of traffic.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::json;
use sluice_testkit::{TestEnv, eventually};

use crate::{
    closed_loop::images,
    ingest::post_raw,
    support::{RunningApp, json_of},
    training::wait_job,
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_files_pass_promtool_compose_and_kubernetes_checks() {
    let output =
        Command::new("bash").arg(repo().join("deploy/check.sh")).current_dir(repo()).output().expect("run check.sh");
    assert!(
        output.status.success(),
        "deploy/check.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Prometheus of the test's own, scraping `target` every second with the shipped rules.
struct PrivatePrometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl PrivatePrometheus {
    fn start(target: &str) -> Self {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("Prometheus is not installed; run `deploy/local/stack.sh up` (it installs Debian's prometheus)");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let rules = repo().join("deploy/prometheus/rules");
        let config = format!(
            "global: {{scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 1s}}\n\
             rule_files: ['{}/*.yml']\n\
             scrape_configs:\n\
             - job_name: sluice\n  static_configs:\n  - targets: ['{target}']\n    labels: {{service: all}}\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }
}

impl Drop for PrivatePrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_query_returns_data_from_a_real_prometheus() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.inference.drift_window = 100;
    let app = RunningApp::spawn(config).await;
    let prometheus = PrivatePrometheus::start(app.base_url.trim_start_matches("http://"));

    // The demo's traffic: uploads (and a rejected one), preprocessing, a training job, a
    // promotion, predictions (and a refused one), feedback, a shifted stream.
    let pipeline = app.http.put(app.url("/v1/datasets/obs/pipeline")).bearer_auth(&app.admin_token);
    assert_eq!(
        json_of(pipeline.json(&json!({"width": 32, "height": 32})).send().await.expect("pipeline")).await.0,
        200
    );
    for (png, label) in images(90, 1, 0) {
        let (status, body) = post_raw(&app, &format!("?dataset=obs&label={label}"), "image/png", png).await;
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(post_raw(&app, "?dataset=obs", "image/png", b"not an image".to_vec()).await.0, 415);
    eventually(Duration::from_secs(120), "uploads preprocessed", || async {
        (app.count("SELECT count(*) FROM media WHERE status = 'processed'").await >= 90).then_some(())
    })
    .await;
    let job = json!({"model": "obs", "dataset": "obs", "architecture": "cnn", "promote": "always",
        "search": {"strategy": "grid", "space": {"epochs": 3, "learning_rate": [0.003, 0.01]}}});
    let created = app.http.post(app.url("/v1/training-jobs")).bearer_auth(&app.admin_token).json(&job).send().await;
    let (status, created) = json_of(created.expect("job")).await;
    assert_eq!(status, 202, "{created}");
    let finished = wait_job(&app, created["id"].as_str().expect("id"), Duration::from_secs(180)).await;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    let mut ids = Vec::new();
    for (shift, seed) in [(0, 2), (100, 3)] {
        for chunk in images(100, seed, shift).chunks(25) {
            let mut form = reqwest::multipart::Form::new();
            for (png, _) in chunk {
                form = form.part("file", reqwest::multipart::Part::bytes(png.clone()).file_name("x.png"));
            }
            let response =
                app.http.post(app.url("/v1/models/obs/predict")).bearer_auth(&app.admin_token).multipart(form);
            let (status, answer) = json_of(response.send().await.expect("predict")).await;
            assert_eq!(status, 200, "{answer}");
            let predictions = answer["predictions"].as_array().expect("predictions");
            ids.extend(predictions.iter().map(|p| (p["id"].clone(), p["top"][0]["label"].clone())));
        }
    }
    let refused = app.http.post(app.url("/v1/models/obs/predict")).bearer_auth(&app.admin_token).body("nope");
    assert_eq!(refused.send().await.expect("predict").status().as_u16(), 415);
    // Every answer was wrong: live accuracy 0, under any threshold, so a retrain is requested
    // whatever the model learned (feedback of one fixed label once agreed with a model that
    // answered mostly that label, and the retrain-request panels had no data).
    let labels: BTreeSet<String> = images(90, 1, 0).into_iter().map(|(_, label)| label).collect();
    for (id, answered) in ids.iter().take(60) {
        let wrong = labels.iter().find(|label| answered != label.as_str()).expect("another label");
        let (status, answer) = crate::support::feedback(&app, &json!({"prediction_id": id, "label": wrong})).await;
        assert_eq!(status, 200, "{answer}");
    }

    // Let Prometheus scrape and evaluate the rules over a few intervals, then check every query.
    eventually(Duration::from_secs(60), "Prometheus to scrape Sluice", || async {
        let url = format!("{}/api/v1/query?query=up{{job=%22sluice%22}}", prometheus.url);
        let body: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
        (body["data"]["result"][0]["value"][1] == "1").then_some(())
    })
    .await;
    // Series written asynchronously (drift checks, retrain requests) and rates over a few scrapes
    // take a while on a busy machine: the queries are run until they all return data, or 120 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let output = loop {
        let output = Command::new("python3")
            .arg(repo().join("grafana/queries.py"))
            .args(["--quiet", "--rate-interval", "30s", "--evaluate", &prometheus.url])
            .output()
            .expect("run grafana/queries.py");
        if output.status.success() || std::time::Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    assert!(
        output.status.success(),
        "some dashboard or rule queries failed against Prometheus:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
