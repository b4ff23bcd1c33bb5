//! The embedding two-sample test: maximum mean discrepancy (Gretton et al., "A Kernel
//! Two-Sample Test", 2012) between the served embedding sketches of a window and the version's
//! held-out sample, with a permutation test that respects dependence.
//!
//! - **Class by class.** Each served sketch is paired with a distinct held-out sketch of the same
//!   predicted class (drawn without replacement; when the sample has fewer of a class than the
//!   window, served sketches of that class are dropped at random). A new class mix alone
//!   therefore moves nothing: what is compared is what each class looks like.
//! - **Units, not images.** Served sketches sit in the window's units (runs of one class and
//!   requests, never split), grouped in arrival order into about `drift_batches` groups, and each
//!   group's held-out partners go with it. The statistic sums the kernel only over pairs of
//!   groups at least two apart, so images of one object (in one group, or straddling a boundary)
//!   are never compared with each other.
//! - **Permutation.** Under no drift, a group's served and held-out sketches are exchangeable as
//!   far as the statistic can tell (it is a degenerate U-statistic of independent groups), so
//!   swapping them group by group (random signs) gives its null distribution. The p-value is the
//!   share of swaps at least as large as the observed value, sampled until 20 exceed it
//!   (Besag–Clifford) or enough swaps to resolve the threshold ran.
//!
//! The kernel is Gaussian with the median squared distance of the held-out sample as its scale.
//! The held-out sample is reused by every window, so consecutive checks are not independent
//! through it; but this test's share of the false-alarm budget (its Bonferroni level, about 10⁻⁴)
//! bounds even perfectly correlated checks to well under one false retrain request per 100,000
//! predictions.

use sluice_core::reference::{Reference, SKETCH_DIMENSIONS};

/// Served sketches used per group at most (the rest are left out, at random).
const PER_GROUP: usize = 12;
/// Fewer groups than this give no test: the swaps could not reach any useful level.
pub const MIN_GROUPS: usize = 8;
/// Swaps stop once this many were at least as large as the observed statistic.
const EXCEEDANCES: u64 = 20;
/// Held-out sketches used to pick the kernel's scale.
const SCALE_SAMPLE: usize = 300;

pub type Sketch = [f32; SKETCH_DIMENSIONS];

/// The version's held-out sketches by predicted class, and the kernel's scale.
#[derive(Debug, Clone)]
pub struct Pool {
    by_class: Vec<Vec<Sketch>>,
    /// The median squared distance between held-out sketches.
    scale: f64,
}

impl Pool {
    /// `None` when the reference keeps no usable sample (versions made before it was kept).
    pub fn of(reference: &Reference, classes: usize) -> Option<Self> {
        let mut by_class = vec![Vec::new(); classes];
        let mut all = Vec::new();
        for sample in &reference.embedding_sample {
            let (Ok(sketch), Some(list)) =
                (Sketch::try_from(sample.sketch.as_slice()), by_class.get_mut(sample.class as usize))
            else {
                continue;
            };
            if sketch.iter().all(|v| v.is_finite()) {
                list.push(sketch);
                all.push(sketch);
            }
        }
        let step = (all.len() / SCALE_SAMPLE).max(1);
        let thinned: Vec<&Sketch> = all.iter().step_by(step).collect();
        let mut distances: Vec<f64> = Vec::with_capacity(thinned.len() * thinned.len() / 2);
        for (i, a) in thinned.iter().enumerate() {
            for b in &thinned[i + 1..] {
                distances.push(squared_distance(a, b));
            }
        }
        if distances.is_empty() {
            return None;
        }
        distances.sort_by(f64::total_cmp);
        let scale = distances[distances.len() / 2];
        (scale > 0.0 && scale.is_finite()).then_some(Self { by_class, scale })
    }
}

/// One served sketch: the window group it belongs to, its predicted class, the sketch.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub group: usize,
    pub class: usize,
    pub sketch: Sketch,
}

/// The test's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// The estimate of MMD² (kernel units: 0 when the two look alike).
    pub mmd2: f64,
    /// The observed statistic over the swaps' standard deviation.
    pub z: f64,
    pub p_value: f64,
    /// Groups that took part.
    pub groups: usize,
    /// Swaps run.
    pub swaps: u64,
}

/// Tests a window's served sketches against the pool at `threshold`; `None` when the window has
/// too few groups with a held-out partner. `seed` makes the draws reproducible.
pub fn test(pool: &Pool, served: &[Served], threshold: f64, seed: u64) -> Option<Outcome> {
    let mut rng = SplitMix(seed);
    // At most PER_GROUP per group, chosen at random.
    let groups = served.iter().map(|s| s.group + 1).max().unwrap_or(0);
    let mut by_group: Vec<Vec<&Served>> = vec![Vec::new(); groups];
    for s in served {
        by_group[s.group].push(s);
    }
    for list in &mut by_group {
        rng.shuffle(list);
        list.truncate(PER_GROUP);
    }
    // Pair each with a distinct held-out sketch of its class; drop what the pool cannot match.
    let mut by_class: Vec<Vec<&Served>> = vec![Vec::new(); pool.by_class.len()];
    for s in by_group.iter().flatten() {
        if let Some(list) = by_class.get_mut(s.class) {
            list.push(s);
        }
    }
    let mut sides: Vec<(Vec<Sketch>, Vec<Sketch>)> = vec![(Vec::new(), Vec::new()); groups];
    for (class, list) in by_class.iter_mut().enumerate() {
        let candidates = &pool.by_class[class];
        rng.shuffle(list);
        list.truncate(candidates.len());
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        rng.shuffle(&mut order);
        for (s, &partner) in list.iter().zip(&order) {
            sides[s.group].0.push(s.sketch);
            sides[s.group].1.push(candidates[partner]);
        }
    }
    let active: Vec<usize> = (0..groups).filter(|&g| !sides[g].0.is_empty()).collect();
    if active.len() < MIN_GROUPS {
        return None;
    }
    // h[a][b] for groups at least two apart: what the pair adds to the statistic.
    let kernel = |x: &Sketch, y: &Sketch| (-squared_distance(x, y) / pool.scale).exp();
    let sum =
        |xs: &[Sketch], ys: &[Sketch]| xs.iter().map(|x| ys.iter().map(|y| kernel(x, y)).sum::<f64>()).sum::<f64>();
    let k = active.len();
    let mut h = vec![0.0; k * k];
    let (mut observed, mut pairs, mut squares) = (0.0, 0.0, 0.0);
    for a in 0..k {
        for b in a + 1..k {
            if active[b] - active[a] < 2 {
                continue;
            }
            let ((sa, ra), (sb, rb)) = (&sides[active[a]], &sides[active[b]]);
            let value = sum(sa, sb) + sum(ra, rb) - sum(sa, rb) - sum(ra, sb);
            h[a * k + b] = value;
            observed += value;
            squares += value * value;
            pairs += (sa.len() * sb.len()) as f64;
        }
    }
    if pairs == 0.0 {
        return None;
    }
    // Random swaps (a sign per group) until EXCEEDANCES of them reach the observed value, or
    // enough ran to resolve the threshold.
    let most = ((4.0 / threshold.max(1e-9)).ceil() as u64).clamp(1_000, 1_000_000);
    let (mut exceed, mut swaps) = (0u64, 0u64);
    let mut signs = vec![0.0; k];
    while swaps < most && exceed < EXCEEDANCES {
        for s in &mut signs {
            *s = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
        }
        let mut value = 0.0;
        for a in 0..k {
            let row = &h[a * k..(a + 1) * k];
            let inner: f64 = (a + 1..k).map(|b| signs[b] * row[b]).sum();
            value += signs[a] * inner;
        }
        swaps += 1;
        exceed += u64::from(value >= observed - 1e-12 * observed.abs());
    }
    Some(Outcome {
        mmd2: observed / pairs,
        z: if squares > 0.0 { observed / squares.sqrt() } else { 0.0 },
        p_value: (1 + exceed) as f64 / (1 + swaps) as f64,
        groups: k,
        swaps,
    })
}

fn squared_distance(a: &Sketch, b: &Sketch) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

/// A small deterministic generator (SplitMix64): the test is reproducible from its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
