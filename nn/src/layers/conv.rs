//! The CPU convolution block: 3×3 convolution (padding 1) + bias + ReLU + 2×2 max-pool as one
//! candle custom op over channels-last (NHWC) tensors.
//!
//! Why a custom op: candle's own CPU conv backward computes the input gradient with a direct
//! loop even when nothing needs it (the first layer's input is the image), runs it on one core,
//! and the unfused ReLU and pool each allocate a full-size activation. Here the forward is
//! im2col + one matmul (candle's gemm, all cores) and a fused bias/ReLU/pool pass that records
//! which of the four pixels won; the backward scatters the pooled gradient back through those
//! choices, gets the weight gradient from one matmul against the saved patch matrix, and only
//! computes the input gradient when the input is itself trained. The per-image loops run on
//! rayon over disjoint output slices, and per-image partial sums are added in image order, so
//! results do not depend on scheduling.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

/// Pool choice meaning "ReLU clipped the maximum: no gradient flows".
const DEAD: u8 = 4;

/// One application of the block; the cache lives as long as the autograd graph holding the op.
pub(crate) struct ConvBlock {
    keep: bool,
    cache: Mutex<Option<Cache>>,
}

impl std::fmt::Debug for ConvBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvBlock").field("keep", &self.keep).finish_non_exhaustive()
    }
}

struct Cache {
    /// im2col matrix `[n*h*w, 9*c]`, rows in (image, y, x) order, columns in (ky, kx, c) order.
    patches: Tensor,
    /// Per pooled output value: which of the 2×2 pixels (0..4, row-major) was the maximum, or DEAD.
    codes: Vec<u8>,
}

impl ConvBlock {
    /// `keep`: save what the backward pass needs (training); evaluation passes `false`.
    pub(crate) fn new(keep: bool) -> Self {
        ConvBlock { keep, cache: Mutex::new(None) }
    }
}

/// Sizes of one application: input `[n, h, w, c]`, weights `[oc, 3, 3, c]`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oc: usize,
}

impl Dims {
    fn k(self) -> usize {
        9 * self.c
    }
    fn pooled(self) -> (usize, usize) {
        (self.h / 2, self.w / 2)
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        (CpuStorage::F32(_), None) => bail!("conv block: operand is not contiguous"),
        _ => bail!("conv block: only f32 is supported"),
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(contiguous(s, layout)?),
        _ => bail!("conv block: tensor is not on the CPU"),
    }
}

impl CustomOp3 for ConvBlock {
    fn name(&self) -> &'static str {
        "sluice-conv3x3-relu-maxpool2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l1.shape().dims4()?;
        let (oc, kh, kw, kc) = l2.shape().dims4()?;
        if (kh, kw, kc) != (3, 3, c) || l3.shape().dims1()? != oc {
            bail!("conv block: weights {:?} / bias {:?} do not fit input {:?}", l2.shape(), l3.shape(), l1.shape())
        }
        let d = Dims { n, h, w, c, oc };
        let patches = im2col(contiguous(s1, l1)?, d);
        let patches = Tensor::from_vec(patches, (n * h * w, d.k()), &Device::Cpu)?;
        let weights = Tensor::from_slice(contiguous(s2, l2)?, (oc, d.k()), &Device::Cpu)?;
        let conv = patches.matmul(&weights.t()?)?;
        let bias = contiguous(s3, l3)?;
        let (pooled, codes) = with_values(&conv, |conv| Ok(pool(conv, bias, d)))?;
        if self.keep {
            let mut cache = self.cache.lock().map_err(|_| candle_core::Error::Msg("conv cache poisoned".into()))?;
            *cache = Some(Cache { patches, codes });
        }
        let (ph, pw) = d.pooled();
        Ok((CpuStorage::F32(pooled), Shape::from((n, ph, pw, oc))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let cache = self.cache.lock().map_err(|_| candle_core::Error::Msg("conv cache poisoned".into()))?;
        let Some(cache) = cache.as_ref() else { bail!("conv block: backward without a training forward") };
        let (n, h, w, c) = x.dims4()?;
        let oc = weights.dim(0)?;
        let d = Dims { n, h, w, c, oc };
        let (dconv, dbias) = with_values(grad, |g| Ok(unpool(g, &cache.codes, d)))?;
        let dconv = Tensor::from_vec(dconv, (n * h * w, oc), &Device::Cpu)?;
        let dweights = dconv.t()?.matmul(&cache.patches)?.reshape(weights.shape())?;
        let dbias = Tensor::from_vec(dbias, oc, &Device::Cpu)?;
        let dx = if x.track_op() {
            let dpatches = dconv.matmul(&weights.reshape((oc, d.k()))?)?;
            let dx = with_values(&dpatches, |dp| Ok(col2im(dp, d)))?;
            Some(Tensor::from_vec(dx, (n, h, w, c), &Device::Cpu)?)
        } else {
            None
        };
        Ok((dx, Some(dweights), Some(dbias)))
    }
}

/// `[n, h, w, c]` → `[n*h*w, 9*c]`: row (y, x) holds the 3×3 neighbourhood, zero outside.
fn im2col(x: &[f32], d: Dims) -> Vec<f32> {
    let (h, w, c, k) = (d.h, d.w, d.c, d.k());
    let mut out = vec![0f32; d.n * h * w * k];
    out.par_chunks_mut(h * w * k).zip(x.par_chunks(h * w * c)).for_each(|(dst, img)| {
        for y in 0..h {
            for ky in 0..3 {
                let Some(yy) = (y + ky).checked_sub(1).filter(|&yy| yy < h) else { continue };
                let src_row = &img[yy * w * c..(yy + 1) * w * c];
                for xo in 0..w {
                    // Columns xo-1..=xo+1 of the source row are contiguous in NHWC.
                    let lo = xo.saturating_sub(1);
                    let hi = (xo + 1).min(w - 1);
                    let skip = lo + 1 - xo; // 1 when the left neighbour is outside, else 0
                    let row = &mut dst[(y * w + xo) * k..][..k];
                    let at = (ky * 3 + skip) * c;
                    row[at..at + (hi - lo + 1) * c].copy_from_slice(&src_row[lo * c..(hi + 1) * c]);
                }
            }
        }
    });
    out
}

/// Bias + ReLU + 2×2 max-pool over the conv output `[n*h*w, oc]`; returns the pooled
/// `[n, h/2, w/2, oc]` values and, for each, which pixel won (or DEAD).
fn pool(conv: &[f32], bias: &[f32], d: Dims) -> (Vec<f32>, Vec<u8>) {
    let (h, w, oc) = (d.h, d.w, d.oc);
    let (ph, pw) = d.pooled();
    let mut out = vec![0f32; d.n * ph * pw * oc];
    let mut codes = vec![DEAD; out.len()];
    out.par_chunks_mut(ph * pw * oc).zip(codes.par_chunks_mut(ph * pw * oc)).zip(conv.par_chunks(h * w * oc)).for_each(
        |((out, codes), img)| {
            for py in 0..ph {
                for px in 0..pw {
                    let at = |dy: usize, dx: usize| &img[((2 * py + dy) * w + 2 * px + dx) * oc..][..oc];
                    let quad = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                    let o = (py * pw + px) * oc;
                    for ch in 0..oc {
                        let mut best = quad[0][ch];
                        let mut code = 0u8;
                        for (i, q) in quad.iter().enumerate().skip(1) {
                            if q[ch] > best {
                                best = q[ch];
                                code = i as u8;
                            }
                        }
                        let v = best + bias[ch];
                        if v > 0.0 {
                            out[o + ch] = v;
                            codes[o + ch] = code;
                        }
                    }
                }
            }
        },
    );
    (out, codes)
}

/// Gradient of `pool`: the conv-output gradient `[n*h*w, oc]` and the bias gradient `[oc]`.
fn unpool(grad: &[f32], codes: &[u8], d: Dims) -> (Vec<f32>, Vec<f32>) {
    let (h, w, oc) = (d.h, d.w, d.oc);
    let (ph, pw) = d.pooled();
    let per_image = ph * pw * oc;
    let mut dconv = vec![0f32; d.n * h * w * oc];
    let partial: Vec<Vec<f32>> = dconv
        .par_chunks_mut(h * w * oc)
        .zip(grad.par_chunks(per_image).zip(codes.par_chunks(per_image)))
        .map(|(dst, (g, codes))| {
            let mut dbias = vec![0f32; oc];
            for py in 0..ph {
                for px in 0..pw {
                    let o = (py * pw + px) * oc;
                    for ch in 0..oc {
                        let code = codes[o + ch];
                        if code == DEAD {
                            continue;
                        }
                        let (dy, dx) = (usize::from(code / 2), usize::from(code % 2));
                        dst[((2 * py + dy) * w + 2 * px + dx) * oc + ch] = g[o + ch];
                        dbias[ch] += g[o + ch];
                    }
                }
            }
            dbias
        })
        .collect();
    let mut dbias = vec![0f32; oc];
    for p in &partial {
        dbias.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    (dconv, dbias)
}

/// Adjoint of `im2col`: sums each patch-matrix gradient back onto the pixels it was read from.
fn col2im(dpatches: &[f32], d: Dims) -> Vec<f32> {
    let (h, w, c, k) = (d.h, d.w, d.c, d.k());
    let mut dx = vec![0f32; d.n * h * w * c];
    dx.par_chunks_mut(h * w * c).zip(dpatches.par_chunks(h * w * k)).for_each(|(img, dp)| {
        for y in 0..h {
            for ky in 0..3 {
                let Some(yy) = (y + ky).checked_sub(1).filter(|&yy| yy < h) else { continue };
                for xo in 0..w {
                    let lo = xo.saturating_sub(1);
                    let hi = (xo + 1).min(w - 1);
                    let skip = lo + 1 - xo;
                    let at = (ky * 3 + skip) * c;
                    let src = &dp[(y * w + xo) * k + at..][..(hi - lo + 1) * c];
                    let dst = &mut img[(yy * w + lo) * c..(yy * w + hi + 1) * c];
                    dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
            }
        }
    });
    dx
}
