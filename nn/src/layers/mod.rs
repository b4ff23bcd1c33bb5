//! Layer functions over candle tensors. Activations are NCHW; convolution weights are
//! `[out, in, 3, 3]` and dense weights `[out, in]`, as in PyTorch.

mod conv;
mod kernels;

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

/// The same block from candle's stock ops: convolution, ReLU, and a max-pool written as a
/// reshape + max, because candle 0.11's `max_pool2d` backward scales the gradient by 1/4.
pub(crate) fn reference_block(x: &Tensor, weights: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let y = x.conv2d(weights, 1, 1, 1, 1)?.broadcast_add(&bias.reshape((1, (), 1, 1))?)?.relu()?;
    let (n, c, h, w) = y.dims4()?;
    let (ph, pw) = (h / 2, w / 2);
    let y = y.narrow(2, 0, 2 * ph)?.narrow(3, 0, 2 * pw)?.contiguous()?;
    y.reshape((n, c, ph, 2, pw, 2))?.max(5)?.max(3)
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
