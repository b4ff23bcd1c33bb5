//! The first image file directory (IFD) of a TIFF structure, read from its header without
//! decoding anything. TIFF files and the EXIF block of a JPEG share this layout; upload sniffing
//! (sizes, compression) and decoding (compression, orientation) read it through here.

/// Most entries an IFD may have: real writers use a few dozen. A directory claiming more is
/// refused rather than read in part, so no tag can hide past the entries that were read.
pub const MAX_ENTRIES: usize = 512;

/// The bytes of an IFD read at most: its entry count and [`MAX_ENTRIES`] entries.
pub const IFD_BYTES: usize = 2 + MAX_ENTRIES * 12;

/// Tags Sluice reads.
pub const IMAGE_WIDTH: u16 = 256;
pub const IMAGE_LENGTH: u16 = 257;
pub const COMPRESSION: u16 = 259;
pub const ORIENTATION: u16 = 0x0112;
const READ_TAGS: [u16; 4] = [IMAGE_WIDTH, IMAGE_LENGTH, COMPRESSION, ORIENTATION];

/// Where the first IFD starts, and whether the structure is little-endian; `None` unless `b`
/// starts with a TIFF header (`II*\0` or `MM\0*`).
pub fn header(b: &[u8]) -> Option<(u64, bool)> {
    let little_endian = match b.get(0..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    Some((u64::from(read_u32(b, 4, little_endian)?), little_endian))
}

/// One IFD, every entry of it within the bytes it was read from.
#[derive(Debug, Clone, Copy)]
pub struct Ifd<'a> {
    entries: &'a [u8],
    little_endian: bool,
}

impl<'a> Ifd<'a> {
    /// The IFD at `offset` in `b`; `None` when its count or an entry lies past the end of `b`, it
    /// has more than [`MAX_ENTRIES`] entries, or a tag Sluice reads is given twice or is not a
    /// single inline BYTE, SHORT or LONG. Decoders disagree on which of two entries counts (the
    /// `tiff` crate takes the last), and an out-of-line value is not where [`Ifd::value`] reads
    /// it, so either would let a file say one thing to the checks and another to the decoder.
    /// Other tags may be anything (some writers repeat one).
    pub fn at(b: &'a [u8], offset: usize, little_endian: bool) -> Option<Self> {
        let count = usize::from(read_u16(b, offset, little_endian)?);
        if count > MAX_ENTRIES {
            return None;
        }
        let start = offset.checked_add(2)?;
        let entries = b.get(start..start.checked_add(count * 12)?)?;
        let mut seen = [false; READ_TAGS.len()];
        for entry in entries.chunks_exact(12) {
            let tag = read_u16(entry, 0, little_endian)?;
            let Some(read) = READ_TAGS.iter().position(|&t| t == tag) else { continue };
            let single_inline = matches!(read_u16(entry, 2, little_endian)?, 1 | 3 | 4 | 6 | 8 | 9)
                && read_u32(entry, 4, little_endian)? == 1;
            if !single_inline || std::mem::replace(&mut seen[read], true) {
                return None;
            }
        }
        Some(Ifd { entries, little_endian })
    }

    /// The first IFD of a TIFF structure that starts at `b[0]`.
    pub fn first(b: &'a [u8]) -> Option<Self> {
        let (offset, little_endian) = header(b)?;
        Self::at(b, usize::try_from(offset).ok()?, little_endian)
    }

    /// The value of `tag` held in its entry (BYTE, SHORT or LONG, as its type says); `None` when
    /// the tag is absent.
    pub fn value(&self, tag: u16) -> Option<u32> {
        let le = self.little_endian;
        self.entries.chunks_exact(12).find(|entry| read_u16(entry, 0, le) == Some(tag)).and_then(
            |entry| match read_u16(entry, 2, le)? {
                1 | 6 => entry.get(8).copied().map(u32::from),
                3 | 8 => read_u16(entry, 8, le).map(u32::from),
                _ => read_u32(entry, 8, le),
            },
        )
    }
}

fn read_u16(b: &[u8], i: usize, little_endian: bool) -> Option<u16> {
    let bytes = [*b.get(i)?, *b.get(i.checked_add(1)?)?];
    Some(if little_endian { u16::from_le_bytes(bytes) } else { u16::from_be_bytes(bytes) })
}

fn read_u32(b: &[u8], i: usize, little_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = b.get(i..i.checked_add(4)?)?.try_into().ok()?;
    Some(if little_endian { u32::from_le_bytes(bytes) } else { u32::from_be_bytes(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header and a first IFD of `entries` (tag, type, value) right after it.
    fn tiff(little_endian: bool, entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let u16b = |v: u16| if little_endian { v.to_le_bytes() } else { v.to_be_bytes() };
        let u32b = |v: u32| if little_endian { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut b = if little_endian { b"II*\0".to_vec() } else { b"MM\0*".to_vec() };
        b.extend(u32b(8));
        b.extend(u16b(entries.len() as u16));
        for &(tag, kind, value) in entries {
            b.extend(u16b(tag));
            b.extend(u16b(kind));
            b.extend(u32b(1));
            match kind {
                3 => b.extend([u16b(value as u16), [0, 0]].concat()),
                1 => b.extend([value as u8, 0, 0, 0]),
                _ => b.extend(u32b(value)),
            }
        }
        b
    }

    #[test]
    fn values_are_read_by_their_type_in_either_byte_order() {
        for le in [true, false] {
            let file =
                tiff(le, &[(IMAGE_WIDTH, 4, 70_000), (IMAGE_LENGTH, 3, 480), (COMPRESSION, 4, 7), (ORIENTATION, 1, 6)]);
            let ifd = Ifd::first(&file).expect("an IFD");
            assert_eq!(ifd.value(IMAGE_WIDTH), Some(70_000));
            assert_eq!(ifd.value(IMAGE_LENGTH), Some(480));
            // A LONG compression in a big-endian file: its high half is not the value.
            assert_eq!(ifd.value(COMPRESSION), Some(7), "little endian: {le}");
            assert_eq!(ifd.value(ORIENTATION), Some(6));
            assert_eq!(ifd.value(999), None);
        }
    }

    #[test]
    fn directories_that_do_not_fit_or_claim_too_much_are_refused() {
        let file = tiff(true, &[(IMAGE_WIDTH, 3, 8), (IMAGE_LENGTH, 3, 8)]);
        assert!(Ifd::first(&file[..file.len() - 1]).is_none(), "an entry cut short");
        assert!(Ifd::first(&file[..9]).is_none(), "the count cut short");
        assert!(Ifd::first(b"II*\0\xff\xff\xff\xff").is_none(), "an offset past the end");
        assert!(Ifd::first(b"PK\x03\x04\x08\0\0\0\0\0").is_none(), "not a TIFF");
        let many: Vec<(u16, u16, u32)> = (0..=MAX_ENTRIES as u16).map(|n| (1000 + n, 3, 1)).collect();
        assert!(Ifd::first(&tiff(true, &many)).is_none(), "more entries than any writer makes");
        assert!(Ifd::first(&tiff(true, &many[..MAX_ENTRIES])).is_some());
    }

    #[test]
    fn a_tag_given_twice_or_out_of_line_is_refused_so_checks_and_decoder_read_the_same() {
        // The `tiff` crate keeps the last of two entries: "uncompressed" first, JPEG last.
        let twice = tiff(true, &[(IMAGE_WIDTH, 3, 8), (COMPRESSION, 3, 1), (IMAGE_LENGTH, 3, 8), (COMPRESSION, 3, 7)]);
        assert!(Ifd::first(&twice).is_none(), "a duplicate compression");
        let twice = tiff(false, &[(IMAGE_WIDTH, 3, 8), (IMAGE_LENGTH, 3, 8), (IMAGE_WIDTH, 4, 70_000)]);
        assert!(Ifd::first(&twice).is_none(), "a duplicate width");
        // LONG8 (16) holds an offset in a classic TIFF, not the value.
        assert!(Ifd::first(&tiff(true, &[(IMAGE_WIDTH, 3, 8), (COMPRESSION, 16, 1)])).is_none(), "LONG8");
        assert!(Ifd::first(&tiff(true, &[(IMAGE_WIDTH, 3, 8), (COMPRESSION, 2, 1)])).is_none(), "ASCII");
        let mut counted = tiff(true, &[(COMPRESSION, 3, 1)]);
        counted[14] = 2; // the entry's count: two SHORTs
        assert!(Ifd::first(&counted).is_none(), "two values");
        // Tags Sluice does not read may be anything, twice too.
        assert!(Ifd::first(&tiff(true, &[(IMAGE_WIDTH, 3, 8), (700, 16, 1), (COMPRESSION, 3, 1)])).is_some());
        assert!(Ifd::first(&tiff(true, &[(IMAGE_WIDTH, 3, 8), (305, 2, 1), (305, 2, 1)])).is_some());
    }
}
