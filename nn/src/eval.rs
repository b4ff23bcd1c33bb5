//! Scoring: batched inference and the metrics computed from its logits.

use candle_core::Device;

use crate::data;
use crate::model::Model;
use crate::{InputShape, Result};

/// Images per forward pass when only scoring (no gradients, so larger batches are cheap); a
/// training session scores fewer at a time when its batches are small ([`crate::Session`]).
pub(crate) const EVAL_BATCH: usize = 256;

/// Loss, accuracy and per-sample outputs of a network on labelled samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean softmax cross-entropy.
    pub loss: f64,
    /// Fraction of samples whose highest logit is their label.
    pub accuracy: f64,
    /// Predicted class per sample.
    pub predictions: Vec<u32>,
    /// Softmax probability of the predicted class per sample.
    pub confidences: Vec<f32>,
    /// Raw logits per sample (for calibration and drift references).
    pub logits: Vec<Vec<f32>>,
}

/// Logits and hidden-layer activations for `n` images (CHW u8, back to back), in order.
pub(crate) fn logits_and_hidden(
    model: &Model,
    images: &[u8],
    shape: InputShape,
    n: usize,
    per_pass: usize,
    device: &Device,
) -> Result<(crate::Rows, crate::Rows)> {
    let (mut logits, mut hidden) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(per_pass.max(1)) {
        let x = data::batch(images, shape, chunk, device)?;
        let (l, h) = model.forward_with_hidden(&x, false, None)?;
        logits.extend(l.to_vec2::<f32>()?);
        hidden.extend(h.to_vec2::<f32>()?);
    }
    Ok((logits, hidden))
}

/// Logits for `n` images (CHW u8, back to back), in order.
pub(crate) fn logits(
    model: &Model,
    images: &[u8],
    shape: InputShape,
    n: usize,
    per_pass: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(n);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(per_pass.max(1)) {
        let x = data::batch(images, shape, chunk, device)?;
        out.extend(model.forward(&x, false, None)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

impl Evaluation {
    /// Metrics from per-sample logits and labels, computed on the host in f64 so they do not
    /// depend on the batch size used to produce the logits.
    pub(crate) fn from_logits(logits: Vec<Vec<f32>>, labels: &[u32]) -> Self {
        let mut loss = 0f64;
        let mut correct = 0usize;
        let mut predictions = Vec::with_capacity(labels.len());
        let mut confidences = Vec::with_capacity(labels.len());
        for (row, &label) in logits.iter().zip(labels) {
            let (best, max) = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) });
            let max = f64::from(max);
            let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            let log_sum = sum.ln() + max;
            loss += log_sum - f64::from(row[label as usize]);
            correct += usize::from(best == label as usize);
            predictions.push(best as u32);
            confidences.push((1.0 / sum) as f32);
        }
        let n = labels.len().max(1) as f64;
        Evaluation { loss: loss / n, accuracy: correct as f64 / n, predictions, confidences, logits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_softmax() {
        let e = Evaluation::from_logits(vec![vec![0.0, 0.0], vec![2.0, 0.0]], &[1, 1]);
        let expected = (2f64.ln() + (1.0 + 2f64.exp()).ln()) / 2.0;
        assert!((e.loss - expected).abs() < 1e-12);
        assert_eq!(e.predictions, vec![0, 0]);
        assert_eq!(e.accuracy, 0.0);
        assert!((e.confidences[0] - 0.5).abs() < 1e-6);
    }
}
