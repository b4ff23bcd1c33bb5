//! Hostile and unusual inputs for every format: decompression bombs must fail before they
//! allocate, decoder panics must stay contained, and valid files that are merely unusual
//! (16-bit, animated, with trailing data) must decode.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage, Rgba, RgbaImage};
use sluice_core::pipeline::{Fit, PipelineSpec};

use super::*;

const MAX_PIXELS: u64 = 50_000_000;

fn encoded(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn solid(w: u32, h: u32, rgb: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, image::Rgb(rgb))
}

/// The first pixel of the image that `process` makes of `bytes` under `spec`.
fn first_pixel(bytes: &[u8], spec: &PipelineSpec) -> [u8; 3] {
    let (png, ..) = process(bytes, spec, MAX_PIXELS).expect("decodes");
    image::load_from_memory(&png).expect("png").to_rgb8().get_pixel(0, 0).0
}

fn assert_refused(name: &str, bytes: &[u8]) {
    match process(bytes, &PipelineSpec::default(), MAX_PIXELS) {
        Ok(_) => panic!("{name}: decoded"),
        Err(ImageError::DecoderCrashed { detail }) => panic!("{name}: the decoder panicked: {detail}"),
        Err(_) => {}
    }
}

// --- Building blocks of hand-made files --------------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { crc >> 1 ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(data.len()).expect("small").to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[&kind[..], data].concat()).to_be_bytes());
    out
}

/// A PNG whose header claims `width`×`height` RGB pixels, with one tiny (stored) IDAT.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    // zlib header, one final stored block of one row of one pixel (filter byte, RGB), Adler-32.
    let idat = [0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01];
    [&b"\x89PNG\r\n\x1a\n"[..], &png_chunk(b"IHDR", &ihdr), &png_chunk(b"IDAT", &idat), &png_chunk(b"IEND", &[])]
        .concat()
}

/// A GIF with a `screen` logical screen and one frame of `frame` size at the origin, whose
/// image data is a clear code, one pixel and the end code.
fn gif(screen: (u16, u16), frame: (u16, u16)) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend(screen.0.to_le_bytes());
    out.extend(screen.1.to_le_bytes());
    out.extend([0x80, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF]);
    out.push(0x2C);
    out.extend([0, 0, 0, 0]);
    out.extend(frame.0.to_le_bytes());
    out.extend(frame.1.to_le_bytes());
    out.extend([0, 2, 2, 0x44, 0x01, 0, 0x3B]);
    out
}

fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_vec();
    out.extend(u32::try_from(data.len()).expect("small").to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn riff_webp(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = [&b"WEBP"[..], &chunks.concat()].concat();
    [&b"RIFF"[..], &u32::try_from(body.len()).expect("small").to_le_bytes(), &body].concat()
}

fn u24(value: u32) -> [u8; 3] {
    let b = value.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// A VP8X chunk: `flags` (0x02 animation, 0x10 alpha) and the canvas size.
fn vp8x(flags: u8, width: u32, height: u32) -> Vec<u8> {
    riff_chunk(b"VP8X", &[&[flags, 0, 0, 0][..], &u24(width - 1), &u24(height - 1)].concat())
}

/// The VP8L chunk (header included) of a lossless still of `img`.
fn vp8l(img: RgbaImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .encode(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgba8)
        .expect("encode");
    assert_eq!(&out[12..16], b"VP8L");
    out[12..].to_vec()
}

/// An animated WebP of `frames` on a `width`×`height` canvas, each frame at the origin.
fn animated_webp(width: u32, height: u32, frames: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut chunks = vec![vp8x(0x12, width, height), riff_chunk(b"ANIM", &[0, 0, 0, 0, 0, 0])];
    for (w, h, data) in frames {
        let header = [&u24(0)[..], &u24(0), &u24(w - 1), &u24(h - 1), &u24(100), &[0]].concat();
        chunks.push(riff_chunk(b"ANMF", &[&header[..], data].concat()));
    }
    riff_webp(&chunks)
}

/// A little-endian TIFF: 8-bit gray, one strip of `strip_bytes` at offset 8 + the IFD's size.
fn tiff(width: u32, height: u32, strip_bytes: u32) -> Vec<u8> {
    tiff_in(true, width, height, strip_bytes, (3, 1))
}

/// The same in either byte order, with the compression entry's type and value given.
fn tiff_in(little_endian: bool, width: u32, height: u32, strip_bytes: u32, compression: (u16, u32)) -> Vec<u8> {
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, compression.0, compression.1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 9 * 12 + 4),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, strip_bytes),
    ];
    let u16b = |v: u16| if little_endian { v.to_le_bytes() } else { v.to_be_bytes() };
    let u32b = |v: u32| if little_endian { v.to_le_bytes() } else { v.to_be_bytes() };
    let mut out = if little_endian { b"II*\0".to_vec() } else { b"MM\0*".to_vec() };
    out.extend(u32b(8));
    out.extend(u16b(9));
    for (tag, kind, value) in entries {
        out.extend(u16b(tag));
        out.extend(u16b(kind));
        out.extend(u32b(1));
        if kind == 3 {
            out.extend(u16b(value as u16));
            out.extend([0, 0]);
        } else {
            out.extend(u32b(value));
        }
    }
    out.extend([0, 0, 0, 0]);
    out.extend(vec![128u8; 64]);
    out
}

/// A BMP header (BITMAPINFOHEADER, 24-bit) claiming `width`×`height`, with a few pixels.
fn bmp_claiming(width: i32, height: i32) -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend(1000u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(54u32.to_le_bytes());
    out.extend(40u32.to_le_bytes());
    out.extend(width.to_le_bytes());
    out.extend(height.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(24u16.to_le_bytes());
    out.extend([0; 24]);
    out.extend([200; 64]);
    out
}

// --- Bombs ---------------------------------------------------------------------------------------

#[test]
fn a_png_claiming_ten_billion_pixels_is_refused_before_decoding() {
    let bomb = png_claiming(100_000, 100_000);
    assert!(bomb.len() < 100);
    let err = process(&bomb, &PipelineSpec::default(), MAX_PIXELS).expect_err("refused");
    assert!(matches!(err, ImageError::Oversize(OversizeImage::TooManyPixels { width: 100_000, .. })), "{err}");
    assert_refused("a PNG 1×2^31", &png_claiming(1, 1 << 31));
    assert!(process(&png_claiming(1, 1), &PipelineSpec::default(), MAX_PIXELS).is_ok(), "the same file, 1×1");
}

/// Within the pixel limit but 50,000,000 pixels long: resizing it would take filter weights for
/// every column (gigabytes), so a side over 65,535 is refused before anything is decoded.
#[test]
fn a_hairline_image_within_the_pixel_limit_is_refused_by_its_side() {
    for (width, height) in [(50_000_000, 1), (1, 50_000_000), (65_536, 2)] {
        let err = process(&png_claiming(width, height), &PipelineSpec::default(), MAX_PIXELS).expect_err("refused");
        assert!(matches!(err, ImageError::Oversize(OversizeImage::SideTooLong { .. })), "{width}×{height}: {err}");
    }
    let long = encoded(DynamicImage::ImageRgb8(solid(65_535, 1, [9, 9, 9])), ImageFormat::Png);
    assert!(process(&long, &PipelineSpec::default(), MAX_PIXELS).is_ok(), "the longest side allowed decodes");
}

/// A JPEG-compressed TIFF embeds a JPEG of any size in every tile, so its decoding is not bounded
/// by the image's pixels: refused before any decoder runs, in either byte order and either
/// JPEG compression code.
#[test]
fn a_jpeg_compressed_tiff_is_refused_before_decoding() {
    for compression in [6u8, 7] {
        let mut file = tiff(8, 8, 64);
        // The compression entry (tag 259) is the fourth: its value sits at 8 + 2 + 3*12 + 8.
        file[8 + 2 + 3 * 12 + 8] = compression;
        let err = process(&file, &PipelineSpec::default(), MAX_PIXELS).expect_err("refused");
        assert!(matches!(err, ImageError::JpegInTiff), "compression {compression}: {err}");
    }
    // Big-endian, the compression typed LONG: its value is in the entry's last two bytes.
    for compression in [6, 7] {
        let err = process(&tiff_in(false, 8, 8, 64, (4, compression)), &PipelineSpec::default(), MAX_PIXELS)
            .expect_err("refused");
        assert!(matches!(err, ImageError::JpegInTiff), "big-endian LONG {compression}: {err}");
    }
    assert!(process(&tiff(8, 8, 64), &PipelineSpec::default(), MAX_PIXELS).is_ok(), "uncompressed decodes");
    assert!(
        process(&tiff_in(false, 8, 8, 64, (4, 1)), &PipelineSpec::default(), MAX_PIXELS).is_ok(),
        "uncompressed big-endian decodes"
    );
}

/// A directory claiming more entries than any writer makes is refused, not read in part: the
/// compression tag could sit past the entries read.
#[test]
fn a_tiff_directory_too_long_to_check_is_refused() {
    // The honest 9 entries, then private tags (ignored by decoders) up to `count`, then the strip.
    let file = |count: u16| {
        let strip = 8 + 2 + 12 * u32::from(count) + 4;
        let mut out = b"II*\0\x08\0\0\0".to_vec();
        out.extend(count.to_le_bytes());
        let honest = [
            (256u16, 4u16, 8u32),
            (257, 4, 8),
            (258, 3, 8),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, strip),
            (277, 3, 1),
            (278, 4, 8),
            (279, 4, 64),
        ];
        let filler = (0..count - 9).map(|n| (40_000 + n, 3, 0));
        for (tag, kind, value) in honest.into_iter().chain(filler) {
            out.extend(tag.to_le_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(1u32.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        out.extend([0, 0, 0, 0]);
        out.extend([128u8; 64]);
        out
    };
    assert!(process(&file(512), &PipelineSpec::default(), MAX_PIXELS).is_ok(), "512 entries are read whole");
    let err = process(&file(600), &PipelineSpec::default(), MAX_PIXELS).expect_err("refused");
    assert!(matches!(err, ImageError::Decode(_)), "{err}");
}

#[test]
fn gif_bombs_are_refused_before_decoding() {
    let err = process(&gif((65_535, 65_535), (1, 1)), &PipelineSpec::default(), MAX_PIXELS).expect_err("refused");
    assert!(matches!(err, ImageError::Oversize(OversizeImage::TooManyPixels { .. })), "{err}");
    // A small screen with a frame far larger than it: the frame buffer is over the budget.
    assert_refused("a 65535×65535 frame on a 10×10 screen", &gif((10, 10), (65_535, 65_535)));
    assert_refused("a 20000×20000 frame on a 10×10 screen", &gif((10, 10), (20_000, 20_000)));
    assert!(process(&gif((10, 10), (1, 1)), &PipelineSpec::default(), MAX_PIXELS).is_ok(), "the same, 1×1 frame");
}

#[test]
fn webp_bombs_are_refused_before_decoding() {
    let pixel = vp8l(RgbaImage::from_pixel(1, 1, Rgba([1, 2, 3, 255])));
    let huge_canvas = riff_webp(&[vp8x(0, 1 << 24, 1 << 24), pixel.clone()]);
    assert_refused("a 2^24×2^24 canvas", &huge_canvas);
    let err = process(&huge_canvas, &PipelineSpec::default(), MAX_PIXELS).expect_err("refused");
    assert!(matches!(err, ImageError::Oversize(OversizeImage::TooManyPixels { .. }) | ImageError::Decode(_)), "{err}");
    let animated = animated_webp(1 << 24, 1 << 24, &[(1, 1, pixel.clone())]);
    assert_refused("an animation on a 2^24×2^24 canvas", &animated);
    assert_refused("a frame larger than its canvas", &animated_webp(2, 2, &[(16_000, 16_000, pixel)]));
}

#[test]
fn tiff_bombs_are_refused_before_decoding() {
    let err = process(&tiff(100_000, 100_000, 64), &PipelineSpec::default(), MAX_PIXELS).expect_err("refused");
    assert!(matches!(err, ImageError::Oversize(OversizeImage::TooManyPixels { .. })), "{err}");
    // A small image whose strip claims 4 GiB: no buffer of that size may be made.
    assert_refused("a 4 GiB strip", &tiff(8, 8, 0xFFFF_FFF0));
    assert_refused("a strip past the end", &tiff(100, 100, 10_000));
    assert!(process(&tiff(8, 8, 64), &PipelineSpec::default(), MAX_PIXELS).is_ok(), "the same, honest");
}

#[test]
fn bmp_bombs_are_refused_before_decoding() {
    assert_refused("a BMP of 100000×100000", &bmp_claiming(100_000, 100_000));
    assert_refused("a BMP of 20000×20000", &bmp_claiming(20_000, 20_000));
    assert_refused("a BMP of height -2^31", &bmp_claiming(1, i32::MIN));
    assert_refused("a BMP of width 2^31 - 1", &bmp_claiming(i32::MAX, 1));
}

#[test]
fn the_memory_budget_follows_the_pixel_limit() {
    let budget = limits(1_000_000);
    assert_eq!(budget.max_alloc, Some(64 * 1024 * 1024));
    assert_eq!(limits(50_000_000).max_alloc, Some(400_000_000));
    assert_eq!(limits(u64::MAX).max_image_width, Some(u32::MAX));
    // A 2000×2000 PNG is refused under a 1-megapixel limit, whatever its data.
    let png = encoded(DynamicImage::ImageRgb8(solid(2000, 2000, [9, 9, 9])), ImageFormat::Png);
    assert!(matches!(
        process(&png, &PipelineSpec::default(), 1_000_000),
        Err(ImageError::Oversize(OversizeImage::TooManyPixels { .. }))
    ));
}

// --- Panics --------------------------------------------------------------------------------------

#[test]
fn a_panic_inside_the_boundary_becomes_an_error() {
    let err = contained::<()>(|| panic!("index out of bounds")).expect_err("an error");
    assert!(matches!(&err, ImageError::DecoderCrashed { detail } if detail == "index out of bounds"), "{err:?}");
    assert_eq!(err.to_string(), "the decoder failed on this file");
    let formatted = contained::<()>(|| panic!("{} is out of range", 7)).expect_err("an error");
    assert!(matches!(&formatted, ImageError::DecoderCrashed { detail } if detail == "7 is out of range"));
    assert_eq!(contained(|| Ok(5)).expect("no panic"), 5);
}

#[test]
fn mutated_files_of_every_format_are_errors_or_images() {
    let img = DynamicImage::ImageRgb8(solid(40, 30, [10, 200, 30]));
    let sources = [
        encoded(img.clone(), ImageFormat::Png),
        encoded(img.clone(), ImageFormat::Gif),
        encoded(img.clone(), ImageFormat::Bmp),
        encoded(img.clone(), ImageFormat::Tiff),
        encoded(img.clone(), ImageFormat::WebP),
        encoded(img, ImageFormat::Jpeg),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut crashes = Vec::new();
    for round in 0..1200 {
        let mut bytes = sources[round % sources.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if let Err(ImageError::DecoderCrashed { detail }) = process(&bytes, &PipelineSpec::default(), MAX_PIXELS) {
            crashes.push(detail);
        }
    }
    // Any panic was contained (the loop went on); none is expected from these decoders.
    assert!(crashes.is_empty(), "decoder panics: {crashes:?}");
}

// --- Valid but unusual ----------------------------------------------------------------------------

#[test]
fn sixteen_bit_pngs_decode() {
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(30, 20, image::Rgb([65_535, 0, 32_896]));
    let png = encoded(DynamicImage::ImageRgb16(rgb16), ImageFormat::Png);
    assert_eq!(first_pixel(&png, &PipelineSpec::default()), [255, 0, 128]);
    let gray16 = image::ImageBuffer::<image::LumaA<u16>, _>::from_pixel(30, 20, image::LumaA([65_535, 65_535]));
    let png = encoded(DynamicImage::ImageLumaA16(gray16), ImageFormat::Png);
    assert_eq!(first_pixel(&png, &PipelineSpec::default()), [255, 255, 255]);
}

#[test]
fn animated_gifs_decode_their_first_frame() {
    let frames = (0..300u32).map(|i| {
        let colour = if i == 0 { [250, 0, 0, 255] } else { [0, 0, 250, 255] };
        image::Frame::new(RgbaImage::from_pixel(24, 16, Rgba(colour)))
    });
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut gif).encode_frames(frames).expect("encode");
    let [r, g, b] = first_pixel(&gif, &PipelineSpec::default());
    assert!(r > 240 && g < 10 && b < 10, "the first (red) frame, got {:?}", [r, g, b]);
}

#[test]
fn animated_webps_decode_their_first_frame() {
    let red = vp8l(RgbaImage::from_pixel(20, 10, Rgba([250, 0, 0, 255])));
    let blue = vp8l(RgbaImage::from_pixel(20, 10, Rgba([0, 0, 250, 255])));
    let frames: Vec<_> = std::iter::once((20, 10, red)).chain((0..200).map(|_| (20, 10, blue.clone()))).collect();
    let webp = animated_webp(20, 10, &frames);
    let [r, g, b] = first_pixel(&webp, &PipelineSpec::default());
    assert!(r > 240 && g < 10 && b < 10, "the first (red) frame, got {:?}", [r, g, b]);
}

/// A photo-like image as a TurboJPEG file.
fn jpeg(w: u32, h: u32, format: turbojpeg::PixelFormat) -> Vec<u8> {
    let channels = format.size();
    let pixels: Vec<u8> =
        (0..w * h * channels as u32).map(|i| ((i / channels as u32 % w) * 200 / w + i % 7 * 5) as u8).collect();
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: w as usize,
        pitch: channels * w as usize,
        height: h as usize,
        format,
    };
    let subsamp =
        if format == turbojpeg::PixelFormat::CMYK { turbojpeg::Subsamp::None } else { turbojpeg::Subsamp::Sub2x2 };
    turbojpeg::compress(image, 90, subsamp).expect("compress").to_vec()
}

#[test]
fn jpegs_with_trailing_data_decode_on_every_path() {
    // A motion photo: the still, then an MP4.
    let still = jpeg(1920, 1080, turbojpeg::PixelFormat::RGB);
    let mp4 =
        [&b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom"[..], b"\0\x01\0\0mdat", &[0xFF; 300][..], &[0xFF, 0xD8][..]].concat();
    let motion = [&still[..], &mp4].concat();
    for (path, spec) in [
        ("1/8 scale", PipelineSpec { width: 64, height: 64, ..PipelineSpec::default() }),
        ("libjpeg-turbo scaled", PipelineSpec { width: 300, height: 200, fit: Fit::Fill, ..PipelineSpec::default() }),
        ("full decode", PipelineSpec { width: 1600, height: 900, fit: Fit::Fill, ..PipelineSpec::default() }),
    ] {
        let expected = process(&still, &spec, MAX_PIXELS).expect("the still decodes");
        let got = process(&motion, &spec, MAX_PIXELS).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(got, expected, "{path}");
    }
}

#[test]
fn cmyk_jpegs_decode_through_the_general_decoder() {
    let cmyk = jpeg(800, 600, turbojpeg::PixelFormat::CMYK);
    for spec in [PipelineSpec::default(), PipelineSpec { width: 700, height: 500, ..PipelineSpec::default() }] {
        let (_, w, h) = process(&cmyk, &spec, MAX_PIXELS).expect("decodes");
        assert_eq!((w, h), (spec.width, spec.height));
    }
}
