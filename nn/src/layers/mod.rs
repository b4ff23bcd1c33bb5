//! Layer functions over candle tensors. Activations are channels-last (NHWC); convolution
//! weights are `[out, 3, 3, in]` and dense weights `[out, in]`.

mod conv;

use std::sync::Arc;

use candle_core::{D, Result, Tensor};

/// 3×3 convolution (padding 1) + bias + ReLU + 2×2 max-pool.
///
/// `train` keeps what the backward pass needs. On the CPU this is one fused custom op; on other
/// devices it is candle's own ops ([`reference_block`]).
pub(crate) fn conv_block(x: &Tensor, weights: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op3_arc(weights, bias, Arc::new(Box::new(conv::ConvBlock::new(train))))
    } else {
        reference_block(x, weights, bias)
    }
}

/// The same block from candle's stock ops: NCHW convolution, ReLU, and a max-pool written as a
/// reshape + max, because candle 0.11's `max_pool2d` backward scales the gradient by 1/4.
pub(crate) fn reference_block(x: &Tensor, weights: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let x = x.permute((0, 3, 1, 2))?.contiguous()?;
    let weights = weights.permute((0, 3, 1, 2))?.contiguous()?;
    let y = x.conv2d(&weights, 1, 1, 1, 1)?.broadcast_add(&bias.reshape((1, (), 1, 1))?)?.relu()?;
    let y = y.permute((0, 2, 3, 1))?;
    let (n, h, w, c) = y.dims4()?;
    let (ph, pw) = (h / 2, w / 2);
    let y = y.narrow(1, 0, 2 * ph)?.narrow(2, 0, 2 * pw)?.contiguous()?;
    y.reshape((n, ph, 2, pw, 2, c))?.max(4)?.max(2)
}

/// `x [n, in] · wᵀ + b`.
pub(crate) fn dense(x: &Tensor, weights: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.matmul(&weights.t()?)?.broadcast_add(bias)
}

/// Row-wise argmax of logits `[n, classes]`.
pub(crate) fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1()
}

#[cfg(test)]
mod tests;
