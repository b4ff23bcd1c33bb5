use candle_core::{Device, Tensor, Var};
use rand::Rng;

use super::*;
use crate::rng::{Purpose, stream};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = stream(seed, Purpose::Init, 0);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("flatten").to_vec1().expect("vec")
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    for (i, (x, y)) in values(a).iter().zip(values(b)).enumerate() {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}[{i}]: fused {x} vs reference {y}");
    }
}

/// Forward and all three gradients of the fused block against candle's stock ops.
fn check(n: usize, h: usize, w: usize, c: usize, oc: usize) {
    let x = Var::from_tensor(&random(&[n, c, h, w], 1)).expect("var");
    let wt = Var::from_tensor(&random(&[oc, c, 3, 3], 2)).expect("var");
    let b = Var::from_tensor(&random(&[oc], 3)).expect("var");
    let ph = h / 2;
    let pw = w / 2;
    let probe = random(&[n, oc, ph, pw], 4);
    let run = |fused: bool| {
        let y = if fused {
            conv_block(x.as_tensor(), wt.as_tensor(), b.as_tensor(), true)
        } else {
            reference_block(x.as_tensor(), wt.as_tensor(), b.as_tensor())
        }
        .expect("forward");
        let loss = (&y * &probe).expect("mul").sum_all().expect("sum");
        let grads = loss.backward().expect("backward");
        let g = |v: &Var| grads.get(v.as_tensor()).expect("grad").clone();
        (y, g(&x), g(&wt), g(&b))
    };
    let fused = run(true);
    let reference = run(false);
    assert_close(&fused.0, &reference.0, "output");
    assert_close(&fused.1, &reference.1, "input gradient");
    assert_close(&fused.2, &reference.2, "weight gradient");
    assert_close(&fused.3, &reference.3, "bias gradient");
}

#[test]
fn fused_block_matches_candle_ops_on_rgb_input() {
    check(2, 8, 8, 3, 4);
}

#[test]
fn fused_block_matches_candle_ops_on_odd_sizes_and_many_channels() {
    check(3, 7, 5, 16, 8);
    check(1, 2, 2, 1, 2);
    check(2, 16, 8, 3, 16);
    check(1, 2, 9, 2, 3);
}

#[test]
fn fused_block_skips_the_gradient_of_an_untrained_input() {
    let x = random(&[1, 1, 4, 4], 1);
    let wt = Var::from_tensor(&random(&[2, 1, 3, 3], 2)).expect("var");
    let b = Var::from_tensor(&random(&[2], 3)).expect("var");
    let y = conv_block(&x, wt.as_tensor(), b.as_tensor(), true).expect("forward");
    let grads = y.sum_all().expect("sum").backward().expect("backward");
    assert!(grads.get(&x).is_none());
    assert!(grads.get(wt.as_tensor()).is_some());
}

#[test]
fn evaluation_forward_has_no_backward() {
    let x = random(&[1, 1, 4, 4], 1);
    let wt = Var::from_tensor(&random(&[2, 1, 3, 3], 2)).expect("var");
    let b = Var::from_tensor(&random(&[2], 3)).expect("var");
    let y = conv_block(&x, wt.as_tensor(), b.as_tensor(), false).expect("forward");
    assert!(y.sum_all().expect("sum").backward().is_err());
}

#[test]
fn input_gradient_matches_finite_differences() {
    let x = random(&[1, 2, 4, 4], 1);
    let wt = random(&[3, 2, 3, 3], 2);
    let b = random(&[3], 3);
    let probe = random(&[1, 3, 2, 2], 4);
    let loss = |v: Vec<f32>| -> f32 {
        let x = Tensor::from_vec(v, (1, 2, 4, 4), &Device::Cpu).expect("x");
        let y = conv_block(&x, &wt, &b, false).expect("forward");
        (&y * &probe).expect("mul").sum_all().expect("sum").to_scalar().expect("scalar")
    };
    let xv = Var::from_tensor(&x).expect("var");
    let y = conv_block(xv.as_tensor(), &wt, &b, true).expect("forward");
    let grads = (&y * &probe).expect("mul").sum_all().expect("sum").backward().expect("backward");
    let analytic = values(grads.get(xv.as_tensor()).expect("grad"));
    let base = values(&x);
    let eps = 1e-2;
    for i in 0..base.len() {
        let (mut plus, mut minus) = (base.clone(), base.clone());
        plus[i] += eps;
        minus[i] -= eps;
        let numeric = (loss(plus) - loss(minus)) / (2.0 * eps);
        assert!((numeric - analytic[i]).abs() < 1e-2, "x[{i}]: numeric {numeric} vs analytic {}", analytic[i]);
    }
}
