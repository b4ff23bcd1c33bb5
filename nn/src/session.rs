//! A training session: one trial's weights, optimiser state and early-stopping bookkeeping,
//! advanced one epoch at a time so the trainer can report progress and checkpoint in between.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointMeta, ExportMeta, FORMAT};
use crate::eval::{self, Evaluation};
use crate::hyper::Hyper;
use crate::model::{Model, ModelSpec, ParamLayout};
use crate::optim::OptimState;
use crate::rng::{Purpose, stream};
use crate::{Architecture, InputShape, NnError, Result, Samples, data, layers};

/// What to train: the network, its input and output sizes, hyper-parameters and seed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SessionSpec {
    pub architecture: Architecture,
    pub shape: InputShape,
    /// Number of classes (labels are `0..classes`).
    pub classes: usize,
    pub hyper: Hyper,
    /// Seeds initialisation, shuffling and dropout.
    pub seed: u64,
}

impl SessionSpec {
    /// Trainable parameters of the network this spec builds (saturating), known before any
    /// memory is taken, so a caller can refuse an absurd size (a huge `hidden` over a large
    /// input) instead of letting the allocation abort its process.
    pub fn parameters(&self) -> u64 {
        self.model_spec()
            .layout()
            .iter()
            .map(|p| p.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64)))
            .fold(0u64, u64::saturating_add)
    }

    /// Floats one sample holds through a training step (the forward pass's activations, the
    /// buffers its backward pass keeps, and their gradients), estimated from the layer shapes
    /// (saturating): what each sample of a batch costs beyond the parameters.
    pub fn activations_per_sample(&self) -> u64 {
        let InputShape { channels, height, width } = self.shape;
        let (channels, pixels) = (channels as u64, (height as u64).saturating_mul(width as u64));
        let forward = match self.architecture {
            Architecture::Mlp => channels.saturating_mul(pixels),
            // Per input pixel: the input and conv1's unfolded input (10 per channel), conv1's
            // output, ReLU and pooled map (16 + 16 + 4), and conv2's unfolded input, output,
            // ReLU and pooled map on a quarter of the pixels (36 + 8 + 8 + 2).
            Architecture::Cnn => channels.saturating_mul(10).saturating_add(90).saturating_mul(pixels),
        };
        forward.saturating_add(self.hyper.hidden as u64).saturating_add(self.classes as u64).saturating_mul(2)
    }

    fn model_spec(&self) -> ModelSpec {
        ModelSpec {
            architecture: self.architecture,
            shape: self.shape,
            classes: self.classes,
            hidden: self.hyper.hidden,
        }
    }
}

/// Metrics of one epoch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// 1-based number of the epoch just finished.
    pub epoch: usize,
    /// Mean loss over the epoch's mini-batches (with dropout active).
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// The rate this epoch used.
    pub learning_rate: f64,
    /// Wall time of the epoch, validation included (the only non-deterministic field).
    pub seconds: f64,
    /// True when this epoch triggered early stopping.
    pub stopped_early: bool,
}

/// The lowest-validation-loss weights seen so far.
#[derive(Clone, Debug)]
struct Best {
    values: Vec<Vec<f32>>,
    val_loss: f64,
    epoch: usize,
}

/// One trial's training state. See the crate docs for the determinism guarantees.
#[derive(Debug)]
pub struct Session {
    spec: SessionSpec,
    device: Device,
    model: Model,
    optim: OptimState,
    epochs_done: usize,
    best: Option<Best>,
    bad_epochs: usize,
    stopped: bool,
}

/// The tensors `<prefix>.<param>` in layout order, or None when the file has no such group.
fn take_group(
    file: &mut checkpoint::Decoded<CheckpointMeta>,
    prefix: &str,
    layout: &[ParamLayout],
) -> Result<Option<Vec<Vec<f32>>>> {
    if !file.has(&format!("{prefix}.{}", layout[0].name)) {
        return Ok(None);
    }
    layout.iter().map(|p| file.take(&format!("{prefix}.{}", p.name), &p.shape)).collect::<Result<_>>().map(Some)
}

/// CUDA when compiled in and present, else the CPU ([`crate::device`]).
fn device() -> Result<Device> {
    Ok(crate::device())
}

impl Session {
    /// A fresh session with weights drawn from `spec.seed`.
    pub fn new(spec: SessionSpec) -> Result<Self> {
        spec.hyper.validate().map_err(NnError::InvalidSpec)?;
        let device = device()?;
        let model = Model::init(spec.model_spec(), spec.seed, &device)?;
        let optim = OptimState::new(spec.hyper.optimizer, &model)?;
        Ok(Session { spec, device, model, optim, epochs_done: 0, best: None, bad_epochs: 0, stopped: false })
    }

    /// Restores a session from [`Session::checkpoint`]'s bytes. The spec must be the one the
    /// checkpoint was written with, except `hyper.epochs`, which may change (a promoted trial
    /// continues with a larger budget).
    pub fn resume(spec: SessionSpec, bytes: &[u8]) -> Result<Self> {
        spec.hyper.validate().map_err(NnError::InvalidSpec)?;
        let mut file = checkpoint::decode::<CheckpointMeta>(bytes)?;
        let m = &file.meta;
        let written = SessionSpec {
            architecture: m.architecture,
            shape: m.shape,
            classes: m.classes,
            hyper: Hyper { epochs: spec.hyper.epochs, ..m.hyper.clone() },
            seed: m.seed,
        };
        if m.format != FORMAT || m.kind != "checkpoint" {
            return Err(NnError::InvalidFile(format!("not a format-{FORMAT} checkpoint")));
        }
        if written != spec {
            return Err(NnError::InvalidFile(format!("checkpoint was written for {written:?}, not {spec:?}")));
        }
        let device = device()?;
        let layout = spec.model_spec().layout();
        let weights =
            take_group(&mut file, "weights", &layout)?.ok_or_else(|| NnError::InvalidFile("no weights".into()))?;
        let first = take_group(&mut file, "first", &layout)?
            .ok_or_else(|| NnError::InvalidFile("no optimiser state".into()))?;
        let second = take_group(&mut file, "second", &layout)?.unwrap_or_default();
        let best_values = take_group(&mut file, "best", &layout)?;
        let m = file.meta;
        let best = match (best_values, m.best_val_loss_bits, m.best_epoch) {
            (Some(values), Some(bits), Some(epoch)) => Some(Best { values, val_loss: f64::from_bits(bits), epoch }),
            (None, None, None) => None,
            _ => return Err(NnError::InvalidFile("incomplete best-weights record".into())),
        };
        let model = Model::from_values(spec.model_spec(), weights, &device)?;
        let optim = OptimState::restore(spec.hyper.optimizer, &model, m.step, first, second, &device)?;
        Ok(Session {
            spec,
            device,
            model,
            optim,
            epochs_done: m.epochs_done,
            best,
            bad_epochs: m.bad_epochs,
            stopped: m.stopped,
        })
    }

    /// A promoted trial's start (successive halving's next rung): the parent's checkpoint, but
    /// continuing from its best weights and best epoch, with early stopping reset, so neither the
    /// epochs after its best nor a stop that fired in the parent's rung carry over.
    pub fn promote(spec: SessionSpec, parent: &[u8]) -> Result<Self> {
        let mut session = Self::resume(spec, parent)?;
        if let Some(best) = &session.best {
            session.model = Model::from_values(session.spec.model_spec(), best.values.clone(), &session.device)?;
            session.epochs_done = best.epoch;
        }
        session.bad_epochs = 0;
        session.stopped = false;
        Ok(session)
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// True once the epoch budget is spent or early stopping fired.
    pub fn finished(&self) -> bool {
        self.stopped || self.epochs_done >= self.spec.hyper.epochs
    }

    /// The spec this session trains.
    pub fn spec(&self) -> &SessionSpec {
        &self.spec
    }

    /// Trains one epoch over `train` (shuffled by seed and epoch), then scores `val` and updates
    /// the best weights and early-stopping counters.
    pub fn run_epoch(&mut self, train: &Samples, val: &Samples) -> Result<EpochReport> {
        if self.finished() {
            return Err(NnError::InvalidSpec(format!("the session is finished after {} epochs", self.epochs_done)));
        }
        for (name, s) in [("training", train), ("validation", val)] {
            s.validate(self.spec.shape, self.spec.classes)?;
            if s.is_empty() {
                return Err(NnError::InvalidSamples(format!("the {name} set is empty")));
            }
        }
        let started = Instant::now();
        let hyper = &self.spec.hyper;
        let epoch = self.epochs_done;
        let lr = hyper.schedule.rate(hyper.learning_rate, epoch, hyper.schedule_epochs());
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut stream(self.spec.seed, Purpose::Shuffle, epoch));
        let mut dropout = stream(self.spec.seed, Purpose::Dropout, epoch);
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        let mut augment = stream(self.spec.seed, Purpose::Augment, epoch);
        let mut augmented = Vec::new();
        for batch in order.chunks(hyper.batch_size) {
            let x = if hyper.augment.is_identity() {
                data::batch(&train.images, self.spec.shape, batch, &self.device)?
            } else {
                let len = self.spec.shape.len();
                augmented.clear();
                for &i in batch {
                    hyper.augment.apply(
                        &train.images[i * len..(i + 1) * len],
                        self.spec.shape,
                        &mut augment,
                        &mut augmented,
                    );
                }
                let positions: Vec<usize> = (0..batch.len()).collect();
                data::batch(&augmented, self.spec.shape, &positions, &self.device)?
            };
            let y = data::labels(&train.labels, batch, &self.device)?;
            let mask = self.dropout_mask(&mut dropout, batch.len())?;
            let logits = self.model.forward(&x, true, mask.as_ref())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let grads = loss.backward()?;
            self.optim.step(hyper, &self.model, &grads, lr)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * batch.len() as f64;
            let predicted = layers::argmax(&logits.detach())?;
            correct += predicted.iter().zip(batch).filter(|&(&p, &i)| p == train.labels[i]).count();
        }
        let eval = self.evaluate_current(val)?;
        self.epochs_done += 1;
        let improved = self.best.as_ref().is_none_or(|b| eval.loss < b.val_loss);
        if improved {
            self.best = Some(Best { values: self.model.values()?, val_loss: eval.loss, epoch: self.epochs_done });
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
            self.stopped = hyper.patience > 0 && self.bad_epochs >= hyper.patience;
        }
        Ok(EpochReport {
            epoch: self.epochs_done,
            train_loss: loss_sum / train.len() as f64,
            train_accuracy: correct as f64 / train.len() as f64,
            val_loss: eval.loss,
            val_accuracy: eval.accuracy,
            learning_rate: lr,
            seconds: started.elapsed().as_secs_f64(),
            stopped_early: self.stopped,
        })
    }

    /// A `[n, hidden]` keep-mask scaled by 1/(1-p), or None without dropout.
    fn dropout_mask(&self, rng: &mut impl Rng, n: usize) -> Result<Option<Tensor>> {
        let p = self.spec.hyper.dropout;
        if p <= 0.0 {
            return Ok(None);
        }
        let keep = (1.0 / (1.0 - p)) as f32;
        let hidden = self.spec.hyper.hidden;
        let mask: Vec<f32> = (0..n * hidden).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
        Ok(Some(Tensor::from_vec(mask, (n, hidden), &self.device)?))
    }

    fn evaluate_current(&self, samples: &Samples) -> Result<Evaluation> {
        let logits =
            eval::logits(&self.model, &samples.images, self.spec.shape, samples.len(), self.per_pass(), &self.device)?;
        Ok(Evaluation::from_logits(logits, &samples.labels))
    }

    /// Images per scoring pass: at most twice the training batch, whose activations (forward and
    /// backward) the trainer's memory budget was checked against, so scoring a large input
    /// stays within it too.
    fn per_pass(&self) -> usize {
        self.spec.hyper.batch_size.saturating_mul(2).clamp(1, eval::EVAL_BATCH)
    }

    /// Weights of the best epoch so far (the initial weights before any epoch).
    fn best_values(&self) -> Result<Vec<Vec<f32>>> {
        match &self.best {
            Some(b) => Ok(b.values.clone()),
            None => self.model.values(),
        }
    }

    /// Scores `val` with the best weights.
    pub fn evaluate_best(&self, val: &Samples) -> Result<Evaluation> {
        val.validate(self.spec.shape, self.spec.classes)?;
        let model = Model::from_values(self.spec.model_spec(), self.best_values()?, &self.device)?;
        let logits = eval::logits(&model, &val.images, self.spec.shape, val.len(), self.per_pass(), &self.device)?;
        Ok(Evaluation::from_logits(logits, &val.labels))
    }

    /// The best weights' logits and hidden-layer activations for `samples` (drift references).
    pub fn scores_best(&self, samples: &Samples) -> Result<(crate::Rows, crate::Rows)> {
        samples.validate(self.spec.shape, self.spec.classes)?;
        let model = Model::from_values(self.spec.model_spec(), self.best_values()?, &self.device)?;
        eval::logits_and_hidden(&model, &samples.images, self.spec.shape, samples.len(), self.per_pass(), &self.device)
    }

    /// Safetensors bytes that [`Session::resume`] continues from: current and best weights,
    /// optimiser moments, and the counters in metadata.
    pub fn checkpoint(&self) -> Result<Vec<u8>> {
        let meta = CheckpointMeta {
            format: FORMAT,
            kind: "checkpoint".into(),
            architecture: self.spec.architecture,
            shape: self.spec.shape,
            classes: self.spec.classes,
            hyper: self.spec.hyper.clone(),
            seed: self.spec.seed,
            epochs_done: self.epochs_done,
            step: self.optim.step,
            best_val_loss_bits: self.best.as_ref().map(|b| b.val_loss.to_bits()),
            best_epoch: self.best.as_ref().map(|b| b.epoch),
            bad_epochs: self.bad_epochs,
            stopped: self.stopped,
        };
        let weights = self.model.values()?;
        let (first, second) = self.optim.values()?;
        let mut groups: Vec<(&str, &[Vec<f32>])> = vec![("weights", &weights), ("first", &first)];
        if !second.is_empty() {
            groups.push(("second", &second));
        }
        if let Some(best) = &self.best {
            groups.push(("best", &best.values));
        }
        let mut tensors = Vec::new();
        for (prefix, values) in groups {
            for (p, v) in self.model.layout.iter().zip(values) {
                tensors.push((format!("{prefix}.{}", p.name), p.shape.clone(), v.as_slice()));
            }
        }
        checkpoint::encode(&meta, &tensors)
    }

    /// Safetensors bytes of the best weights that [`crate::Network::load`] reads.
    pub fn export_best(&self) -> Result<Vec<u8>> {
        let meta = ExportMeta {
            format: FORMAT,
            kind: "export".into(),
            architecture: self.spec.architecture,
            shape: self.spec.shape,
            classes: self.spec.classes,
            hidden: self.spec.hyper.hidden,
            layout: "nchw".into(),
        };
        let values = self.best_values()?;
        let tensors: Vec<_> = self
            .model
            .layout
            .iter()
            .zip(&values)
            .map(|(p, v)| (p.name.to_string(), p.shape.clone(), v.as_slice()))
            .collect();
        checkpoint::encode(&meta, &tensors)
    }
}

#[cfg(test)]
mod tests;
