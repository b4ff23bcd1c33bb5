//! AdamW and SGD with momentum, with their state in plain vectors so a checkpoint can hold it
//! (candle-nn's optimisers keep theirs private).

use candle_core::Tensor;
use candle_core::backprop::GradStore;

use crate::hyper::{Hyper, Optimizer};
use crate::model::Model;
use crate::{NnError, Result};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f32 = 1e-8;

/// Optimiser state, one entry per parameter in layout order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OptimState {
    /// Steps taken (Adam's bias correction needs it).
    pub step: u64,
    /// AdamW's first moment, or SGD's momentum buffer.
    pub first: Vec<Vec<f32>>,
    /// AdamW's second moment; empty for SGD.
    pub second: Vec<Vec<f32>>,
}

impl OptimState {
    /// Zero state for `model` under `optimizer`.
    pub(crate) fn new(optimizer: Optimizer, model: &Model) -> Self {
        let zeros: Vec<Vec<f32>> = model.layout.iter().map(|p| vec![0f32; p.shape.iter().product()]).collect();
        let second = if optimizer == Optimizer::Adamw { zeros.clone() } else { Vec::new() };
        OptimState { step: 0, first: zeros, second }
    }

    /// Checks restored state has one vector per parameter with the parameter's length.
    pub(crate) fn check(&self, optimizer: Optimizer, model: &Model) -> Result<()> {
        let expected = Self::new(optimizer, model);
        let fits =
            |a: &[Vec<f32>], b: &[Vec<f32>]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len() == y.len());
        if fits(&self.first, &expected.first) && fits(&self.second, &expected.second) {
            Ok(())
        } else {
            Err(NnError::InvalidFile("optimiser state does not fit the model".into()))
        }
    }

    /// One update of every parameter of `model` from `grads` at learning rate `lr`.
    pub(crate) fn step(&mut self, hyper: &Hyper, model: &Model, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        for (i, var) in model.vars.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let g: Vec<f32> = grad.flatten_all()?.to_vec1()?;
            let mut w: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            // Biases (the one-dimensional parameters) are not decayed: shrinking them towards
            // zero regularises nothing and only shifts the activations.
            let decay = if model.layout[i].shape.len() == 1 { 0.0 } else { hyper.weight_decay };
            match hyper.optimizer {
                Optimizer::Adamw => adamw(&mut w, &g, &mut self.first[i], &mut self.second[i], self.step, lr, decay),
                Optimizer::Sgd => sgd(&mut w, &g, &mut self.first[i], lr, hyper.momentum, decay),
            }
            var.set(&Tensor::from_vec(w, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter): w ← w(1 − lr·wd) − lr·m̂/(√v̂ + ε).
fn adamw(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, lr: f64, wd: f64) {
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let correction1 = (1.0 - BETA1.powi(t)) as f32;
    let correction2 = (1.0 - BETA2.powi(t)) as f32;
    let (b1, b2) = (BETA1 as f32, BETA2 as f32);
    let (lr, decay) = (lr as f32, (1.0 - lr * wd) as f32);
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let m_hat = *m / correction1;
        let v_hat = *v / correction2;
        *w = *w * decay - lr * m_hat / (v_hat.sqrt() + EPSILON);
    }
}

/// SGD with momentum and L2 decay (as PyTorch): b ← μb + g + wd·w; w ← w − lr·b.
fn sgd(w: &mut [f32], g: &[f32], buf: &mut [f32], lr: f64, momentum: f64, wd: f64) {
    let (lr, momentum, wd) = (lr as f32, momentum as f32, wd as f32);
    for ((w, &g), b) in w.iter_mut().zip(g).zip(buf.iter_mut()) {
        *b = momentum * *b + g + wd * *w;
        *w -= lr * *b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_each_weight_by_the_learning_rate() {
        let mut w = vec![1.0f32, -1.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw(&mut w, &[0.5, -2.0], &mut m, &mut v, 1, 0.1, 0.0);
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 0.9).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn adamw_decay_shrinks_weights_without_gradient() {
        let mut w = vec![2.0f32];
        let (mut m, mut v) = (vec![0.0], vec![0.0]);
        adamw(&mut w, &[0.0], &mut m, &mut v, 1, 0.1, 0.5);
        assert!((w[0] - 1.9).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn sgd_accumulates_momentum() {
        let mut w = vec![0.0f32];
        let mut b = vec![0.0];
        sgd(&mut w, &[1.0], &mut b, 0.1, 0.9, 0.0);
        sgd(&mut w, &[1.0], &mut b, 0.1, 0.9, 0.0);
        assert!((w[0] + 0.29).abs() < 1e-6, "{w:?}");
    }
}
