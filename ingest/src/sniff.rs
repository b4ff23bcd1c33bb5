//! Media type detection from the bytes themselves, image dimensions from the header (no pixel
//! decoding), and end-of-file checks that catch truncated uploads. A JPEG ends at the
//! end-of-image marker after its last scan, not at the end of the file: motion photos append an
//! MP4 and some makers append metadata, and such files are complete.

use sluice_core::{
    pipeline::{OversizeImage, check_image_size},
    tiff::{self, Ifd},
};

/// Whether an upload is a still image or a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
        }
    }
}

/// Every format Sluice accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    Tiff,
    Mp4,
    Mov,
    Webm,
    Mkv,
    Avi,
}

impl Format {
    pub fn kind(self) -> MediaKind {
        match self {
            Format::Jpeg | Format::Png | Format::Webp | Format::Gif | Format::Bmp | Format::Tiff => MediaKind::Image,
            Format::Mp4 | Format::Mov | Format::Webm | Format::Mkv | Format::Avi => MediaKind::Video,
        }
    }

    /// The canonical media type, stored and returned whatever the client declared.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
            Format::Bmp => "image/bmp",
            Format::Tiff => "image/tiff",
            Format::Mp4 => "video/mp4",
            Format::Mov => "video/quicktime",
            Format::Webm => "video/webm",
            Format::Mkv => "video/x-matroska",
            Format::Avi => "video/x-msvideo",
        }
    }

    /// The extension used in S3 keys.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Bmp => "bmp",
            Format::Tiff => "tiff",
            Format::Mp4 => "mp4",
            Format::Mov => "mov",
            Format::Webm => "webm",
            Format::Mkv => "mkv",
            Format::Avi => "avi",
        }
    }

    /// Whether a declared `Content-Type` is compatible with the sniffed format. Generic types
    /// (`application/octet-stream`, none at all) are compatible with everything; `image/*` must
    /// be an image and `video/*` a video; a specific subtype must name this format.
    pub fn matches_declared(self, declared: &str) -> bool {
        let essence = declared.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.split_once('/') {
            None => essence.is_empty(),
            Some(("application", "octet-stream")) => true,
            Some((top, sub)) => {
                let top_ok = top == self.kind().as_str();
                let sub_ok = sub == "*" || self.aliases().contains(&essence.as_str()) || essence == self.content_type();
                top_ok && sub_ok
            }
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            Format::Jpeg => &["image/jpg", "image/pjpeg"],
            Format::Png => &["image/x-png"],
            Format::Bmp => &["image/x-ms-bmp", "image/x-bmp"],
            Format::Tiff => &["image/tif"],
            Format::Mkv => &["video/matroska"],
            Format::Avi => &["video/avi", "video/msvideo", "video/vnd.avi"],
            Format::Mp4 => &["video/mpeg4"],
            _ => &[],
        }
    }
}

/// How many leading bytes [`sniff`] and [`image_dimensions`] look at.
pub const HEAD_LEN: usize = 256 * 1024;

/// `ftyp` major brands of MP4-family video files.
const VIDEO_BRANDS: &[&[u8]] = &[
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"M4VP", b"mmp4",
    b"dash", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"MSNV", b"f4v ", b"XAVC",
];

/// Identifies the format from the first bytes, or `None` when it is nothing Sluice accepts.
pub fn sniff(head: &[u8]) -> Option<Format> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, &[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if at(0, b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        Some(Format::Webp)
    } else if at(0, b"RIFF") && at(8, b"AVI ") {
        Some(Format::Avi)
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        Some(Format::Gif)
    } else if at(0, b"BM") && head.len() >= 26 {
        Some(Format::Bmp)
    } else if at(0, b"II*\0") || at(0, b"MM\0*") {
        Some(Format::Tiff)
    } else if at(4, b"ftyp") {
        // ISO-BMFF also carries HEIC/AVIF stills and M4A audio: accept only video brands.
        let brand = head.get(8..12)?;
        if brand == b"qt  " {
            Some(Format::Mov)
        } else if VIDEO_BRANDS.contains(&brand) {
            Some(Format::Mp4)
        } else {
            None
        }
    } else if at(4, b"moov") || at(4, b"wide") || at(4, b"mdat") {
        Some(Format::Mov)
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        let window = &head[..head.len().min(64)];
        Some(if window.windows(4).any(|w| w == b"webm") { Format::Webm } else { Format::Mkv })
    } else {
        None
    }
}

/// Why an image header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the {0} header is truncated or malformed")]
    Malformed(&'static str),
    #[error(transparent)]
    Oversize(#[from] OversizeImage),
    /// The header lies past the bytes read so far (a TIFF whose first IFD follows its data): the
    /// upload reads it as it streams ([`TiffIfd`]). Never an answer to a client.
    #[error("the TIFF's first IFD is at byte {ifd}, past the head")]
    Later { ifd: u64, little_endian: bool },
    /// A format variant Sluice does not decode (JPEG-compressed TIFF: each tile embeds a JPEG
    /// of any size, so the decoding work is not bounded by the image's pixels).
    #[error("{0}, which Sluice does not decode")]
    Unsupported(&'static str),
}

fn u16_be(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 2).map(|s| u32::from(u16::from_be_bytes([s[0], s[1]])))
}
fn u16_le(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 2).map(|s| u32::from(u16::from_le_bytes([s[0], s[1]])))
}
fn u32_be(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}
fn u32_le(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u24_le(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 3).map(|s| u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

/// Reads width and height from an image header and enforces `max_pixels`.
pub fn image_dimensions(format: Format, head: &[u8], max_pixels: u64) -> Result<(u32, u32), HeaderError> {
    let malformed = || HeaderError::Malformed(format.extension());
    let (width, height) = match format {
        Format::Png => {
            if head.get(12..16) != Some(b"IHDR") {
                return Err(malformed());
            }
            (u32_be(head, 16).ok_or_else(malformed)?, u32_be(head, 20).ok_or_else(malformed)?)
        }
        Format::Gif => (u16_le(head, 6).ok_or_else(malformed)?, u16_le(head, 8).ok_or_else(malformed)?),
        Format::Bmp => {
            let header_size = u32_le(head, 14).ok_or_else(malformed)?;
            if header_size == 12 {
                (u16_le(head, 18).ok_or_else(malformed)?, u16_le(head, 20).ok_or_else(malformed)?)
            } else {
                let w = u32_le(head, 18).ok_or_else(malformed)? as i32;
                let h = u32_le(head, 22).ok_or_else(malformed)? as i32;
                (w.unsigned_abs(), h.unsigned_abs())
            }
        }
        Format::Webp => match head.get(12..16) {
            Some(b"VP8 ") => {
                if head.get(23..26) != Some(&[0x9D, 0x01, 0x2A]) {
                    return Err(malformed());
                }
                (u16_le(head, 26).ok_or_else(malformed)? & 0x3FFF, u16_le(head, 28).ok_or_else(malformed)? & 0x3FFF)
            }
            Some(b"VP8L") => {
                if head.get(20) != Some(&0x2F) {
                    return Err(malformed());
                }
                let bits = u32_le(head, 21).ok_or_else(malformed)?;
                ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            }
            Some(b"VP8X") => (u24_le(head, 24).ok_or_else(malformed)? + 1, u24_le(head, 27).ok_or_else(malformed)? + 1),
            _ => return Err(malformed()),
        },
        Format::Jpeg => jpeg_dimensions(head).ok_or_else(malformed)?,
        Format::Tiff => {
            let (ifd, little_endian) = tiff::header(head).ok_or_else(malformed)?;
            if ifd.saturating_add(tiff::IFD_BYTES as u64) > head.len() as u64 && head.len() == HEAD_LEN {
                // The IFD lies past the head (more of the file follows): read it as it streams.
                return Err(HeaderError::Later { ifd, little_endian });
            }
            let ifd = usize::try_from(ifd).ok().and_then(|at| Ifd::at(head, at, little_endian));
            return tiff_checked(ifd.ok_or_else(malformed)?, max_pixels);
        }
        _ => return Err(malformed()),
    };
    checked(format, width, height, max_pixels)
}

/// The limits every image header is held to: no empty side, the pixel limit, the side limit.
fn checked(format: Format, width: u32, height: u32, max_pixels: u64) -> Result<(u32, u32), HeaderError> {
    if width == 0 || height == 0 {
        return Err(HeaderError::Malformed(format.extension()));
    }
    check_image_size(width, height, max_pixels)?;
    Ok((width, height))
}

/// A TIFF's first IFD held to the limits, and no JPEG compression.
fn tiff_checked(ifd: Ifd<'_>, max_pixels: u64) -> Result<(u32, u32), HeaderError> {
    if matches!(ifd.value(tiff::COMPRESSION), Some(6 | 7)) {
        return Err(HeaderError::Unsupported("a JPEG-compressed TIFF"));
    }
    let malformed = || HeaderError::Malformed("tiff");
    let width = ifd.value(tiff::IMAGE_WIDTH).ok_or_else(malformed)?;
    let height = ifd.value(tiff::IMAGE_LENGTH).ok_or_else(malformed)?;
    checked(Format::Tiff, width, height, max_pixels)
}

/// Walks JPEG segments to the first start-of-frame marker.
fn jpeg_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    loop {
        while *b.get(i)? != 0xFF {
            i += 1;
        }
        while *b.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *b.get(i)?;
        i += 1;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return None,
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                let height = u16_be(b, i + 3)?;
                let width = u16_be(b, i + 5)?;
                return Some((width, height));
            }
            _ => {
                let len = u16_be(b, i)? as usize;
                if len < 2 {
                    return None;
                }
                i += len;
            }
        }
    }
}

/// A TIFF's first IFD, caught as the body streams past it: writers such as libtiff put it after
/// the image data, beyond the head that [`image_dimensions`] reads.
#[derive(Debug)]
pub struct TiffIfd {
    at: u64,
    little_endian: bool,
    bytes: Vec<u8>,
}

impl TiffIfd {
    pub fn new(at: u64, little_endian: bool) -> Self {
        TiffIfd { at, little_endian, bytes: Vec::new() }
    }

    /// Keeps what of [`tiff::IFD_BYTES`] from the IFD's start lies in `chunk`, which starts at
    /// `offset` in the file (chunks arrive in order).
    pub fn feed(&mut self, offset: u64, chunk: &[u8]) {
        let wanted = self.at + self.bytes.len() as u64;
        let end = offset + chunk.len() as u64;
        if self.bytes.len() >= tiff::IFD_BYTES || wanted < offset || wanted >= end {
            return;
        }
        let start = (wanted - offset) as usize;
        let take = (chunk.len() - start).min(tiff::IFD_BYTES - self.bytes.len());
        self.bytes.extend_from_slice(&chunk[start..start + take]);
    }

    /// The dimensions the IFD gives, checked as [`image_dimensions`] checks a head.
    pub fn dimensions(&self, max_pixels: u64) -> Result<(u32, u32), HeaderError> {
        tiff_checked(Ifd::at(&self.bytes, 0, self.little_endian).ok_or(HeaderError::Malformed("tiff"))?, max_pixels)
    }
}

/// Checks the end of a complete upload for the format's terminator or declared length, catching
/// truncated files. `tail` holds the last bytes (at least 64 when the file is that long);
/// `total` is the full length. A JPEG is complete when its image has ended, whatever follows:
/// that is known when the end lies within `head` (or the whole file is the head); past the head
/// only a file that ends with the end-of-image marker can be told complete here, so uploads
/// larger than the head should be fed to an [`EndCheck`] instead.
pub fn is_complete(format: Format, head: &[u8], tail: &[u8], total: u64) -> bool {
    match format {
        Format::Jpeg => {
            let structure = JpegEnd::of(head);
            let whole_file_read = total <= head.len() as u64;
            structure.ended() || (!whole_file_read && jpeg_tail_is_end(tail))
        }
        Format::Png => tail.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]),
        Format::Gif => tail.last() == Some(&0x3B),
        Format::Webp | Format::Avi => {
            // RIFF: the size field counts everything after the first 8 bytes (padded to even).
            u32_le(head, 4).is_some_and(|size| u64::from(size) + 8 <= total)
        }
        Format::Bmp => u32_le(head, 2).is_some_and(|size| u64::from(size) <= total),
        Format::Tiff | Format::Mp4 | Format::Mov | Format::Webm | Format::Mkv => total >= 16,
    }
}

/// Whether the file's last bytes are an end-of-image marker, allowing the zero padding some
/// encoders append (a truncated file may end so too, at a thumbnail's marker: a fallback only).
fn jpeg_tail_is_end(tail: &[u8]) -> bool {
    let trimmed = tail.iter().rposition(|&b| b != 0).map_or(&tail[..0], |p| &tail[..=p]);
    trimmed.ends_with(&[0xFF, 0xD9])
}

/// How many trailing bytes an [`EndCheck`] keeps.
const END_TAIL_LEN: usize = 64;

/// What [`is_complete`] needs of an upload that arrives in chunks, gathered as they pass: the
/// last bytes, the length and, for a JPEG, whether its image has ended (wherever in the file).
#[derive(Debug, Clone)]
pub struct EndCheck {
    format: Format,
    tail: Vec<u8>,
    total: u64,
    jpeg: JpegEnd,
}

impl EndCheck {
    pub fn new(format: Format) -> Self {
        EndCheck { format, tail: Vec::with_capacity(2 * END_TAIL_LEN), total: 0, jpeg: JpegEnd::default() }
    }

    /// Takes the next bytes of the upload (every chunk, in order, the head included).
    pub fn feed(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.format == Format::Jpeg {
            self.jpeg.feed(chunk);
        }
        self.tail.extend_from_slice(&chunk[chunk.len().saturating_sub(END_TAIL_LEN)..]);
        let excess = self.tail.len().saturating_sub(END_TAIL_LEN);
        self.tail.drain(..excess);
    }

    /// Whether the upload fed so far is a complete file; `head` is its first bytes, as given to
    /// [`sniff`].
    pub fn is_complete(&self, head: &[u8]) -> bool {
        match self.format {
            Format::Jpeg => self.jpeg.ended(),
            format => is_complete(format, head, &self.tail, self.total),
        }
    }
}

/// Follows a JPEG's marker structure as its bytes go past: segments are skipped by their
/// length (so an EXIF thumbnail's markers are never mistaken for the image's), entropy-coded
/// data up to the next marker that is not a restart marker or a stuffed byte. The image has
/// ended at an end-of-image marker outside any segment; whatever follows it is not the image's.
#[derive(Debug, Clone, Default)]
pub struct JpegEnd {
    state: JpegState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum JpegState {
    /// Nothing read yet.
    #[default]
    Start,
    /// The `0xFF` of the start-of-image marker read.
    StartMarker,
    /// Between segments, looking for the next marker's `0xFF` (libjpeg skips stray bytes).
    BetweenSegments,
    /// Inside entropy-coded data, looking for a `0xFF`.
    Entropy,
    /// After a `0xFF`; `in_scan` when it came in entropy-coded data.
    Marker {
        in_scan: bool,
    },
    /// A segment's length, first or second byte.
    LengthHigh {
        scan: bool,
    },
    LengthLow {
        high: u8,
        scan: bool,
    },
    /// A segment's payload, `left` bytes to go; entropy-coded data follows a scan header.
    Payload {
        left: u16,
        scan: bool,
    },
    /// The end-of-image marker has been read.
    Ended,
    /// Not a JPEG structure: no start-of-image marker, or a segment length under 2.
    Invalid,
}

impl JpegEnd {
    /// The state after reading all of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut end = JpegEnd::default();
        end.feed(bytes);
        end
    }

    /// Whether the end-of-image marker has gone past.
    pub fn ended(&self) -> bool {
        self.state == JpegState::Ended
    }

    /// Reads the next bytes of the file.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        use JpegState::*;
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.state {
                Ended | Invalid => return,
                BetweenSegments | Entropy => {
                    // Skip to the next 0xFF in one step.
                    let Some(at) = bytes.iter().position(|&b| b == 0xFF) else { return };
                    self.state = Marker { in_scan: self.state == Entropy };
                    bytes = &bytes[at + 1..];
                    continue;
                }
                Payload { left, scan } => {
                    let skip = bytes.len().min(usize::from(left));
                    bytes = &bytes[skip..];
                    let left = left - skip as u16;
                    self.state = match (left, scan) {
                        (0, true) => Entropy,
                        (0, false) => BetweenSegments,
                        _ => Payload { left, scan },
                    };
                    continue;
                }
                Start => self.state = if byte == 0xFF { StartMarker } else { Invalid },
                StartMarker => self.state = if byte == 0xD8 { BetweenSegments } else { Invalid },
                Marker { in_scan } => {
                    self.state = match byte {
                        0xFF => Marker { in_scan },
                        // A stuffed 0xFF data byte or a restart marker: the scan goes on.
                        0x00 | 0xD0..=0xD7 if in_scan => Entropy,
                        0x00 | 0x01 | 0xD0..=0xD8 => BetweenSegments,
                        0xD9 => Ended,
                        marker => LengthHigh { scan: marker == 0xDA },
                    }
                }
                LengthHigh { scan } => self.state = LengthLow { high: byte, scan },
                LengthLow { high, scan } => {
                    self.state = match u16::from_be_bytes([high, byte]) {
                        0 | 1 => Invalid,
                        2 if scan => Entropy,
                        2 => BetweenSegments,
                        length => Payload { left: length - 2, scan },
                    }
                }
            }
            bytes = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TIFF of `data` bytes of image data followed by its directory (as libtiff lays it out).
    fn late_tiff(width: u32, height: u32, data: u32, compression: u16) -> Vec<u8> {
        let mut out = b"II*\0".to_vec();
        out.extend((8 + data).to_le_bytes());
        out.extend(vec![7u8; data as usize]);
        out.extend(3u16.to_le_bytes());
        for (tag, value) in [(256u16, width), (257, height), (259, u32::from(compression))] {
            out.extend(tag.to_le_bytes());
            out.extend(4u16.to_le_bytes());
            out.extend(1u32.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        out.extend([0u8; 4]);
        out
    }

    #[test]
    fn a_tiff_directory_past_the_head_is_read_as_the_body_streams() {
        let file = late_tiff(640, 480, 400_000, 1);
        let head = &file[..HEAD_LEN];
        let Err(HeaderError::Later { ifd, little_endian }) = image_dimensions(Format::Tiff, head, 50_000_000) else {
            panic!("the directory is past the head");
        };
        for chunk in [1usize, 7, 4096, 1 << 20] {
            let mut late = TiffIfd::new(ifd, little_endian);
            let mut offset = 0u64;
            for piece in file.chunks(chunk) {
                late.feed(offset, piece);
                offset += piece.len() as u64;
            }
            assert_eq!(late.dimensions(50_000_000), Ok((640, 480)), "chunks of {chunk}");
        }
        let mut bomb = TiffIfd::new(ifd, little_endian);
        bomb.feed(0, &late_tiff(100_000, 100_000, 400_000, 1));
        assert!(matches!(bomb.dimensions(50_000_000), Err(HeaderError::Oversize(OversizeImage::TooManyPixels { .. }))));
        let mut jpeg = TiffIfd::new(ifd, little_endian);
        jpeg.feed(0, &late_tiff(64, 64, 400_000, 7));
        assert!(matches!(jpeg.dimensions(50_000_000), Err(HeaderError::Unsupported(_))));
        let mut cut = TiffIfd::new(ifd, little_endian);
        cut.feed(0, &file[..file.len() - 20]);
        assert!(matches!(cut.dimensions(50_000_000), Err(HeaderError::Malformed(_))), "a directory cut short");
        // A small file whose directory is past its end is malformed, not deferred.
        assert!(matches!(image_dimensions(Format::Tiff, &file[..1000], 50_000_000), Err(HeaderError::Malformed(_))));
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend(width.to_be_bytes());
        b.extend(height.to_be_bytes());
        b.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
        b.extend([0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
        b
    }

    #[test]
    fn sniffs_every_supported_format() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(Format::Jpeg));
        assert_eq!(sniff(&png(1, 1)), Some(Format::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Format::Webp));
        assert_eq!(sniff(b"RIFF\0\0\0\0AVI LIST"), Some(Format::Avi));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some(Format::Gif));
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Some(Format::Tiff));
        assert_eq!(sniff(b"\0\0\0\x18ftypisom"), Some(Format::Mp4));
        assert_eq!(sniff(b"\0\0\0\x14ftypqt  "), Some(Format::Mov));
        assert_eq!(sniff(b"\0\0\0\x18ftypheic"), None, "HEIC stills are not video");
        assert_eq!(sniff(b"\0\0\0\x18ftypM4A "), None, "M4A audio is not video");
        assert_eq!(sniff(b"\x1a\x45\xdf\xa3\x01\0\0\0\0\0\0\x1f\x42\x86\x81\x01webm"), Some(Format::Webm));
        assert_eq!(sniff(b"\x1a\x45\xdf\xa3\x01\0\0\0\0\0\0\x1f\x42\x86\x81\x01matroska"), Some(Format::Mkv));
        assert_eq!(sniff(b"<html><body>hi</body></html>"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn reads_png_dimensions_and_refuses_decompression_bombs() {
        assert_eq!(image_dimensions(Format::Png, &png(640, 480), 50_000_000), Ok((640, 480)));
        assert!(matches!(
            image_dimensions(Format::Png, &png(100_000, 100_000), 50_000_000),
            Err(HeaderError::Oversize(OversizeImage::TooManyPixels { .. }))
        ));
        assert!(image_dimensions(Format::Png, &png(0, 10), 50_000_000).is_err());
        assert!(image_dimensions(Format::Png, &png(10, 10)[..18], 50_000_000).is_err());
    }

    #[test]
    fn detects_truncated_png_and_jpeg() {
        let full = png(2, 2);
        assert!(is_complete(Format::Png, &full, &full, full.len() as u64));
        let cut = &full[..full.len() - 5];
        assert!(!is_complete(Format::Png, cut, cut, cut.len() as u64));
        let jpeg = [0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x02, 0xFF, 0xD9, 0, 0];
        assert!(is_complete(Format::Jpeg, &jpeg, &jpeg, 10));
        assert!(!is_complete(Format::Jpeg, &jpeg[..6], &jpeg[..6], 6));
        // Larger than the head: the terminator at the end still tells.
        assert!(is_complete(Format::Jpeg, &jpeg[..4], &jpeg, 1 << 30));
    }

    fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, marker];
        out.extend(u16::try_from(payload.len() + 2).expect("short").to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A 24×16 JPEG's structure: an EXIF segment holding a thumbnail's markers, a frame, one
    /// scan of `entropy` and the end-of-image marker.
    fn jpeg_with(entropy: &[u8]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        b.extend(segment(0xE1, b"Exif\0\0 a thumbnail: \xFF\xD8\xFF\xDB\0\x04\xFF\xD9 end"));
        b.extend(segment(0xFE, b"a comment"));
        b.extend(segment(0xC0, &[8, 0, 16, 0, 24, 1, 1, 0x11, 0]));
        b.extend(segment(0xDA, &[1, 1, 0, 0, 63, 0]));
        b.extend_from_slice(entropy);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    /// What a motion photo appends: an MP4 (with marker-like bytes in its data).
    fn mp4() -> Vec<u8> {
        let mut b = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom\0\0\x04\x08mdat".to_vec();
        b.extend((0..1024u32).map(|i| if i % 3 == 0 { 0xFF } else { (i % 256) as u8 }));
        b.extend([0xFF, 0xD9, 0x12, 0x34]);
        b
    }

    fn tail(bytes: &[u8]) -> &[u8] {
        &bytes[bytes.len().saturating_sub(64)..]
    }

    #[test]
    fn a_jpeg_followed_by_other_data_is_complete() {
        let still = jpeg_with(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD1, 0x78]);
        let motion = [&still[..], &mp4()].concat();
        assert_eq!(sniff(&motion), Some(Format::Jpeg));
        assert_eq!(image_dimensions(Format::Jpeg, &motion, 50_000_000), Ok((24, 16)));
        for (name, file) in [("plain", &still), ("motion photo", &motion)] {
            assert!(JpegEnd::of(file).ended(), "{name}");
            assert!(is_complete(Format::Jpeg, file, tail(file), file.len() as u64), "{name}");
        }
        let metadata = [&still[..], b"maker notes \0\x01 and more", &[0; 100]].concat();
        assert!(is_complete(Format::Jpeg, &metadata, tail(&metadata), metadata.len() as u64));
    }

    #[test]
    fn a_jpeg_cut_anywhere_before_its_end_is_truncated() {
        let still = jpeg_with(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        for cut in 0..still.len() - 1 {
            let part = &still[..cut];
            assert!(!JpegEnd::of(part).ended(), "cut at {cut}");
            assert!(!is_complete(Format::Jpeg, part, tail(part), cut as u64), "cut at {cut}");
        }
        // The thumbnail's end-of-image marker inside the EXIF segment is not the image's.
        let thumbnail_end = still.windows(2).position(|w| w == [0xFF, 0xD9]).expect("in the EXIF segment");
        assert!(!JpegEnd::of(&still[..thumbnail_end + 2]).ended());
        assert!(!JpegEnd::of(b"GIF89a\xFF\xD9").ended(), "not a JPEG");
        let bad_length = [&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x01][..], &[0xFF, 0xD9]].concat();
        assert!(!JpegEnd::of(&bad_length).ended(), "a segment length under 2");
    }

    #[test]
    fn an_end_check_fed_in_chunks_finds_an_end_past_the_head() {
        // The image ends well past the head that `is_complete` sees; the check sees every chunk.
        let still = jpeg_with(&vec![0x55; 300_000]);
        let motion = [&still[..], &mp4()].concat();
        let head = &motion[..HEAD_LEN];
        assert!(!is_complete(Format::Jpeg, head, tail(&motion), motion.len() as u64), "the head alone cannot tell");
        for chunk in [1, 7, 4096, 1 << 20] {
            let mut check = EndCheck::new(Format::Jpeg);
            motion.chunks(chunk).for_each(|c| check.feed(c));
            assert!(check.is_complete(head), "chunks of {chunk}");
            let mut cut = EndCheck::new(Format::Jpeg);
            still[..still.len() - 1].chunks(chunk).for_each(|c| cut.feed(c));
            assert!(!cut.is_complete(head), "truncated, chunks of {chunk}");
        }
        let png = png(3, 3);
        let mut check = EndCheck::new(Format::Png);
        png.chunks(5).for_each(|c| check.feed(c));
        assert!(check.is_complete(&png), "other formats keep their terminator checks");
        let mut cut = EndCheck::new(Format::Png);
        cut.feed(&png[..png.len() - 1]);
        assert!(!cut.is_complete(&png));
    }

    #[test]
    fn declared_types_must_agree_with_the_bytes() {
        assert!(Format::Png.matches_declared("image/png"));
        assert!(Format::Png.matches_declared("image/*"));
        assert!(Format::Png.matches_declared("application/octet-stream"));
        assert!(Format::Jpeg.matches_declared("image/jpg"));
        assert!(!Format::Png.matches_declared("video/mp4"));
        assert!(!Format::Png.matches_declared("image/jpeg"));
        assert!(!Format::Mp4.matches_declared("image/png"));
    }
}
