//! Image decoding and resizing shared by preprocess (which stores the result as PNG training
//! data) and inference (which feeds it to the model): both run [`imaging::decode`] then
//! [`imaging::resize`] under the same pipeline spec, so serving sees the training pixels.

pub mod imaging;

pub use imaging::{ImageError, Pixels};

/// Declares the image-stage histogram (call once per process that decodes images).
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "sluice_image_stage_duration_seconds",
        metrics::Unit::Seconds,
        "Time per image stage (decode, resize, encode), in whichever service runs it."
    );
}

/// The pixels as `u8` CHW planes (channels, then rows), the layout the networks take.
pub fn to_chw(pixels: &Pixels) -> Vec<u8> {
    match pixels {
        Pixels::Gray(image) => image.as_raw().clone(),
        Pixels::Rgb(image) => {
            let plane = (image.width() * image.height()) as usize;
            let mut chw = vec![0u8; 3 * plane];
            for (i, pixel) in image.pixels().enumerate() {
                chw[i] = pixel[0];
                chw[plane + i] = pixel[1];
                chw[2 * plane + i] = pixel[2];
            }
            chw
        }
    }
}

/// Decodes and resizes one image for a model trained under `spec`: `u8` CHW at the spec's size.
pub fn prepare(
    bytes: &[u8],
    spec: &sluice_core::pipeline::PipelineSpec,
    max_pixels: u64,
) -> Result<Vec<u8>, ImageError> {
    let decoded = imaging::decode(bytes, spec, max_pixels)?;
    Ok(to_chw(&imaging::resize(&decoded, spec)?))
}
