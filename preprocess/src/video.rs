//! Videos (and animated GIFs): `ffmpeg` as a subprocess, never in-process. Input from a temp
//! file, frames out through a pipe as raw pixels already sampled, scaled and cropped by ffmpeg,
//! under a wall-clock timeout and an address-space limit; stderr becomes the failure reason.

use std::{path::Path, process::Stdio, time::Duration};

use sluice_core::pipeline::{Color, Fit, PipelineSpec};
use tokio::process::Command;

use crate::imaging::{Pixels, encode_png};

/// Why frames could not be extracted. All of these are poison: retrying changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("ffmpeg could not be started: {0}")]
    Spawn(String),
    #[error("ffmpeg ran past its {0} ms timeout and was killed")]
    Timeout(u64),
    #[error("ffmpeg failed: {0}")]
    Ffmpeg(String),
    #[error("the video has no decodable frames")]
    NoFrames,
}

/// One sampled frame, encoded.
#[derive(Debug)]
pub struct Frame {
    pub index: u32,
    pub timestamp_ms: i64,
    pub png: Vec<u8>,
}

fn filter(spec: &PipelineSpec) -> String {
    let (w, h) = (spec.width, spec.height);
    let scale = match spec.fit {
        Fit::Cover => format!("scale={w}:{h}:force_original_aspect_ratio=increase:flags=lanczos,crop={w}:{h}"),
        Fit::Contain => {
            format!("scale={w}:{h}:force_original_aspect_ratio=decrease:flags=lanczos,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2")
        }
        Fit::Fill => format!("scale={w}:{h}:flags=lanczos"),
    };
    let pixel = match spec.color {
        Color::Rgb => "rgb24",
        Color::Gray => "gray",
    };
    let sampling = if spec.video.keyframes { String::new() } else { format!("fps={},", spec.video.fps) };
    format!("{sampling}{scale},format={pixel},showinfo")
}

/// Extracts the spec's frames from `input`.
pub async fn extract(
    input: &Path,
    spec: &PipelineSpec,
    timeout_ms: u64,
    memory_mib: u64,
) -> Result<Vec<Frame>, VideoError> {
    let mut command = if sluice_core::tools::find("prlimit").is_some() {
        let mut c = Command::new("prlimit");
        c.arg(format!("--as={}", memory_mib * 1024 * 1024)).arg("--").arg("ffmpeg");
        c
    } else {
        Command::new("ffmpeg")
    };
    command.args(["-nostdin", "-hide_banner", "-loglevel", "info"]);
    if spec.video.keyframes {
        command.args(["-skip_frame", "nokey"]);
    }
    command
        .arg("-i")
        .arg(input)
        .args(["-an", "-sn", "-vf", &filter(spec), "-fps_mode", "vfr"])
        .args(["-frames:v", &spec.video.max_frames.to_string(), "-f", "rawvideo", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| VideoError::Spawn(e.to_string()))?;
    let output = tokio::time::timeout(Duration::from_millis(timeout_ms), child.wait_with_output())
        .await
        .map_err(|_| VideoError::Timeout(timeout_ms))?
        .map_err(|e| VideoError::Spawn(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let reason: Vec<&str> =
            stderr.lines().filter(|l| !l.contains("showinfo") && !l.trim().is_empty()).rev().take(3).collect();
        let reason: Vec<&str> = reason.into_iter().rev().collect();
        return Err(VideoError::Ffmpeg(format!("exit {}: {}", output.status, reason.join(" | "))));
    }
    let timestamps: Vec<i64> = stderr
        .lines()
        .filter(|l| l.contains("showinfo") && l.contains("pts_time:"))
        .filter_map(|l| l.split("pts_time:").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .map(|t| (t * 1000.0).round() as i64)
        .collect();
    let channels = match spec.color {
        Color::Rgb => 3,
        Color::Gray => 1,
    };
    let frame_len = (spec.width * spec.height) as usize * channels;
    let (width, height, fps, color) = (spec.width, spec.height, spec.video.fps, spec.color);
    // PNG encoding is CPU work: off the async runtime.
    let frames = tokio::task::spawn_blocking(move || {
        output
            .stdout
            .chunks_exact(frame_len)
            .enumerate()
            .map(|(i, raw)| {
                let pixels = match color {
                    Color::Rgb => {
                        Pixels::Rgb(image::RgbImage::from_raw(width, height, raw.to_vec()).expect("frame size"))
                    }
                    Color::Gray => {
                        Pixels::Gray(image::GrayImage::from_raw(width, height, raw.to_vec()).expect("frame size"))
                    }
                };
                let fallback = (i as f64 * 1000.0 / fps).round() as i64;
                Frame {
                    index: i as u32,
                    timestamp_ms: timestamps.get(i).copied().unwrap_or(fallback),
                    png: encode_png(&pixels),
                }
            })
            .collect::<Vec<Frame>>()
    })
    .await
    .map_err(|e| VideoError::Ffmpeg(format!("frame encoding crashed: {e}")))?;
    if frames.is_empty() {
        return Err(VideoError::NoFrames);
    }
    metrics::counter!("sluice_preprocess_frames_extracted_total").increment(frames.len() as u64);
    Ok(frames)
}
