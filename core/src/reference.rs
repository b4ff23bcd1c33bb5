//! Reference statistics a model version carries for drift detection and label-free accuracy
//! estimates: computed by the trainer on the calibration split, compared by inference against
//! live traffic. Both sides compute input statistics with the same functions here.

use serde::{Deserialize, Serialize};

/// Bins of the confidence and brightness histograms (equal width over [0, 1]).
pub const BINS: usize = 10;

/// What a version's validation split looked like through the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Samples the statistics were computed on.
    pub samples: usize,
    /// Fraction of samples predicted as each class (label index order).
    pub predicted_class_frequencies: Vec<f64>,
    /// Fraction of samples of each true class.
    pub label_frequencies: Vec<f64>,
    /// Histogram (fractions) of top-1 confidence.
    pub confidence_histogram: Vec<f64>,
    /// Sorted top-1 confidences (at most 1,000, evenly picked) for two-sample KS tests.
    pub confidence_sample: Vec<f64>,
    /// Histogram (fractions) of mean image brightness in [0, 1].
    pub brightness_histogram: Vec<f64>,
    /// Sorted mean brightnesses (at most 1,000, evenly picked) for two-sample KS tests.
    #[serde(default)]
    pub brightness_sample: Vec<f64>,
    pub brightness_mean: f64,
    pub brightness_std: f64,
    /// Mean of each channel in [0, 1].
    pub channel_means: Vec<f64>,
    /// Softmax temperature fitted on the split (confidences of `softmax(logits / T)` are calibrated).
    pub temperature: f64,
    /// Top-1 accuracy on the split.
    pub accuracy: f64,
    /// Mean calibrated top-1 confidence of the samples predicted as each class. Drift compares
    /// served inputs with these class by class, so a change in the class mix alone (label shift)
    /// does not look like new inputs (covariate shift).
    #[serde(default)]
    pub class_confidence: Vec<f64>,
    /// Mean brightness of the samples predicted as each class.
    #[serde(default)]
    pub class_brightness: Vec<f64>,
    /// Mean sharpness ([`sharpness`]) of the samples predicted as each class.
    #[serde(default)]
    pub class_sharpness: Vec<f64>,
    /// Variance of each sample's confidence, brightness and sharpness around its predicted
    /// class's mean: the spread the served residuals are compared against.
    #[serde(default)]
    pub residual_variances: Residuals,
    /// Mean projection of the penultimate-layer embedding ([`project`]) of the samples predicted
    /// as each class, one row per class; empty for versions made before embeddings were kept.
    #[serde(default)]
    pub class_embedding: Vec<Vec<f64>>,
    /// Variance of each projection around its class's mean.
    #[serde(default)]
    pub embedding_variances: Vec<f64>,
    /// Held-out samples' embedding sketches ([`sketch`]) with their predicted classes: the
    /// reference sample the served sketches are compared against (a kernel two-sample test);
    /// empty for versions made before it was kept.
    #[serde(default)]
    pub embedding_sample: Vec<SketchedSample>,
}

/// One held-out sample of [`Reference::embedding_sample`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SketchedSample {
    pub class: u32,
    /// [`SKETCH_DIMENSIONS`] values.
    pub sketch: Vec<f32>,
}

/// Directions whose per-class means the drift window follows (the first of the sketch's).
pub const EMBEDDING_DIRECTIONS: usize = 4;
/// Directions of an embedding's sketch: enough to keep the distances between embeddings roughly
/// (a Johnson–Lindenstrauss projection), few enough to ship with every prediction.
pub const SKETCH_DIMENSIONS: usize = 16;
/// At most this many samples are kept in [`Reference::embedding_sample`].
pub const SKETCH_SAMPLE: usize = 600;

/// An embedding projected on [`SKETCH_DIMENSIONS`] fixed pseudo-random unit directions (the same
/// for every embedding of a length, on the trainer's side and on inference's): what the network
/// sees, reduced to a few numbers that travel with each prediction. The first
/// [`EMBEDDING_DIRECTIONS`] are the directions the per-class means are kept for.
pub fn sketch(embedding: &[f32]) -> [f32; SKETCH_DIMENSIONS] {
    let mut out = [0.0; SKETCH_DIMENSIONS];
    for (k, value) in out.iter_mut().enumerate() {
        let (mut dot, mut norm) = (0.0, 0.0);
        for (j, &e) in embedding.iter().enumerate() {
            let g = gaussian(((k as u64) << 32) | j as u64);
            dot += g * f64::from(e);
            norm += g * g;
        }
        *value = if norm > 0.0 { (dot / norm.sqrt()) as f32 } else { 0.0 };
    }
    out
}

/// The first [`EMBEDDING_DIRECTIONS`] values of a sketch.
pub fn projections(sketch: &[f32; SKETCH_DIMENSIONS]) -> [f64; EMBEDDING_DIRECTIONS] {
    std::array::from_fn(|k| f64::from(sketch[k]))
}

/// A standard normal value from an index (SplitMix64 then Box–Muller): deterministic, no state.
fn gaussian(index: u64) -> f64 {
    let mix = |mut x: u64| {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    let a = mix(index.wrapping_mul(2));
    let b = mix(index.wrapping_mul(2) + 1);
    let u = ((a >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let v = (b >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Per-sample variances around the class means, one per input statistic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Residuals {
    pub confidence: f64,
    pub brightness: f64,
    pub sharpness: f64,
}

/// Sorted values, thinned evenly to at most 1,000.
fn sorted_sample(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    let step = (values.len() as f64 / 1000.0).max(1.0);
    (0..values.len().min(1000)).map(|i| values[(i as f64 * step) as usize]).collect()
}

/// Numerically stable softmax of `logits / temperature`.
pub fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index and probability of the most likely class.
pub fn top1(probabilities: &[f64]) -> (usize, f64) {
    probabilities.iter().copied().enumerate().fold((0, f64::MIN), |best, (i, p)| if p > best.1 { (i, p) } else { best })
}

/// Mean brightness in [0, 1] and per-channel means of one `u8` CHW image.
pub fn image_stats(chw: &[u8], channels: usize) -> (f64, Vec<f64>) {
    let plane = chw.len() / channels.max(1);
    let means: Vec<f64> = (0..channels)
        .map(|c| chw[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).sum::<f64>() / (plane.max(1) as f64 * 255.0))
        .collect();
    (means.iter().sum::<f64>() / channels.max(1) as f64, means)
}

/// Mean absolute difference between neighbouring pixels of the first channel, in [0, 1]: high
/// for crisp edges and noise, low for blurred or flat images. Rows are read one after another,
/// so the one pair per row that spans two rows adds a little noise and no bias between images of
/// one size.
pub fn sharpness(chw: &[u8], channels: usize) -> f64 {
    let plane = &chw[..chw.len() / channels.max(1)];
    if plane.len() < 2 {
        return 0.0;
    }
    let total: u64 = plane.windows(2).map(|w| u64::from(w[0].abs_diff(w[1]))).sum();
    total as f64 / ((plane.len() - 1) as f64 * 255.0)
}

/// Per-class means of `values` (by `classes[i]`), the overall mean for a class with no sample,
/// and the variance of the values around their class's mean.
pub fn class_means(values: &[f64], classes: &[usize], count: usize) -> (Vec<f64>, f64) {
    let overall = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let mut sums = vec![(0.0, 0usize); count];
    for (&v, &c) in values.iter().zip(classes) {
        if c < count {
            sums[c].0 += v;
            sums[c].1 += 1;
        }
    }
    let means: Vec<f64> = sums.iter().map(|&(s, n)| if n == 0 { overall } else { s / n as f64 }).collect();
    let variance =
        values.iter().zip(classes).map(|(&v, &c)| (v - means.get(c).copied().unwrap_or(overall)).powi(2)).sum::<f64>()
            / values.len().max(1) as f64;
    (means, variance)
}

/// Fractions of `values` (in [0, 1]) per equal-width bin.
pub fn histogram(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut bins = vec![0.0; BINS];
    let mut n = 0usize;
    for value in values {
        let bin = ((value.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1);
        bins[bin] += 1.0;
        n += 1;
    }
    if n > 0 {
        bins.iter_mut().for_each(|b| *b /= n as f64);
    }
    bins
}

/// The temperature minimising the negative log-likelihood of the true labels (golden-section
/// search over [0.05, 100]): temperature scaling, the usual post-hoc calibration.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[u32]) -> f64 {
    if logits.is_empty() {
        return 1.0;
    }
    let nll = |t: f64| -> f64 {
        logits.iter().zip(labels).map(|(l, &y)| -softmax(l, t)[y as usize].max(1e-12).ln()).sum::<f64>()
    };
    let (mut lo, mut hi) = (0.05f64.ln(), 100f64.ln());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let a = hi - ratio * (hi - lo);
        let b = lo + ratio * (hi - lo);
        if nll(a.exp()) < nll(b.exp()) {
            hi = b;
        } else {
            lo = a;
        }
    }
    ((lo + hi) / 2.0).exp()
}

impl Reference {
    /// Adds the embedding statistics: the projections' per-class means (by predicted class) and
    /// their variance around them, from the split's logits and penultimate-layer embeddings.
    pub fn add_embeddings(&mut self, logits: &[Vec<f32>], embeddings: &[Vec<f32>]) {
        let classes = self.predicted_class_frequencies.len();
        let predicted: Vec<usize> = logits.iter().map(|l| top1(&softmax(l, self.temperature)).0).collect();
        let projected: Vec<[f64; EMBEDDING_DIRECTIONS]> = embeddings.iter().map(|e| projections(&sketch(e))).collect();
        let mut means = vec![vec![0.0; EMBEDDING_DIRECTIONS]; classes];
        self.embedding_variances = (0..EMBEDDING_DIRECTIONS)
            .map(|k| {
                let values: Vec<f64> = projected.iter().map(|p| p[k]).collect();
                let (class_means, variance) = class_means(&values, &predicted, classes);
                for (c, mean) in class_means.into_iter().enumerate() {
                    means[c][k] = mean;
                }
                variance
            })
            .collect();
        self.class_embedding = means;
    }

    /// Keeps the sketches of held-out samples (the calibration and validation splits: neither
    /// trained the weights) as the reference sample of the embedding two-sample test, evenly
    /// thinned to [`SKETCH_SAMPLE`].
    pub fn add_embedding_sample(&mut self, logits: &[Vec<f32>], embeddings: &[Vec<f32>]) {
        let n = logits.len().min(embeddings.len());
        let step = (n as f64 / SKETCH_SAMPLE as f64).max(1.0);
        self.embedding_sample = (0..n.min(SKETCH_SAMPLE))
            .map(|i| (i as f64 * step) as usize)
            .map(|i| SketchedSample {
                class: top1(&softmax(&logits[i], 1.0)).0 as u32,
                sketch: sketch(&embeddings[i]).to_vec(),
            })
            .collect();
    }

    /// Computes the statistics from the split's images (`u8` CHW, one after another), labels and
    /// the model's logits for them.
    pub fn compute(images: &[u8], channels: usize, labels: &[u32], logits: &[Vec<f32>], classes: usize) -> Self {
        let n = labels.len();
        let frame = images.len().checked_div(n).unwrap_or(0);
        let temperature = fit_temperature(logits, labels);
        let mut predicted = vec![0.0; classes];
        let mut truth = vec![0.0; classes];
        let mut confidences = Vec::with_capacity(n);
        let mut predicted_classes = Vec::with_capacity(n);
        let mut correct = 0usize;
        for (l, &y) in logits.iter().zip(labels) {
            let (class, confidence) = top1(&softmax(l, temperature));
            predicted_classes.push(class);
            predicted[class] += 1.0;
            truth[y as usize] += 1.0;
            correct += usize::from(class == y as usize);
            confidences.push(confidence);
        }
        let stats: Vec<(f64, Vec<f64>)> =
            (0..n).map(|i| image_stats(&images[i * frame..(i + 1) * frame], channels)).collect();
        let brightness: Vec<f64> = stats.iter().map(|(b, _)| *b).collect();
        let denominator = n.max(1) as f64;
        let brightness_mean = brightness.iter().sum::<f64>() / denominator;
        let variance = brightness.iter().map(|b| (b - brightness_mean).powi(2)).sum::<f64>() / denominator;
        let channel_means = (0..channels).map(|c| stats.iter().map(|(_, m)| m[c]).sum::<f64>() / denominator).collect();
        let confidence_histogram = histogram(confidences.iter().copied());
        let sharpnesses: Vec<f64> = (0..n).map(|i| sharpness(&images[i * frame..(i + 1) * frame], channels)).collect();
        let (class_confidence, confidence_var) = class_means(&confidences, &predicted_classes, classes);
        let (class_brightness, brightness_var) = class_means(&brightness, &predicted_classes, classes);
        let (class_sharpness, sharpness_var) = class_means(&sharpnesses, &predicted_classes, classes);
        Self {
            samples: n,
            predicted_class_frequencies: predicted.iter().map(|c| c / denominator).collect(),
            label_frequencies: truth.iter().map(|c| c / denominator).collect(),
            confidence_histogram,
            confidence_sample: sorted_sample(confidences),
            brightness_sample: sorted_sample(brightness.clone()),
            brightness_histogram: histogram(brightness.iter().copied()),
            brightness_mean,
            brightness_std: variance.sqrt(),
            channel_means,
            temperature,
            accuracy: correct as f64 / denominator,
            class_confidence,
            class_brightness,
            class_sharpness,
            residual_variances: Residuals {
                confidence: confidence_var,
                brightness: brightness_var,
                sharpness: sharpness_var,
            },
            class_embedding: Vec::new(),
            embedding_variances: Vec::new(),
            embedding_sample: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_softens_overconfident_logits() {
        // Always very confident, right only half the time: the fitted temperature is large.
        let logits: Vec<Vec<f32>> = (0..100).map(|_| vec![10.0, 0.0]).collect();
        let labels: Vec<u32> = (0..100).map(|i| i % 2).collect();
        let t = fit_temperature(&logits, &labels);
        assert!(t > 5.0, "temperature {t}");
        let calibrated = top1(&softmax(&logits[0], t)).1;
        assert!((calibrated - 0.5).abs() < 0.1, "calibrated confidence {calibrated}");
    }

    #[test]
    fn sketches_are_fixed_unit_directions() {
        let e: Vec<f32> = (0..64).map(|i| (i % 7) as f32).collect();
        assert_eq!(sketch(&e), sketch(&e));
        // Linear, and a unit direction: scaling the input scales the projection.
        let doubled: Vec<f32> = e.iter().map(|v| v * 2.0).collect();
        for (a, b) in sketch(&e).iter().zip(sketch(&doubled)) {
            assert!((2.0 * a - b).abs() < 1e-4);
        }
        let unit: Vec<f32> = (0..64).map(|i| if i == 3 { 1.0 } else { 0.0 }).collect();
        assert!(sketch(&unit).iter().all(|p| p.abs() < 1.0));
        assert_ne!(sketch(&e)[0], sketch(&e)[1], "the directions differ");
        // Each direction is a unit vector, so over the 64 axes the sketches' squared lengths
        // average 16 / 64: distances shrink by one common factor.
        let length: f32 = (0..64)
            .map(|j| {
                let u: Vec<f32> = (0..64).map(|i| if i == j { 1.0 } else { 0.0 }).collect();
                sketch(&u).iter().map(|v| v * v).sum::<f32>()
            })
            .sum::<f32>()
            / 64.0;
        assert!((length - 0.25).abs() < 1e-3, "mean squared length {length}");
    }

    #[test]
    fn the_embedding_sample_is_thinned_and_labelled_by_prediction() {
        let logits: Vec<Vec<f32>> =
            (0..2500).map(|i| if i % 2 == 0 { vec![3.0, 0.0] } else { vec![0.0, 3.0] }).collect();
        let embeddings: Vec<Vec<f32>> = (0..2500).map(|i| vec![i as f32; 8]).collect();
        let mut reference = Reference::compute(&[0u8; 2500], 1, &vec![0; 2500], &logits, 2);
        reference.add_embedding_sample(&logits, &embeddings);
        assert_eq!(reference.embedding_sample.len(), SKETCH_SAMPLE);
        assert!(reference.embedding_sample.iter().all(|s| s.sketch.len() == SKETCH_DIMENSIONS));
        assert!(reference.embedding_sample.iter().any(|s| s.class == 0));
        assert!(reference.embedding_sample.iter().any(|s| s.class == 1));
    }

    #[test]
    fn reference_counts_classes_and_brightness() {
        let images = [vec![0u8; 12], vec![255u8; 12]].concat();
        let logits = vec![vec![5.0, 0.0], vec![0.0, 5.0]];
        let reference = Reference::compute(&images, 3, &[0, 1], &logits, 2);
        assert_eq!(reference.predicted_class_frequencies, vec![0.5, 0.5]);
        assert_eq!(reference.accuracy, 1.0);
        assert!((reference.brightness_mean - 0.5).abs() < 1e-9);
        assert_eq!(reference.brightness_histogram[0], 0.5);
        assert_eq!(reference.brightness_histogram[BINS - 1], 0.5);
    }
}
