//! Neural networks for Sluice, built on candle.
//!
//! This crate owns the models (an MLP and a small CNN), their deterministic training loop and the
//! two byte formats that leave it: a *checkpoint* (weights, optimiser state and counters, so a
//! redelivered trial resumes where it stopped) and an *export* (the best weights plus what
//! inference needs to rebuild the network). Data enters as [`Samples`]: u8 images in CHW order
//! with class indices, as the preprocess stage writes them; the trainer drives a [`Session`] one
//! epoch at a time and inference scores batches through a [`Network`].
//!
//! Determinism: every random choice (initial weights, shuffling, dropout) comes from a ChaCha
//! stream derived from the session seed and the epoch, never from a thread-local generator, and
//! every parallel reduction runs in a fixed order. The same seed, data and hyper-parameters give
//! bit-identical metrics and export bytes, and a session resumed from a checkpoint continues
//! exactly as an uninterrupted one would.
//!
//! On the CPU the convolution blocks run as one fused candle custom op (im2col + matmul + bias +
//! ReLU + 2×2 max-pool, with a backward that skips the image gradient and spreads images over
//! the cores); on CUDA (`cuda` feature, chosen at run time) the same network uses candle's own
//! ops. Weights use PyTorch's layouts (`[out, in, 3, 3]`, `[out, in]`) on NCHW activations.

mod augment;
mod checkpoint;
mod data;
mod error;
mod eval;
mod hyper;
mod layers;
mod model;
mod network;
mod optim;
mod rng;
mod session;
pub mod synthetic;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use augment::Augment;

/// One row per image (logits, or hidden-layer activations).
pub type Rows = Vec<Vec<f32>>;
pub use error::{NnError, Result};
pub use eval::Evaluation;
pub use hyper::{Hyper, Optimizer, Schedule};
pub use network::{Network, Scores};
pub use session::{EpochReport, Session, SessionSpec};

/// The device networks train and run on: CUDA device 0 when built with the `cuda` feature and a
/// GPU is there, otherwise the CPU; decided once per process. (candle's `cuda_if_available` only
/// looks at how it was built, so a CUDA build on a machine without a GPU would fail instead of
/// falling back.)
pub fn device() -> candle_core::Device {
    static DEVICE: std::sync::OnceLock<candle_core::Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            #[cfg(feature = "cuda")]
            if let Ok(device) = candle_core::Device::new_cuda(0) {
                return device;
            }
            candle_core::Device::Cpu
        })
        .clone()
}

/// The network families a trial can train.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// flatten → dense `hidden` → ReLU → dropout → dense classes.
    Mlp,
    /// 2 × (conv 3×3, padding 1 → ReLU → max-pool 2) with 16 and 32 channels, flatten →
    /// dense `hidden` → ReLU → dropout → dense classes.
    Cnn,
}

impl Architecture {
    /// The lowercase name used in APIs, metadata and the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Mlp => "mlp",
            Architecture::Cnn => "cnn",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Architecture {
    type Err = NnError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mlp" => Ok(Architecture::Mlp),
            "cnn" => Ok(Architecture::Cnn),
            other => Err(NnError::InvalidSpec(format!("unknown architecture {other:?} (expected mlp or cnn)"))),
        }
    }
}

/// The size of one input image, as produced by the dataset's pipeline spec.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InputShape {
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl InputShape {
    /// Bytes (= values) in one image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True for a degenerate shape with no pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the shape is one the models accept for `architecture`.
    pub fn validate(&self, architecture: Architecture) -> Result<()> {
        if self.channels != 1 && self.channels != 3 {
            return Err(NnError::InvalidSpec(format!("channels must be 1 or 3, got {}", self.channels)));
        }
        // Two 2×2 pools need at least 4 pixels a side; 4096 a side is far beyond any pipeline.
        let min = if architecture == Architecture::Cnn { 4 } else { 1 };
        for (name, v) in [("height", self.height), ("width", self.width)] {
            if !(min..=4096).contains(&v) {
                return Err(NnError::InvalidSpec(format!(
                    "{name} must be between {min} and 4096 for {architecture}, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// Labelled images: u8 values in CHW order, one image after another; `labels[i]` is the class
/// index of image `i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Samples {
    /// The shape every image has.
    pub shape: InputShape,
    /// `labels.len() * shape.len()` bytes.
    pub images: Vec<u8>,
    /// Class indices, one per image.
    pub labels: Vec<u32>,
}

impl Samples {
    /// An empty set of the given shape.
    pub fn new(shape: InputShape) -> Self {
        Samples { shape, images: Vec::new(), labels: Vec::new() }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The CHW bytes of image `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Appends one image (CHW bytes) with its label.
    pub fn push(&mut self, image: &[u8], label: u32) -> Result<()> {
        if image.len() != self.shape.len() {
            return Err(NnError::InvalidSamples(format!(
                "image has {} bytes, shape needs {}",
                image.len(),
                self.shape.len()
            )));
        }
        self.images.extend_from_slice(image);
        self.labels.push(label);
        Ok(())
    }

    /// Checks the byte count and that every label is below `classes`.
    pub fn validate(&self, shape: InputShape, classes: usize) -> Result<()> {
        if self.shape != shape {
            return Err(NnError::InvalidSamples(format!(
                "samples are {:?}, the network expects {shape:?}",
                self.shape
            )));
        }
        if self.images.len() != self.labels.len() * shape.len() {
            return Err(NnError::InvalidSamples(format!(
                "{} bytes for {} images of {} bytes",
                self.images.len(),
                self.labels.len(),
                shape.len()
            )));
        }
        if let Some(bad) = self.labels.iter().find(|&&l| l as usize >= classes) {
            return Err(NnError::InvalidSamples(format!("label {bad} is not below the class count {classes}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_round_trips_through_text_and_json() {
        for a in [Architecture::Mlp, Architecture::Cnn] {
            assert_eq!(a.to_string().parse::<Architecture>().expect("parse"), a);
            assert_eq!(serde_json::to_string(&a).expect("json"), format!("\"{a}\""));
        }
        assert!("resnet".parse::<Architecture>().is_err());
    }

    #[test]
    fn samples_validation_catches_wrong_sizes_and_labels() {
        let shape = InputShape { channels: 1, height: 2, width: 2 };
        let mut s = Samples::new(shape);
        s.push(&[1, 2, 3, 4], 1).expect("push");
        assert!(s.push(&[1, 2, 3], 0).is_err());
        assert!(s.validate(shape, 2).is_ok());
        assert!(s.validate(shape, 1).is_err());
        assert!(s.validate(InputShape { channels: 3, ..shape }, 2).is_err());
        s.images.pop();
        assert!(s.validate(shape, 2).is_err());
    }

    #[test]
    fn shapes_outside_the_supported_range_are_rejected() {
        let ok = InputShape { channels: 3, height: 32, width: 32 };
        assert!(ok.validate(Architecture::Cnn).is_ok());
        assert!(InputShape { channels: 2, ..ok }.validate(Architecture::Mlp).is_err());
        assert!(InputShape { height: 3, ..ok }.validate(Architecture::Cnn).is_err());
        assert!(InputShape { height: 3, ..ok }.validate(Architecture::Mlp).is_ok());
    }
}
