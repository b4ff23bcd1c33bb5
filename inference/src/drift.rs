//! Drift detection that holds on real traffic.
//!
//! Predictions are not independent: a camera looks at one thing for a while, one request carries
//! many images of one thing, traffic comes in bursts. So the unit is never the image:
//! - a **request** is never split;
//! - consecutive requests whose predictions are (80 % or more) one and the same class form one
//!   **segment**, a run of one thing: it counts as one independent unit, however many images it
//!   has (the images of a mixed request count one each);
//! - a window closes once it holds `drift_window` predictions in at least [`MIN_BATCHES`]
//!   requests (or four times `drift_window` predictions);
//! - its requests are grouped, in arrival order, into about `drift_batches` batches, a statistic's
//!   value is computed per batch, and a t test compares the batches' mean with the reference value.
//!   The variance of that mean is the batches' own spread (inflated by their lag-1
//!   autocorrelation), but never less than the reference's per-unit variance over the number of
//!   independent units; the reference's own sampling error (a finite calibration split) is added.
//!
//! So a stream of long one-class runs is judged by how many runs it holds, not by how many images:
//! a window of a single run is no evidence of anything a run of that object could not explain,
//! while a model that suddenly sees every input far from its reference (and answers one class for
//! all of them) is still flagged. For class frequencies the spread is measured around the
//! reference value (a score test): a window of few runs, most classes absent from it, is no
//! evidence of a new class mix.
//!
//! Statistics, each one test:
//! - **label**: the frequency of each predicted class (a change in the class mix);
//! - **input**: confidence, brightness, sharpness and four projections of the penultimate-layer
//!   embedding (what the network sees: a new camera, a translation or a blur moves it even when
//!   brightness stays), each as the residual from the reference's
//!   mean *for the predicted class*, so that a new class mix alone does not look like new inputs.
//!   (A network that meets inputs unlike its training data also grows less sure, so confidence is
//!   the input statistic that sees most kinds of covariate shift; only a drop counts, one-sided.)
//! - **input, `embedding:mmd`**: a kernel two-sample test (maximum mean discrepancy with a
//!   permutation test, [`mmd`]) of the served embedding sketches against the version's held-out
//!   sample, class by class: it sees changes the means miss (a wider spread, a new mode).
//!
//! The tests of one check are Bonferroni-corrected to a family-wise false-alarm probability of
//! `drift_alpha`. Windows do not overlap (each check is on new data), so checks are independent
//! under stationarity, and a retrain request needs `drift_sustain_checks` consecutive drifted
//! checks: with the defaults (α = 0.002, two checks, windows of at least 400 predictions) a
//! stationary stream makes a false request about once per 10⁸ predictions, far inside the budget
//! of one per 100,000, and 2,000 stationary predictions see a flagged check about once in a
//! hundred streams (simulated on correlated streams in `drift/tests.rs`).
//!
//! The verdict says which statistics fired and what kind of shift it is: `covariate_shift` when
//! an input statistic fired (the inputs look new), `label_shift` when only class frequencies did.
//! The window also yields the label-free accuracy estimate: the mean calibrated top-1 confidence,
//! with a 95 % interval from the batches, marked unreliable under covariate shift (temperature
//! scaling assumes inputs like the calibration split's).

use serde::Serialize;
use sluice_core::{
    config::InferenceConfig,
    reference::{EMBEDDING_DIRECTIONS, Reference, SKETCH_DIMENSIONS, projections},
};

pub mod mmd;

/// Fewer batches than this give no verdict (the t test would have almost no degrees of freedom).
pub const MIN_BATCHES: usize = 5;
/// A request is "of one class" when at least this share of its predictions are.
const PURE_SHARE: f64 = 0.8;
/// A window that has not reached `MIN_BATCHES` requests by this many times `drift_window`
/// predictions is judged anyway (and says `insufficient_data` if it still has too few).
const MAX_WINDOW_FACTOR: usize = 4;
/// Lag-1 autocorrelation above this is treated as this: beyond it the variance floor of the
/// independent units guards against long runs, and a shift that starts mid-window (which looks
/// like strong autocorrelation) is not explained away.
const MAX_AUTOCORRELATION: f64 = 0.5;

/// One prediction as the window sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub class: usize,
    /// Calibrated (temperature-scaled) top-1 confidence.
    pub confidence: f64,
    pub brightness: f64,
    pub sharpness: f64,
    /// The penultimate-layer embedding's sketch ([`sluice_core::reference::sketch`]); `None` when
    /// the replica that served it did not send one.
    pub embedding: Option<[f32; SKETCH_DIMENSIONS]>,
}

/// Input statistics tested per prediction: confidence, brightness, sharpness, then the
/// embedding's projections.
const INPUTS: usize = 3 + EMBEDDING_DIRECTIONS;

/// The reference's per-class means and per-sample residual variances.
#[derive(Debug, Clone)]
struct Expectations {
    class_frequencies: Vec<f64>,
    confidence: Vec<f64>,
    brightness: Vec<f64>,
    /// Empty for references made before sharpness was measured: that test is left out.
    sharpness: Vec<f64>,
    /// Per class, the embedding projections' means; empty for references without embeddings.
    embedding: Vec<Vec<f64>>,
    residual_variances: [f64; INPUTS],
    samples: f64,
}

impl Expectations {
    /// Which input tests this reference supports.
    fn inputs(&self) -> Vec<(usize, String)> {
        let mut out = vec![(0, "confidence".to_owned()), (1, "brightness".to_owned())];
        if !self.sharpness.is_empty() {
            out.push((2, "sharpness".to_owned()));
        }
        if !self.embedding.is_empty() {
            out.extend((0..EMBEDDING_DIRECTIONS).map(|k| (3 + k, format!("embedding:{}", k + 1))));
        }
        out
    }
}

impl Expectations {
    fn of(reference: &Reference) -> Self {
        let classes = reference.predicted_class_frequencies.len();
        let r = &reference.residual_variances;
        if reference.class_confidence.len() == classes && classes > 0 {
            let with_embedding = reference.class_embedding.len() == classes
                && reference.class_embedding.iter().all(|row| row.len() == EMBEDDING_DIRECTIONS)
                && reference.embedding_variances.len() == EMBEDDING_DIRECTIONS;
            let mut residual_variances = [0.0; INPUTS];
            residual_variances[..3].copy_from_slice(&[r.confidence, r.brightness, r.sharpness]);
            if with_embedding {
                residual_variances[3..].copy_from_slice(&reference.embedding_variances);
            }
            return Self {
                class_frequencies: reference.predicted_class_frequencies.clone(),
                confidence: reference.class_confidence.clone(),
                brightness: reference.class_brightness.clone(),
                sharpness: reference.class_sharpness.clone(),
                embedding: if with_embedding { reference.class_embedding.clone() } else { Vec::new() },
                residual_variances,
                samples: reference.samples.max(1) as f64,
            };
        }
        // An older reference: overall means only.
        let sample = &reference.confidence_sample;
        let mean = sample.iter().sum::<f64>() / sample.len().max(1) as f64;
        let variance = sample.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / sample.len().max(1) as f64;
        Self {
            class_frequencies: reference.predicted_class_frequencies.clone(),
            confidence: vec![mean; classes],
            brightness: vec![reference.brightness_mean; classes],
            sharpness: Vec::new(),
            embedding: Vec::new(),
            residual_variances: {
                let mut v = [0.0; INPUTS];
                v[0] = variance;
                v[1] = reference.brightness_std.powi(2);
                v
            },
            samples: reference.samples.max(1) as f64,
        }
    }
}

/// One request's predictions (or several merged into a segment or a batch): counts and sums.
#[derive(Debug, Clone)]
struct Block {
    n: usize,
    /// The predicted class of (almost) every prediction in it; `None` for a mixed request.
    class: Option<usize>,
    counts: Vec<f64>,
    /// Sums of the residuals from the predicted class's reference mean, per input statistic.
    residuals: [f64; INPUTS],
    /// Sum of the calibrated confidences themselves (the accuracy estimate).
    calibrated: f64,
}

impl Block {
    fn empty(classes: usize) -> Self {
        Self { n: 0, class: None, counts: vec![0.0; classes], residuals: [0.0; INPUTS], calibrated: 0.0 }
    }

    fn add(&mut self, other: &Block) {
        self.n += other.n;
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        self.residuals.iter_mut().zip(other.residuals).for_each(|(a, b)| *a += b);
        self.calibrated += other.calibrated;
    }

    fn mean(&self, sum: f64) -> f64 {
        sum / self.n.max(1) as f64
    }
}

/// One test of a check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Statistic {
    /// `class:<label>`, `confidence`, `brightness` or `sharpness`.
    pub name: String,
    /// `label` (class mix) or `input` (what the inputs look like).
    pub kind: &'static str,
    /// The batches' mean: a class frequency, or a mean residual.
    pub value: f64,
    /// What the reference expects (a class frequency, or 0 for residuals).
    pub expected: f64,
    pub t: f64,
    /// Effective degrees of freedom.
    pub df: f64,
    pub p_value: f64,
    /// The per-test level after the Bonferroni correction.
    pub threshold: f64,
    pub drifted: bool,
}

sluice_core::text_enum! {
    /// What a window shows (`drift_verdicts.state`).
    pub enum DriftState {
        InsufficientData = "insufficient_data",
        Ok = "ok",
        Drift = "drift",
    }
}

sluice_core::text_enum! {
    /// Which shift a drifted window shows (`drift_verdicts.kind`).
    pub enum DriftKind {
        None = "none",
        LabelShift = "label_shift",
        CovariateShift = "covariate_shift",
    }
}

/// The verdict of the last completed window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub state: DriftState,
    pub kind: DriftKind,
    /// Predictions in the window.
    pub window: usize,
    /// Requests in the window (never split).
    pub requests: usize,
    /// Runs of consecutive requests of one predicted class (never split either).
    pub segments: usize,
    pub batches: usize,
    /// Family-wise false-alarm probability of one check.
    pub alpha: f64,
    pub statistics: Vec<Statistic>,
    /// Names of the statistics that drifted.
    pub fired: Vec<String>,
    /// Consecutive drifted checks, this one included.
    pub consecutive: u32,
    /// Checks run since the version was loaded.
    pub checks: u64,
    /// Mean calibrated top-1 confidence: accuracy estimated without labels.
    pub expected_accuracy: Option<f64>,
    /// 95 % interval of that estimate (sampling error of the window).
    pub expected_accuracy_interval: Option<[f64; 2]>,
    /// False under covariate shift: the calibration no longer holds.
    pub expected_accuracy_reliable: bool,
    /// The reference's own accuracy on its calibration split.
    pub reference_accuracy: f64,
}

/// A served version's current window and last verdict.
#[derive(Debug)]
pub struct Window {
    reference: Reference,
    labels: Vec<String>,
    expectations: Expectations,
    /// The held-out sketches the served ones are compared against (`None`: no such test).
    pool: Option<mmd::Pool>,
    blocks: Vec<Block>,
    /// The window's sketches with the index of the block (request) each came in.
    sketches: Vec<(usize, usize, [f32; SKETCH_DIMENSIONS])>,
    predictions: usize,
    consecutive: u32,
    checks: u64,
    verdict: Option<Verdict>,
}

impl Window {
    pub fn new(reference: Reference, labels: Vec<String>) -> Self {
        let expectations = Expectations::of(&reference);
        let pool = mmd::Pool::of(&reference, expectations.class_frequencies.len());
        Self {
            reference,
            labels,
            expectations,
            pool,
            blocks: Vec::new(),
            sketches: Vec::new(),
            predictions: 0,
            consecutive: 0,
            checks: 0,
            verdict: None,
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Continues the check counts of a version whose window moved here from another monitor.
    pub fn continue_counts(&mut self, consecutive: u32, checks: u64) {
        self.consecutive = consecutive;
        self.checks = checks;
    }

    /// Whether the last completed window drifted.
    pub fn drifting(&self) -> bool {
        self.verdict.as_ref().is_some_and(|v| v.state == DriftState::Drift)
    }

    /// Adds one request's predictions; returns the verdict when this closed a window.
    pub fn observe(&mut self, request: &[Observation], config: &InferenceConfig) -> Option<&Verdict> {
        if request.is_empty() {
            return None;
        }
        let e = &self.expectations;
        let classes = e.class_frequencies.len();
        let mut block = Block::empty(classes);
        for o in request {
            block.n += 1;
            block.calibrated += o.confidence;
            let Some(&expected) = e.confidence.get(o.class) else { continue };
            block.counts[o.class] += 1.0;
            block.residuals[0] += o.confidence - expected;
            block.residuals[1] += o.brightness - e.brightness[o.class];
            block.residuals[2] += e.sharpness.get(o.class).map_or(0.0, |s| o.sharpness - s);
            if let (Some(means), Some(embedding)) = (e.embedding.get(o.class), o.embedding) {
                let projected = projections(&embedding);
                for k in 0..EMBEDDING_DIRECTIONS {
                    block.residuals[3 + k] += projected[k] - means[k];
                }
            }
            if let (Some(_), Some(embedding)) = (&self.pool, o.embedding) {
                self.sketches.push((self.blocks.len(), o.class, embedding));
            }
        }
        block.class = dominant(&block.counts);
        self.predictions += block.n;
        self.blocks.push(block);
        let full = self.predictions >= config.drift_window && self.blocks.len() >= MIN_BATCHES;
        if !full && self.predictions < config.drift_window * MAX_WINDOW_FACTOR {
            return None;
        }
        let mut verdict = self.evaluate(config);
        self.blocks.clear();
        self.sketches.clear();
        self.predictions = 0;
        self.checks += 1;
        self.consecutive = if verdict.state == DriftState::Drift { self.consecutive + 1 } else { 0 };
        verdict.consecutive = self.consecutive;
        verdict.checks = self.checks;
        self.verdict = Some(verdict);
        self.verdict.as_ref()
    }

    /// The last completed window's verdict; before the first, the window so far, as
    /// `insufficient_data`.
    pub fn verdict(&self, config: &InferenceConfig) -> Verdict {
        self.verdict.clone().unwrap_or_else(|| {
            let mut partial = self.evaluate(config);
            partial.state = DriftState::InsufficientData;
            partial.kind = DriftKind::None;
            partial.fired.clear();
            partial.statistics.iter_mut().for_each(|s| s.drifted = false);
            partial
        })
    }

    fn evaluate(&self, config: &InferenceConfig) -> Verdict {
        let e = &self.expectations;
        let classes = e.class_frequencies.len();
        let batches = batch(&self.blocks, config.drift_batches, classes);
        let segment_of = segment_ids(&self.blocks);
        let segments = merge(&self.blocks, &segment_of, classes);
        // Independent units: a one-class segment is one (its images may all show one thing), a
        // mixed request's images one each. The window's mean weighs a unit by its images, so the
        // effective count is (Σ n)² / Σ n²: one long run among short ones counts for nearly all.
        let (sum, squares) = segments.iter().fold((0.0, 0.0), |(sum, squares), s| {
            let n = s.n as f64;
            if s.class.is_some() { (sum + n, squares + n * n) } else { (sum + n, squares + n) }
        });
        let units = if squares > 0.0 { (sum * sum / squares).max(1.0) } else { 1.0 };
        let inputs = e.inputs();
        let tests = classes + inputs.len() + usize::from(self.pool.is_some());
        let alpha = config.drift_alpha;
        let threshold = alpha / tests as f64;
        let mut statistics = Vec::with_capacity(tests);
        let enough = batches.len() >= MIN_BATCHES;
        if enough {
            for c in 0..classes {
                let values: Vec<f64> = batches.iter().map(|b| b.mean(b.counts[c])).collect();
                let pi = e.class_frequencies[c];
                let name = format!("class:{}", self.labels.get(c).map_or("?", String::as_str));
                let unit = pi * (1.0 - pi);
                let variances = Variances { reference: unit / e.samples, floor: unit / units };
                statistics.push(t_test(name, "label", &values, pi, variances, threshold, true));
            }
            for (i, name) in inputs {
                let values: Vec<f64> = batches.iter().map(|b| b.mean(b.residuals[i])).collect();
                let unit = e.residual_variances[i];
                let variances = Variances { reference: unit / e.samples, floor: unit / units };
                let mut statistic = t_test(name.clone(), "input", &values, 0.0, variances, threshold, false);
                if name == "confidence" {
                    // Only a drop counts: inputs the network is surer of than its calibration
                    // split (its own training images, say) are no reason to retrain.
                    statistic.p_value = if statistic.t < 0.0 { statistic.p_value / 2.0 } else { 1.0 };
                    statistic.drifted = statistic.p_value < threshold;
                }
                statistics.push(statistic);
            }
            if let Some(statistic) = self.embedding_test(config, threshold, &segment_of, &segments) {
                statistics.push(statistic);
            }
        }
        let fired: Vec<String> = statistics.iter().filter(|s| s.drifted).map(|s| s.name.clone()).collect();
        let covariate = statistics.iter().any(|s| s.drifted && s.kind == "input");
        let (state, kind) = match (enough, fired.is_empty(), covariate) {
            (false, _, _) => (DriftState::InsufficientData, DriftKind::None),
            (true, true, _) => (DriftState::Ok, DriftKind::None),
            (true, false, true) => (DriftState::Drift, DriftKind::CovariateShift),
            (true, false, false) => (DriftState::Drift, DriftKind::LabelShift),
        };
        let n = self.predictions;
        let calibrated: f64 = self.blocks.iter().map(|b| b.calibrated).sum();
        let expected_accuracy = (n > 0).then(|| calibrated / n as f64);
        let expected_accuracy_interval = (batches.len() >= 2).then(|| {
            let values: Vec<f64> = batches.iter().map(|b| b.mean(b.calibrated)).collect();
            let (se, df) = standard_error(&values, 0.0, 0.0, None);
            let half = student_t_quantile(0.975, df) * se;
            let centre = expected_accuracy.unwrap_or(0.0);
            [(centre - half).max(0.0), (centre + half).min(1.0)]
        });
        Verdict {
            state,
            kind,
            window: n,
            requests: self.blocks.len(),
            segments: segments.len(),
            batches: batches.len(),
            alpha,
            statistics,
            fired,
            consecutive: self.consecutive,
            checks: self.checks,
            expected_accuracy,
            expected_accuracy_interval,
            expected_accuracy_reliable: !covariate,
            reference_accuracy: self.reference.accuracy,
        }
    }
}

impl Window {
    /// The kernel two-sample test of the window's sketches, its units grouped like the batches
    /// but from segments (a run of one class is never split across groups).
    fn embedding_test(
        &self,
        config: &InferenceConfig,
        threshold: f64,
        segment_of: &[usize],
        segments: &[Block],
    ) -> Option<Statistic> {
        let pool = self.pool.as_ref()?;
        let sizes: Vec<usize> = segments.iter().map(|s| s.n).collect();
        let group_of = grouping(&sizes, config.drift_batches);
        let served: Vec<mmd::Served> = self
            .sketches
            .iter()
            .map(|&(block, class, sketch)| mmd::Served { group: group_of[segment_of[block]], class, sketch })
            .collect();
        let name = "embedding:mmd".to_owned();
        let Some(outcome) = mmd::test(pool, &served, threshold, self.checks) else {
            // Too few units to say anything: reported, never drifted.
            let statistic = Statistic {
                name,
                kind: "input",
                value: 0.0,
                expected: 0.0,
                t: 0.0,
                df: 0.0,
                p_value: 1.0,
                threshold,
                drifted: false,
            };
            return Some(statistic);
        };
        Some(Statistic {
            name,
            kind: "input",
            value: outcome.mmd2,
            expected: 0.0,
            t: outcome.z,
            df: outcome.groups as f64,
            p_value: outcome.p_value,
            threshold,
            drifted: outcome.p_value < threshold,
        })
    }
}

/// The class of at least [`PURE_SHARE`] of a block's predictions, if there is one.
fn dominant(counts: &[f64]) -> Option<usize> {
    let total: f64 = counts.iter().sum();
    let (class, top) = counts.iter().enumerate().fold((0, 0.0), |best, (c, &n)| if n > best.1 { (c, n) } else { best });
    (total > 0.0 && top >= PURE_SHARE * total).then_some(class)
}

/// Each block's segment: consecutive blocks of one dominant class share one (runs of one thing);
/// mixed requests stay alone.
fn segment_ids(blocks: &[Block]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let same = i > 0 && block.class.is_some() && blocks[i - 1].class == block.class;
        out.push(match out.last() {
            Some(&last) if same => last,
            Some(&last) => last + 1,
            None => 0,
        });
    }
    out
}

/// Each element's group when elements of these sizes are grouped, in order, into about `target`
/// groups of similar totals; an element is never split, and a small remainder joins the last
/// group.
fn grouping(sizes: &[usize], target: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    let per = (total as f64 / target.max(1) as f64).max(1.0);
    let mut out = Vec::with_capacity(sizes.len());
    let (mut group, mut current) = (0, 0usize);
    for &size in sizes {
        out.push(group);
        current += size;
        if current as f64 >= per {
            group += 1;
            current = 0;
        }
    }
    if current > 0 && group > 0 && (current as f64) < per / 2.0 {
        for g in out.iter_mut().rev().take_while(|g| **g == group) {
            *g = group - 1;
        }
    }
    out
}

/// Groups blocks, in order, into about `target` batches of similar prediction counts ([`grouping`]).
fn batch(blocks: &[Block], target: usize, classes: usize) -> Vec<Block> {
    let sizes: Vec<usize> = blocks.iter().map(|b| b.n).collect();
    let mut batches = merge(blocks, &grouping(&sizes, target), classes);
    batches.iter_mut().for_each(|b| b.class = None);
    batches
}

/// Blocks merged by their (ascending) group ids; a group keeps its first block's class.
fn merge(blocks: &[Block], ids: &[usize], classes: usize) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for (block, &id) in blocks.iter().zip(ids) {
        if id >= out.len() {
            let mut merged = Block::empty(classes);
            merged.class = block.class;
            out.push(merged);
        }
        out[id].add(block);
    }
    out
}

/// Standard error of the mean of `values` (serially dependent batch means: the variance is
/// inflated by (1 + ρ) / (1 − ρ) for their lag-1 autocorrelation ρ > 0) combined with a
/// reference's variance of its mean, and the Welch–Satterthwaite degrees of freedom
/// (`reference_df` 0: the reference is exact). With `around` set, the spread is measured around
/// that value instead of the values' mean (a score test's variance, right under the null).
fn standard_error(values: &[f64], reference_var: f64, reference_df: f64, around: Option<f64>) -> (f64, f64) {
    let k = values.len() as f64;
    if values.len() < 2 {
        return (reference_var.sqrt(), reference_df.max(1.0));
    }
    let mean = values.iter().sum::<f64>() / k;
    let var = match around {
        Some(centre) => values.iter().map(|v| (v - centre).powi(2)).sum::<f64>() / k,
        None => values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0),
    };
    // Autocorrelation is about the values' own fluctuation, so around their mean either way.
    let own = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0);
    let rho = if own > 0.0 {
        let lagged: f64 = values.windows(2).map(|w| (w[0] - mean) * (w[1] - mean)).sum();
        (lagged / ((k - 1.0) * own)).clamp(0.0, MAX_AUTOCORRELATION)
    } else {
        0.0
    };
    let inflation = (1.0 + rho) / (1.0 - rho);
    let batch_var = var / k * inflation;
    let batch_df = ((k - 1.0) / inflation).max(1.0);
    let total = batch_var + reference_var;
    let df = if total <= 0.0 {
        batch_df
    } else {
        let reference_part = if reference_df > 0.0 { reference_var.powi(2) / reference_df } else { 0.0 };
        (total.powi(2) / (batch_var.powi(2) / batch_df + reference_part)).clamp(1.0, 1e6)
    };
    (total.sqrt(), df)
}

/// The variances a test's mean is judged with, besides the batches' own spread.
#[derive(Debug, Clone, Copy)]
struct Variances {
    /// The reference value's sampling error.
    reference: f64,
    /// The least variance of the window's mean: the reference's per-unit variance over the
    /// effective number of independent units (runs of one thing count once).
    floor: f64,
}

/// A two-sided t test of the batches' mean against `expected` (`score`: the spread measured
/// around `expected`).
fn t_test(
    name: String,
    kind: &'static str,
    values: &[f64],
    expected: f64,
    variances: Variances,
    threshold: f64,
    score: bool,
) -> Statistic {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let (se, df) = standard_error(values, 0.0, 0.0, score.then_some(expected));
    // Below the floor the batches' spread understates the dependence (runs longer than a batch):
    // then the floor, a known variance, rules (a z test).
    let (window_var, df) = if se * se >= variances.floor { (se * se, df) } else { (variances.floor, 1e6) };
    let total = window_var + variances.reference;
    let df = if variances.reference > 0.0 && df < 1e6 {
        (total.powi(2) / (window_var.powi(2) / df + variances.reference.powi(2) / 1e6)).clamp(1.0, 1e6)
    } else {
        df
    };
    let se = total.sqrt();
    let (t, p_value) = if se > 0.0 {
        let t = (mean - expected) / se;
        (t, student_t_two_sided(t.abs(), df))
    } else if (mean - expected).abs() < 1e-12 {
        (0.0, 1.0)
    } else {
        // No spread at all and a difference: as sure as it gets (kept finite for JSON).
        (1e9f64.copysign(mean - expected), 0.0)
    };
    Statistic { name, kind, value: mean, expected, t, df, p_value, threshold, drifted: p_value < threshold }
}

/// P(|T| > t) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2).
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    regularized_beta(df / (df + t * t), df / 2.0, 0.5).clamp(0.0, 1.0)
}

/// The q-quantile (q > 0.5) of Student's t, by bisection on the two-sided tail.
fn student_t_quantile(q: f64, df: f64) -> f64 {
    let tail = 2.0 * (1.0 - q);
    let (mut lo, mut hi) = (0.0f64, 1e3f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if student_t_two_sided(mid, df) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method).
fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    d = if d.abs() < tiny { tiny } else { d };
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
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

#[cfg(test)]
mod tests;
