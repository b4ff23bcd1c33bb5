//! `sluice bench ingest`: a load generator for the upload path, measured next to the raw PUT
//! rate of the same S3 server for the same objects, in the same run.

use std::{
    io::Cursor,
    time::{Duration, Instant},
};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{StreamExt, stream};
use rand::RngCore;
use sluice_core::{Config, s3};

/// Options of one benchmark run.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub token: String,
    pub concurrency: usize,
    pub requests: usize,
    pub size: usize,
}

/// Latency and throughput of one phase.
#[derive(Debug)]
pub struct Stats {
    pub name: &'static str,
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub first_error: Option<String>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn from(name: &'static str, results: Vec<Result<Duration, String>>, elapsed: Duration) -> Self {
        let mut latencies: Vec<Duration> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        latencies.sort_unstable();
        let pick = |q: f64| {
            latencies.get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
        };
        let first_error = results.iter().find_map(|r| r.as_ref().err().cloned());
        Self {
            name,
            ok: latencies.len(),
            errors: results.len() - latencies.len(),
            elapsed,
            p50: pick(0.50),
            p99: pick(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            first_error,
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{:<14} {:>8.1} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ok {}  errors {}",
            self.name,
            self.rate(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.ok,
            self.errors
        )?;
        if let Some(err) = &self.first_error {
            write!(f, "  (first error: {err})")?;
        }
        Ok(())
    }
}

/// A valid JPEG of exactly `size` bytes whose bulk is random (a comment segment), so every body
/// is unique and incompressible, as the benchmark's contract asks.
pub fn unique_jpeg(base: &[u8], size: usize) -> Vec<u8> {
    let fill = size.saturating_sub(base.len() + 4).min(65_533);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&base[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((fill + 2) as u16).to_be_bytes());
    let start = out.len();
    out.resize(start + fill, 0);
    rand::rng().fill_bytes(&mut out[start..]);
    out.extend_from_slice(&base[2..]);
    out
}

fn base_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).expect("encode JPEG");
    out.into_inner()
}

async fn timed<F: Future<Output = Result<(), String>>>(f: F) -> Result<Duration, String> {
    let started = Instant::now();
    f.await.map(|()| started.elapsed())
}

/// Runs the raw S3 PUT phase, then the ingest phase, over the same bodies.
pub async fn ingest(config: &Config, options: &Options) -> anyhow::Result<(Stats, Stats)> {
    let base = base_jpeg();
    let bodies: Vec<Bytes> = (0..options.requests).map(|_| Bytes::from(unique_jpeg(&base, options.size))).collect();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let client = s3::client(&config.s3).await;
    let bucket = config.s3.bucket.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(options.concurrency).build()?;

    // Raw PUTs of the same bodies, same concurrency.
    let started = Instant::now();
    let results: Vec<_> = stream::iter(bodies.iter().enumerate())
        .map(|(i, body)| {
            let client = client.clone();
            let (bucket, key) = (bucket.clone(), format!("bench/{run}/{i}.jpg"));
            let body = body.clone();
            timed(async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type("image/jpeg")
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| s3::S3Error::from_sdk("PutObject", e).to_string())
            })
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let raw = Stats::from("s3 put (raw)", results, started.elapsed());

    // The same bodies through the ingest API.
    let url = format!("{}/v1/media?dataset=bench-{run}", options.url.trim_end_matches('/'));
    let started = Instant::now();
    let results: Vec<_> = stream::iter(bodies.iter())
        .map(|body| {
            let http = http.clone();
            let (url, token, body) = (url.clone(), options.token.clone(), body.clone());
            timed(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "image/jpeg")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                match response.status().as_u16() {
                    202 => Ok(()),
                    status => Err(format!("HTTP {status}: {}", response.text().await.unwrap_or_default())),
                }
            })
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let ingest = Stats::from("ingest POST", results, started.elapsed());

    for i in 0..options.requests {
        let _ = client.delete_object().bucket(&bucket).key(format!("bench/{run}/{i}.jpg")).send().await;
    }
    Ok((raw, ingest))
}
