//! A real dataset through the whole pipeline: scikit-learn's copy of the UCI handwritten digits
//! (1,797 images of 8×8 pixels, ten classes), fetched by `deploy/local/datasets.py digits`,
//! uploaded through ingest, preprocessed, trained on and registered. Test accuracy is reported
//! apart from validation; the same seed gives the same artifact; shuffled labels give chance.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sluice_testkit::{TestEnv, eventually};

use crate::{
    ingest::post_raw,
    support::{RunningApp, json_of},
    training::run_job,
};

/// (8×8 grayscale PNG, digit) for every row of digits.csv.
fn digits() -> Vec<(Vec<u8>, usize)> {
    let output = std::process::Command::new("python3")
        .args(["deploy/local/datasets.py", "digits"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "datasets.py: {}", String::from_utf8_lossy(&output.stderr));
    let path = String::from_utf8(output.stdout).expect("a path");
    let text = std::fs::read_to_string(path.trim()).expect("digits.csv");
    text.lines()
        .map(|line| {
            let values: Vec<u8> = line.split(',').map(|v| v.trim().parse().expect("a number")).collect();
            assert_eq!(values.len(), 65);
            // 0..=16 ink levels to 0..=255, white ink on black as the originals.
            let pixels: Vec<u8> = values[..64].iter().map(|&v| (u32::from(v) * 255 / 16) as u8).collect();
            let image = image::GrayImage::from_raw(8, 8, pixels).expect("8×8");
            let mut png = Vec::new();
            image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("a PNG");
            (png, usize::from(values[64]))
        })
        .collect()
}

async fn push(app: &RunningApp, dataset: &str, items: Vec<(Vec<u8>, String)>) {
    let count = items.len() as i64;
    let pipeline = app.http.put(app.url(&format!("/v1/datasets/{dataset}/pipeline"))).bearer_auth(&app.admin_token);
    let spec = json!({"width": 16, "height": 16, "color": "gray", "fit": "fill"});
    let (status, body) = json_of(pipeline.json(&spec).send().await.expect("pipeline")).await;
    assert_eq!(status, 200, "{body}");
    futures::stream::iter(items)
        .map(|(png, label)| async move {
            let (status, body) = post_raw(app, &format!("?dataset={dataset}&label={label}"), "image/png", png).await;
            assert_eq!(status, 202, "{body}");
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    eventually(Duration::from_secs(300), "the digits to be preprocessed", || async {
        let sql = format!("SELECT count(*) FROM media WHERE dataset = '{dataset}' AND status = 'processed'");
        (app.count(&sql).await >= count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handwritten_digits_reach_held_out_accuracy_reported_apart_from_validation() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    let items: Vec<(Vec<u8>, String)> = digits().into_iter().map(|(png, d)| (png, format!("digit-{d}"))).collect();
    assert_eq!(items.len(), 1797);
    push(&app, "digits", items).await;
    let job = json!({"model": "digits", "dataset": "digits", "architecture": "cnn", "seed": 1, "promote": "always",
        "augment": {"translate": 0.1, "rotate": 8.0, "scale": 0.08},
        "search": {"strategy": "grid", "space": {"epochs": 40, "batch_size": 32, "learning_rate": 0.003,
                                                 "hidden": 64, "patience": 8, "schedule": "cosine"}}});
    let job = run_job(&app, &job, Duration::from_secs(900)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let version = app.http.get(app.url("/v1/models/digits/versions/1")).bearer_auth(&app.admin_token).send().await;
    let (_, version) = json_of(version.expect("version")).await;
    let metrics = &version["metrics"];
    let test = metrics["test_accuracy"].as_f64().expect("a test accuracy");
    let validation = metrics["val_accuracy"].as_f64().expect("a validation accuracy");
    let items = metrics["test"]["items"].as_u64().expect("test items");
    eprintln!(
        "digits: test accuracy {test:.4} on {items} held-out items (validation {validation:.4}), macro-F1 {}, ECE {}, splits {}",
        metrics["test"]["macro_f1"], metrics["test"]["expected_calibration_error"], metrics["splits"]
    );
    assert!(items >= 200, "{metrics:#}");
    assert!(test >= 0.95, "held-out accuracy {test} on real handwriting: {metrics:#}");
    assert_eq!(metrics["test"]["per_class"].as_array().map(Vec::len), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_digit_labels_give_chance_and_the_same_seed_the_same_artifact() {
    let env = TestEnv::new().await;
    let app = RunningApp::spawn(env.config.clone()).await;
    // 700 digits, each with the label of another (a fixed permutation): nothing to learn.
    let all = digits();
    let n = 700;
    let items: Vec<(Vec<u8>, String)> =
        (0..n).map(|i| (all[i].0.clone(), format!("digit-{}", all[(i * 389 + 17) % n].1))).collect();
    push(&app, "noise", items).await;
    let job = json!({"model": "noise", "dataset": "noise", "architecture": "mlp", "seed": 5, "promote": "never",
        "search": {"strategy": "grid", "space": {"epochs": 15, "batch_size": 32, "learning_rate": 0.003,
                                                 "hidden": 64, "patience": 0}}});
    let first = run_job(&app, &job, Duration::from_secs(300)).await;
    let second = run_job(&app, &job, Duration::from_secs(300)).await;
    for job in [&first, &second] {
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    let app = &app;
    let version = |v: u32| async move {
        let response = app.http.get(app.url(&format!("/v1/models/noise/versions/{v}"))).bearer_auth(&app.admin_token);
        json_of(response.send().await.expect("version")).await.1
    };
    let (one, two) = (version(1).await, version(2).await);
    assert_eq!(one["sha256"], two["sha256"], "same data, seed and parameters: same artifact");
    let test = one["metrics"]["test_accuracy"].as_f64().expect("a test accuracy");
    eprintln!("shuffled digits: test accuracy {test:.4} (chance 0.1)");
    assert!(test <= 0.25, "labels carry no signal, yet held-out accuracy is {test}: {:#}", one["metrics"]);
}
