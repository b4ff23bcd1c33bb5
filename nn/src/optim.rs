//! AdamW and SGD with momentum. The moments live as tensors on the model's device and every
//! update is tensor arithmetic there, so a step never copies parameters to the host (a CUDA
//! session stays on the GPU); checkpoints read the moments out as plain vectors (candle-nn's
//! optimisers keep their state private).

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};

use crate::hyper::{Hyper, Optimizer};
use crate::model::Model;
use crate::{NnError, Result};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

/// Optimiser state, one entry per parameter in layout order.
#[derive(Clone, Debug)]
pub(crate) struct OptimState {
    /// Steps taken (Adam's bias correction needs it).
    pub step: u64,
    /// AdamW's first moment, or SGD's momentum buffer.
    first: Vec<Tensor>,
    /// AdamW's second moment; empty for SGD.
    second: Vec<Tensor>,
}

impl OptimState {
    /// Zero state for `model` under `optimizer`.
    pub(crate) fn new(optimizer: Optimizer, model: &Model) -> Result<Self> {
        let zeros = model.vars.iter().map(|v| Ok(v.as_tensor().zeros_like()?)).collect::<Result<Vec<_>>>()?;
        let second = if optimizer == Optimizer::Adamw { zeros.clone() } else { Vec::new() };
        Ok(OptimState { step: 0, first: zeros, second })
    }

    /// State restored from a checkpoint's vectors; each must fit its parameter.
    pub(crate) fn restore(
        optimizer: Optimizer,
        model: &Model,
        step: u64,
        first: Vec<Vec<f32>>,
        second: Vec<Vec<f32>>,
        device: &Device,
    ) -> Result<Self> {
        let wanted_second = if optimizer == Optimizer::Adamw { model.vars.len() } else { 0 };
        let fits = |values: &[Vec<f32>], count: usize| {
            values.len() == count
                && values.iter().zip(&model.vars).all(|(v, var)| v.len() == var.as_tensor().elem_count())
        };
        if !fits(&first, model.vars.len()) || !fits(&second, wanted_second) {
            return Err(NnError::InvalidFile("optimiser state does not fit the model".into()));
        }
        let load = |values: Vec<Vec<f32>>| -> Result<Vec<Tensor>> {
            values.into_iter().zip(&model.vars).map(|(v, var)| Ok(Tensor::from_vec(v, var.shape(), device)?)).collect()
        };
        Ok(OptimState { step, first: load(first)?, second: load(second)? })
    }

    /// The first and second moments as vectors, for a checkpoint.
    pub(crate) fn values(&self) -> Result<(crate::Rows, crate::Rows)> {
        let read = |tensors: &[Tensor]| -> Result<Vec<Vec<f32>>> {
            tensors.iter().map(|t| Ok(t.flatten_all()?.to_vec1()?)).collect()
        };
        Ok((read(&self.first)?, read(&self.second)?))
    }

    /// One update of every parameter of `model` from `grads` at learning rate `lr`.
    pub(crate) fn step(&mut self, hyper: &Hyper, model: &Model, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        for (i, var) in model.vars.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            // Biases (the one-dimensional parameters) are not decayed: shrinking them towards
            // zero regularises nothing and only shifts the activations.
            let decay = if model.layout[i].shape.len() == 1 { 0.0 } else { hyper.weight_decay };
            let w = var.as_tensor();
            let updated = match hyper.optimizer {
                Optimizer::Adamw => {
                    let (w, m, v) = adamw(w, grad, &self.first[i], &self.second[i], self.step, lr, decay)?;
                    self.first[i] = m;
                    self.second[i] = v;
                    w
                }
                Optimizer::Sgd => {
                    let (w, b) = sgd(w, grad, &self.first[i], lr, hyper.momentum, decay)?;
                    self.first[i] = b;
                    w
                }
            };
            var.set(&updated)?;
        }
        Ok(())
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter): w ← w(1 − lr·wd) − lr·m̂/(√v̂ + ε).
/// Returns the new weights and moments.
fn adamw(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: u64,
    lr: f64,
    wd: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let (correction1, correction2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
    let m = ((m * BETA1)? + (g * (1.0 - BETA1))?)?;
    let v = ((v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
    let denominator = ((&v / correction2)?.sqrt()? + EPSILON)?;
    let update = ((&m / correction1)? / denominator)?;
    let w = ((w * (1.0 - lr * wd))? - (update * lr)?)?;
    Ok((w, m, v))
}

/// SGD with momentum and L2 decay (as PyTorch): b ← μb + g + wd·w; w ← w − lr·b.
fn sgd(w: &Tensor, g: &Tensor, buffer: &Tensor, lr: f64, momentum: f64, wd: f64) -> Result<(Tensor, Tensor)> {
    let b = (((buffer * momentum)? + g)? + (w * wd)?)?;
    let w = (w - (&b * lr)?)?;
    Ok((w, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).expect("a tensor")
    }

    fn host(tensor: &Tensor) -> Vec<f32> {
        tensor.to_vec1().expect("values")
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_the_learning_rate() {
        let (w, _, _) =
            adamw(&t(&[1.0, -1.0]), &t(&[0.5, -2.0]), &t(&[0.0, 0.0]), &t(&[0.0, 0.0]), 1, 0.1, 0.0).expect("a step");
        let w = host(&w);
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 0.9).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn adamw_decay_shrinks_weights_without_gradient() {
        let (w, _, _) = adamw(&t(&[2.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), 1, 0.1, 0.5).expect("a step");
        assert!((host(&w)[0] - 1.9).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn sgd_accumulates_momentum() {
        let (w, b) = sgd(&t(&[0.0]), &t(&[1.0]), &t(&[0.0]), 0.1, 0.9, 0.0).expect("a step");
        let (w, _) = sgd(&w, &t(&[1.0]), &b, 0.1, 0.9, 0.0).expect("a step");
        assert!((host(&w)[0] + 0.29).abs() < 1e-6, "{w:?}");
    }
}
