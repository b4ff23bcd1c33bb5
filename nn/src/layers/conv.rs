//! The CPU convolution block: 3×3 convolution (padding 1) + bias + ReLU + 2×2 max-pool as one
//! candle custom op over NCHW tensors.
//!
//! Why a custom op: candle's own CPU conv backward computes the input gradient with a direct
//! loop even when nothing needs it (the first layer's input is the image) and runs it on one
//! core, and each unfused op allocates a full-size activation: at 64×64 that is tens of MB of
//! fresh pages per step, and page faults then cost more than the arithmetic. Here each image is
//! one task on rayon's pool: im2col into per-thread scratch, one register-tiled matrix product,
//! then bias + ReLU + pool straight into the output while recording which pixel won each pool
//! window. The backward pass redoes the im2col (cheaper than keeping it), scatters the pooled
//! gradient through the recorded winners, and computes the input gradient only when the input
//! is itself trained. Scratch stays in the thread's cache; per-image partial sums of the weight
//! gradient are added in image order, so results do not depend on scheduling.

use std::cell::RefCell;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::kernels::{matmul, matmul_nt};

/// Pool choice meaning "ReLU clipped the maximum: no gradient flows".
const DEAD: u8 = 4;

/// One application of the block; the cache lives as long as the autograd graph holding the op.
pub(crate) struct ConvBlock {
    keep: bool,
    /// Per pooled output value: which pixel of its 2×2 window (0..4, row-major) won, or DEAD.
    codes: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for ConvBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvBlock").field("keep", &self.keep).finish_non_exhaustive()
    }
}

impl ConvBlock {
    /// `keep`: save what the backward pass needs (training); evaluation passes `false`.
    pub(crate) fn new(keep: bool) -> Self {
        ConvBlock { keep, codes: Mutex::new(None) }
    }
}

/// Per-thread buffers reused across images, steps and layers.
#[derive(Default)]
struct Scratch {
    patches: Vec<f32>,
    conv: Vec<f32>,
    dpatches: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The first `len` values of `v`, growing it if needed (contents are stale, callers overwrite).
fn scratch(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Sizes of one application: input `[n, c, h, w]`, weights `[oc, c, 3, 3]`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    c: usize,
    h: usize,
    w: usize,
    oc: usize,
}

impl Dims {
    fn k(self) -> usize {
        9 * self.c
    }
    fn hw(self) -> usize {
        self.h * self.w
    }
    /// Values per image of the pooled output.
    fn pooled(self) -> usize {
        self.oc * (self.h / 2) * (self.w / 2)
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        (CpuStorage::F32(_), None) => bail!("conv block: operand is not contiguous"),
        _ => bail!("conv block: only f32 is supported"),
    }
}

/// Runs `f` on the f32 values of a CPU tensor (made contiguous first).
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(contiguous(s, layout)?),
        _ => bail!("conv block: tensor is not on the CPU"),
    }
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("conv block: cache lock poisoned".into())
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let (oc, kc, kh, kw) = l2.shape().dims4()?;
        if (kc, kh, kw) != (c, 3, 3) || l3.shape().dims1()? != oc {
            bail!("conv block: weights {:?} / bias {:?} do not fit input {:?}", l2.shape(), l3.shape(), l1.shape())
        }
        if h < 2 || w < 2 {
            bail!("conv block: input {:?} is smaller than the 2×2 pool", l1.shape())
        }
        let d = Dims { c, h, w, oc };
        let (x, weights, bias) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        let mut out = vec![0f32; n * d.pooled()];
        let mut codes = vec![DEAD; out.len()];
        out.par_chunks_mut(d.pooled()).zip(codes.par_chunks_mut(d.pooled())).zip(x.par_chunks(c * d.hw())).for_each(
            |((out, codes), img)| {
                SCRATCH.with_borrow_mut(|s| {
                    let patches = scratch(&mut s.patches, d.k() * d.hw());
                    im2col(img, patches, d);
                    let conv = scratch(&mut s.conv, oc * d.hw());
                    matmul(conv, weights, patches, (oc, d.k(), d.hw()));
                    pool(conv, bias, out, codes, d);
                })
            },
        );
        if self.keep {
            *self.codes.lock().map_err(poisoned)? = Some(codes);
        }
        Ok((CpuStorage::F32(out), Shape::from((n, oc, h / 2, w / 2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let codes = self.codes.lock().map_err(poisoned)?;
        let Some(codes) = codes.as_ref() else { bail!("conv block: backward without a training forward") };
        let (n, c, h, w) = x.dims4()?;
        let oc = weights.dim(0)?;
        let d = Dims { c, h, w, oc };
        let (k, hw) = (d.k(), d.hw());
        // Wᵀ as [k, oc] for the input gradient dP = Wᵀ · dY.
        let weights_t =
            if x.track_op() { Some(with_values(&weights.reshape((oc, k))?.t()?, |v| Ok(v.to_vec()))?) } else { None };
        let mut dweights = vec![0f32; n * oc * k];
        let mut dbias = vec![0f32; n * oc];
        let mut dx = vec![0f32; if weights_t.is_some() { n * c * hw } else { 0 }];
        let mut dx_slots: Vec<Option<&mut [f32]>> = if weights_t.is_some() {
            dx.chunks_mut(c * hw).map(Some).collect()
        } else {
            (0..n).map(|_| None).collect()
        };
        with_values(x, |x| {
            with_values(grad, |grad| {
                dweights
                    .par_chunks_mut(oc * k)
                    .zip(dbias.par_chunks_mut(oc))
                    .zip(dx_slots.par_iter_mut())
                    .zip(x.par_chunks(c * hw).zip(grad.par_chunks(d.pooled())).zip(codes.par_chunks(d.pooled())))
                    .for_each(|(((dw, db), dx), ((img, g), codes))| {
                        SCRATCH.with_borrow_mut(|s| {
                            let dconv = scratch(&mut s.conv, oc * hw);
                            unpool(g, codes, dconv, db, d);
                            let patches = scratch(&mut s.patches, k * hw);
                            im2col(img, patches, d);
                            matmul_nt(dw, dconv, patches, (oc, k, hw));
                            if let (Some(dx), Some(wt)) = (dx, weights_t.as_deref()) {
                                let dpatches = scratch(&mut s.dpatches, k * hw);
                                matmul(dpatches, wt, dconv, (k, oc, hw));
                                col2im(dpatches, dx, d);
                            }
                        })
                    });
                Ok(())
            })
        })?;
        drop(dx_slots);
        let dx = match weights_t {
            Some(_) => Some(Tensor::from_vec(dx, (n, c, h, w), &Device::Cpu)?),
            None => None,
        };
        let dweights = Tensor::from_vec(sum_images(&dweights, oc * k), weights.shape(), &Device::Cpu)?;
        let dbias = Tensor::from_vec(sum_images(&dbias, oc), oc, &Device::Cpu)?;
        Ok((dx, Some(dweights), Some(dbias)))
    }
}

/// Adds per-image partials (`len` values each) in image order.
fn sum_images(partials: &[f32], len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for p in partials.chunks_exact(len) {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

/// One image `[c, h, w]` → patch matrix `[c*9, h*w]`: row (ch, ky, kx) is the image shifted by
/// (ky-1, kx-1), zero outside. Row order matches the `[oc, c, 3, 3]` weight layout.
fn im2col(img: &[f32], patches: &mut [f32], d: Dims) {
    let (h, w, hw) = (d.h, d.w, d.hw());
    for (r, row) in patches.chunks_exact_mut(hw).enumerate() {
        let (ch, ky, kx) = (r / 9, r % 9 / 3, r % 3);
        let plane = &img[ch * hw..(ch + 1) * hw];
        for (y, dst) in row.chunks_exact_mut(w).enumerate() {
            let Some(yy) = (y + ky).checked_sub(1).filter(|&yy| yy < h) else {
                dst.fill(0.0);
                continue;
            };
            let src = &plane[yy * w..(yy + 1) * w];
            match kx {
                0 => {
                    dst[0] = 0.0;
                    dst[1..].copy_from_slice(&src[..w - 1]);
                }
                1 => dst.copy_from_slice(src),
                _ => {
                    dst[..w - 1].copy_from_slice(&src[1..]);
                    dst[w - 1] = 0.0;
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: adds each patch-row gradient back onto the pixels it was read from.
fn col2im(dpatches: &[f32], dx: &mut [f32], d: Dims) {
    let (h, w, hw) = (d.h, d.w, d.hw());
    for (r, row) in dpatches.chunks_exact(hw).enumerate() {
        let (ch, ky, kx) = (r / 9, r % 9 / 3, r % 3);
        let plane = &mut dx[ch * hw..(ch + 1) * hw];
        for (y, src) in row.chunks_exact(w).enumerate() {
            let Some(yy) = (y + ky).checked_sub(1).filter(|&yy| yy < h) else { continue };
            let dst = &mut plane[yy * w..(yy + 1) * w];
            let (dst, src) = match kx {
                0 => (&mut dst[..w - 1], &src[1..]),
                1 => (dst, src),
                _ => (&mut dst[1..], &src[..w - 1]),
            };
            dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
        }
    }
}

/// Bias + ReLU + 2×2 max-pool of one image's conv output `[oc, h, w]` into `[oc, h/2, w/2]`,
/// recording the winning pixel of each window (or DEAD where ReLU clipped it).
fn pool(conv: &[f32], bias: &[f32], out: &mut [f32], codes: &mut [u8], d: Dims) {
    let (w, hw, ph, pw) = (d.w, d.hw(), d.h / 2, d.w / 2);
    for (o, &b) in bias.iter().enumerate() {
        let plane = &conv[o * hw..(o + 1) * hw];
        for py in 0..ph {
            let top = &plane[2 * py * w..(2 * py + 1) * w];
            let bottom = &plane[(2 * py + 1) * w..(2 * py + 2) * w];
            let at = (o * ph + py) * pw;
            for (px, (out, code)) in out[at..at + pw].iter_mut().zip(&mut codes[at..at + pw]).enumerate() {
                let quad = [top[2 * px], top[2 * px + 1], bottom[2 * px], bottom[2 * px + 1]];
                let (mut best, mut win) = (quad[0], 0u8);
                for (i, &v) in quad.iter().enumerate().skip(1) {
                    if v > best {
                        (best, win) = (v, i as u8);
                    }
                }
                let v = best + b;
                (*out, *code) = if v > 0.0 { (v, win) } else { (0.0, DEAD) };
            }
        }
    }
}

/// Gradient of [`pool`] for one image: fills `dconv [oc, h*w]` and the bias gradient `[oc]`.
fn unpool(grad: &[f32], codes: &[u8], dconv: &mut [f32], dbias: &mut [f32], d: Dims) {
    let (w, hw, ph, pw) = (d.w, d.hw(), d.h / 2, d.w / 2);
    dconv.fill(0.0);
    for (o, db) in dbias.iter_mut().enumerate() {
        let plane = &mut dconv[o * hw..(o + 1) * hw];
        let mut sum = 0f32;
        for py in 0..ph {
            let at = (o * ph + py) * pw;
            for (px, (&g, &code)) in grad[at..at + pw].iter().zip(&codes[at..at + pw]).enumerate() {
                if code == DEAD {
                    continue;
                }
                let (dy, dx) = (usize::from(code / 2), usize::from(code % 2));
                plane[(2 * py + dy) * w + 2 * px + dx] = g;
                sum += g;
            }
        }
        *db = sum;
    }
}
