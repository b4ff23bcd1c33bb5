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
        let enough = n >= config.drift_min_samples;
        let threshold = config.drift_psi_threshold;
        let class_psi =
            Statistic { value: class_psi, threshold, drifted: enough && class_psi > threshold, p_value: None };
        let confidence_ks = Statistic {
            value: d,
            threshold: config.drift_ks_p_value,
            drifted: enough && p_value < config.drift_ks_p_value,
            p_value: Some(p_value),
        };
        let brightness_psi = Statistic {
            value: brightness_psi,
            threshold,
            drifted: enough && brightness_psi > threshold,
            p_value: None,
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
