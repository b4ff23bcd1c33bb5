//! `sluice bench predict`: prediction throughput and latency of the default 64×64 CNN, with and
//! without micro-batching, at several concurrencies, through `/v1` and (with micro-batching)
//! through the Open Inference Protocol's `/v2/.../infer`, plus the model-only time per image.
//!
//! The benchmark registers a model (`bench-cnn64` unless `--model` names an existing one), then
//! starts an in-process inference server on an ephemeral port for each batching setting, so
//! both settings are measured on the same machine in the same run. Client and server share the
//! machine's cores, as they do in the figures reported.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use sha2::{Digest, Sha256};
use sluice_core::{
    Config, Context, Shutdown,
    models::{self, AliasName, Lineage, ModelName, NewVersion},
    pipeline::PipelineSpec,
    reference::Reference,
    training::artifact_key,
};
use sluice_nn::{
    Architecture, Hyper, Network, Session, SessionSpec,
    synthetic::{self, SyntheticSpec},
};

use crate::{Application, Service, bench::Stats};

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: Option<String>,
    pub concurrencies: Vec<usize>,
    pub requests: usize,
    pub max_batch: usize,
}

const CLASSES: usize = 10;

/// Trains the benchmark network for one short epoch (speed does not depend on the weights) and
/// registers it as the next version of `bench-cnn64`, moved to `production`.
async fn register_bench_model(ctx: &Context) -> anyhow::Result<String> {
    let name = "bench-cnn64";
    let spec = PipelineSpec::default();
    let shape = synthetic::generate(&SyntheticSpec::rgb(64, CLASSES, 1, 0))?.shape;
    let hyper = Hyper { epochs: 1, batch_size: 64, ..Hyper::default() };
    let session_spec = SessionSpec { architecture: Architecture::Cnn, shape, classes: CLASSES, hyper, seed: 1 };
    let (artifact, reference) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let train = synthetic::generate(&SyntheticSpec::rgb(64, CLASSES, 256, 1))?;
        let val = synthetic::generate(&SyntheticSpec::rgb(64, CLASSES, 128, 2))?;
        let mut session = Session::new(session_spec)?;
        session.run_epoch(&train, &val)?;
        let evaluation = session.evaluate_best(&val)?;
        let mut reference = Reference::compute(&val.images, 3, &val.labels, &evaluation.logits, CLASSES);
        let (logits, embeddings) = session.scores_best(&val)?;
        reference.add_embeddings(&logits, &embeddings);
        reference.add_embedding_sample(&logits, &embeddings);
        Ok((session.export_best()?, reference))
    })
    .await??;
    let (job_id, trial_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let key = artifact_key(name, job_id, trial_id, &hex::encode(Sha256::digest(&artifact)));
    sluice_core::s3::put_bytes(&ctx.s3, &ctx.config.s3.bucket, &key, artifact.clone(), "application/octet-stream")
        .await?;
    let version = NewVersion {
        model: ModelName::parse(name).expect("a valid name"),
        artifact_key: key,
        sha256: hex::encode(Sha256::digest(&artifact)),
        size_bytes: artifact.len() as i64,
        architecture: Architecture::Cnn.to_string(),
        input_spec: spec.clone(),
        labels: synthetic::labels(CLASSES),
        hyperparameters: serde_json::json!({"note": "benchmark weights, one epoch"}),
        metrics: serde_json::json!({}),
        reference: serde_json::to_value(&reference)?,
        lineage: Lineage {
            job_id,
            trial_id,
            snapshot_id: "benchmark".into(),
            dataset: "benchmark".into(),
            spec_hash: spec.hash(),
            sluice_version: env!("CARGO_PKG_VERSION").into(),
        },
    };
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let registered = models::register(&tx, &ctx.config.kafka.topic_prefix, &version).await?;
    let production = AliasName::parse(AliasName::PRODUCTION).expect("a valid alias");
    models::move_alias(
        &tx,
        &ctx.config.kafka.topic_prefix,
        &version.model,
        &production,
        registered.version,
        "bench",
        "sluice bench predict",
    )
    .await?;
    tx.commit().await?;
    Ok(name.to_owned())
}

/// A 64×64 PNG of a synthetic shape: what the model was trained on.
fn request_body() -> anyhow::Result<Vec<u8>> {
    let samples = synthetic::generate(&SyntheticSpec::rgb(64, CLASSES, 1, 3))?;
    sluice_media::png_from_chw(&samples.images, 64, 64).context("image size")
}

/// The same image as an Open Inference Protocol (V2) request: a JSON header and the image as a
/// binary BYTES element; the answer's labels in JSON. Returns the body and the header's length.
fn v2_request_body(image: &[u8]) -> (Vec<u8>, usize) {
    let header = serde_json::json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": image.len() + 4}}],
        "outputs": [{"name": "labels"}, {"name": "prediction_ids"}],
    });
    let mut body = serde_json::to_vec(&header).expect("JSON");
    let length = body.len();
    body.extend((image.len() as u32).to_le_bytes());
    body.extend(image);
    (body, length)
}

/// One kind of request to time: where it goes and what it sends.
struct Request<'a> {
    url: String,
    body: &'a [u8],
    /// The V2 binary extension's header length, for V2 requests.
    header_length: Option<usize>,
}

/// Runs `requests` predictions at `concurrency`.
async fn phase(name: &'static str, request: &Request<'_>, token: &str, concurrency: usize, requests: usize) -> Stats {
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("HTTP client");
    let body = bytes::Bytes::copy_from_slice(request.body);
    let (url, header_length) = (request.url.as_str(), request.header_length);
    let started = Instant::now();
    let results: Vec<Result<Duration, String>> = stream::iter(0..requests)
        .map(|_| {
            let (http, body) = (http.clone(), body.clone());
            async move {
                let sent = Instant::now();
                let mut post = http.post(url).bearer_auth(token).body(body);
                if let Some(length) = header_length {
                    post = post
                        .header("inference-header-content-length", length)
                        .header("content-type", "application/octet-stream");
                }
                let response = post.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let _ = response.bytes().await;
                if status.is_success() { Ok(sent.elapsed()) } else { Err(format!("HTTP {status}")) }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Stats::from(name, results, started.elapsed())
}

/// Measures everything; returns printable lines.
pub async fn predict(config: &Config, options: &Options) -> anyhow::Result<Vec<String>> {
    let ctx = Context::new(config.clone()).await?;
    ctx.bootstrap().await?;
    let model = match &options.model {
        Some(model) => model.clone(),
        None => register_bench_model(&ctx).await?,
    };
    let token = sluice_core::auth::create_token(&ctx.db, "bench", &[sluice_core::auth::Scope::Predict]).await?;
    let body = request_body()?;
    let (v2_body, v2_header) = v2_request_body(&body);
    let mut lines = Vec::new();

    // Model-only time per image, at batch 1 and at the configured batch size.
    let name = ModelName::parse(&model)?;
    let production = AliasName::parse(AliasName::PRODUCTION).expect("a valid alias");
    let record =
        models::resolve_alias(&ctx.db.get().await?, &name, &production).await?.context("no production version")?;
    let bytes = models::load_artifact(&ctx.s3, &ctx.config.s3.bucket, &record).await?;
    let network = Arc::new(Network::load(&bytes)?);
    let pixels = sluice_media::prepare(&body, &record.input_spec, 50_000_000)?;
    for batch in [1usize, options.max_batch] {
        let network = network.clone();
        let images: Vec<u8> = pixels.iter().copied().cycle().take(pixels.len() * batch).collect();
        let per_image = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
            network.logits(&images, batch)?;
            let rounds = (512 / batch).max(8);
            let started = Instant::now();
            for _ in 0..rounds {
                network.logits(&images, batch)?;
            }
            Ok(started.elapsed().as_secs_f64() / (rounds * batch) as f64)
        })
        .await??;
        lines.push(format!("model only, batch {batch:>3}: {:.3} ms per image", per_image * 1000.0));
    }

    for (label, max_batch) in [("micro-batching", options.max_batch), ("no batching", 1)] {
        let mut server_config = config.clone();
        server_config.http.addr = "127.0.0.1:0".parse().expect("an address");
        server_config.inference.max_batch = max_batch;
        let app = Application::build(server_config, &[Service::Inference]).await?;
        let v1 = Request {
            url: format!("http://{}/v1/models/{model}/predict", app.local_addr()),
            body: &body,
            header_length: None,
        };
        let v2 = Request {
            url: format!("http://{}/v2/models/{model}/infer", app.local_addr()),
            body: &v2_body,
            header_length: Some(v2_header),
        };
        let shutdown = Shutdown::new();
        let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        // Warm up: loads the version and fills connection pools.
        phase("warm-up", &v1, &token, 8, 200).await;
        for &concurrency in &options.concurrencies {
            let stats = phase("predict", &v1, &token, concurrency, options.requests).await;
            lines.push(format!("{label:<15} /v1 concurrency {concurrency:>3}: {stats}"));
            if max_batch > 1 {
                // The Open Inference Protocol on the same server: what the protocol costs.
                let stats = phase("infer", &v2, &token, concurrency, options.requests).await;
                lines.push(format!("{label:<15} /v2 concurrency {concurrency:>3}: {stats}"));
            }
        }
        shutdown.cancel();
        let _ = server.await;
    }
    Ok(lines)
}
