//! The Open Inference Protocol (V2 REST) beside `/v1`: real clients no one here wrote
//! (`tritonclient.http`, the KServe SDK, installed by `tests/clients/env.sh` into a project-local
//! virtual environment) get `/v1`'s answers; hostile requests get a 4xx in the protocol's shape
//! and leave nothing behind.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_testkit::{TestEnv, eventually};

use crate::{
    inference::{inference_app, move_alias, png, predict_many, register_trained, samples},
    support::{RunningApp, json_of},
};

/// Same images through `/v1` and through both Python clients over `/v2`: the same labels and
/// scores, for encoded images and for prepared pixels, binary and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_and_the_kserve_sdk_get_v1s_answers() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "oip", 61, 4).await;
    move_alias(&app, "oip", "production", version).await;
    let images = samples(8, 62);
    let frame = images.shape.len();
    let pngs: Vec<Vec<u8>> = (0..8).map(|i| png(&images, i, 0)).collect();
    let (status, answer) = predict_many(&app, "oip", pngs.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let cases: Vec<Value> = answer["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .enumerate()
        .map(|(i, prediction)| {
            json!({
                "png_b64": base64::engine::general_purpose::STANDARD.encode(&pngs[i]),
                "pixels": images.images[i * frame..(i + 1) * frame],
                "shape": [images.shape.channels, images.shape.height, images.shape.width],
                "label": prediction["top"][0]["label"],
                "score": prediction["top"][0]["score"],
            })
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).expect("json")).expect("write cases");

    let root = env!("CARGO_MANIFEST_DIR");
    let python =
        std::process::Command::new("bash").arg(format!("{root}/tests/clients/env.sh")).output().expect("env.sh");
    assert!(python.status.success(), "tests/clients/env.sh: {}", String::from_utf8_lossy(&python.stderr));
    let python = String::from_utf8(python.stdout).expect("a path").trim().to_owned();
    let script = format!("{root}/tests/clients/v2_clients.py");
    let (url, token) = (app.base_url.clone(), app.admin_token.clone());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args([&script, &url, &token, "oip", &version.to_string(), cases_path.to_str().expect("utf-8")])
            .output()
            .expect("python")
    });
    let output = run.await.expect("client run");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{stdout}");
    assert!(output.status.success(), "the V2 clients failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"), "{stdout}");

    // Their predictions were recorded like /v1's: eight through /v1, then five scored requests
    // of eight (three from tritonclient, two from the KServe SDK).
    let recorded = eventually(Duration::from_secs(10), "the V2 predictions to be recorded", || async {
        let n = app.count("SELECT count(*) FROM predictions WHERE model = 'oip' AND NOT shadow").await;
        (n >= 48).then_some(n)
    })
    .await;
    assert_eq!(recorded, 48);
}

async fn infer(app: &RunningApp, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
    let mut request = app.http.post(app.url(path)).bearer_auth(&app.admin_token).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    json_of(request.send().await.expect("infer")).await
}

/// What a bad request is, its extra headers, its body and the status it must get.
type Case = (&'static str, Vec<(&'static str, String)>, Vec<u8>, u16);

/// Hostile or malformed V2 requests: a clear 400/404 `{"error": ...}`, and nothing recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_v2_requests_get_the_protocols_errors_and_record_nothing() {
    let env = TestEnv::new().await;
    let app = inference_app(&env).await;
    let version = register_trained(&app, "strict", 63, 1).await;
    move_alias(&app, "strict", "production", version).await;
    let image = base64::engine::general_purpose::STANDARD.encode(png(&samples(1, 64), 0, 0));
    let json_body = |value: Value| serde_json::to_vec(&value).expect("json");
    let bytes_input =
        |shape: Value, data: Value| json!({"name": "image", "datatype": "BYTES", "shape": shape, "data": data});
    let cases: Vec<Case> = vec![
        ("not JSON", vec![], b"{".to_vec(), 400),
        ("no inputs", vec![], json_body(json!({"inputs": []})), 400),
        (
            "two inputs",
            vec![],
            json_body(
                json!({"inputs": [bytes_input(json!([1]), json!([image])), bytes_input(json!([1]), json!([image]))]}),
            ),
            400,
        ),
        (
            "shape and data disagree",
            vec![],
            json_body(json!({"inputs": [bytes_input(json!([2]), json!([image]))]})),
            400,
        ),
        ("negative shape", vec![], json_body(json!({"inputs": [bytes_input(json!([-1]), json!([image]))]})), 400),
        ("not base64", vec![], json_body(json!({"inputs": [bytes_input(json!([1]), json!(["%%%"]))]})), 400),
        (
            "not an image",
            vec![],
            json_body(
                json!({"inputs": [bytes_input(json!([1]), json!([base64::engine::general_purpose::STANDARD.encode(b"hello")]))]}),
            ),
            415,
        ),
        (
            "unknown datatype",
            vec![],
            json_body(json!({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]})),
            400,
        ),
        (
            "pixels out of range",
            vec![],
            json_body(
                json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 1, 2], "data": [0.5, 7.0]}]}),
            ),
            400,
        ),
        (
            "a shape far larger than the request",
            vec![],
            json_body(
                json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 1_000_000_000, 1_000_000_000],
                                         "data": [0.5]}]}),
            ),
            400,
        ),
        (
            "pixels of the right count in the wrong shape",
            vec![],
            json_body(json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 24, 72],
                                         "data": vec![0.5; 24 * 72]}]})),
            400,
        ),
        (
            "pixels of the wrong size",
            vec![],
            json_body(
                json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 1, 2], "data": [0.5, 0.5]}]}),
            ),
            400,
        ),
        (
            "binary size past the body",
            vec![("inference-header-content-length", "10000".into())],
            json_body(json!({"inputs": []})),
            400,
        ),
        (
            "an unknown output",
            vec![],
            json_body(json!({"inputs": [bytes_input(json!([1]), json!([image]))], "outputs": [{"name": "secrets"}]})),
            400,
        ),
        (
            "both a version and an alias",
            vec![],
            json_body(json!({"inputs": [bytes_input(json!([1]), json!([image]))], "parameters": {"alias": "staging"}})),
            400,
        ),
    ];
    for (what, headers, body, status) in cases {
        let path = if what == "both a version and an alias" {
            format!("/v2/models/strict/versions/{version}/infer")
        } else {
            "/v2/models/strict/infer".to_owned()
        };
        let (got, answer) = infer(&app, &path, &headers, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {answer}");
    }
    // Refused before the handler (the body limit, an unknown token): the protocol's shape too.
    let limit = app.ctx.config.inference.max_predict_bytes;
    let (got, answer) = infer(&app, "/v2/models/strict/infer", &[], vec![b' '; limit + 1]).await;
    assert_eq!(got, 413, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|m| m.contains("max_predict_bytes")), "{answer}");
    let stranger = app.http.post(app.url("/v2/models/strict/infer")).bearer_auth("slc_unknown").body("{}");
    let (got, answer) = json_of(stranger.send().await.expect("infer")).await;
    assert_eq!(got, 401, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    let binary = {
        let header = json_body(json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                  "parameters": {"binary_data_size": 8}}]}));
        let length = header.len();
        let mut body = header;
        body.extend(100u32.to_le_bytes());
        body.extend([0u8; 4]);
        (length, body)
    };
    let (status, answer) =
        infer(&app, "/v2/models/strict/infer", &[("inference-header-content-length", binary.0.to_string())], binary.1)
            .await;
    assert_eq!(status, 400, "an element longer than its data: {answer}");
    let (status, answer) = infer(
        &app,
        "/v2/models/missing/infer",
        &[],
        json_body(json!({"inputs": [bytes_input(json!([1]), json!([image]))]})),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    // No token: the answer comes before the body is read, even one that never ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    tx.send(Ok(bytes::Bytes::from_static(b"{\"inputs\": ["))).await.expect("a first chunk");
    let endless = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    let anonymous = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    let response = anonymous
        .post(app.url("/v2/models/strict/infer"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(endless))
        .send()
        .await
        .expect("an answer before the body ends");
    assert_eq!(response.status().as_u16(), 401);
    drop(tx);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.count("SELECT count(*) FROM predictions").await, 0, "nothing recorded");

    // And a good one, by alias, to show the same path serves.
    let good =
        json_body(json!({"inputs": [bytes_input(json!([1]), json!([image]))], "parameters": {"alias": "production"}}));
    let (status, answer) = infer(&app, "/v2/models/strict/infer", &[], good).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_version"], version.to_string());
    assert_eq!(answer["parameters"]["alias"], "production");
    // Last, since it refuses this address's valid tokens too for a while: the auth limiter
    // answers before any handler; after its burst of failures, 429 with
    // Retry-After, in the protocol's shape too.
    let mut throttled = None;
    for attempt in 0..64 {
        let request = app.http.post(app.url("/v2/models/strict/infer")).bearer_auth(format!("slc_wrong{attempt}"));
        let response = request.body("{}").send().await.expect("infer");
        if response.status().as_u16() == 429 {
            throttled = Some((response.headers().contains_key("retry-after"), json_of(response).await.1));
            break;
        }
    }
    let (retry_after, answer) = throttled.expect("throttled within 64 failures");
    assert!(retry_after, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
}
