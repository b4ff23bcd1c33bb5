//! Upload sniffing on arbitrary bytes: format detection, header dimensions and the end checks
//! always return, and a streamed end check agrees with itself however the upload is chunked,
//! and with the one-shot check when the whole file fits in the head.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../ingest/src/sniff.rs"]
#[allow(dead_code)]
mod sniff;

use sniff::Format;

const IMAGE_FORMATS: [Format; 6] = [Format::Jpeg, Format::Png, Format::Webp, Format::Gif, Format::Bmp, Format::Tiff];

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(sniff::HEAD_LEN)];
    let tail = &data[data.len().saturating_sub(64)..];
    let total = data.len() as u64;
    // Every header reader, whatever the sniffed format.
    for format in IMAGE_FORMATS {
        if let Ok((w, h)) = sniff::image_dimensions(format, head, 50_000_000) {
            assert!(w > 0 && h > 0 && u64::from(w) * u64::from(h) <= 50_000_000);
        }
    }
    let Some(format) = sniff::sniff(head) else { return };
    let once = sniff::is_complete(format, head, tail, total);
    let split = usize::from(data.first().copied().unwrap_or(0)) * 31 % (data.len() + 1);
    let mut whole = sniff::EndCheck::new(format);
    whole.feed(data);
    let mut halves = sniff::EndCheck::new(format);
    halves.feed(&data[..split]);
    halves.feed(&data[split..]);
    let mut bytewise = sniff::EndCheck::new(format);
    data.iter().for_each(|b| bytewise.feed(std::slice::from_ref(b)));
    let streamed = whole.is_complete(head);
    assert_eq!(streamed, halves.is_complete(head), "split at {split}");
    assert_eq!(streamed, bytewise.is_complete(head), "byte by byte");
    if format == Format::Jpeg && data.len() <= sniff::HEAD_LEN {
        assert_eq!(once, streamed, "one-shot and streamed checks of a file within the head");
    } else if format != Format::Jpeg {
        assert_eq!(once, streamed, "{format:?}");
    }
});
