//! Inference: a trained network rebuilt from [`crate::Session::export_best`]'s bytes.

use candle_core::Device;

use crate::checkpoint::{self, ExportMeta, FORMAT};
use crate::eval;
use crate::model::{Model, ModelSpec};
use crate::{Architecture, InputShape, NnError, Result};

/// One image through a network.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub logits: Vec<f32>,
    /// The hidden layer's activations.
    pub embedding: Vec<f32>,
}

/// A loaded network that scores batches of images.
#[derive(Debug)]
pub struct Network {
    model: Model,
    device: Device,
}

impl Network {
    /// Parses an export; fails on anything that is not one (wrong metadata, missing or
    /// mis-shaped tensors).
    pub fn load(bytes: &[u8]) -> Result<Self> {
        let mut file = checkpoint::decode::<ExportMeta>(bytes)?;
        let m = file.meta.clone();
        if m.format != FORMAT || m.kind != "export" || m.layout != "nchw" {
            return Err(NnError::InvalidFile(format!("not a format-{FORMAT} export")));
        }
        let spec = ModelSpec { architecture: m.architecture, shape: m.shape, classes: m.classes, hidden: m.hidden };
        spec.validate()?;
        let values = spec.layout().iter().map(|p| file.take(p.name, &p.shape)).collect::<Result<Vec<_>>>()?;
        let device = crate::device();
        Ok(Network { model: Model::from_values(spec, values, &device)?, device })
    }

    /// Logits (one row of `classes()` values per image) for `n` u8 CHW images laid back to back.
    pub fn logits(&self, batch: &[u8], n: usize) -> Result<Vec<Vec<f32>>> {
        let shape = self.shape();
        if batch.len() != n * shape.len() {
            return Err(NnError::InvalidSamples(format!("{} bytes for {n} images of {:?}", batch.len(), shape)));
        }
        eval::logits(&self.model, batch, shape, n, eval::EVAL_BATCH, &self.device)
    }

    /// Logits and hidden-layer activations (the penultimate layer: what the network sees) for
    /// `n` u8 CHW images laid back to back, one [`Scores`] per image.
    pub fn scores(&self, batch: &[u8], n: usize) -> Result<Vec<Scores>> {
        let shape = self.shape();
        if batch.len() != n * shape.len() {
            return Err(NnError::InvalidSamples(format!("{} bytes for {n} images of {:?}", batch.len(), shape)));
        }
        let (logits, hidden) = eval::logits_and_hidden(&self.model, batch, shape, n, eval::EVAL_BATCH, &self.device)?;
        Ok(logits.into_iter().zip(hidden).map(|(logits, embedding)| Scores { logits, embedding }).collect())
    }

    /// The network family.
    pub fn architecture(&self) -> Architecture {
        self.model.spec.architecture
    }

    /// The image size the network expects.
    pub fn shape(&self) -> InputShape {
        self.model.spec.shape
    }

    /// Number of classes (length of each logits row).
    pub fn classes(&self) -> usize {
        self.model.spec.classes
    }
}
