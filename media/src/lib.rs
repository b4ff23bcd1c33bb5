//! Image decoding and resizing shared by preprocess (which stores the result as PNG training
//! data) and inference (which feeds it to the model): both run [`imaging::decode`] then
//! [`imaging::resize`] under the same pipeline spec, so serving sees the training pixels.

pub mod imaging;
pub mod jpeg;

pub use imaging::{ImageError, Pixels};

/// Declares the image-stage histogram (call once per process that decodes images).
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "sluice_image_stage_duration_seconds",
        metrics::Unit::Seconds,
        "Time per image stage (decode, resize, encode), in whichever service runs it."
    );
    metrics::describe_counter!(
        "sluice_image_decoder_crashes_total",
        "Images whose decoding panicked (a decoder bug reached by the input); each became an error."
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

/// The inverse of [`to_chw`] for colour: three `u8` planes of `width`×`height` as an RGB image;
/// `None` when the length does not match.
pub fn rgb_from_chw(chw: &[u8], width: u32, height: u32) -> Option<image::RgbImage> {
    let plane = (width * height) as usize;
    if chw.len() != 3 * plane {
        return None;
    }
    let interleaved = (0..plane).flat_map(|p| [chw[p], chw[plane + p], chw[2 * plane + p]]).collect();
    image::RgbImage::from_raw(width, height, interleaved)
}

/// Three `u8` planes as PNG bytes (synthetic datasets, tests, benchmarks).
pub fn png_from_chw(chw: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    rgb_from_chw(chw, width, height).map(|image| imaging::encode_png(&Pixels::Rgb(image)))
}

/// Decodes and resizes one image for a model trained under `spec`: `u8` CHW at the spec's size.
/// Runs inside [`imaging::contained`]: a decoder panic is an error.
pub fn prepare(
    bytes: &[u8],
    spec: &sluice_core::pipeline::PipelineSpec,
    max_pixels: u64,
) -> Result<Vec<u8>, ImageError> {
    imaging::contained(|| {
        let decoded = imaging::decode(bytes, spec, max_pixels)?;
        Ok(to_chw(&imaging::resize(&decoded, spec)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_planes_round_trip_through_an_rgb_image() {
        let chw: Vec<u8> = (0..3 * 4 * 2).map(|v| v as u8).collect();
        let image = rgb_from_chw(&chw, 4, 2).expect("matching length");
        assert_eq!(image.get_pixel(1, 0).0, [1, 9, 17]);
        assert_eq!(to_chw(&Pixels::Rgb(image)), chw);
        assert!(rgb_from_chw(&chw[1..], 4, 2).is_none());
        let png = png_from_chw(&chw, 4, 2).expect("an image");
        assert_eq!(image::load_from_memory(&png).expect("png").to_rgb8().into_raw()[..3], [0, 8, 16]);
    }
}
