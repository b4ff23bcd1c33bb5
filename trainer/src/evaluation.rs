//! Held-out evidence: a model's metrics on a job's test split, and the paired comparison of a
//! candidate against production that `promote: if_better` decides on.
//!
//! The unit is the item (a video's frames are one item, scored by their mean probabilities), so
//! that the paired test counts independent observations.

use serde::Serialize;
use sluice_core::{
    reference::{softmax, top1},
    stats::mcnemar_one_sided,
};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Test items of this class.
    pub support: usize,
}

/// A model's metrics on the test split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestReport {
    pub items: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Expected calibration error of the temperature-scaled top-1 confidence (10 equal bins).
    pub expected_calibration_error: f64,
    pub per_class: Vec<ClassReport>,
    /// `confusion_matrix[true][predicted]`, in label order.
    pub confusion_matrix: Vec<Vec<u32>>,
}

/// Per-item class probabilities: the mean of `softmax(logits / temperature)` over each item's
/// frames. `frames[i]` is item i's number of rows in `logits`.
pub fn item_probabilities(logits: &[Vec<f32>], frames: &[usize], temperature: f64) -> Vec<Vec<f64>> {
    let mut rows = logits.iter();
    frames
        .iter()
        .map(|&count| {
            let mut mean: Vec<f64> = Vec::new();
            for row in rows.by_ref().take(count) {
                let p = softmax(row, temperature);
                if mean.is_empty() {
                    mean = vec![0.0; p.len()];
                }
                mean.iter_mut().zip(&p).for_each(|(m, v)| *m += v / count as f64);
            }
            mean
        })
        .collect()
}

/// Metrics from per-item probabilities (in `labels` order) and true classes.
pub fn report(labels: &[String], probabilities: &[Vec<f64>], truth: &[u32]) -> TestReport {
    let k = labels.len();
    let mut confusion = vec![vec![0u32; k]; k];
    let mut bins = [(0usize, 0f64, 0usize); 10];
    for (p, &t) in probabilities.iter().zip(truth) {
        let (predicted, confidence) = top1(p);
        if (t as usize) < k && predicted < k {
            confusion[t as usize][predicted] += 1;
        }
        let bin = ((confidence * 10.0) as usize).min(9);
        bins[bin].0 += 1;
        bins[bin].1 += confidence;
        bins[bin].2 += usize::from(predicted == t as usize);
    }
    let n = truth.len();
    let correct: u32 = (0..k).map(|i| confusion[i][i]).sum();
    let per_class: Vec<ClassReport> = (0..k)
        .map(|c| {
            let tp = f64::from(confusion[c][c]);
            let predicted: u32 = (0..k).map(|t| confusion[t][c]).sum();
            let support: u32 = confusion[c].iter().sum();
            let precision = if predicted == 0 { 0.0 } else { tp / f64::from(predicted) };
            let recall = if support == 0 { 0.0 } else { tp / f64::from(support) };
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassReport { label: labels[c].clone(), precision, recall, f1, support: support as usize }
        })
        .collect();
    let present: Vec<&ClassReport> = per_class.iter().filter(|c| c.support > 0).collect();
    let macro_f1 =
        if present.is_empty() { 0.0 } else { present.iter().map(|c| c.f1).sum::<f64>() / present.len() as f64 };
    let ece = bins
        .iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|&(count, confidence, right)| {
            (count as f64 / n as f64) * (confidence / count as f64 - right as f64 / count as f64).abs()
        })
        .sum();
    TestReport {
        items: n,
        accuracy: if n == 0 { 0.0 } else { f64::from(correct) / n as f64 },
        macro_f1,
        expected_calibration_error: ece,
        per_class,
        confusion_matrix: confusion,
    }
}

/// A candidate and production scored on the same items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    pub items: usize,
    pub candidate_accuracy: f64,
    pub production_accuracy: f64,
    /// Items the candidate got right and production wrong.
    pub candidate_only: u64,
    /// Items production got right and the candidate wrong.
    pub production_only: u64,
    /// One-sided exact McNemar p-value for "the candidate is more accurate".
    pub p_value: f64,
}

impl Paired {
    pub fn new(candidate: &[bool], production: &[bool]) -> Self {
        let items = candidate.len().min(production.len());
        let pairs = candidate.iter().zip(production);
        let candidate_only = pairs.clone().filter(|&(&c, &p)| c && !p).count() as u64;
        let production_only = pairs.filter(|&(&c, &p)| !c && p).count() as u64;
        let accuracy = |right: &[bool]| {
            if items == 0 { 0.0 } else { right[..items].iter().filter(|&&r| r).count() as f64 / items as f64 }
        };
        Paired {
            items,
            candidate_accuracy: accuracy(candidate),
            production_accuracy: accuracy(production),
            candidate_only,
            production_only,
            p_value: mcnemar_one_sided(candidate_only, production_only),
        }
    }

    /// Significantly better at level `alpha`, and by at least `margin` in accuracy.
    pub fn candidate_wins(&self, alpha: f64, margin: f64) -> bool {
        self.items > 0
            && self.candidate_only > self.production_only
            && self.p_value <= alpha
            && self.candidate_accuracy - self.production_accuracy >= margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_must_be_significantly_and_sufficiently_better() {
        let production = vec![true; 100];
        let mut candidate = production.clone();
        candidate[0] = false;
        // Equal or worse: never.
        assert!(!Paired::new(&production, &production).candidate_wins(0.05, 0.0));
        assert!(!Paired::new(&candidate, &production).candidate_wins(0.05, 0.0));
        // 4 better of 4 discordant: p = 1/16 > 0.05, not yet.
        let mut production = vec![true; 100];
        production[..4].iter_mut().for_each(|r| *r = false);
        let candidate = vec![true; 100];
        let paired = Paired::new(&candidate, &production);
        assert_eq!((paired.candidate_only, paired.production_only), (4, 0));
        assert!(!paired.candidate_wins(0.05, 0.0));
        // 6 of 6: p = 1/64.
        production[..6].iter_mut().for_each(|r| *r = false);
        let paired = Paired::new(&candidate, &production);
        assert!(paired.candidate_wins(0.05, 0.0));
        assert!(!paired.candidate_wins(0.05, 0.1), "a margin of 0.1 needs 10 points of accuracy");
    }

    #[test]
    fn reports_count_items_and_classes() {
        let labels = vec!["a".to_owned(), "b".to_owned()];
        // Item 0: two frames of class a; item 1: b predicted a; item 2: b.
        let logits = vec![vec![3.0, 0.0], vec![2.0, 1.0], vec![1.0, 0.0], vec![0.0, 2.0]];
        let probabilities = item_probabilities(&logits, &[2, 1, 1], 1.0);
        assert_eq!(probabilities.len(), 3);
        let report = report(&labels, &probabilities, &[0, 1, 1]);
        assert_eq!(report.items, 3);
        assert_eq!(report.confusion_matrix, vec![vec![1, 0], vec![1, 1]]);
        assert!((report.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((report.per_class[0].precision - 0.5).abs() < 1e-12);
        assert!((report.per_class[1].recall - 0.5).abs() < 1e-12);
        assert!((report.macro_f1 - (2.0 / 3.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!(report.expected_calibration_error >= 0.0 && report.expected_calibration_error <= 1.0);
    }
}
