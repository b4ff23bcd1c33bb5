//! Training-time data augmentation: each training image of each epoch is transformed by a random
//! affine map (translation, rotation, scale), an optional horizontal flip, and brightness and
//! contrast jitter, drawn from the session's seeded `Augment` stream, so a run is deterministic
//! and replayable from any epoch. Validation, calibration and test images are never augmented.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::InputShape;

/// How much to perturb training images; every field 0 / false (the default) leaves them as they
/// are.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Largest shift, as a fraction of the side (0.1: up to 10 % of the width and height).
    pub translate: f64,
    /// Largest rotation, in degrees either way.
    pub rotate: f64,
    /// Largest relative zoom either way (0.1: 0.9× to 1.1×).
    pub scale: f64,
    /// Largest brightness offset, as a fraction of full scale.
    pub brightness: f64,
    /// Largest relative contrast change (0.2: 0.8× to 1.2× around the image's mean).
    pub contrast: f64,
    /// Mirror left–right half the time (not for data where that changes the class, like digits).
    pub hflip: bool,
}

impl Augment {
    pub fn is_identity(&self) -> bool {
        *self == Augment::default()
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, value, max) in [
            ("translate", self.translate, 0.5),
            ("rotate", self.rotate, 180.0),
            ("scale", self.scale, 0.5),
            ("brightness", self.brightness, 1.0),
            ("contrast", self.contrast, 1.0),
        ] {
            if !(value.is_finite() && (0.0..=max).contains(&value)) {
                return Err(format!("augment.{name} must be between 0 and {max}, got {value}"));
            }
        }
        Ok(())
    }

    /// Writes an augmented copy of `image` (u8 CHW of `shape`) into `out`, drawing from `rng`.
    pub(crate) fn apply(&self, image: &[u8], shape: InputShape, rng: &mut impl Rng, out: &mut Vec<u8>) {
        let (w, h) = (shape.width as f64, shape.height as f64);
        let mut draw = |range: f64| if range > 0.0 { rng.random_range(-range..=range) } else { 0.0 };
        let dx = draw(self.translate) * w;
        let dy = draw(self.translate) * h;
        let angle = draw(self.rotate).to_radians();
        let zoom = 1.0 + draw(self.scale);
        let brightness = draw(self.brightness) * 255.0;
        let contrast = 1.0 + draw(self.contrast);
        let flip = self.hflip && rng.random::<bool>();
        // Inverse map: for each output pixel, where in the input it comes from (about the centre).
        let (cx, cy) = ((w - 1.0) / 2.0, (h - 1.0) / 2.0);
        let (cos, sin) = (angle.cos() / zoom, angle.sin() / zoom);
        let plane = shape.height * shape.width;
        for c in 0..shape.channels {
            let source = &image[c * plane..(c + 1) * plane];
            let mean = source.iter().map(|&v| f64::from(v)).sum::<f64>() / plane.max(1) as f64;
            for y in 0..shape.height {
                for x in 0..shape.width {
                    let x = if flip { shape.width - 1 - x } else { x };
                    let (ox, oy) = (x as f64 - cx - dx, y as f64 - cy - dy);
                    let sx = cos * ox + sin * oy + cx;
                    let sy = -sin * ox + cos * oy + cy;
                    let value = bilinear(source, shape.width, shape.height, sx, sy);
                    let value = (value - mean) * contrast + mean + brightness;
                    out.push(value.round().clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
}

/// Bilinear sample of a `width × height` plane at (x, y); outside the plane the nearest edge
/// pixel is used (a shifted image repeats its border rather than gaining a black band).
fn bilinear(plane: &[u8], width: usize, height: usize, x: f64, y: f64) -> f64 {
    let x = x.clamp(0.0, (width - 1) as f64);
    let y = y.clamp(0.0, (height - 1) as f64);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let at = |x: usize, y: usize| f64::from(plane[y * width + x]);
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const SHAPE: InputShape = InputShape { channels: 1, height: 8, width: 8 };

    fn image() -> Vec<u8> {
        (0..64).map(|i| (i * 4) as u8).collect()
    }

    #[test]
    fn the_identity_changes_nothing() {
        let mut out = Vec::new();
        Augment::default().apply(&image(), SHAPE, &mut ChaCha8Rng::seed_from_u64(1), &mut out);
        assert_eq!(out, image());
    }

    #[test]
    fn augmentation_is_seeded_and_changes_the_image() {
        let augment = Augment { translate: 0.2, rotate: 15.0, scale: 0.1, brightness: 0.1, contrast: 0.2, hflip: true };
        let run = |seed| {
            let mut out = Vec::new();
            augment.apply(&image(), SHAPE, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            out
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert_ne!(run(3), image());
        assert_eq!(run(3).len(), 64);
    }

    #[test]
    fn a_flip_mirrors_rows() {
        let augment = Augment { hflip: true, ..Augment::default() };
        // Find a seed that flips, then check the first row reads backwards.
        let flipped = (0..32)
            .map(|seed| {
                let mut out = Vec::new();
                augment.apply(&image(), SHAPE, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
                out
            })
            .find(|out| *out != image())
            .expect("some seed flips");
        let first_row: Vec<u8> = image()[..8].iter().rev().copied().collect();
        assert_eq!(&flipped[..8], first_row.as_slice());
    }

    #[test]
    fn bounds_are_checked() {
        assert!(Augment { rotate: 400.0, ..Augment::default() }.validate().is_err());
        assert!(Augment { translate: f64::NAN, ..Augment::default() }.validate().is_err());
        assert!(Augment { translate: 0.1, hflip: true, ..Augment::default() }.validate().is_ok());
    }
}
