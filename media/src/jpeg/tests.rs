use super::*;

/// A photo-like RGB image: smooth colour fields, edges and texture.
fn photo(w: u32, h: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let edge = if (x / 37 + y / 29) % 2 == 0 { 40 } else { 0 };
            let texture = ((x * 31 + y * 17) % 23) as u8;
            rgb.extend_from_slice(&[
                (x * 180 / w) as u8 + texture + edge,
                (y * 180 / h) as u8 + texture / 2,
                ((x + 2 * y) % 200) as u8 + edge,
            ]);
        }
    }
    rgb
}

fn compress(w: u32, h: u32, subsamp: turbojpeg::Subsamp, quality: i32) -> Vec<u8> {
    let pixels = photo(w, h);
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: w as usize,
        pitch: 3 * w as usize,
        height: h as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, quality, subsamp).expect("compress").to_vec()
}

/// TurboJPEG's own decode at 1/8 scale (it picks the scale from the requested size).
fn turbo_eighth(bytes: &[u8]) -> DynamicImage {
    let mut decompressor = turbojpeg::Decompressor::new().expect("decompressor");
    let header = decompressor.read_header(bytes).expect("header");
    let (w, h) = (header.width.div_ceil(8), header.height.div_ceil(8));
    let gray = header.colorspace == turbojpeg::Colorspace::Gray;
    let (format, channels) = if gray { (turbojpeg::PixelFormat::GRAY, 1) } else { (turbojpeg::PixelFormat::RGB, 3) };
    let mut pixels = vec![0u8; w * h * channels];
    let output = turbojpeg::Image { pixels: pixels.as_mut_slice(), width: w, pitch: w * channels, height: h, format };
    decompressor.decompress(bytes, output).expect("decompress");
    if gray {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w as u32, h as u32, pixels).expect("size"))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(w as u32, h as u32, pixels).expect("size"))
    }
}

fn assert_matches_turbojpeg(name: &str, bytes: &[u8]) {
    let ours = Jpeg::parse(bytes).expect("parses").decode_eighth().expect("decodes");
    let theirs = turbo_eighth(bytes);
    assert_eq!(ours.dimensions_tuple(), theirs.dimensions_tuple(), "{name}: size");
    assert_eq!(ours.color(), theirs.color(), "{name}: colour type");
    let differing = ours.as_bytes().iter().zip(theirs.as_bytes()).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{name}: {differing} samples differ from TurboJPEG's 1/8-scale decode");
}

trait Dimensions {
    fn dimensions_tuple(&self) -> (u32, u32);
}

impl Dimensions for DynamicImage {
    fn dimensions_tuple(&self) -> (u32, u32) {
        (self.width(), self.height())
    }
}

#[test]
fn baseline_files_of_every_sampling_decode_exactly_as_turbojpeg_does() {
    use turbojpeg::Subsamp;
    for (subsamp, name) in [
        (Subsamp::None, "4:4:4"),
        (Subsamp::Sub2x1, "4:2:2"),
        (Subsamp::Sub2x2, "4:2:0"),
        (Subsamp::Sub1x2, "4:4:0"),
        (Subsamp::Gray, "gray"),
    ] {
        for (w, h) in [(333, 250), (64, 8), (17, 9), (1001, 757)] {
            assert_matches_turbojpeg(&format!("{name} {w}×{h}"), &compress(w, h, subsamp, 90));
        }
    }
}

#[test]
fn progressive_and_restart_marker_files_decode_exactly_as_turbojpeg_does() {
    for (name, bytes) in [
        ("progressive 4:2:2", &include_bytes!("../../testdata/progressive_422.jpg")[..]),
        ("progressive gray", &include_bytes!("../../testdata/progressive_gray.jpg")[..]),
        ("restart markers every 7 MCUs, 4:2:2", &include_bytes!("../../testdata/restart_422.jpg")[..]),
    ] {
        let jpeg = Jpeg::parse(bytes).expect("parses");
        assert!(jpeg.eighth_unsupported().is_none(), "{name}");
        assert_matches_turbojpeg(name, bytes);
    }
    let progressive = Jpeg::parse(include_bytes!("../../testdata/progressive_420.jpg")).expect("parses");
    assert!(progressive.progressive && progressive.scan_count() == 10);
    assert!(
        progressive.eighth_unsupported().is_some(),
        "4:2:0 chroma needs a 2×2 inverse DCT, so AC scans: left to libjpeg-turbo"
    );
}

#[test]
fn truncated_or_misplaced_data_is_an_error() {
    let whole = compress(333, 250, turbojpeg::Subsamp::Sub2x2, 90);
    let truncated = &whole[..whole.len() * 6 / 10];
    assert!(Jpeg::parse(truncated).expect("the headers are intact").decode_eighth().is_err());
    let restarts = include_bytes!("../../testdata/restart_422.jpg");
    let rst = restarts.windows(2).position(|w| w == [0xFF, 0xD0]).expect("an RST0");
    let mut swapped = restarts.to_vec();
    swapped[rst + 1] = 0xD3;
    assert!(Jpeg::parse(&swapped).expect("parses").decode_eighth().is_err(), "RST3 where RST0 belongs");
    assert!(Jpeg::parse(b"\xFF\xD8\xFF\xDA\x00\x08\x01\x01\x00\x00\x3F\x00").is_err(), "a scan before the frame");
    assert!(Jpeg::parse(b"GIF89a").is_err());
}

#[test]
fn corrupted_files_never_panic() {
    let sources = [
        compress(120, 90, turbojpeg::Subsamp::Sub2x2, 80),
        include_bytes!("../../testdata/progressive_420.jpg").to_vec(),
        include_bytes!("../../testdata/restart_422.jpg").to_vec(),
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut decoded = 0;
    for round in 0..3000 {
        let mut bytes = sources[round % sources.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if next() % 5 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        if let Ok(jpeg) = Jpeg::parse(&bytes)
            && jpeg.decode_eighth().is_ok()
        {
            decoded += 1;
        }
    }
    assert!(decoded > 0, "some mutations only touch entropy data and still decode");
}

#[test]
fn refuses_a_progressive_scan_bomb_before_decoding() {
    let file = include_bytes!("../../testdata/progressive_420.jpg");
    let last_scan = file.windows(2).rposition(|w| w == [0xFF, 0xDA]).expect("a scan");
    let end = file.len() - 2;
    assert_eq!(&file[end..], [0xFF, 0xD9]);
    let mut bomb = file[..end].to_vec();
    for _ in 0..MAX_SCANS {
        bomb.extend_from_slice(&file[last_scan..end]);
    }
    bomb.extend_from_slice(&[0xFF, 0xD9]);
    assert!(matches!(Jpeg::parse(&bomb), Err(JpegError::TooManyScans { limit: MAX_SCANS })));
}

#[test]
fn cmyk_files_are_left_to_libjpeg() {
    let (w, h) = (48, 32);
    let pixels = vec![90u8; w * h * 4];
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width: w,
        pitch: 4 * w,
        height: h,
        format: turbojpeg::PixelFormat::CMYK,
    };
    let bytes = turbojpeg::compress(image, 90, turbojpeg::Subsamp::None).expect("compress").to_vec();
    let jpeg = Jpeg::parse(&bytes).expect("parses");
    assert!(jpeg.eighth_unsupported().is_some());
    assert!(matches!(jpeg.decode_eighth(), Err(JpegError::Unsupported(_))));
}
