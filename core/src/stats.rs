//! Small statistical tests shared by services: the trainer's promotion gate and inference's live
//! comparison of a shadow with the version it shadows.

/// P(X ≥ b) for X ~ Binomial(b + c, 1/2): the exact one-sided McNemar test on discordant pairs,
/// `b` favouring the challenger and `c` the incumbent. 1 when there are none.
pub fn mcnemar_one_sided(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    // Sum the upper tail in log space: C(n, k) / 2^n for k = b..=n.
    let ln_choose = |k: u64| ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k);
    let terms: Vec<f64> = (b..=n).map(|k| ln_choose(k) - n as f64 * std::f64::consts::LN_2).collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()).exp().min(1.0)
}

fn ln_factorial(n: u64) -> f64 {
    (2..=n).map(|k| (k as f64).ln()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_tail() {
        // 8 vs 2 discordant: P(X >= 8), X ~ Bin(10, 0.5) = (45 + 10 + 1) / 1024.
        assert!((mcnemar_one_sided(8, 2) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((mcnemar_one_sided(5, 5) - 638.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_one_sided(0, 0), 1.0);
        assert!((mcnemar_one_sided(3, 0) - 0.125).abs() < 1e-12);
        // Large counts stay finite and tiny.
        let p = mcnemar_one_sided(900, 100);
        assert!(p > 0.0 && p < 1e-100, "{p}");
    }
}
