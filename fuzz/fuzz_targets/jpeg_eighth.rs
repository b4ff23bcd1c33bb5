//! Sluice's 1/8-scale JPEG reader on arbitrary bytes: parsing and decoding always return (no
//! panic, bounded memory), and wherever both it and libjpeg-turbo decode a file, their samples
//! are byte-equal (the reader's claim: exactly TurboJPEG's 1/8-scale output).

#![no_main]

use image::DynamicImage;
use libfuzzer_sys::fuzz_target;

/// `media/src/jpeg.rs` and its submodules, compiled here (see Cargo.toml for why).
#[path = "../../media/src"]
mod media {
    #[allow(dead_code)]
    pub mod jpeg;
}

use media::jpeg;

/// Larger frames are parsed but not decoded, to keep each run short (the service applies its
/// own pixel limit before decoding).
const MAX_PIXELS: u64 = 1 << 22;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = jpeg::Jpeg::parse(data) else { return };
    if u64::from(parsed.width) * u64::from(parsed.height) > MAX_PIXELS {
        return;
    }
    let Ok(ours) = parsed.decode_eighth() else { return };
    let Some(theirs) = turbo_eighth(data) else { return };
    assert_eq!((ours.width(), ours.height()), (theirs.width(), theirs.height()), "size");
    assert_eq!(ours.color(), theirs.color(), "colour type");
    if let Some(at) = ours.as_bytes().iter().zip(theirs.as_bytes()).position(|(a, b)| a != b) {
        panic!(
            "sample {at} differs: ours {} libjpeg-turbo {} ({} of {} differ)",
            ours.as_bytes()[at],
            theirs.as_bytes()[at],
            ours.as_bytes().iter().zip(theirs.as_bytes()).filter(|(a, b)| a != b).count(),
            ours.as_bytes().len()
        );
    }
});

/// TurboJPEG's decode at 1/8 scale, `None` where it fails (it fails on warnings too).
fn turbo_eighth(bytes: &[u8]) -> Option<DynamicImage> {
    let mut decompressor = turbojpeg::Decompressor::new().ok()?;
    let header = decompressor.read_header(bytes).ok()?;
    let (w, h) = (header.width.div_ceil(8), header.height.div_ceil(8));
    let (format, channels) = match header.colorspace {
        turbojpeg::Colorspace::Gray => (turbojpeg::PixelFormat::GRAY, 1),
        turbojpeg::Colorspace::YCbCr | turbojpeg::Colorspace::RGB => (turbojpeg::PixelFormat::RGB, 3),
        _ => return None,
    };
    let mut pixels = vec![0u8; w * h * channels];
    let output = turbojpeg::Image { pixels: pixels.as_mut_slice(), width: w, pitch: w * channels, height: h, format };
    decompressor.decompress(bytes, output).ok()?;
    let (w, h) = (u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    if channels == 1 {
        image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
    } else {
        image::RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8)
    }
}
