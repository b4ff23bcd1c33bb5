//! A seeded, labelled image set of coloured shapes on noisy backgrounds, for tests, benchmarks
//! and the demo (which writes the images out as PNGs).
//!
//! Class `k` is the shape [`SHAPES`]`[k]`; position, size, shape colour and background colour
//! are random and independent of the class, so only the outline tells the classes apart.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::rng::{Purpose, stream};
use crate::{InputShape, NnError, Result, Samples};

/// Class names, in label order.
pub const SHAPES: &[&str] =
    &["circle", "square", "triangle", "plus", "ring", "diamond", "cross", "bar", "column", "frame"];

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Image size; channels 1 (grey) or 3 (colour).
    pub shape: InputShape,
    /// Number of classes, 2..=`SHAPES.len()`; labels cycle 0, 1, …, so classes are balanced.
    pub classes: usize,
    /// Number of images.
    pub count: usize,
    pub seed: u64,
    /// Amplitude of the uniform per-pixel noise, in 0..=255 units.
    pub noise: f32,
}

impl SyntheticSpec {
    /// `count` RGB images of `size`×`size` with `classes` classes and moderate noise.
    pub fn rgb(size: usize, classes: usize, count: usize, seed: u64) -> Self {
        SyntheticSpec {
            shape: InputShape { channels: 3, height: size, width: size },
            classes,
            count,
            seed,
            noise: 24.0,
        }
    }
}

/// The first `classes` names of [`SHAPES`] (the labels to register with a model).
pub fn labels(classes: usize) -> Vec<String> {
    SHAPES.iter().take(classes).map(|s| s.to_string()).collect()
}

/// Generates the images; the same spec always gives the same bytes.
pub fn generate(spec: &SyntheticSpec) -> Result<Samples> {
    if !(2..=SHAPES.len()).contains(&spec.classes) {
        return Err(NnError::InvalidSpec(format!(
            "synthetic classes must be 2..={}, got {}",
            SHAPES.len(),
            spec.classes
        )));
    }
    let InputShape { channels, height, width } = spec.shape;
    if !(channels == 1 || channels == 3) || height.min(width) < 8 {
        return Err(NnError::InvalidSpec(format!(
            "synthetic images need 1 or 3 channels and 8+ pixels a side: {:?}",
            spec.shape
        )));
    }
    let mut rng = stream(spec.seed, Purpose::Synthetic, 0);
    let mut samples = Samples::new(spec.shape);
    samples.images.reserve(spec.count * spec.shape.len());
    let mut image = vec![0u8; spec.shape.len()];
    for i in 0..spec.count {
        let label = (i % spec.classes) as u32;
        draw(&mut rng, spec, label as usize, &mut image);
        samples.push(&image, label)?;
    }
    Ok(samples)
}

/// Whether offset (dx, dy) from the centre lies inside shape `class` of radius `r`.
fn inside(class: usize, dx: f32, dy: f32, r: f32) -> bool {
    let (ax, ay) = (dx.abs(), dy.abs());
    match class {
        0 => dx * dx + dy * dy <= r * r,
        1 => ax <= 0.8 * r && ay <= 0.8 * r,
        2 => (-r..=r).contains(&dy) && ax <= (dy + r) * 0.5,
        3 => (ax <= 0.3 * r && ay <= r) || (ay <= 0.3 * r && ax <= r),
        4 => (0.55 * r * 0.55 * r..=r * r).contains(&(dx * dx + dy * dy)),
        5 => ax + ay <= r,
        6 => (ax - ay).abs() <= 0.3 * r && ax <= 0.8 * r && ay <= 0.8 * r,
        7 => ax <= r && ay <= 0.35 * r,
        8 => ax <= 0.35 * r && ay <= r,
        _ => ax <= 0.85 * r && ay <= 0.85 * r && ax.max(ay) >= 0.55 * r,
    }
}

fn draw(rng: &mut ChaCha8Rng, spec: &SyntheticSpec, class: usize, out: &mut [u8]) {
    let InputShape { channels, height, width } = spec.shape;
    let side = height.min(width) as f32;
    let r = rng.random_range(0.22..0.42) * side;
    let cx = rng.random_range(r..=(width as f32 - r));
    let cy = rng.random_range(r..=(height as f32 - r));
    let mut background = [0f32; 3];
    let mut colour = [0f32; 3];
    for ch in 0..channels {
        background[ch] = rng.random_range(0.0..100.0);
        colour[ch] = rng.random_range(140.0..255.0);
    }
    let plane = height * width;
    for y in 0..height {
        for x in 0..width {
            let hit = inside(class, x as f32 + 0.5 - cx, y as f32 + 0.5 - cy, r);
            for ch in 0..channels {
                let base = if hit { colour[ch] } else { background[ch] };
                let noisy = base + rng.random_range(-1.0f32..=1.0) * spec.noise;
                out[ch * plane + y * width + x] = noisy.clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_seeded_and_balanced() {
        let spec = SyntheticSpec::rgb(16, 4, 40, 5);
        let a = generate(&spec).expect("generate");
        assert_eq!(a, generate(&spec).expect("generate"));
        assert_ne!(a.images, generate(&SyntheticSpec { seed: 6, ..spec }).expect("generate").images);
        assert_eq!(a.len(), 40);
        assert!(a.validate(spec.shape, 4).is_ok());
        for k in 0..4 {
            assert_eq!(a.labels.iter().filter(|&&l| l == k).count(), 10);
        }
        assert_eq!(labels(3), vec!["circle", "square", "triangle"]);
    }

    #[test]
    fn every_shape_covers_a_distinct_part_of_its_box() {
        let r = 10.0;
        let masks: Vec<Vec<bool>> = (0..SHAPES.len())
            .map(|k| (0..400).map(|i| inside(k, (i % 20) as f32 - 9.5, (i / 20) as f32 - 9.5, r)).collect())
            .collect();
        for (k, m) in masks.iter().enumerate() {
            let area = m.iter().filter(|&&b| b).count();
            assert!(area > 20, "{} is nearly empty", SHAPES[k]);
            for other in &masks[..k] {
                assert_ne!(m, other, "{} duplicates another shape", SHAPES[k]);
            }
        }
    }

    #[test]
    fn rejects_unsupported_specs() {
        assert!(generate(&SyntheticSpec::rgb(16, 1, 4, 0)).is_err());
        assert!(generate(&SyntheticSpec::rgb(16, SHAPES.len() + 1, 4, 0)).is_err());
        assert!(generate(&SyntheticSpec::rgb(4, 2, 4, 0)).is_err());
    }
}
