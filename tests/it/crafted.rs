//! Files built byte by byte, for the inputs no encoder writes: headers claiming more than they
//! hold, directories in odd places, compression Sluice refuses.

/// A PNG of its signature and `chunks` (type, data), each with its length and CRC.
pub fn png(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in chunks {
        let body = [&kind[..], data].concat();
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    }
    png
}

/// The data of an IHDR chunk claiming `width`×`height`, 8-bit RGB.
pub fn ihdr(width: u32, height: u32) -> Vec<u8> {
    [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 2, 0, 0, 0]].concat()
}

/// A PNG whose header claims `width`×`height`, with no pixel data.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    png(&[(b"IHDR", &ihdr(width, height)), (b"IEND", &[])])
}

/// A little-endian TIFF structure: `data` right after the 8-byte header, then one directory of
/// `entries` (tag, type, value: a SHORT in the entry's first two value bytes) and no next one.
/// With `data` empty the directory comes first, as most writers put it; with data, it follows
/// them, as libtiff puts it.
pub fn tiff(data: &[u8], entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = b"II*\0".to_vec();
    out.extend((8 + data.len() as u32).to_le_bytes());
    out.extend(data);
    out.extend((entries.len() as u16).to_le_bytes());
    for &(tag, kind, value) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        if kind == 3 {
            out.extend((value as u16).to_le_bytes());
            out.extend([0, 0]);
        } else {
            out.extend(value.to_le_bytes());
        }
    }
    out.extend([0, 0, 0, 0]);
    out
}

/// The directory entries of an uncompressed 8-bit gray `width`×`height` TIFF whose one strip of
/// `width * height` bytes starts at `strip_at`.
pub fn gray_tiff_entries(width: u32, height: u32, strip_at: u32) -> [(u16, u16, u32); 9] {
    [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, strip_at),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, width * height),
    ]
}

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn the_builders_write_what_decoders_read() {
    assert!(png_claiming(7, 5).ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]));
    let (w, h) = (6u32, 4u32);
    let pixels: Vec<u8> = (0..w * h).map(|i| i as u8 * 10).collect();
    let late = tiff(&pixels, &gray_tiff_entries(w, h, 8));
    let first = [tiff(&[], &gray_tiff_entries(w, h, 8 + 2 + 9 * 12 + 4)), pixels.clone()].concat();
    for file in [late, first] {
        let img = image::load_from_memory(&file).expect("a TIFF").to_luma8();
        assert_eq!((img.width(), img.height()), (w, h));
        assert_eq!(img.into_raw(), pixels);
    }
}
