//! The two small matrix products the convolution needs, written once with `pulp` and compiled
//! for the best instruction set found at run time (AVX2+FMA on x86-64, scalar elsewhere).
//!
//! They write into caller-owned buffers, so the convolution can keep per-thread scratch memory
//! instead of asking the allocator for fresh pages every step. Each output element is summed in
//! a fixed order, so results are deterministic for a given instruction set.

use pulp::{Arch, Simd, WithSimd};

/// Rows of `a` per register tile in [`matmul`]; vectors of `b` per tile.
const MM_ROWS: usize = 4;
const MM_VECS: usize = 3;
/// Rows of `a` and of `b` per register tile in [`matmul_nt`].
const NT_A: usize = 2;
const NT_B: usize = 4;

/// `out[m×n] = a[m×k] · b[k×n]`, all row-major; `out` is overwritten.
pub(crate) fn matmul(out: &mut [f32], a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) {
    assert!(out.len() == m * n && a.len() == m * k && b.len() == k * n, "matmul: operand sizes");
    Arch::new().dispatch(Matmul { out, a, b, m, k, n });
}

/// `out[m×n] = a[m×l] · b[n×l]ᵀ` (dot products of rows), row-major; `out` is overwritten.
pub(crate) fn matmul_nt(out: &mut [f32], a: &[f32], b: &[f32], (m, n, l): (usize, usize, usize)) {
    assert!(out.len() == m * n && a.len() == m * l && b.len() == n * l, "matmul_nt: operand sizes");
    Arch::new().dispatch(MatmulNt { out, a, b, m, n, l });
}

struct Matmul<'a> {
    out: &'a mut [f32],
    a: &'a [f32],
    b: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
}

impl WithSimd for Matmul<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Matmul { out, a, b, m, k, n } = self;
        if n % S::F32_LANES != 0 {
            // Rows of b do not start on vector boundaries: plain loops (only odd image sizes).
            for (i, row) in out.chunks_exact_mut(n).enumerate() {
                row.fill(0.0);
                for (kk, &x) in a[i * k..(i + 1) * k].iter().enumerate() {
                    row.iter_mut().zip(&b[kk * n..(kk + 1) * n]).for_each(|(o, &y)| *o += x * y);
                }
            }
            return;
        }
        let nv = n / S::F32_LANES;
        let bv = S::as_simd_f32s(b).0;
        let ov = S::as_mut_simd_f32s(out).0;
        let mut i = 0;
        while i + MM_ROWS <= m {
            mm_rows::<S, MM_ROWS>(simd, ov, a, bv, i, k, nv);
            i += MM_ROWS;
        }
        for i in i..m {
            mm_rows::<S, 1>(simd, ov, a, bv, i, k, nv);
        }
    }
}

#[inline(always)]
fn mm_rows<S: Simd, const R: usize>(
    simd: S,
    ov: &mut [S::f32s],
    a: &[f32],
    bv: &[S::f32s],
    i: usize,
    k: usize,
    nv: usize,
) {
    let mut j = 0;
    while j + MM_VECS <= nv {
        mm_tile::<S, R, MM_VECS>(simd, ov, a, bv, (i, j), k, nv);
        j += MM_VECS;
    }
    for j in j..nv {
        mm_tile::<S, R, 1>(simd, ov, a, bv, (i, j), k, nv);
    }
}

/// One R×V register tile: rows i..i+R of the output, vectors j..j+V.
#[inline(always)]
fn mm_tile<S: Simd, const R: usize, const V: usize>(
    simd: S,
    ov: &mut [S::f32s],
    a: &[f32],
    bv: &[S::f32s],
    (i, j): (usize, usize),
    k: usize,
    nv: usize,
) {
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; V]; R];
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * k..(i + r + 1) * k]);
    for kk in 0..k {
        let b: &[S::f32s; V] = bv[kk * nv + j..kk * nv + j + V].try_into().expect("V vectors");
        for (acc, row) in acc.iter_mut().zip(&rows) {
            let x = simd.splat_f32s(row[kk]);
            for (acc, &y) in acc.iter_mut().zip(b) {
                *acc = simd.mul_add_e_f32s(x, y, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let at = (i + r) * nv + j;
        ov[at..at + V].copy_from_slice(acc);
    }
}

struct MatmulNt<'a> {
    out: &'a mut [f32],
    a: &'a [f32],
    b: &'a [f32],
    m: usize,
    n: usize,
    l: usize,
}

impl WithSimd for MatmulNt<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let MatmulNt { out, a, b, m, n, l } = self;
        if l % S::F32_LANES != 0 {
            for (i, row) in out.chunks_exact_mut(n).enumerate() {
                let x = &a[i * l..(i + 1) * l];
                for (j, o) in row.iter_mut().enumerate() {
                    *o = x.iter().zip(&b[j * l..(j + 1) * l]).map(|(p, q)| p * q).sum();
                }
            }
            return;
        }
        let mut i = 0;
        while i + NT_A <= m {
            nt_rows::<S, NT_A>(simd, out, a, b, i, n, l);
            i += NT_A;
        }
        for i in i..m {
            nt_rows::<S, 1>(simd, out, a, b, i, n, l);
        }
    }
}

#[inline(always)]
fn nt_rows<S: Simd, const R: usize>(simd: S, out: &mut [f32], a: &[f32], b: &[f32], i: usize, n: usize, l: usize) {
    let mut j = 0;
    while j + NT_B <= n {
        nt_tile::<S, R, NT_B>(simd, out, a, b, (i, j), n, l);
        j += NT_B;
    }
    for j in j..n {
        nt_tile::<S, R, 1>(simd, out, a, b, (i, j), n, l);
    }
}

/// One R×C tile of dot products: rows i..i+R of a against rows j..j+C of b.
#[inline(always)]
fn nt_tile<S: Simd, const R: usize, const C: usize>(
    simd: S,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    (i, j): (usize, usize),
    n: usize,
    l: usize,
) {
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; C]; R];
    let av: [&[S::f32s]; R] = std::array::from_fn(|r| S::as_simd_f32s(&a[(i + r) * l..(i + r + 1) * l]).0);
    let bv: [&[S::f32s]; C] = std::array::from_fn(|c| S::as_simd_f32s(&b[(j + c) * l..(j + c + 1) * l]).0);
    for t in 0..l / S::F32_LANES {
        let y: [S::f32s; C] = std::array::from_fn(|c| bv[c][t]);
        for (acc, av) in acc.iter_mut().zip(&av) {
            let x = av[t];
            for (acc, &y) in acc.iter_mut().zip(&y) {
                *acc = simd.mul_add_e_f32s(x, y, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, &acc) in acc.iter().enumerate() {
            out[(i + r) * n + j + c] = simd.reduce_sum_f32s(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|kk| f64::from(a[i * k + kk]) * f64::from(b[kk * n + j])).sum::<f64>() as f32;
            }
        }
        out
    }

    fn values(len: usize, salt: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "[{i}] {g} vs {w}");
        }
    }

    #[test]
    fn matmul_matches_a_naive_product_for_tiles_and_tails() {
        for (m, k, n) in [(16, 27, 64), (5, 3, 40), (1, 1, 8), (6, 9, 13), (32, 144, 1024 / 4)] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let mut out = vec![f32::NAN; m * n];
            matmul(&mut out, &a, &b, (m, k, n));
            assert_close(&out, &naive(&a, &b, m, k, n));
        }
    }

    #[test]
    fn matmul_nt_matches_a_naive_product_for_tiles_and_tails() {
        for (m, n, l) in [(16, 27, 64), (3, 5, 40), (1, 1, 8), (2, 7, 13)] {
            let (a, b) = (values(m * l, 3), values(n * l, 4));
            let bt: Vec<f32> = (0..l * n).map(|i| b[(i % n) * l + i / n]).collect();
            let mut out = vec![f32::NAN; m * n];
            matmul_nt(&mut out, &a, &b, (m, n, l));
            assert_close(&out, &naive(&a, &bt, m, l, n));
        }
    }
}
