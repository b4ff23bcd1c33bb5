//! Drift detection: a sliding window of a served version's recent predictions compared with the
//! reference statistics measured on its validation split at training time.
//!
//! Three tests, each with a configurable threshold: the predicted-class distribution (population
//! stability index), the top-1 confidence distribution (two-sample Kolmogorov–Smirnov against the
//! reference sample), and mean input brightness (PSI over the reference histogram). A verdict
//! needs `drift_min_samples` predictions; a retrain request needs drift on
//! `drift_sustain_checks` consecutive checks. The window also yields the label-free accuracy
//! estimate: the mean calibrated top-1 confidence.

use std::collections::VecDeque;

use serde::Serialize;
use sluice_core::{
    config::InferenceConfig,
    reference::{self, Reference},
};

/// Floor for empty bins, so PSI stays finite.
const EPSILON: f64 = 1e-4;

/// Population stability index of `actual` against `expected` (both fractions summing to 1).
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(EPSILON), a.max(EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Two-sample Kolmogorov–Smirnov statistic and its asymptotic p-value.
pub fn ks(reference: &[f64], observed: &[f64]) -> (f64, f64) {
    if reference.is_empty() || observed.is_empty() {
        return (0.0, 1.0);
    }
    let mut a = reference.to_vec();
    let mut b = observed.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    let n = (a.len() * b.len()) as f64 / (a.len() + b.len()) as f64;
    let lambda = (n.sqrt() + 0.12 + 0.11 / n.sqrt()) * d;
    (d, kolmogorov_q(lambda))
}

/// p-value of a chi-square test that two count vectors (a 2×k contingency table) come from one
/// distribution; categories empty in both are left out.
pub fn chi_square_two_sample(a: &[f64], b: &[f64]) -> f64 {
    let (total_a, total_b): (f64, f64) = (a.iter().sum(), b.iter().sum());
    let total = total_a + total_b;
    if total_a <= 0.0 || total_b <= 0.0 {
        return 1.0;
    }
    let mut statistic = 0.0;
    let mut categories = 0usize;
    for (&x, &y) in a.iter().zip(b) {
        let column = x + y;
        if column <= 0.0 {
            continue;
        }
        categories += 1;
        for (observed, row) in [(x, total_a), (y, total_b)] {
            let expected = row * column / total;
            statistic += (observed - expected).powi(2) / expected;
        }
    }
    if categories < 2 {
        return 1.0;
    }
    chi_square_survival(statistic, (categories - 1) as f64)
}

/// P(X > x) for a chi-square variable with `k` degrees of freedom: the regularized upper
/// incomplete gamma Q(k/2, x/2), by its series (small x) or continued fraction (large x).
fn chi_square_survival(x: f64, k: f64) -> f64 {
    let (a, x) = (k / 2.0, x / 2.0);
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..500 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term < sum * 1e-14 {
                break;
            }
        }
        (1.0 - sum * log_prefix.exp()).clamp(0.0, 1.0)
    } else {
        // Lentz's continued fraction for Q(a, x).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < tiny { tiny } else { d };
            c = b + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-14 {
                break;
            }
        }
        (log_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) (Lanczos approximation, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series =
        COEFFICIENTS[1..].iter().enumerate().fold(COEFFICIENTS[0], |sum, (i, c)| sum + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// The Kolmogorov distribution's survival function Q(λ) = 2 Σ (-1)^(k-1) e^(-2k²λ²).
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let k = k as f64;
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += if k as u64 % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// One prediction as the window keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub class: usize,
    pub confidence: f64,
    /// Calibrated (temperature-scaled) top-1 confidence.
    pub calibrated: f64,
    pub brightness: f64,
}

/// A test's value, its threshold and verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Statistic {
    pub value: f64,
    pub threshold: f64,
    pub drifted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

/// The window's current verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// `insufficient_data`, `ok` or `drift`.
    pub state: &'static str,
    pub window: usize,
    pub min_samples: usize,
    pub class_psi: Statistic,
    pub confidence_ks: Statistic,
    pub brightness_psi: Statistic,
    /// Consecutive checks that found drift.
    pub consecutive: u32,
    /// Mean calibrated top-1 confidence over the window: accuracy estimated without labels.
    pub expected_accuracy: Option<f64>,
    /// The reference's own accuracy on the validation split, for comparison.
    pub reference_accuracy: f64,
}

/// The sliding window of one served version.
#[derive(Debug)]
pub struct Window {
    reference: Reference,
    observations: VecDeque<Observation>,
    since_check: usize,
    consecutive: u32,
    verdict: Option<Verdict>,
}

impl Window {
    pub fn new(reference: Reference) -> Self {
        Self { reference, observations: VecDeque::new(), since_check: 0, consecutive: 0, verdict: None }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Adds an observation; returns the new verdict when a check ran.
    pub fn observe(&mut self, observation: Observation, config: &InferenceConfig) -> Option<&Verdict> {
        self.observations.push_back(observation);
        while self.observations.len() > config.drift_window {
            self.observations.pop_front();
        }
        self.since_check += 1;
        if self.since_check < config.drift_check_every {
            return None;
        }
        self.since_check = 0;
        let verdict = self.evaluate(config);
        self.consecutive = if verdict.state == "drift" { self.consecutive + 1 } else { 0 };
        self.verdict = Some(Verdict { consecutive: self.consecutive, ..verdict });
        self.verdict.as_ref()
    }

    /// The last verdict, or one computed now when no check has run yet.
    pub fn verdict(&self, config: &InferenceConfig) -> Verdict {
        self.verdict.clone().unwrap_or_else(|| self.evaluate(config))
    }

    fn evaluate(&self, config: &InferenceConfig) -> Verdict {
        let n = self.observations.len();
        let classes = self.reference.predicted_class_frequencies.len();
        let mut counts = vec![0.0; classes];
        for o in &self.observations {
            if o.class < classes {
                counts[o.class] += 1.0;
            }
        }
        let denominator = n.max(1) as f64;
        let class_freq: Vec<f64> = counts.iter().map(|c| c / denominator).collect();
        let class_psi = psi(&self.reference.predicted_class_frequencies, &class_freq);
        let confidences: Vec<f64> = self.observations.iter().map(|o| o.confidence).collect();
        let (d, p_value) = ks(&self.reference.confidence_sample, &confidences);
        let brightness = reference::histogram(self.observations.iter().map(|o| o.brightness));
        let brightness_psi = psi(&self.reference.brightness_histogram, &brightness);
        let brightnesses: Vec<f64> = self.observations.iter().map(|o| o.brightness).collect();
        let (_, brightness_p) = ks(&self.reference.brightness_sample, &brightnesses);
        let enough = n >= config.drift_min_samples;
        let threshold = config.drift_psi_threshold;
        // The reference is measured on a validation split that may be small, so a large PSI must
        // also be significant (a two-sample test that accounts for both sample sizes) to count.
        let reference_counts: Vec<f64> =
            self.reference.predicted_class_frequencies.iter().map(|f| f * self.reference.samples as f64).collect();
        let class_p = chi_square_two_sample(&reference_counts, &counts);
        let class_psi = Statistic {
            value: class_psi,
            threshold,
            drifted: enough && class_psi > threshold && class_p < config.drift_ks_p_value,
            p_value: Some(class_p),
        };
        let confidence_ks = Statistic {
            value: d,
            threshold: config.drift_ks_p_value,
            drifted: enough && p_value < config.drift_ks_p_value,
            p_value: Some(p_value),
        };
        let brightness_psi = Statistic {
            value: brightness_psi,
            threshold,
            drifted: enough && brightness_psi > threshold && brightness_p < config.drift_ks_p_value,
            p_value: Some(brightness_p),
        };
        let state = if !enough {
            "insufficient_data"
        } else if class_psi.drifted || confidence_ks.drifted || brightness_psi.drifted {
            "drift"
        } else {
            "ok"
        };
        let expected_accuracy = (n > 0).then(|| self.observations.iter().map(|o| o.calibrated).sum::<f64>() / n as f64);
        Verdict {
            state,
            window: n,
            min_samples: config.drift_min_samples,
            class_psi,
            confidence_ks,
            brightness_psi,
            consecutive: self.consecutive,
            expected_accuracy,
            reference_accuracy: self.reference.accuracy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_equal_distributions_and_grows_with_shift() {
        assert!(psi(&[0.5, 0.5], &[0.5, 0.5]).abs() < 1e-12);
        assert!(psi(&[0.5, 0.5], &[0.6, 0.4]) < 0.1);
        assert!(psi(&[0.5, 0.5], &[0.95, 0.05]) > 0.2);
    }

    #[test]
    fn chi_square_matches_known_values_and_accounts_for_sample_size() {
        // Q(x = 3.841, k = 1) = 0.05 and Q(x = 5.991, k = 2) = 0.05 (standard table values).
        assert!((chi_square_survival(3.841, 1.0) - 0.05).abs() < 1e-3);
        assert!((chi_square_survival(5.991, 2.0) - 0.05).abs() < 1e-3);
        assert!((chi_square_survival(30.0, 2.0) - (-15f64).exp()).abs() < 1e-9);
        // The same proportions are not significant from 48 samples, and are from 4,800.
        let small = chi_square_two_sample(&[12.0, 20.0, 16.0], &[42.0, 42.0, 41.0]);
        let large = chi_square_two_sample(&[1200.0, 2000.0, 1600.0], &[4200.0, 4200.0, 4100.0]);
        assert!(small > 0.05, "p {small}");
        assert!(large < 1e-6, "p {large}");
        assert_eq!(chi_square_two_sample(&[5.0, 5.0], &[5.0, 5.0]), 1.0);
    }

    #[test]
    fn ks_separates_shifted_samples_and_accepts_equal_ones() {
        let a: Vec<f64> = (0..500).map(|i| i as f64 / 500.0).collect();
        let same: Vec<f64> = (0..300).map(|i| (i as f64 + 0.5) / 300.0).collect();
        let shifted: Vec<f64> = same.iter().map(|x| x * 0.5).collect();
        let (d, p) = ks(&a, &same);
        assert!(d < 0.05 && p > 0.5, "d {d} p {p}");
        let (d, p) = ks(&a, &shifted);
        assert!(d > 0.4 && p < 1e-6, "d {d} p {p}");
    }
}
