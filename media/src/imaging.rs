//! Images: decode with explicit limits, honour EXIF orientation, convert colour types, resize
//! with a quality filter (SIMD, `fast_image_resize`), encode PNG. Pure CPU work: callers run it
//! on the blocking pool.
//!
//! Every decode runs under a memory budget derived from the pixel limit ([`limits`]) and inside
//! a panic boundary ([`contained`]), so a hostile file or a decoder bug becomes an
//! [`ImageError`] (a 422, a failed item with a reason), never a 500 or a dead process.

use std::{
    io::Cursor,
    panic::{AssertUnwindSafe, catch_unwind},
    time::Instant,
};

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{
    DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits, RgbImage,
    codecs::png::{CompressionType, PngEncoder},
};
use sluice_core::{
    pipeline::{Color, Fit, OversizeImage, PipelineSpec, check_image_size},
    tiff::{self, Ifd},
};

use crate::jpeg::{Jpeg, JpegError};

/// Why an image can never be processed (a poison input).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot decode the image: {0}")]
    Decode(String),
    #[error("cannot resize the image: {0}")]
    Resize(String),
    /// The header claims more pixels than allowed (a decompression bomb), or a side longer than
    /// [`sluice_core::pipeline::MAX_IMAGE_SIDE`]: nothing was decoded.
    #[error(transparent)]
    Oversize(#[from] OversizeImage),
    /// A TIFF whose data is JPEG-compressed: each tile or strip embeds a JPEG of any size, so its
    /// decoding is not bounded by the image's pixels. Nothing was decoded.
    #[error("JPEG-compressed TIFF is not supported")]
    JpegInTiff,
    /// A progressive JPEG with more scans than any encoder writes (a CPU bomb): nothing decoded.
    #[error("the JPEG has more than {limit} scans")]
    TooManyScans { limit: usize },
    /// A decoder panicked on this file (a decoder bug that the input reached). The panic was
    /// contained; `detail` is its message, for logs rather than for the client.
    #[error("the decoder failed on this file")]
    DecoderCrashed { detail: String },
}

/// Runs `work` inside a panic boundary: a panic (a decoder bug reached by crafted input) becomes
/// [`ImageError::DecoderCrashed`] instead of unwinding into the caller's thread. Nothing `work`
/// touched is used after a panic (its inputs are only read, its outputs are dropped), so
/// asserting unwind safety is sound.
pub fn contained<T>(work: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|message| (*message).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        metrics::counter!("sluice_image_decoder_crashes_total").increment(1);
        Err(ImageError::DecoderCrashed { detail })
    })
}

/// The memory budget of image-rs decoders for `max_pixels`: no side longer than the pixel limit
/// and no allocation over 8 bytes a pixel (RGBA with 16-bit samples, the widest output), so a
/// decompression bomb (a header claiming huge dimensions, a GIF frame larger than its screen, a
/// TIFF strip or PNG chunk larger than the image) fails before allocating.
pub fn limits(max_pixels: u64) -> Limits {
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(MIN_ALLOC));
    limits
}

/// The smallest allocation budget, whatever the pixel limit: decoders need some working memory
/// of their own (PNG's inflate window, TIFF's strip buffers) even for small images.
const MIN_ALLOC: u64 = 64 * 1024 * 1024;

impl From<JpegError> for ImageError {
    fn from(err: JpegError) -> Self {
        match err {
            JpegError::TooManyScans { limit } => ImageError::TooManyScans { limit },
            other => ImageError::Decode(other.to_string()),
        }
    }
}

/// A decoded, oriented image in the spec's colour space.
#[derive(Debug)]
pub enum Pixels {
    Rgb(RgbImage),
    Gray(GrayImage),
}

impl Pixels {
    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            Pixels::Rgb(img) => img.dimensions(),
            Pixels::Gray(img) => img.dimensions(),
        }
    }
}

/// Decodes `bytes` within `max_pixels` and a memory budget, applies the EXIF orientation and
/// converts to the spec's colour: alpha is composited over black, 16-bit and palette images are
/// reduced to 8-bit, CMYK JPEGs are converted by the decoder. A JPEG's structure is read first,
/// so one over the pixel or scan limits is refused before any decoder sees its data. Runs inside
/// [`contained`]: a decoder panic is an error.
pub fn decode(bytes: &[u8], spec: &PipelineSpec, max_pixels: u64) -> Result<Pixels, ImageError> {
    contained(|| decode_uncontained(bytes, spec, max_pixels))
}

fn decode_uncontained(bytes: &[u8], spec: &PipelineSpec, max_pixels: u64) -> Result<Pixels, ImageError> {
    let started = Instant::now();
    let color = spec.color;
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let jpeg = Jpeg::parse(bytes)?;
        let (width, height) = (jpeg.width, jpeg.height);
        check_size(width, height, max_pixels)?;
        if let Some(img) = decode_jpeg_scaled(bytes, &jpeg, spec)? {
            metrics::histogram!("sluice_image_stage_duration_seconds", "stage" => "decode")
                .record(started.elapsed().as_secs_f64());
            return Ok(convert(img, color));
        }
    }
    if tiff::header(bytes).is_some() {
        // The decoder reads every entry of the directory: one that cannot be read whole here
        // could hide its compression from this check.
        let ifd = Ifd::first(bytes).ok_or_else(|| {
            ImageError::Decode(format!("the TIFF directory is malformed or has over {} entries", tiff::MAX_ENTRIES))
        })?;
        if matches!(ifd.value(tiff::COMPRESSION), Some(6 | 7)) {
            return Err(ImageError::JpegInTiff);
        }
    }
    let decode_err = |e: image::ImageError| ImageError::Decode(e.to_string());
    let mut reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| ImageError::Decode(e.to_string()))?;
    reader.limits(limits(max_pixels));
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, max_pixels)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    metrics::histogram!("sluice_image_stage_duration_seconds", "stage" => "decode")
        .record(started.elapsed().as_secs_f64());
    Ok(convert(img, color))
}

/// The pixel limit, and the side limit however few pixels there are.
fn check_size(width: u32, height: u32, max_pixels: u64) -> Result<(), ImageError> {
    Ok(check_image_size(width, height, max_pixels)?)
}

fn convert(img: DynamicImage, color: Color) -> Pixels {
    match color {
        Color::Rgb => Pixels::Rgb(over_black(img)),
        Color::Gray => Pixels::Gray(DynamicImage::ImageRgb8(over_black(img)).to_luma8()),
    }
}

/// The source size a resize to the spec actually needs: for `cover` the scaled source covers the
/// target, for `contain` it fits inside, for `fill` each side matches.
fn needed_source_size(sw: u32, sh: u32, spec: &PipelineSpec) -> (f64, f64) {
    let (sx, sy) = (f64::from(spec.width) / f64::from(sw), f64::from(spec.height) / f64::from(sh));
    let s = match spec.fit {
        Fit::Cover => sx.max(sy),
        Fit::Contain => sx.min(sy),
        Fit::Fill => return (f64::from(spec.width), f64::from(spec.height)),
    };
    (f64::from(sw) * s, f64::from(sh) * s)
}

/// DCT-domain downscaling: when the target is much smaller than a JPEG, it is decoded at a
/// reduced scale (1/8 to 7/8), keeping at least twice the needed resolution for the Lanczos pass.
/// At 1/8, the usual case for photos, Sluice's own DC-only decoder ([`crate::jpeg`]) does it,
/// with exactly libjpeg-turbo's output; otherwise libjpeg-turbo's reduced IDCT. `None` when the
/// fast path does not apply (no useful scale, CMYK data): the general decoder handles those.
fn decode_jpeg_scaled(bytes: &[u8], jpeg: &Jpeg<'_>, spec: &PipelineSpec) -> Result<Option<DynamicImage>, ImageError> {
    let (sw, sh) = (jpeg.width, jpeg.height);
    let orientation = jpeg_exif(bytes).and_then(exif_orientation).unwrap_or(1);
    // Rotated images swap the axes the target applies to.
    let (aw, ah) = if orientation >= 5 { (sh, sw) } else { (sw, sh) };
    let (nw, nh) = needed_source_size(aw, ah, spec);
    let (want_w, want_h) = if orientation >= 5 { (nh * 2.0, nw * 2.0) } else { (nw * 2.0, nh * 2.0) };
    // libjpeg-turbo's scaled size is ceil(dim * num / 8); take the smallest that is big enough.
    let scaled = |dim: u32, num: u32| (dim * num).div_ceil(8);
    let Some(num) = (1..8).find(|&n| f64::from(scaled(sw, n)) >= want_w && f64::from(scaled(sh, n)) >= want_h) else {
        return Ok(None);
    };
    let mut img = if num == 1 && jpeg.eighth_unsupported().is_none() {
        jpeg.decode_eighth()?
    } else {
        match decode_turbo(bytes, scaled(sw, num), scaled(sh, num))? {
            Some(img) => img,
            None => return Ok(None),
        }
    };
    if let Some(orientation) = image::metadata::Orientation::from_exif(orientation) {
        img.apply_orientation(orientation);
    }
    Ok(Some(img))
}

/// libjpeg-turbo's decode at the scale that yields `w`×`h`; `None` for colour spaces it does not
/// convert to RGB (CMYK, YCCK).
fn decode_turbo(bytes: &[u8], w: u32, h: u32) -> Result<Option<DynamicImage>, ImageError> {
    let decode_err = |e: turbojpeg::Error| ImageError::Decode(e.to_string());
    let mut decompressor = turbojpeg::Decompressor::new().map_err(decode_err)?;
    let header = decompressor.read_header(bytes).map_err(decode_err)?;
    let format = match header.colorspace {
        turbojpeg::Colorspace::Gray => turbojpeg::PixelFormat::GRAY,
        turbojpeg::Colorspace::YCbCr | turbojpeg::Colorspace::RGB => turbojpeg::PixelFormat::RGB,
        _ => return Ok(None),
    };
    let channels = if format == turbojpeg::PixelFormat::GRAY { 1 } else { 3 };
    let mut pixels = vec![0u8; (w * h) as usize * channels];
    let output = turbojpeg::Image {
        pixels: pixels.as_mut_slice(),
        width: w as usize,
        pitch: w as usize * channels,
        height: h as usize,
        format,
    };
    decompressor.decompress(bytes, output).map_err(decode_err)?;
    let img = if channels == 1 {
        GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8)
    }
    .ok_or_else(|| ImageError::Decode("the decoder returned a short buffer".into()))?;
    Ok(Some(img))
}

/// The EXIF payload of a JPEG's first `APP1 Exif` segment.
fn jpeg_exif(bytes: &[u8]) -> Option<&[u8]> {
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        let segment = bytes.get(i + 4..i + 2 + len)?;
        if marker == 0xE1 && segment.starts_with(b"Exif\0\0") {
            return Some(segment);
        }
        i += 2 + len;
    }
    None
}

/// The EXIF orientation tag (0x0112) from an APP1 payload (with or without the `Exif\0\0`
/// prefix); `None` when absent or malformed.
fn exif_orientation(exif: &[u8]) -> Option<u8> {
    let ifd = Ifd::first(exif.strip_prefix(b"Exif\0\0").unwrap_or(exif))?;
    u8::try_from(ifd.value(tiff::ORIENTATION)?).ok()
}

/// Drops alpha by compositing over black (so transparent areas do not keep stray colours).
fn over_black(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u16::from(p[3]);
        let scale = |c: u8| ((u16::from(c) * a + 127) / 255) as u8;
        image::Rgb([scale(p[0]), scale(p[1]), scale(p[2])])
    })
}

/// Resizes to the spec's size and fit with a Lanczos3 convolution.
pub fn resize(pixels: &Pixels, spec: &PipelineSpec) -> Result<Pixels, ImageError> {
    let started = Instant::now();
    let (tw, th) = (spec.width, spec.height);
    let (sw, sh) = pixels.dimensions();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    let options = match spec.fit {
        Fit::Cover => options.fit_into_destination(Some((0.5, 0.5))),
        Fit::Fill | Fit::Contain => options,
    };
    // For `contain`, resize into the largest box of the source's aspect ratio, then pad.
    let (rw, rh) = match spec.fit {
        Fit::Contain => {
            let scale = (f64::from(tw) / f64::from(sw)).min(f64::from(th) / f64::from(sh));
            (
                ((f64::from(sw) * scale).round() as u32).clamp(1, tw),
                ((f64::from(sh) * scale).round() as u32).clamp(1, th),
            )
        }
        _ => (tw, th),
    };
    let mut resizer = Resizer::new();
    let resize_err = |e: fast_image_resize::ResizeError| ImageError::Resize(e.to_string());
    let resized = match pixels {
        Pixels::Rgb(src) => {
            let mut dst = RgbImage::new(rw, rh);
            resizer.resize(src, &mut dst, &options).map_err(resize_err)?;
            Pixels::Rgb(pad(dst, tw, th))
        }
        Pixels::Gray(src) => {
            let mut dst = GrayImage::new(rw, rh);
            resizer.resize(src, &mut dst, &options).map_err(resize_err)?;
            Pixels::Gray(pad(dst, tw, th))
        }
    };
    metrics::histogram!("sluice_image_stage_duration_seconds", "stage" => "resize")
        .record(started.elapsed().as_secs_f64());
    Ok(resized)
}

/// Centres `img` on a black canvas of `w`×`h` (a no-op when it already has that size).
fn pad<P: image::Pixel<Subpixel = u8>>(
    img: image::ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
) -> image::ImageBuffer<P, Vec<u8>> {
    if img.dimensions() == (w, h) {
        return img;
    }
    let mut canvas = image::ImageBuffer::<P, Vec<u8>>::new(w, h);
    let (x, y) = ((w - img.width()) / 2, (h - img.height()) / 2);
    image::imageops::replace(&mut canvas, &img, i64::from(x), i64::from(y));
    canvas
}

/// Encodes as PNG (fast compression: outputs are small and written once).
pub fn encode_png(pixels: &Pixels) -> Vec<u8> {
    let started = Instant::now();
    let mut out = Vec::new();
    let encoder =
        PngEncoder::new_with_quality(&mut out, CompressionType::Fast, image::codecs::png::FilterType::Adaptive);
    let result = match pixels {
        Pixels::Rgb(img) => img.write_with_encoder(encoder),
        Pixels::Gray(img) => img.write_with_encoder(encoder),
    };
    result.expect("PNG encoding into memory cannot fail");
    metrics::histogram!("sluice_image_stage_duration_seconds", "stage" => "encode")
        .record(started.elapsed().as_secs_f64());
    out
}

/// Decode, resize and encode one image: the whole CPU path, inside [`contained`].
pub fn process(bytes: &[u8], spec: &PipelineSpec, max_pixels: u64) -> Result<(Vec<u8>, u32, u32), ImageError> {
    contained(|| {
        let decoded = decode(bytes, spec, max_pixels)?;
        let resized = resize(&decoded, spec)?;
        let (w, h) = resized.dimensions();
        Ok((encode_png(&resized), w, h))
    })
}

#[cfg(test)]
mod hostile_inputs;

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(img: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]))
    }

    /// PSNR in dB between two same-sized 8-bit buffers.
    fn psnr(a: &[u8], b: &[u8]) -> f64 {
        let mse: f64 =
            a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>() / a.len() as f64;
        if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0 * 255.0 / mse).log10() }
    }

    #[test]
    fn every_fit_yields_the_spec_size_and_matches_a_reference_resize() {
        let source = gradient(640, 360);
        let png = encoded(DynamicImage::ImageRgb8(source.clone()), image::ImageFormat::Png);
        for fit in [Fit::Cover, Fit::Contain, Fit::Fill] {
            let spec = PipelineSpec { width: 64, height: 48, fit, ..PipelineSpec::default() };
            let (out, w, h) = process(&png, &spec, 50_000_000).expect("process");
            assert_eq!((w, h), (64, 48), "{fit:?}");
            let decoded = image::load_from_memory(&out).expect("valid PNG").to_rgb8();
            assert_eq!(decoded.dimensions(), (64, 48));
            if fit == Fit::Fill {
                let reference = image::imageops::resize(&source, 64, 48, image::imageops::FilterType::Lanczos3);
                let quality = psnr(decoded.as_raw(), reference.as_raw());
                assert!(quality >= 35.0, "PSNR {quality:.1} dB against a full-decode Lanczos resize");
            }
        }
    }

    #[test]
    fn gray_alpha_and_sixteen_bit_inputs_convert() {
        let rgba = image::RgbaImage::from_fn(50, 40, |x, _| image::Rgba([200, 100, 50, if x < 25 { 0 } else { 255 }]));
        let png = encoded(DynamicImage::ImageRgba8(rgba), image::ImageFormat::Png);
        let spec = PipelineSpec { width: 10, height: 8, fit: Fit::Fill, ..PipelineSpec::default() };
        let (out, ..) = process(&png, &spec, 50_000_000).expect("rgba");
        let decoded = image::load_from_memory(&out).expect("png").to_rgb8();
        assert_eq!(decoded.get_pixel(0, 4).0, [0, 0, 0], "transparent areas become black");
        let wide = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(30, 30, |_, _| image::Rgb([65535, 0, 32768]));
        let png16 = encoded(DynamicImage::ImageRgb16(wide), image::ImageFormat::Png);
        let gray = PipelineSpec { color: Color::Gray, ..spec };
        let (out, ..) = process(&png16, &gray, 50_000_000).expect("16-bit");
        assert_eq!(image::load_from_memory(&out).expect("png").color(), image::ColorType::L8);
    }

    /// A photo-like test image: smooth gradients plus fine texture.
    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let texture = ((x * 31 + y * 17) % 23) as u8;
            image::Rgb([
                (x * 200 / w) as u8 + texture,
                (y * 200 / h) as u8 + texture / 2,
                ((x + y) % 256) as u8 / 4 + 40,
            ])
        })
    }

    #[test]
    fn dct_scaled_jpeg_decoding_matches_a_full_decode_reference() {
        let (w, h) = (1920, 1080);
        let source = photo(w, h);
        for subsamp in [turbojpeg::Subsamp::None, turbojpeg::Subsamp::Sub2x2] {
            let image = turbojpeg::Image {
                pixels: source.as_raw().as_slice(),
                width: w as usize,
                pitch: 3 * w as usize,
                height: h as usize,
                format: turbojpeg::PixelFormat::RGB,
            };
            let jpeg = turbojpeg::compress(image, 90, subsamp).expect("compress").to_vec();
            let full = image::load_from_memory(&jpeg).expect("jpeg");
            let parsed = Jpeg::parse(&jpeg).expect("parses");
            assert!(parsed.eighth_unsupported().is_none(), "the DC-only decoder applies");
            for (tw, th, fit) in [(64, 64, Fit::Fill), (64, 64, Fit::Cover), (300, 200, Fit::Fill)] {
                let spec = PipelineSpec { width: tw, height: th, fit, ..PipelineSpec::default() };
                assert!(decode_jpeg_scaled(&jpeg, &parsed, &spec).expect("decodes").is_some(), "a scale applies");
                let (out, ..) = process(&jpeg, &spec, 50_000_000).expect("process");
                let fast = image::load_from_memory(&out).expect("png").to_rgb8();
                let reference = resize(&Pixels::Rgb(full.to_rgb8()), &spec).expect("resize");
                let Pixels::Rgb(reference) = reference else { unreachable!("rgb in, rgb out") };
                let quality = psnr(fast.as_raw(), reference.as_raw());
                assert!(quality >= 35.0, "{subsamp:?} {tw}×{th} {fit:?}: PSNR {quality:.1} dB against a full decode");
            }
        }
    }

    #[test]
    fn reads_the_exif_orientation_tag() {
        // Little-endian TIFF, one IFD entry: Orientation (0x0112), SHORT, count 1, value 6.
        let exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0";
        assert_eq!(exif_orientation(exif), Some(6));
        assert_eq!(exif_orientation(b"garbage"), None);
    }

    #[test]
    fn a_progressive_scan_bomb_is_refused_before_decoding() {
        let file = include_bytes!("../testdata/progressive_gray.jpg");
        let last_scan = file.windows(2).rposition(|w| w == [0xFF, 0xDA]).expect("a scan");
        let end = file.len() - 2;
        let mut bomb = file[..end].to_vec();
        for _ in 0..crate::jpeg::MAX_SCANS {
            bomb.extend_from_slice(&file[last_scan..end]);
        }
        bomb.extend_from_slice(&[0xFF, 0xD9]);
        let big = PipelineSpec { width: 300, height: 200, ..PipelineSpec::default() };
        for spec in [PipelineSpec::default(), big] {
            let err = process(&bomb, &spec, 50_000_000).expect_err("refused");
            assert!(matches!(err, ImageError::TooManyScans { .. }), "{err}");
        }
        assert!(process(file, &PipelineSpec::default(), 50_000_000).is_ok(), "the original decodes");
    }

    #[test]
    fn undecodable_and_oversized_images_are_errors() {
        assert!(process(b"\x89PNG\r\n\x1a\nnot really", &PipelineSpec::default(), 50_000_000).is_err());
        let png = encoded(DynamicImage::ImageRgb8(gradient(100, 100)), image::ImageFormat::Png);
        assert!(process(&png, &PipelineSpec::default(), 5_000).is_err());
    }
}
