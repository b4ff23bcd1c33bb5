//! `sluice generate shapes DIR`: a labelled synthetic image dataset (coloured shapes on noisy
//! backgrounds, `DIR/<label>/<n>.png`), the one the demo pushes and the tests train on.
//! `--shift` brightens every pixel: the same classes from a changed world, to show drift.

use std::path::Path;

use anyhow::Context as _;
use sluice_nn::synthetic::{self, SyntheticSpec};

/// Writes `count` images of `classes` classes; returns the labels.
pub fn shapes(
    dir: &Path,
    classes: usize,
    count: usize,
    size: usize,
    seed: u64,
    shift: i16,
) -> anyhow::Result<Vec<String>> {
    let samples = synthetic::generate(&SyntheticSpec::rgb(size, classes, count, seed))?;
    let labels = synthetic::labels(classes);
    for label in &labels {
        std::fs::create_dir_all(dir.join(label)).with_context(|| format!("creating {}", dir.display()))?;
    }
    let plane = size * size;
    for i in 0..count {
        let chw: Vec<u8> = samples.images[i * 3 * plane..(i + 1) * 3 * plane]
            .iter()
            .map(|&v| (i16::from(v) + shift).clamp(0, 255) as u8)
            .collect();
        let image = sluice_media::rgb_from_chw(&chw, size as u32, size as u32).context("image size")?;
        let path = dir.join(&labels[samples.labels[i] as usize]).join(format!("{seed}-{i:05}.png"));
        image.save(&path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(labels)
}
