//! Decode + resize + encode per image, the preprocess CPU path:
//! `cargo bench -p sluice-preprocess --bench resize`.

use std::io::Cursor;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::pipeline::PipelineSpec;
use sluice_preprocess::imaging;

/// A photo-like JPEG (gradients plus texture) of the given size, quality 85.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let texture = ((x * 31 + y * 17) % 23) as u8;
        image::Rgb([(x * 200 / w) as u8 + texture, (y * 200 / h) as u8 + texture / 2, ((x + y) % 256) as u8 / 4 + 40])
    });
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&img).expect("encode");
    out.into_inner()
}

fn bench(c: &mut Criterion) {
    let spec = PipelineSpec::default();
    let mut group = c.benchmark_group("jpeg_to_64x64_png");
    group.sample_size(30);
    for (w, h) in [(1920, 1080), (4000, 3000)] {
        let input = jpeg(w, h);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{w}x{h}"), |b| {
            b.iter(|| imaging::process(&input, &spec, 50_000_000).expect("process"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
