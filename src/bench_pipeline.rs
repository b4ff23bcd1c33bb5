//! `sluice bench pipeline`: accepted-to-processed throughput of ingest and preprocess together,
//! next to the pure decode+resize rate of the same images on the same machine, in one run.
//!
//! It makes `images` distinct photo-like JPEGs (`width`×`height`: smooth gradients and shapes,
//! not noise), times `sluice_media::imaging::process` on them in one thread (what preprocess
//! does per item, without S3, PostgreSQL or Kafka), then starts an in-process ingest + preprocess
//! on an ephemeral port, uploads them all at `concurrency`, and waits until every item is
//! `processed`. The end-to-end rate is items over the time from the first upload to the last
//! item processed.

use std::{io::Cursor, time::Instant};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use sluice_core::{Config, Context, Shutdown, pipeline::PipelineSpec, uploads::MediaStatus};

use crate::{Application, Service};

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Options {
    pub images: usize,
    pub width: u32,
    pub height: u32,
    pub concurrency: usize,
}

/// A photo-like JPEG: gradients and a few discs, different for every `seed`.
pub fn photo(width: u32, height: u32, seed: u64) -> anyhow::Result<Vec<u8>> {
    let s = seed as f64;
    let discs: Vec<(f64, f64, f64, [u8; 3])> = (0..6)
        .map(|i| {
            let f = (s * 7.3 + f64::from(i) * 13.1).sin().abs();
            let g = (s * 3.7 + f64::from(i) * 5.9).cos().abs();
            let colour = [(f * 255.0) as u8, (g * 255.0) as u8, ((f + g) * 120.0) as u8];
            (f * f64::from(width), g * f64::from(height), 40.0 + 200.0 * f * g, colour)
        })
        .collect();
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (f64::from(x), f64::from(y));
        for &(cx, cy, r, colour) in &discs {
            if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                return image::Rgb(colour);
            }
        }
        let shade = ((fx / f64::from(width) * 200.0 + s * 10.0) % 256.0) as u8;
        image::Rgb([shade, (fy / f64::from(height) * 255.0) as u8, 128u8.wrapping_add(seed as u8)])
    });
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&image)?;
    Ok(out.into_inner())
}

/// Measures both; returns printable lines.
pub async fn pipeline(config: &Config, options: &Options) -> anyhow::Result<Vec<String>> {
    let images: Vec<Vec<u8>> = (0..options.images as u64)
        .map(|seed| photo(options.width, options.height, seed))
        .collect::<anyhow::Result<_>>()?;
    let mean_bytes = images.iter().map(Vec::len).sum::<usize>() / images.len().max(1);
    let mut lines = vec![format!(
        "{} JPEGs of {}x{}, {} bytes on average",
        images.len(),
        options.width,
        options.height,
        mean_bytes
    )];

    // Decode + resize + encode alone, one thread, the default spec (64x64 PNG).
    let spec = PipelineSpec::default();
    let max_pixels = config.ingest.max_image_pixels;
    let pure = {
        let (images, spec) = (images.clone(), spec.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
            let started = Instant::now();
            for image in &images {
                sluice_media::imaging::process(image, &spec, max_pixels)?;
            }
            Ok(images.len() as f64 / started.elapsed().as_secs_f64())
        })
        .await??
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    lines.push(format!(
        "decode+resize alone: {pure:.1} images/s on one core ({:.1} on {cores} cores at that rate)",
        pure * cores as f64
    ));

    // The same images through ingest and preprocess.
    let mut server_config = config.clone();
    server_config.http.addr = "127.0.0.1:0".parse().expect("an address");
    let app = Application::build(server_config, &[Service::Ingest, Service::Preprocess]).await?;
    let base = format!("http://{}", app.local_addr());
    let ctx: Context = app.context().clone();
    let token = sluice_core::auth::create_token(&ctx.db, "bench", &[sluice_core::auth::Scope::Ingest]).await?;
    let dataset = format!("bench-pipeline-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::builder().pool_max_idle_per_host(options.concurrency).build()?;
    let url = format!("{base}/v1/media?dataset={dataset}");
    let started = Instant::now();
    let uploads: Vec<anyhow::Result<()>> = stream::iter(images)
        .map(|body| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                let response =
                    http.post(url).bearer_auth(token).header("content-type", "image/jpeg").body(body).send().await?;
                anyhow::ensure!(response.status().is_success(), "upload answered {}", response.status());
                Ok(())
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    uploads.into_iter().collect::<anyhow::Result<Vec<()>>>().context("uploading")?;
    let uploaded = started.elapsed();
    let client = ctx.db.get().await?;
    let deadline = started + std::time::Duration::from_secs(600);
    loop {
        let counts = sluice_core::processed::status_counts(&client, &dataset).await?;
        let count = |status| counts.get(&status).copied().unwrap_or(0);
        let (processed, failed) = (count(MediaStatus::Processed), count(MediaStatus::Failed));
        anyhow::ensure!(failed == 0, "{failed} items failed preprocessing");
        if processed as usize >= options.images {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {processed} of {} processed in 10 minutes", options.images);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = options.images as f64 / elapsed;
    lines.push(format!(
        "uploaded in {:.2} s (concurrency {}); all processed after {elapsed:.2} s",
        uploaded.as_secs_f64(),
        options.concurrency
    ));
    lines.push(format!(
        "end to end: {rate:.1} items/s = {:.2} of decode+resize alone on {cores} cores",
        rate / (pure * cores as f64)
    ));
    shutdown.cancel();
    let _ = server.await;
    Ok(lines)
}
