//! Videos (and animated GIFs): `ffmpeg` as a subprocess, never in-process. Input from a temp
//! file, frames out through a pipe as raw pixels already sampled, scaled and cropped by ffmpeg,
//! under a wall-clock timeout and an address-space limit; stderr becomes the failure reason.
//! ffmpeg may open only files and pipes (a playlist naming `http://` or `concat:` is refused),
//! its demuxer is the one the sniffed type names (never probed from hostile bytes), and what it
//! writes back is bounded: the frames asked for, and the last lines of its log.

use std::{collections::VecDeque, path::Path, process::Stdio, time::Duration};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use sluice_core::pipeline::{Color, Fit, PipelineSpec};
use tokio::process::Command;

use crate::imaging::{Pixels, encode_png};

/// Why frames could not be extracted. A failed spawn is retried; a timeout beside other items is
/// retried once, alone (a busy worker slows ffmpeg down); the rest are poison.
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

/// The ffmpeg demuxer for a sniffed content type; `None` for types ffmpeg is never given.
pub fn demuxer(content_type: &str) -> Option<&'static str> {
    match content_type {
        "video/mp4" | "video/quicktime" => Some("mov"),
        "video/webm" | "video/x-matroska" => Some("matroska"),
        "video/x-msvideo" => Some("avi"),
        "image/gif" => Some("gif"),
        _ => None,
    }
}

/// Log lines kept for the failure reason; longer lines are cut.
const KEPT_LOG_LINES: usize = 8;
const MAX_LOG_LINE: usize = 4096;

/// Extracts the spec's frames from `input`, read with the `demuxer` the sniffed type names.
pub async fn extract(
    input: &Path,
    demuxer: &str,
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
        .args(["-protocol_whitelist", "file,pipe", "-f", demuxer])
        .arg("-i")
        .arg(input)
        .args(["-an", "-sn", "-vf", &filter(spec), "-fps_mode", "vfr"])
        .args(["-frames:v", &spec.video.max_frames.to_string(), "-f", "rawvideo", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| VideoError::Spawn(e.to_string()))?;
    let channels = match spec.color {
        Color::Rgb => 3,
        Color::Gray => 1,
    };
    let frame_len = (spec.width * spec.height) as usize * channels;
    let stdout = child.stdout.take().ok_or_else(|| VideoError::Spawn("no stdout pipe".into()))?;
    let stderr = child.stderr.take().ok_or_else(|| VideoError::Spawn("no stderr pipe".into()))?;
    // At most the frames asked for; anything beyond is never read into memory.
    let max_stdout = frame_len * spec.video.max_frames as usize;
    let run = async {
        let (frames, log, status) = tokio::join!(
            read_bounded(stdout, max_stdout),
            read_log(stderr, spec.video.max_frames as usize),
            child.wait()
        );
        (frames, log, status)
    };
    let (stdout, (timestamps, last_lines), status) = tokio::time::timeout(Duration::from_millis(timeout_ms), run)
        .await
        .map_err(|_| VideoError::Timeout(timeout_ms))?;
    let status = status.map_err(|e| VideoError::Spawn(e.to_string()))?;
    let stdout = stdout.map_err(|e| VideoError::Ffmpeg(format!("reading frames: {e}")))?;
    if !status.success() {
        let reason: Vec<&str> = last_lines.iter().map(String::as_str).collect();
        // prlimit could not run ffmpeg (not installed, not executable): the machine's fault,
        // retried like a failed spawn, never the video's. (127 alone is not enough: the loader
        // exits 127 too when the memory cap leaves it no room, which is the video's doing.)
        if matches!(status.code(), Some(126 | 127)) && reason.iter().any(|line| line.contains("failed to execute")) {
            return Err(VideoError::Spawn(format!("ffmpeg could not be started ({status}): {}", reason.join(" | "))));
        }
        return Err(VideoError::Ffmpeg(format!("exit {status}: {}", reason.join(" | "))));
    }
    let output = Output { stdout };
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

/// Frames read back from ffmpeg.
struct Output {
    stdout: Vec<u8>,
}

/// Reads `reader` to its end, keeping at most `max` bytes (the rest is read and dropped, so the
/// child never blocks on a full pipe).
async fn read_bounded(mut reader: impl AsyncRead + Unpin, max: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Reads ffmpeg's log: the `showinfo` timestamps of the first `max_frames` frames, and the last
/// few other lines (the failure reason). Memory is bounded whatever ffmpeg writes.
async fn read_log(reader: impl AsyncRead + Unpin, max_frames: usize) -> (Vec<i64>, VecDeque<String>) {
    let mut reader = BufReader::new(reader);
    let mut timestamps = Vec::new();
    let mut last = VecDeque::with_capacity(KEPT_LOG_LINES);
    let mut line = Vec::with_capacity(MAX_LOG_LINE);
    let take_line = |line: &[u8], timestamps: &mut Vec<i64>, last: &mut VecDeque<String>| {
        let text = String::from_utf8_lossy(line);
        if text.contains("showinfo") {
            if timestamps.len() < max_frames
                && let Some(t) =
                    text.split("pts_time:").nth(1).and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
            {
                timestamps.push((t * 1000.0).round() as i64);
            }
        } else if !text.trim().is_empty() {
            if last.len() == KEPT_LOG_LINES {
                last.pop_front();
            }
            last.push_back(text.trim().to_owned());
        }
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => break,
        };
        let (used, ends) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        // Lines are cut at MAX_LOG_LINE bytes; the rest of an overlong line is dropped.
        let room = MAX_LOG_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..used.min(room)]);
        reader.consume(used);
        if ends {
            take_line(&line, &mut timestamps, &mut last);
            line.clear();
        }
    }
    if !line.is_empty() {
        take_line(&line, &mut timestamps, &mut last);
    }
    (timestamps, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sniffed_video_types_get_a_demuxer() {
        assert_eq!(demuxer("video/mp4"), Some("mov"));
        assert_eq!(demuxer("video/x-matroska"), Some("matroska"));
        assert_eq!(demuxer("image/gif"), Some("gif"));
        assert_eq!(demuxer("application/vnd.apple.mpegurl"), None);
        assert_eq!(demuxer("image/png"), None);
    }

    #[tokio::test]
    async fn a_flood_of_log_output_keeps_the_timestamps_asked_for_and_the_last_lines() {
        let mut log = Vec::new();
        for i in 0..10_000 {
            log.extend_from_slice(format!("[Parsed_showinfo_2] n:{i} pts_time:{}.5 fmt:rgb24\n", i).as_bytes());
        }
        log.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        log.extend_from_slice(b"\nError opening input: boom\n");
        let (timestamps, last) = read_log(log.as_slice(), 3).await;
        assert_eq!(timestamps, [500, 1500, 2500]);
        assert!(last.len() <= KEPT_LOG_LINES && last.iter().all(|l| l.len() <= MAX_LOG_LINE));
        assert_eq!(last.back().map(String::as_str), Some("Error opening input: boom"));
        let kept = read_bounded(vec![7u8; 1_000_000].as_slice(), 1000).await.expect("read");
        assert_eq!(kept.len(), 1000);
    }
}
