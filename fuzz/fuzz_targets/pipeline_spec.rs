//! Pipeline specs as `PUT /v1/datasets/{name}/pipeline` reads them, then applied by preprocess.
//! Properties: parsing and validation never panic; a valid spec's hash survives a round trip
//! through its JSON; a valid spec applied to a small image (PNG and JPEG) yields an output of the
//! spec's size, or a clean error, never a panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_core::pipeline::PipelineSpec;

/// Outputs above this many pixels are validated but not rendered, to keep executions fast.
const RENDER_PIXELS: u64 = 256 * 256;

fn samples() -> &'static [Vec<u8>] {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let image = image::RgbImage::from_fn(37, 23, |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, (x ^ y) as u8]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image.clone())
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("a PNG");
        vec![png, include_bytes!("../../media/testdata/restart_422.jpg").to_vec()]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<PipelineSpec>(data) else { return };
    let valid = spec.validate().is_ok();
    let text = serde_json::to_vec(&spec).expect("specs serialise");
    let again: PipelineSpec = serde_json::from_slice(&text).expect("a serialised spec parses");
    assert_eq!(again.validate().is_ok(), valid);
    if !valid {
        return;
    }
    assert_eq!(again.hash(), spec.hash(), "a spec's hash changes through its own JSON");
    if u64::from(spec.width) * u64::from(spec.height) > RENDER_PIXELS {
        return;
    }
    for sample in samples() {
        if let Ok((png, width, height)) = sluice_media::imaging::process(sample, &spec, 1 << 24) {
            assert_eq!((width, height), (spec.width, spec.height));
            assert!(!png.is_empty());
        }
    }
});
