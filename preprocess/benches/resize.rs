//! Decode + resize + encode per image, the preprocess CPU path:
//! `cargo bench -p sluice-preprocess --bench resize`.

use std::io::Cursor;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::pipeline::PipelineSpec;
use sluice_preprocess::imaging;

fn photo(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let texture = ((x * 31 + y * 17) % 23) as u8;
        image::Rgb([(x * 200 / w) as u8 + texture, (y * 200 / h) as u8 + texture / 2, ((x + y) % 256) as u8 / 4 + 40])
    })
}

/// A photo-like JPEG (gradients plus texture) of the given size: image-rs's encoder, quality
/// 85, 4:4:4.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&photo(w, h)).expect("encode");
    out.into_inner()
}

/// The same picture as a camera writes it: libjpeg-turbo, quality 90, 4:2:0 chroma.
fn camera_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = photo(w, h);
    let image = turbojpeg::Image {
        pixels: img.as_raw().as_slice(),
        width: w as usize,
        pitch: 3 * w as usize,
        height: h as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2).expect("encode").to_vec()
}

fn bench(c: &mut Criterion) {
    let spec = PipelineSpec::default();
    let mut group = c.benchmark_group("jpeg_to_64x64_png");
    group.sample_size(30);
    for (w, h) in [(1920, 1080), (4000, 3000)] {
        for (name, input) in [(format!("{w}x{h}"), jpeg(w, h)), (format!("{w}x{h}_420"), camera_jpeg(w, h))] {
            group.throughput(Throughput::Elements(1));
            group.bench_function(name, |b| {
                b.iter(|| imaging::process(&input, &spec, 50_000_000).expect("process"));
            });
        }
    }
    group.finish();
    // For comparison: libjpeg-turbo's own decode at 1/8 scale (what Sluice used before its DC
    // decoder), decode only.
    let mut group = c.benchmark_group("libjpeg_turbo_eighth_decode_only");
    group.sample_size(20);
    for (w, h) in [(1920, 1080), (4000, 3000)] {
        for (name, input) in [(format!("{w}x{h}"), jpeg(w, h)), (format!("{w}x{h}_420"), camera_jpeg(w, h))] {
            eprintln!("{name}: {} bytes", input.len());
            let (sw, sh) = (w.div_ceil(8) as usize, h.div_ceil(8) as usize);
            let mut pixels = vec![0u8; sw * sh * 3];
            group.bench_function(name, |b| {
                b.iter(|| {
                    let mut decompressor = turbojpeg::Decompressor::new().expect("decompressor");
                    let output = turbojpeg::Image {
                        pixels: pixels.as_mut_slice(),
                        width: sw,
                        pitch: sw * 3,
                        height: sh,
                        format: turbojpeg::PixelFormat::RGB,
                    };
                    decompressor.decompress(&input, output).expect("decode");
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
