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

/// One marker segment: `FF marker`, its length, its payload.
fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, marker];
    out.extend_from_slice(&u16::try_from(payload.len() + 2).expect("a short payload").to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A DHT payload defining one table: `class_id` (class << 4 | id), counts, symbols.
fn table(class_id: u8, counts: [u8; 16], symbols: &[u8]) -> Vec<u8> {
    let mut out = vec![class_id];
    out.extend_from_slice(&counts);
    out.extend_from_slice(symbols);
    out
}

/// Counts with `n` codes of length 1 (and no others).
fn one_bit_codes(n: u8) -> [u8; 16] {
    let mut counts = [0; 16];
    counts[0] = n;
    counts
}

/// The pieces of a tiny baseline gray file, so each test can corrupt exactly one of them.
struct Tiny {
    dqt: Vec<u8>,
    sof: Vec<u8>,
    dht: Vec<u8>,
    sos: Vec<u8>,
    data: Vec<u8>,
}

impl Tiny {
    /// 8×8 gray, one block: DC table 0 with the single code `0` for size 0, AC table 0 with the
    /// single code `0` for end of block; the data is those two codes (a block of value 128).
    fn new() -> Self {
        let mut dht = table(0x00, one_bit_codes(1), &[0]);
        dht.extend(table(0x10, one_bit_codes(1), &[0x00]));
        Tiny {
            dqt: [&[0u8][..], &[1; 64]].concat(),
            sof: vec![8, 0, 8, 0, 8, 1, 1, 0x11, 0],
            dht,
            sos: vec![1, 1, 0x00, 0, 63, 0],
            data: vec![0b0011_1111],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8];
        out.extend(segment(0xDB, &self.dqt));
        out.extend(segment(0xC0, &self.sof));
        out.extend(segment(0xC4, &self.dht));
        out.extend(segment(0xDA, &self.sos));
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }
}

/// Big-endian bits with JPEG's `0xFF 0x00` stuffing, padded with ones.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    acc: u32,
    count: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.acc = self.acc << 1 | (value >> i) & 1;
            self.count += 1;
            if self.count == 8 {
                self.push();
            }
        }
    }

    fn push(&mut self) {
        let byte = self.acc as u8;
        self.bytes.push(byte);
        if byte == 0xFF {
            self.bytes.push(0x00);
        }
        (self.acc, self.count) = (0, 0);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            let pad = 8 - self.count;
            self.put((1 << pad) - 1, pad);
        }
        self.bytes
    }
}

fn decode_result(bytes: &[u8]) -> Result<DynamicImage, JpegError> {
    Jpeg::parse(bytes)?.decode_eighth()
}

#[test]
fn the_tiny_test_file_decodes_exactly_as_turbojpeg_does() {
    assert_matches_turbojpeg("tiny", &Tiny::new().bytes());
}

#[test]
fn a_file_of_repeated_huffman_tables_is_refused_while_parsing() {
    // The attack: 2 MiB of empty DHT segments (21 bytes each), once ~25 KB of tables apiece.
    let mut bomb = vec![0xFF, 0xD8];
    bomb.extend(segment(0xC0, &Tiny::new().sof));
    let empty = segment(0xC4, &table(0x00, [0; 16], &[]));
    while bomb.len() < 2 << 20 {
        bomb.extend_from_slice(&empty);
    }
    assert!(matches!(Jpeg::parse(&bomb), Err(JpegError::TooManyMarkers { .. })));
    // Markers of any kind count, not only tables.
    let mut comments = vec![0xFF, 0xD8];
    comments.extend(segment(0xC0, &Tiny::new().sof));
    for _ in 0..=MAX_MARKERS {
        comments.extend(segment(0xFE, b"x"));
    }
    assert!(matches!(Jpeg::parse(&comments), Err(JpegError::TooManyMarkers { .. })));
}

#[test]
fn redefined_huffman_tables_replace_their_slot() {
    // One DHT segment with thousands of definitions of the same two slots: only the last of
    // each is in force (and only they are ever built).
    let mut tiny = Tiny::new();
    let mut dht = Vec::new();
    for _ in 0..1500 {
        dht.extend(table(0x00, one_bit_codes(1), &[5]));
        dht.extend(table(0x10, one_bit_codes(1), &[0x11]));
    }
    dht.extend_from_slice(&tiny.dht);
    tiny.dht = dht;
    let bytes = tiny.bytes();
    assert!(bytes.len() > 50_000);
    assert_matches_turbojpeg("1500 redefinitions", &bytes);
    // Up to the segment limit (here a DQT and DHT segments), many segments are fine too.
    let mut many = vec![0xFF, 0xD8];
    many.extend(segment(0xDB, &tiny.dqt));
    many.extend(segment(0xC0, &tiny.sof));
    for _ in 0..MAX_TABLE_SEGMENTS - 2 {
        many.extend(segment(0xC4, &table(0x01, one_bit_codes(1), &[3])));
    }
    many.extend(segment(0xC4, &Tiny::new().dht));
    many.extend(segment(0xDA, &tiny.sos));
    many.extend_from_slice(&[0b0011_1111, 0xFF, 0xD9]);
    assert_matches_turbojpeg("many DHT segments", &many);
}

#[test]
fn an_over_subscribed_huffman_table_is_an_error_not_a_panic() {
    // Three 1-bit codes: more than the code space holds (this once indexed out of bounds).
    let mut tiny = Tiny::new();
    tiny.dht = table(0x00, one_bit_codes(3), &[0, 1, 2]);
    tiny.dht.extend(table(0x10, one_bit_codes(1), &[0x00]));
    let bytes = tiny.bytes();
    assert!(bytes.len() < 150);
    assert!(decode_result(&bytes).is_err());
    for counts in [
        one_bit_codes(2),
        [0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let total = counts.iter().map(|&c| usize::from(c)).sum::<usize>();
        let mut tiny = Tiny::new();
        tiny.dht = table(0x00, counts, &vec![0; total]);
        tiny.dht.extend(table(0x10, one_bit_codes(1), &[0x00]));
        assert!(decode_result(&tiny.bytes()).is_err(), "{counts:?}");
    }
    // 16-bit codes that fill the code space but for the all-ones code are fine.
    let mut deep = [1u8; 16];
    deep[15] = 1;
    let mut tiny = Tiny::new();
    tiny.dht = table(0x00, deep, &[0; 16]);
    tiny.dht.extend(table(0x10, one_bit_codes(1), &[0x00]));
    assert!(decode_result(&tiny.bytes()).is_ok());
}

#[test]
fn crafted_headers_are_errors_not_panics() {
    type Corruption = fn(&mut Tiny);
    let cases: [(&str, Corruption); 20] = [
        ("horizontal sampling 0", |t| t.sof[7] = 0x01),
        ("vertical sampling 0", |t| t.sof[7] = 0x10),
        ("sampling 5", |t| t.sof[7] = 0x51),
        ("quantisation table 4", |t| t.sof[8] = 4),
        ("zero width", |t| t.sof[3..5].copy_from_slice(&[0, 0])),
        ("zero height", |t| t.sof[1..3].copy_from_slice(&[0, 0])),
        ("no components", |t| t.sof[5] = 0),
        ("frame length disagrees with its components", |t| t.sof[5] = 2),
        ("scan of no components", |t| t.sos = vec![0, 0, 63, 0]),
        ("scan of five components", |t| t.sos = [&[5u8][..], &[1, 0].repeat(5), &[0, 63, 0]].concat()),
        ("scan names a missing component", |t| t.sos[1] = 9),
        ("scan names a component twice", |t| t.sos = vec![2, 1, 0, 1, 0, 0, 63, 0]),
        ("DC table 4", |t| t.sos[2] = 0x40),
        ("AC table 15", |t| t.sos[2] = 0x0F),
        ("undefined AC table 1", |t| t.sos[2] = 0x01),
        ("end of spectral selection 64", |t| t.sos[4] = 64),
        ("Huffman class 2", |t| t.dht[0] = 0x20),
        ("Huffman table 4", |t| t.dht[0] = 0x04),
        ("DC symbol over 15", |t| t.dht[17] = 16),
        ("quantisation table id 4", |t| t.dqt[0] = 4),
    ];
    for (name, corrupt) in cases {
        let mut tiny = Tiny::new();
        corrupt(&mut tiny);
        let bytes = tiny.bytes();
        assert!(decode_result(&bytes).is_err(), "{name}");
        let spec = sluice_core::pipeline::PipelineSpec { width: 1, height: 1, ..Default::default() };
        assert!(crate::imaging::process(&bytes, &spec, 1_000_000).is_err(), "{name}, whole pipeline");
    }
    let valid = Tiny::new().bytes();
    let sof = valid.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a frame");
    for length in [[0, 0], [0, 1], [0xFF, 0xFF]] {
        let mut bytes = valid.clone();
        bytes[sof + 2..sof + 4].copy_from_slice(&length);
        assert!(decode_result(&bytes).is_err(), "segment length {length:?}");
    }
    let scan = valid.windows(2).position(|w| w == [0xFF, 0xDA]).expect("a scan");
    assert!(decode_result(&valid[..scan]).is_err(), "no scan");
    for cut in 0..valid.len() {
        let _ = decode_result(&valid[..cut]);
    }
}

#[test]
fn progressive_scan_parameters_are_checked() {
    let progressive = |sos: Vec<u8>| {
        let mut tiny = Tiny::new();
        tiny.sos = sos;
        let mut bytes = tiny.bytes();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a frame");
        bytes[sof + 1] = 0xC2;
        bytes
    };
    let dc_only = progressive(vec![1, 1, 0x00, 0, 0, 0]);
    assert!(matches!(decode_result(&dc_only), Err(JpegError::Unsupported(_))), "a valid DC scan, left to libjpeg");
    for (name, sos) in [
        ("end of spectral selection 64", vec![1, 1, 0x00, 1, 64, 0]),
        ("start after end", vec![1, 1, 0x00, 5, 4, 0]),
        ("DC and AC together", vec![1, 1, 0x00, 0, 5, 0]),
        ("successive approximation 14", vec![1, 1, 0x00, 0, 0, 14]),
    ] {
        assert!(matches!(Jpeg::parse(&progressive(sos)), Err(JpegError::Corrupt(_))), "{name}");
    }
}

#[test]
fn a_restart_interval_longer_than_the_image_needs_no_markers() {
    let tiny = Tiny::new();
    let mut bytes = vec![0xFF, 0xD8];
    bytes.extend(segment(0xDD, &[0xFF, 0xFF]));
    bytes.extend_from_slice(&tiny.bytes()[2..]);
    assert_matches_turbojpeg("restart interval 65535", &bytes);
    assert!(Jpeg::parse(&[&[0xFF, 0xD8][..], &segment(0xDD, &[1])].concat()).is_err(), "a short DRI");
}

/// A gray file of `blocks` blocks in a row whose DC differences are all `difference` (an
/// 11-bit size category), with quantisation table `quant` (16-bit entries when over 255):
/// coefficients far outside anything an encoder writes, where only exact integer widths and
/// range limiting give libjpeg's samples.
fn extreme_dc(blocks: u16, difference: i32, quant: u16) -> Vec<u8> {
    let size = 32 - difference.unsigned_abs().leading_zeros();
    let mut tiny = Tiny::new();
    tiny.dqt = if quant > 255 {
        [&[0x10u8][..], &quant.to_be_bytes().repeat(64)].concat()
    } else {
        [&[0u8][..], &[quant as u8; 64]].concat()
    };
    tiny.sof[3..5].copy_from_slice(&(blocks * 8).to_be_bytes());
    tiny.dht = table(0x00, one_bit_codes(1), &[size as u8]);
    tiny.dht.extend(table(0x10, one_bit_codes(1), &[0x00]));
    let mut bits = BitWriter::default();
    let value = if difference < 0 { difference + (1 << size) - 1 } else { difference };
    for _ in 0..blocks {
        bits.put(0, 1);
        bits.put(value as u32, size);
        bits.put(0, 1);
    }
    tiny.data = bits.finish();
    tiny.bytes()
}

#[test]
fn extreme_coefficients_decode_exactly_as_turbojpeg_does() {
    for (difference, quant) in [(2047, 1), (-2047, 1), (1500, 255), (-900, 40_000), (2000, 65_535), (7, 300)] {
        let bytes = extreme_dc(64, difference, quant);
        assert_matches_turbojpeg(&format!("DC steps of {difference}, quantiser {quant}"), &bytes);
    }
}

/// `bytes` with every DQT entry multiplied by `factor` (as 16-bit tables).
fn with_scaled_quantisation(bytes: &[u8], factor: u32) -> Vec<u8> {
    let mut out = bytes[..2].to_vec();
    let mut pos = 2;
    while pos + 4 <= bytes.len() && bytes[pos] == 0xFF && bytes[pos + 1] != 0xDA {
        let length = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        let payload = &bytes[pos + 4..pos + 2 + length];
        if bytes[pos + 1] == 0xDB {
            let mut tables = Vec::new();
            for chunk in payload.chunks_exact(65) {
                tables.push(0x10 | (chunk[0] & 15));
                for &q in &chunk[1..] {
                    tables.extend_from_slice(&((u32::from(q) * factor).min(65_535) as u16).to_be_bytes());
                }
            }
            out.extend(segment(0xDB, &tables));
        } else {
            out.extend_from_slice(&bytes[pos..pos + 2 + length]);
        }
        pos += 2 + length;
    }
    out.extend_from_slice(&bytes[pos..]);
    out
}

#[test]
fn extreme_quantisation_tables_decode_exactly_as_turbojpeg_does() {
    use turbojpeg::Subsamp;
    for subsamp in [Subsamp::Sub2x2, Subsamp::None, Subsamp::Gray] {
        let bytes = compress(120, 90, subsamp, 90);
        for factor in [40, 200, 3000] {
            let scaled = with_scaled_quantisation(&bytes, factor);
            assert_ne!(scaled, bytes);
            assert_matches_turbojpeg(&format!("{subsamp:?}, quantisers ×{factor}"), &scaled);
        }
    }
}

#[test]
fn bytes_after_the_end_of_image_are_ignored() {
    // Motion photos append an MP4 after the still; other makers append metadata or padding.
    let mp4 =
        [&b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2"[..], b"\0\0\x10\0mdat", &[0xFF, 0xD8, 0xFF, 0xD9, 0x00, 0xFF][..]]
            .concat()
            .repeat(50);
    let junk: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let second_jpeg = compress(16, 16, turbojpeg::Subsamp::Gray, 50);
    for (name, original) in [
        ("baseline 4:2:0", compress(333, 250, turbojpeg::Subsamp::Sub2x2, 90)),
        ("progressive 4:2:2", include_bytes!("../../testdata/progressive_422.jpg").to_vec()),
        ("restart markers", include_bytes!("../../testdata/restart_422.jpg").to_vec()),
    ] {
        let reference = decode_result(&original).expect("the original decodes");
        for (trailer, tail) in
            [("an MP4", &mp4), ("junk", &junk), ("zeros", &vec![0; 4096]), ("a second JPEG", &second_jpeg)]
        {
            let bytes = [&original[..], &tail[..]].concat();
            let ours = decode_result(&bytes).unwrap_or_else(|e| panic!("{name} + {trailer}: {e}"));
            assert_eq!(ours.as_bytes(), reference.as_bytes(), "{name} + {trailer}");
            assert_matches_turbojpeg(&format!("{name} + {trailer}"), &bytes);
        }
    }
}

#[test]
fn comment_and_application_segments_are_skipped() {
    let original = compress(200, 120, turbojpeg::Subsamp::Sub2x1, 85);
    let mut bytes = original[..2].to_vec();
    bytes.extend(segment(0xFE, b"a comment \xFF\xD9 with marker-like bytes"));
    bytes.extend(segment(0xE1, b"Exif\0\0MM\0*\0\0\0\x08\0\0"));
    bytes.extend(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"));
    bytes.extend(segment(0xE2, &[&b"ICC_PROFILE\0\x01\x01"[..], &[0; 200]].concat()));
    bytes.extend(segment(0xED, b"Photoshop 3.0\0"));
    bytes.extend(segment(0xEF, &[0xFF; 30]));
    bytes.extend_from_slice(&original[2..]);
    assert_matches_turbojpeg("COM and APPn segments", &bytes);
    assert_eq!(
        decode_result(&bytes).expect("decodes").as_bytes(),
        decode_result(&original).expect("decodes").as_bytes()
    );
}

/// `bytes` without its AC scans (those with a spectral selection starting past 0).
fn without_ac_scans(bytes: &[u8]) -> Vec<u8> {
    let parsed = Jpeg::parse(bytes).expect("parses");
    let mut out = Vec::new();
    let mut pos = 0;
    for scan in parsed.scans.iter().filter(|scan| scan.ss > 0) {
        // The scan header starts 10 + 2 × components bytes before the data.
        let data_at = scan.data.as_ptr() as usize - bytes.as_ptr() as usize;
        let header_at = data_at - (6 + 2 * scan.components.len()) - 2;
        assert_eq!(&bytes[header_at..header_at + 2], [0xFF, 0xDA]);
        out.extend_from_slice(&bytes[pos..header_at]);
        pos = data_at + scan.data.len();
    }
    out.extend_from_slice(&bytes[pos..]);
    out
}

#[test]
fn progressive_files_without_ac_scans_are_left_to_libjpeg() {
    // Found by the `jpeg_eighth` fuzz target: libjpeg-turbo interpolates the DC values of a
    // progressive component that has no AC data (block smoothing), so its 1/8-scale output is
    // not the plain DC average there. Such files go to libjpeg-turbo.
    for (name, bytes) in [
        ("gray", &include_bytes!("../../testdata/progressive_gray.jpg")[..]),
        ("4:2:2", &include_bytes!("../../testdata/progressive_422.jpg")[..]),
    ] {
        let dc_only = without_ac_scans(bytes);
        assert!(dc_only.len() < bytes.len() / 2, "{name}: AC scans removed");
        let parsed = Jpeg::parse(&dc_only).expect("parses");
        assert!(parsed.eighth_unsupported().is_some(), "{name}");
        assert!(matches!(parsed.decode_eighth(), Err(JpegError::Unsupported(_))), "{name}");
        let plain_dc = turbo_eighth(&dc_only);
        assert_ne!(
            plain_dc.as_bytes(),
            Jpeg::parse(bytes).expect("parses").decode_eighth().expect("decodes").as_bytes()
        );
        let spec = sluice_core::pipeline::PipelineSpec { width: 16, height: 16, ..Default::default() };
        assert!(crate::imaging::process(&dc_only, &spec, 1_000_000).is_ok(), "{name}: libjpeg-turbo decodes it");
    }
}
