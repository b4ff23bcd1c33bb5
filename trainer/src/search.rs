//! Training job requests and hyper-parameter search: a search space expands into trials by grid,
//! random sampling, or successive halving (many trials on a small epoch budget, the best fraction
//! promoted to larger budgets).
//!
//! A space maps parameter names (see [`sluice_nn::Hyper::PARAMS`]) to a domain:
//! a list (`[0.001, 0.01]`, a choice; the grid's axes), `{"choice": [...]}`,
//! `{"uniform": [low, high]}`, `{"log_uniform": [low, high]}`, `{"int_uniform": [low, high]}`,
//! or a single value (fixed).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::training::Splits;
use sluice_nn::{Augment, Hyper};

/// What `POST /v1/training-jobs` takes; stored whole as the job's template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub model: String,
    pub dataset: String,
    pub architecture: String,
    pub search: SearchRequest,
    /// Fraction of items for early stopping and ranking trials.
    #[serde(default = "default_validation_split")]
    pub validation_split: f64,
    /// Fraction of items that fit the softmax temperature and the drift reference (0: the
    /// validation split does).
    #[serde(default = "default_calibration_split")]
    pub calibration_split: f64,
    /// Fraction of items held out for the reported test metrics and the promotion gate.
    #[serde(default = "default_test_split")]
    pub test_split: f64,
    /// Seeds the hash that assigns items to splits. Keep it fixed across a model's jobs, so that
    /// no item one version trained on is in another's test split.
    #[serde(default)]
    pub split_seed: u64,
    /// The job's seed: each first-rung trial's seed is derived from it and the trial's ordinal,
    /// so trials differ and the same job reproduces the same artifacts.
    #[serde(default)]
    pub seed: u64,
    /// Training-time augmentation for every trial (random shifts, rotation, zoom, brightness and
    /// contrast jitter, flips), seeded by the trial's seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Every trial uses `seed` itself (trials then differ only in their hyper-parameters).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_seed: bool,
    #[serde(default)]
    pub promote: Promote,
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from any input.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn default_validation_split() -> f64 {
    Splits::default().validation
}

fn default_calibration_split() -> f64 {
    Splits::default().calibration
}

fn default_test_split() -> f64 {
    Splits::default().test
}

impl JobRequest {
    /// The seed of the job's `ordinal`-th first-rung trial (promoted trials keep their parent's).
    pub fn trial_seed(&self, ordinal: usize) -> u64 {
        if self.fixed_seed {
            self.seed
        } else {
            splitmix64(self.seed ^ (ordinal as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
    }

    pub fn splits(&self) -> Splits {
        Splits {
            validation: self.validation_split,
            calibration: self.calibration_split,
            test: self.test_split,
            seed: self.split_seed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub strategy: String,
    pub max_trials: Option<u32>,
    #[serde(default)]
    pub space: BTreeMap<String, Value>,
    /// Successive halving: the fraction kept per rung is 1 / reduction_factor (default 3).
    pub reduction_factor: Option<u32>,
    /// Successive halving: the first rung's epoch budget (default 1).
    pub min_epochs: Option<u32>,
    /// `median`: a trial stops (keeping its best weights) once its best validation accuracy is
    /// below the median of the other trials of its rung at the same epoch.
    pub early_stopping: Option<String>,
    /// Epochs every trial trains before the median rule may stop it (default 2).
    pub grace_epochs: Option<u32>,
}

/// What happens to the best model when a job ends. Ordered by how far it may move `production`
/// on its own (`Never < IfBetterLive < IfBetter < Always`: live evidence is the stricter gate),
/// to compare with a model's auto-promotion policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promote {
    Never,
    /// The model is registered under `candidate` and shadows production; inference moves
    /// `production` to it once feedback on live traffic shows it significantly better
    /// ([`sluice_core::live`]).
    IfBetterLive,
    /// `production` moves only when the new model is significantly better on held-out test items
    /// neither was trained, selected or calibrated on.
    #[default]
    IfBetter,
    Always,
}

/// Why a search cannot run, in words a client can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSearch(pub String);

/// Most values one parameter's list may hold (checked before anything is expanded).
const MAX_CHOICES: usize = 1024;

fn invalid(message: impl Into<String>) -> InvalidSearch {
    InvalidSearch(message.into())
}

#[derive(Debug, Clone, PartialEq)]
enum Domain {
    Choice(Vec<Value>),
    Uniform(f64, f64),
    LogUniform(f64, f64),
    IntUniform(i64, i64),
}

impl Domain {
    fn parse(name: &str, raw: &Value) -> Result<Self, InvalidSearch> {
        let bounds = |value: &Value| -> Result<(f64, f64), InvalidSearch> {
            match value.as_array().map(|v| v.iter().map(Value::as_f64).collect::<Option<Vec<_>>>()) {
                Some(Some(pair)) if pair.len() == 2 && pair[0] <= pair[1] && pair.iter().all(|b| b.is_finite()) => {
                    Ok((pair[0], pair[1]))
                }
                _ => Err(invalid(format!("search.space.{name}: bounds must be [low, high] numbers with low <= high"))),
            }
        };
        match raw {
            Value::Array(values) if values.is_empty() => {
                Err(invalid(format!("search.space.{name} is an empty list; give at least one value")))
            }
            Value::Array(values) if values.len() > MAX_CHOICES => Err(invalid(format!(
                "search.space.{name} has {} values; a list holds at most {MAX_CHOICES}",
                values.len()
            ))),
            Value::Array(values) => Ok(Domain::Choice(values.clone())),
            Value::Object(map) if map.len() == 1 => {
                let (kind, arg) = map.iter().next().expect("one entry");
                match kind.as_str() {
                    "choice" => Domain::parse(name, arg).and_then(|d| match d {
                        Domain::Choice(values) => Ok(Domain::Choice(values)),
                        _ => Err(invalid(format!("search.space.{name}.choice must be a list"))),
                    }),
                    "uniform" => bounds(arg).map(|(lo, hi)| Domain::Uniform(lo, hi)),
                    "log_uniform" => match bounds(arg)? {
                        (lo, hi) if lo > 0.0 => Ok(Domain::LogUniform(lo, hi)),
                        _ => Err(invalid(format!("search.space.{name}.log_uniform bounds must be above 0"))),
                    },
                    "int_uniform" => match bounds(arg)? {
                        // Found by the search_space fuzz target: [0.0001, 0.1] holds no integer,
                        // and sampling an empty range panicked.
                        (lo, hi) if lo.ceil() > hi.floor() => {
                            Err(invalid(format!("search.space.{name}.int_uniform bounds hold no integer")))
                        }
                        (lo, hi) => Ok(Domain::IntUniform(lo.ceil() as i64, hi.floor() as i64)),
                    },
                    other => Err(invalid(format!(
                        "search.space.{name}: unknown distribution {other:?}; use choice, uniform, log_uniform or int_uniform"
                    ))),
                }
            }
            Value::Object(_) => Err(invalid(format!(
                "search.space.{name} must be a value, a list, or one of {{\"choice\"|\"uniform\"|\"log_uniform\"|\"int_uniform\": ...}}"
            ))),
            fixed => Ok(Domain::Choice(vec![fixed.clone()])),
        }
    }

    /// TPE's pick for this parameter: among candidates drawn around the good values, the one
    /// with the highest ratio of good to bad density.
    fn tpe(&self, good: &[Value], bad: &[Value], rng: &mut StdRng) -> Value {
        match self {
            Domain::Choice(values) => {
                // Smoothed category frequencies (a count of 1 for each category as the prior).
                let weights = |set: &[Value]| -> Vec<f64> {
                    values.iter().map(|v| 1.0 + set.iter().filter(|x| *x == v).count() as f64).collect()
                };
                let (l, g) = (weights(good), weights(bad));
                let (l_sum, g_sum): (f64, f64) = (l.iter().sum(), g.iter().sum());
                let mut best = (0, f64::MIN);
                for _ in 0..TPE_CANDIDATES {
                    let mut u = rng.random::<f64>() * l_sum;
                    let mut pick = values.len() - 1;
                    for (i, w) in l.iter().enumerate() {
                        if u < *w {
                            pick = i;
                            break;
                        }
                        u -= w;
                    }
                    let ratio = (l[pick] / l_sum) / (g[pick] / g_sum);
                    if ratio > best.1 {
                        best = (pick, ratio);
                    }
                }
                values[best.0].clone()
            }
            Domain::Uniform(lo, hi) | Domain::LogUniform(lo, hi) => {
                let log = matches!(self, Domain::LogUniform(..));
                let to = |x: f64| if log { x.ln() } else { x };
                let (lo_t, hi_t) = (to(*lo), to(*hi));
                let points = |set: &[Value]| -> Vec<f64> { set.iter().filter_map(Value::as_f64).map(to).collect() };
                let t = parzen_pick(&points(good), &points(bad), lo_t, hi_t, rng);
                Value::from(if log { t.exp().clamp(*lo, *hi) } else { t })
            }
            Domain::IntUniform(lo, hi) => {
                let points = |set: &[Value]| -> Vec<f64> { set.iter().filter_map(Value::as_f64).collect() };
                let t = parzen_pick(&points(good), &points(bad), *lo as f64 - 0.5, *hi as f64 + 0.5, rng);
                Value::from((t.round() as i64).clamp(*lo, *hi))
            }
        }
    }

    fn sample(&self, rng: &mut StdRng) -> Value {
        match self {
            Domain::Choice(values) => values[rng.random_range(0..values.len())].clone(),
            Domain::Uniform(lo, hi) => Value::from(lo + (hi - lo) * rng.random::<f64>()),
            Domain::LogUniform(lo, hi) => Value::from((lo.ln() + (hi.ln() - lo.ln()) * rng.random::<f64>()).exp()),
            Domain::IntUniform(lo, hi) => Value::from(rng.random_range(*lo..=*hi)),
        }
    }
}

/// A search strategy with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Grid,
    Random,
    Halving {
        reduction_factor: u32,
        min_epochs: u32,
        max_epochs: u32,
    },
    /// Asynchronous successive halving (ASHA): a trial that finishes a rung is promoted as soon
    /// as it ranks in the top 1/`reduction_factor` of the trials that finished that rung so far,
    /// so no rung waits for its slowest trial.
    Asha {
        reduction_factor: u32,
        max_epochs: u32,
    },
    /// Tree-structured Parzen estimator: [`TPE_STARTUP`] random trials, then each finished
    /// trial makes room for one proposed from the results so far ([`tpe_propose`]).
    Tpe {
        max_trials: u32,
    },
}

/// The first trials of a job and how later rungs are made.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub strategy: Strategy,
    /// Full hyper-parameters of each first-rung trial.
    pub trials: Vec<Hyper>,
}

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_trials: u32,
    pub max_epochs: u32,
}

/// The space's parameters and their domains, checked.
fn domains(search: &SearchRequest) -> Result<BTreeMap<String, Domain>, InvalidSearch> {
    let mut domains = BTreeMap::new();
    for (name, raw) in &search.space {
        if !Hyper::PARAMS.contains(&name.as_str()) {
            return Err(invalid(format!(
                "search.space: unknown parameter {name:?}; known parameters: {}",
                Hyper::PARAMS.join(", ")
            )));
        }
        domains.insert(name.clone(), Domain::parse(name, raw)?);
    }
    Ok(domains)
}

/// The hyper-parameters of one assignment, validated against the limits.
fn build(assignment: &BTreeMap<String, Value>, limits: Limits) -> Result<Hyper, InvalidSearch> {
    let mut hyper = Hyper::default();
    for (name, value) in assignment {
        hyper.set(name, value).map_err(|e| invalid(format!("search.space.{name}: {e}")))?;
    }
    hyper.validate().map_err(|e| invalid(format!("search.space: {e}")))?;
    if hyper.epochs as u32 > limits.max_epochs {
        return Err(invalid(format!("epochs must be at most {}", limits.max_epochs)));
    }
    Ok(hyper)
}

/// Every value a search could assign, not only those its first draws pick: each list value and
/// both ends of each range, one parameter at a time (no rule ties two parameters, and each rule
/// is an interval, so the values between two valid ends are valid). Later draws (TPE's
/// proposals, which may land on a range's end) can then never hold a value planning did not check.
fn check_every_value(domains: &BTreeMap<String, Domain>, limits: Limits) -> Result<(), InvalidSearch> {
    for (name, domain) in domains {
        let values = match domain {
            Domain::Choice(values) => values.clone(),
            Domain::Uniform(lo, hi) | Domain::LogUniform(lo, hi) => vec![Value::from(*lo), Value::from(*hi)],
            Domain::IntUniform(lo, hi) => vec![Value::from(*lo), Value::from(*hi)],
        };
        for value in values {
            // On a one-epoch base, so the default epoch budget is not held against `max_epochs`.
            let mut alone = BTreeMap::from([("epochs".to_owned(), Value::from(1))]);
            alone.insert(name.clone(), value);
            build(&alone, limits)?;
        }
    }
    Ok(())
}

/// Random trials TPE starts with before it models anything.
pub const TPE_STARTUP: usize = 5;
/// Candidates TPE draws from the good trials' density per parameter.
const TPE_CANDIDATES: usize = 24;

/// Tree-structured Parzen estimator: the next trial of a `tpe` search, from the scores of the
/// trials finished so far (`(params, score)`, higher is better). Finished trials are split into
/// the best quarter and the rest; for each parameter, candidates are drawn from a Parzen density
/// around the good values (plus the prior) and the one most likelier under the good density than
/// under the bad one is kept (parameters independently, as Optuna's default). Deterministic in
/// `seed` and `index` (the new trial's ordinal).
pub fn tpe_propose(
    search: &SearchRequest,
    seed: u64,
    index: usize,
    finished: &[(Value, f64)],
    limits: Limits,
) -> Result<Hyper, InvalidSearch> {
    let domains = domains(search)?;
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut ranked: Vec<&(Value, f64)> = finished.iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let n_good = ranked.len().div_ceil(4).max(1).min(ranked.len());
    let (good, bad) = ranked.split_at(n_good);
    let mut assignment = BTreeMap::new();
    for (name, domain) in &domains {
        let values =
            |set: &[&(Value, f64)]| -> Vec<Value> { set.iter().filter_map(|(p, _)| p.get(name).cloned()).collect() };
        let value = if good.is_empty() {
            domain.sample(&mut rng)
        } else {
            domain.tpe(&values(good), &values(if bad.is_empty() { good } else { bad }), &mut rng)
        };
        assignment.insert(name.clone(), value);
    }
    build(&assignment, limits)
}

/// Expands a search into its first trials, checking every parameter and limit.
pub fn plan(search: &SearchRequest, seed: u64, limits: Limits) -> Result<Plan, InvalidSearch> {
    match search.early_stopping.as_deref() {
        None | Some("median") => {}
        Some(other) => return Err(invalid(format!("unknown early_stopping {other:?}; use median"))),
    }
    if search.grace_epochs == Some(0) || (search.grace_epochs.is_some() && search.early_stopping.is_none()) {
        return Err(invalid("search.grace_epochs must be at least 1, with early_stopping set"));
    }
    // No trial runs more epochs than the limit: more grace than that is never used, and past
    // i32 it could not be compared in PostgreSQL at all.
    if search.grace_epochs.is_some_and(|grace| grace > limits.max_epochs) {
        return Err(invalid(format!("search.grace_epochs must be at most {} (trainer.max_epochs)", limits.max_epochs)));
    }
    if let Some(max) = search.max_trials
        && (max == 0 || max > limits.max_trials)
    {
        return Err(invalid(format!("search.max_trials must be between 1 and {}", limits.max_trials)));
    }
    let domains = domains(search)?;
    check_every_value(&domains, limits)?;
    let build = |assignment: &BTreeMap<String, Value>| build(assignment, limits);
    match search.strategy.as_str() {
        "grid" => {
            if search.reduction_factor.is_some() || search.min_epochs.is_some() {
                return Err(invalid("reduction_factor and min_epochs apply to the halving strategy only"));
            }
            // Count the combinations before making any of them.
            let cap = search.max_trials.unwrap_or(limits.max_trials) as usize;
            let count = domains.values().try_fold(1usize, |count, domain| match domain {
                Domain::Choice(values) => count.checked_mul(values.len()),
                _ => Some(count),
            });
            if count.is_none_or(|count| count > cap) {
                return Err(invalid(format!(
                    "the grid has more combinations than max_trials ({cap}); shorten a list or raise search.max_trials"
                )));
            }
            let mut combos: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new()];
            for (name, domain) in &domains {
                let Domain::Choice(values) = domain else {
                    return Err(invalid(format!(
                        "search.space.{name}: grid search needs a list of values, not a distribution"
                    )));
                };
                combos = combos
                    .into_iter()
                    .flat_map(|combo| {
                        values.iter().map(move |value| {
                            let mut next = combo.clone();
                            next.insert(name.clone(), value.clone());
                            next
                        })
                    })
                    .collect();
            }
            let trials = combos.iter().map(build).collect::<Result<_, _>>()?;
            Ok(Plan { strategy: Strategy::Grid, trials })
        }
        "random" | "halving" | "asha" | "tpe" => {
            let count = search
                .max_trials
                .ok_or_else(|| invalid(format!("{} search needs search.max_trials", search.strategy)))?;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut trials = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let assignment: BTreeMap<String, Value> =
                    domains.iter().map(|(name, domain)| (name.clone(), domain.sample(&mut rng))).collect();
                trials.push(build(&assignment)?);
            }
            if search.strategy == "tpe" {
                if search.reduction_factor.is_some() || search.min_epochs.is_some() {
                    return Err(invalid("reduction_factor and min_epochs apply to halving and asha only"));
                }
                trials.truncate(TPE_STARTUP);
                return Ok(Plan { strategy: Strategy::Tpe { max_trials: count }, trials });
            }
            if search.strategy == "random" {
                if search.reduction_factor.is_some() || search.min_epochs.is_some() {
                    return Err(invalid("reduction_factor and min_epochs apply to halving and asha only"));
                }
                return Ok(Plan { strategy: Strategy::Random, trials });
            }
            let reduction_factor = search.reduction_factor.unwrap_or(3);
            if !(2..=10).contains(&reduction_factor) {
                return Err(invalid("search.reduction_factor must be between 2 and 10"));
            }
            let max_epochs = trials.iter().map(|t| t.epochs as u32).max().unwrap_or(1);
            let min_epochs = search.min_epochs.unwrap_or(1);
            if min_epochs == 0 || min_epochs > max_epochs {
                return Err(invalid(format!(
                    "search.min_epochs must be between 1 and the epoch budget ({max_epochs})"
                )));
            }
            for trial in &mut trials {
                trial.epochs = min_epochs as usize;
                trial.horizon = Some(max_epochs as usize);
            }
            let strategy = if search.strategy == "asha" {
                Strategy::Asha { reduction_factor, max_epochs }
            } else {
                Strategy::Halving { reduction_factor, min_epochs, max_epochs }
            };
            Ok(Plan { strategy, trials })
        }
        other => Err(invalid(format!("unknown search strategy {other:?}; use grid, random, halving, asha or tpe"))),
    }
}

/// Successive halving's next rung, after a rung whose trials had an epoch budget of `epochs`
/// and of which `finished` succeeded: `None` when the search is over, else how many of the
/// rung's best trials continue and with what budget. The last survivor always gets the whole
/// budget (`max_epochs`), however few rungs there were.
pub fn next_rung(strategy: &Strategy, epochs: u32, finished: usize) -> Option<(usize, u32)> {
    let Strategy::Halving { reduction_factor, max_epochs, .. } = *strategy else {
        return None;
    };
    if finished == 0 || epochs >= max_epochs {
        return None;
    }
    let keep = (finished / reduction_factor as usize).max(1);
    let next = if keep == 1 { max_epochs } else { epochs.saturating_mul(reduction_factor).min(max_epochs) };
    Some((keep, next))
}

/// The median stopping rule: whether a trial whose best validation accuracy so far is `own`
/// stops at `epoch`, given the best-so-far accuracies of the other trials of its rung at that
/// epoch. Needs at least three others, and `epoch` past the grace epochs.
pub fn median_stops(own: f64, others: &[f64], epoch: u32, grace: u32) -> bool {
    if epoch < grace || others.len() < 3 {
        return false;
    }
    let mut sorted = others.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 };
    own < median
}

/// A Parzen density over [lo, hi]: a Gaussian at each point (bandwidth shrinking with their
/// number) plus the uniform prior as one more component.
fn parzen(points: &[f64], lo: f64, hi: f64, x: f64) -> f64 {
    let width = (hi - lo).max(1e-12);
    let sigma = width / (points.len() as f64 + 1.0).powf(0.2) / 2.0;
    let gauss: f64 = points
        .iter()
        .map(|p| (-(x - p).powi(2) / (2.0 * sigma * sigma)).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt()))
        .sum();
    (gauss + 1.0 / width) / (points.len() as f64 + 1.0)
}

/// Draws candidates from the good points' density and keeps the best good/bad ratio.
fn parzen_pick(good: &[f64], bad: &[f64], lo: f64, hi: f64, rng: &mut StdRng) -> f64 {
    let width = (hi - lo).max(1e-12);
    let sigma = width / (good.len() as f64 + 1.0).powf(0.2) / 2.0;
    let mut best = (lo + width * rng.random::<f64>(), f64::MIN);
    for _ in 0..TPE_CANDIDATES {
        let component = rng.random_range(0..=good.len());
        let x = if component == good.len() {
            lo + width * rng.random::<f64>()
        } else {
            // Box–Muller around the chosen good point.
            let (u, v) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
            good[component] + sigma * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        let x = x.clamp(lo, hi);
        let ratio = parzen(good, lo, hi, x) / parzen(bad, lo, hi, x);
        if ratio > best.1 {
            best = (x, ratio);
        }
    }
    best.0
}

/// A trial as ASHA sees it: its rung, epoch budget, score (higher is better) and whether it has
/// already been promoted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished<Id> {
    pub id: Id,
    pub rung: u32,
    pub epochs: u32,
    pub score: (f64, f64),
    pub promoted: bool,
}

/// ASHA's promotions now: on every rung below the whole budget, the trials in the top
/// 1/`reduction_factor` of those that finished it that are not promoted yet, each with the next
/// rung's budget (the whole budget at the last). `finished` holds every succeeded trial.
pub fn asha_promotions<Id: Copy>(strategy: &Strategy, finished: &[Finished<Id>]) -> Vec<(Id, u32, u32)> {
    let Strategy::Asha { reduction_factor, max_epochs } = *strategy else {
        return Vec::new();
    };
    let top_rung = finished.iter().map(|t| t.rung).max().unwrap_or(0);
    let mut out = Vec::new();
    for rung in 0..=top_rung {
        let mut on: Vec<&Finished<Id>> = finished.iter().filter(|t| t.rung == rung).collect();
        let Some(epochs) = on.first().map(|t| t.epochs) else { continue };
        if epochs >= max_epochs {
            continue;
        }
        on.sort_by(|a, b| b.score.0.total_cmp(&a.score.0).then(b.score.1.total_cmp(&a.score.1)));
        let next = epochs.saturating_mul(reduction_factor).min(max_epochs);
        let keep = on.len() / reduction_factor as usize;
        out.extend(on[..keep].iter().filter(|t| !t.promoted).map(|t| (t.id, rung + 1, next)));
    }
    out
}

/// ASHA once nothing runs and nothing more can be promoted: the best trial of the highest rung
/// gets the whole budget if it has not had it, so the winner always trained fully.
pub fn asha_final<Id: Copy>(strategy: &Strategy, finished: &[Finished<Id>]) -> Option<(Id, u32, u32)> {
    let Strategy::Asha { max_epochs, .. } = *strategy else { return None };
    let top_rung = finished.iter().map(|t| t.rung).max()?;
    let best = finished
        .iter()
        .filter(|t| t.rung == top_rung)
        .max_by(|a, b| a.score.0.total_cmp(&b.score.0).then(a.score.1.total_cmp(&b.score.1)))?;
    (best.epochs < max_epochs && !best.promoted).then_some((best.id, top_rung + 1, max_epochs))
}

/// Rebuilds the strategy of a stored request (its plan was validated when the job was made).
pub fn strategy_of(request: &JobRequest, limits: Limits) -> Result<Strategy, InvalidSearch> {
    plan(&request.search, request.seed, limits).map(|plan| plan.strategy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_trials: 64, max_epochs: 200 };

    fn search(value: Value) -> SearchRequest {
        serde_json::from_value(value).expect("a search request")
    }

    #[test]
    fn grid_over_two_by_two_makes_four_trials() {
        let s = search(
            json!({"strategy": "grid", "space": {"learning_rate": [0.001, 0.01], "batch_size": [16, 32], "epochs": 3}}),
        );
        let plan = plan(&s, 1, LIMITS).expect("valid");
        assert_eq!(plan.trials.len(), 4);
        assert!(plan.trials.iter().all(|t| t.epochs == 3));
        let mut pairs: Vec<_> = plan.trials.iter().map(|t| (t.batch_size, t.learning_rate.to_bits())).collect();
        pairs.dedup();
        assert_eq!(pairs.len(), 4);
    }

    #[test]
    fn random_sampling_is_seeded_and_in_bounds() {
        let s = search(json!({"strategy": "random", "max_trials": 8,
            "space": {"learning_rate": {"log_uniform": [0.0001, 0.1]}, "dropout": {"uniform": [0.0, 0.5]}, "hidden": {"int_uniform": [16, 128]}}}));
        let a = plan(&s, 7, LIMITS).expect("valid");
        let b = plan(&s, 7, LIMITS).expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.trials.len(), 8);
        for t in &a.trials {
            assert!((0.0001..=0.1).contains(&t.learning_rate));
            assert!((0.0..=0.5).contains(&t.dropout));
            assert!((16..=128).contains(&t.hidden));
        }
        assert_ne!(plan(&s, 8, LIMITS).expect("valid"), a);
    }

    #[test]
    fn halving_starts_small_and_keeps_the_best_third() {
        let s = search(
            json!({"strategy": "halving", "max_trials": 9, "space": {"epochs": 9, "learning_rate": {"log_uniform": [0.001, 0.1]}}}),
        );
        let plan = plan(&s, 1, LIMITS).expect("valid");
        assert!(plan.trials.iter().all(|t| t.epochs == 1 && t.horizon == Some(9)));
        assert_eq!(next_rung(&plan.strategy, 1, 9), Some((3, 3)));
        assert_eq!(next_rung(&plan.strategy, 3, 3), Some((1, 9)));
        assert_eq!(next_rung(&plan.strategy, 9, 1), None);
        assert_eq!(next_rung(&Strategy::Grid, 1, 4), None);
    }

    #[test]
    fn halvings_winner_trains_the_whole_budget() {
        // Nine trials, factor 3, a 50-epoch budget: 9 × 1, 3 × 3, then the winner goes to 50
        // (before, it stopped at 9 of 50).
        let s = search(
            json!({"strategy": "halving", "max_trials": 9, "space": {"epochs": 50, "learning_rate": {"log_uniform": [0.001, 0.1]}}}),
        );
        let plan = plan(&s, 1, LIMITS).expect("valid");
        let mut rungs = vec![(plan.trials.len(), 1)];
        let (mut alive, mut epochs) = (plan.trials.len(), 1);
        while let Some((keep, next)) = next_rung(&plan.strategy, epochs, alive) {
            (alive, epochs) = (keep, next);
            rungs.push((alive, epochs));
        }
        assert_eq!(rungs, vec![(9, 1), (3, 3), (1, 50)]);
        // Two trials: the better one goes straight to the whole budget.
        let pair = search(json!({"strategy": "halving", "max_trials": 2, "space": {"epochs": 20}}));
        let pair = super::plan(&pair, 1, LIMITS).expect("valid");
        assert_eq!(next_rung(&pair.strategy, 1, 2), Some((1, 20)));
        assert_eq!(next_rung(&pair.strategy, 20, 1), None);
        // Every trial of a rung failed: the search is over.
        assert_eq!(next_rung(&pair.strategy, 1, 0), None);
    }

    #[test]
    fn asha_promotes_without_waiting_for_the_rung() {
        let s = search(
            json!({"strategy": "asha", "max_trials": 9, "space": {"epochs": 9, "learning_rate": {"log_uniform": [0.001, 0.1]}}}),
        );
        let plan = plan(&s, 1, LIMITS).expect("valid");
        assert_eq!(plan.strategy, Strategy::Asha { reduction_factor: 3, max_epochs: 9 });
        let trial = |id: u32, rung: u32, epochs: u32, score: f64, promoted: bool| Finished {
            id,
            rung,
            epochs,
            score: (score, 0.0),
            promoted,
        };
        // Two of nine first-rung trials done: none is yet in a top third of at least three.
        assert!(asha_promotions(&plan.strategy, &[trial(1, 0, 1, 0.5, false), trial(2, 0, 1, 0.7, false)]).is_empty());
        // A third finishes: the best of the three goes on at once, the others still running.
        let three = [trial(1, 0, 1, 0.5, false), trial(2, 0, 1, 0.7, false), trial(3, 0, 1, 0.6, false)];
        assert_eq!(asha_promotions(&plan.strategy, &three), vec![(2, 1, 3)]);
        // Already promoted: nothing new.
        let promoted = [trial(1, 0, 1, 0.5, false), trial(2, 0, 1, 0.7, true), trial(3, 0, 1, 0.6, false)];
        assert!(asha_promotions(&plan.strategy, &promoted).is_empty());
        // At the end the best of the top rung trains the whole budget.
        let ended = [trial(1, 0, 1, 0.5, false), trial(2, 0, 1, 0.7, true), trial(4, 1, 3, 0.8, false)];
        assert_eq!(asha_final(&plan.strategy, &ended), Some((4, 2, 9)));
        assert_eq!(asha_final(&plan.strategy, &[trial(5, 2, 9, 0.9, false)]), None);
    }

    /// Results arriving worst first: each newcomer tops the rung and is promoted as soon as it
    /// arrives, so six first-rung trials send four on (1 at the third, then one more at each of
    /// the fourth, fifth and sixth), never more; the best two of the six are always among them.
    #[test]
    fn asha_promotes_at_most_four_of_six_when_results_arrive_worst_first() {
        let s = search(json!({"strategy": "asha", "max_trials": 6, "space": {"epochs": 9}}));
        let strategy = plan(&s, 1, LIMITS).expect("valid").strategy;
        for order in [[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [3, 1, 6, 2, 5, 4]] {
            let mut finished: Vec<Finished<u32>> = Vec::new();
            for id in order {
                finished.push(Finished { id, rung: 0, epochs: 1, score: (f64::from(id) / 10.0, 0.0), promoted: false });
                for (parent, rung, epochs) in asha_promotions(&strategy, &finished) {
                    assert_eq!((rung, epochs), (1, 3));
                    finished.iter_mut().filter(|t| t.id == parent).for_each(|t| t.promoted = true);
                }
            }
            let promoted: Vec<u32> = finished.iter().filter(|t| t.promoted).map(|t| t.id).collect();
            assert!((2..=4).contains(&promoted.len()), "{order:?}: {promoted:?}");
            assert!(promoted.contains(&6) && promoted.contains(&5), "{order:?}: {promoted:?}");
            if order == [1, 2, 3, 4, 5, 6] {
                assert_eq!(promoted, vec![3, 4, 5, 6]);
            }
            if order == [6, 5, 4, 3, 2, 1] {
                assert_eq!(promoted, vec![6, 5]);
            }
        }
    }

    #[test]
    fn the_median_rule_stops_the_laggards_after_the_grace_epochs() {
        let others = [0.6, 0.7, 0.8];
        assert!(median_stops(0.65, &others, 3, 2));
        assert!(!median_stops(0.75, &others, 3, 2));
        assert!(!median_stops(0.1, &others, 1, 2), "within the grace epochs");
        assert!(!median_stops(0.1, &[0.9, 0.9], 5, 2), "too few others to judge");
        assert!(median_stops(0.5, &[0.4, 0.6, 0.7, 0.9], 4, 2), "median 0.65 of an even count");
        let with_rule = search(
            json!({"strategy": "random", "max_trials": 4, "early_stopping": "median", "grace_epochs": 2, "space": {}}),
        );
        assert!(plan(&with_rule, 1, LIMITS).is_ok());
        let unknown = search(json!({"strategy": "random", "max_trials": 4, "early_stopping": "mean", "space": {}}));
        assert!(plan(&unknown, 1, LIMITS).is_err());
        let orphan = search(json!({"strategy": "random", "max_trials": 4, "grace_epochs": 2, "space": {}}));
        assert!(plan(&orphan, 1, LIMITS).is_err());
        let endless = search(
            json!({"strategy": "random", "max_trials": 4, "early_stopping": "median", "grace_epochs": 4_000_000_000u32, "space": {}}),
        );
        assert!(plan(&endless, 1, LIMITS).is_err(), "more grace than any trial has epochs");
    }

    #[test]
    fn tpe_starts_random_then_proposes_near_the_best() {
        let s = search(json!({"strategy": "tpe", "max_trials": 12,
            "space": {"learning_rate": {"log_uniform": [0.0001, 0.1]}, "hidden": {"int_uniform": [8, 128]}, "optimizer": ["adamw", "sgd"]}}));
        let plan = plan(&s, 3, LIMITS).expect("valid");
        assert_eq!(plan.strategy, Strategy::Tpe { max_trials: 12 });
        assert_eq!(plan.trials.len(), TPE_STARTUP);
        // Results where small learning rates and adamw win: proposals lean that way.
        let finished: Vec<(Value, f64)> = (0..20)
            .map(|i| {
                let lr = 0.0001 * 10f64.powf(i as f64 / 19.0 * 3.0);
                let optimizer = if i % 2 == 0 { "adamw" } else { "sgd" };
                let score = 1.0 - lr * 5.0 - if optimizer == "sgd" { 0.2 } else { 0.0 };
                (json!({"learning_rate": lr, "hidden": 64, "optimizer": optimizer}), score)
            })
            .collect();
        let proposals: Vec<Hyper> = (5..25).map(|i| tpe_propose(&s, 3, i, &finished, LIMITS).expect("valid")).collect();
        let small = proposals.iter().filter(|h| h.learning_rate < 0.001).count();
        let adamw = proposals.iter().filter(|h| h.optimizer == sluice_nn::Optimizer::Adamw).count();
        assert!(small >= 14, "{small} of 20 proposals near the best learning rates");
        assert!(adamw >= 14, "{adamw} of 20 proposals with the better optimiser");
        assert!(proposals.iter().all(|h| (0.0001..=0.1).contains(&h.learning_rate) && (8..=128).contains(&h.hidden)));
        assert_eq!(tpe_propose(&s, 3, 7, &finished, LIMITS).ok(), tpe_propose(&s, 3, 7, &finished, LIMITS).ok());
    }

    #[test]
    fn trial_seeds_differ_unless_the_job_fixes_one() {
        let mut request: JobRequest = serde_json::from_value(json!({
            "model": "m", "dataset": "d", "architecture": "mlp", "seed": 5,
            "search": {"strategy": "grid", "space": {}}
        }))
        .expect("a request");
        let seeds: std::collections::BTreeSet<u64> = (0..16).map(|i| request.trial_seed(i)).collect();
        assert_eq!(seeds.len(), 16);
        assert_eq!(request.trial_seed(3), request.trial_seed(3));
        request.fixed_seed = true;
        assert!((0..16).all(|i| request.trial_seed(i) == 5));
    }

    #[test]
    fn bad_spaces_are_refused_with_a_reason() {
        let cases = [
            json!({"strategy": "grid", "space": {"learning_rate": []}}),
            json!({"strategy": "grid", "space": {"learning_rate": [-0.1]}}),
            json!({"strategy": "grid", "space": {"learning_rate": [0.0]}}),
            json!({"strategy": "grid", "space": {"no_such_param": [1]}}),
            json!({"strategy": "annealing", "space": {}}),
            json!({"strategy": "random", "max_trials": 0, "space": {}}),
            json!({"strategy": "random", "max_trials": 65, "space": {}}),
            json!({"strategy": "random", "space": {}}),
            json!({"strategy": "grid", "space": {"learning_rate": {"uniform": [0.1, 0.2]}}}),
            json!({"strategy": "random", "max_trials": 2, "space": {"learning_rate": {"gaussian": [0.1, 0.2]}}}),
            json!({"strategy": "random", "max_trials": 5, "space": {"hidden": {"int_uniform": [0.0001, 0.1]}}}),
            json!({"strategy": "grid", "space": {"epochs": [1000]}}),
            json!({"strategy": "grid", "max_trials": 3, "space": {"learning_rate": [0.1, 0.2], "batch_size": [8, 16]}}),
            json!({"strategy": "grid", "space": {"learning_rate": (0..2000).map(|i| 0.001 * f64::from(i)).collect::<Vec<_>>()}}),
            json!({"strategy": "grid", "space": {
                "learning_rate": (0..40).map(|i| 0.001 * f64::from(i + 1)).collect::<Vec<_>>(),
                "dropout": (0..40).map(|i| 0.01 * f64::from(i)).collect::<Vec<_>>(),
            }}),
        ];
        for case in cases {
            let s = search(case.clone());
            assert!(plan(&s, 1, LIMITS).is_err(), "accepted {case}");
        }
    }

    /// Values the first draws do not pick are checked too: TPE's proposals and later draws take
    /// any value of a list and may land on a range's end (TPE clamps to it), and a proposal that
    /// fails is deterministic (seed and ordinal), so it must be refused when the job is made.
    #[test]
    fn every_value_a_search_could_draw_is_checked_when_it_is_planned() {
        let cases = [
            json!({"strategy": "tpe", "max_trials": 6, "space": {"optimizer": ["adamw", "bogus"]}}),
            json!({"strategy": "random", "max_trials": 1, "space": {"optimizer": ["adamw", "\u{0}"]}}),
            json!({"strategy": "tpe", "max_trials": 6, "space": {"dropout": {"uniform": [0.0, 1.0]}}}),
            json!({"strategy": "tpe", "max_trials": 6, "space": {"momentum": {"uniform": [0.5, 5.0]}}}),
            json!({"strategy": "asha", "max_trials": 3, "space": {"epochs": {"int_uniform": [1, 100000]}}}),
            json!({"strategy": "random", "max_trials": 1, "space": {"hidden": [32, 1000000]}}),
        ];
        for case in cases {
            for seed in 0..8 {
                assert!(plan(&search(case.clone()), seed, LIMITS).is_err(), "accepted {case} with seed {seed}");
            }
        }
        let fine = search(json!({"strategy": "tpe", "max_trials": 9, "space": {
            "dropout": {"uniform": [0.0, 0.5]}, "learning_rate": {"log_uniform": [0.0001, 0.1]}, "optimizer": ["adamw", "sgd"],
        }}));
        let planned = plan(&fine, 3, LIMITS).expect("a valid space");
        let finished: Vec<(Value, f64)> = planned
            .trials
            .iter()
            .enumerate()
            .map(|(i, h)| (serde_json::to_value(h).expect("hyper"), i as f64))
            .collect();
        for index in 5..40 {
            tpe_propose(&fine, 3, index, &finished, LIMITS).expect("every proposal of a checked space is valid");
        }
        // A parameter is checked on its own, so the default epoch budget is not held against a
        // deployment's lower `trainer.max_epochs`.
        let strict = Limits { max_trials: 64, max_epochs: 2 };
        assert!(plan(&search(json!({"strategy": "grid", "space": {"epochs": 1, "hidden": 8}})), 1, strict).is_ok());
    }
}
