//! The statistics against known values, and simulations of stationary and shifted traffic: the
//! false-alarm budget (at most one false retrain request per 100,000 stationary predictions) is
//! demonstrated on correlated streams, and strong shifts are caught within 1,200 predictions of
//! independent traffic (2,000 in runs of 40 predictions of one object).

use rand::{Rng, SeedableRng, rngs::StdRng};
use sluice_core::{
    Config,
    reference::{EMBEDDING_DIRECTIONS, Residuals, SKETCH_DIMENSIONS, SketchedSample, projections},
};

use super::*;

fn config() -> InferenceConfig {
    Config::default().inference
}

#[test]
fn student_t_matches_table_values() {
    // Two-sided 5 % points: t(1) = 12.706, t(10) = 2.228, t(30) = 2.042; large df → 1.960.
    for (t, df) in [(12.706, 1.0), (2.228, 10.0), (2.042, 30.0), (1.960, 1e6)] {
        let p = student_t_two_sided(t, df);
        assert!((p - 0.05).abs() < 5e-4, "t {t} df {df}: p {p}");
    }
    assert!((student_t_quantile(0.975, 10.0) - 2.228).abs() < 1e-3);
    assert_eq!(student_t_two_sided(0.0, 5.0), 1.0);
    assert!(student_t_two_sided(50.0, 20.0) < 1e-20);
}

#[test]
fn batches_never_split_a_request() {
    let block = |n: usize| Block { n, counts: vec![n as f64, 0.0], ..Block::empty(2) };
    let blocks: Vec<Block> = [3, 3, 3, 100, 3, 3, 1].into_iter().map(block).collect();
    let batches = batch(&blocks, 4, 2);
    assert_eq!(batches.iter().map(|b| b.n).sum::<usize>(), 116);
    assert!(batches.iter().any(|b| b.n >= 100), "the 100-image request is one unit");
}

/// A world of four classes; each image comes from an "object" (a run, or a request, shares one)
/// whose look varies around its class's.
struct World {
    prior: [f64; 4],
    confidence: [f64; 4],
    brightness: [f64; 4],
    sharpness: [f64; 4],
    /// Applied to what the model sees.
    shift: Shift,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shift {
    None,
    Inversion,
    Brighter,
    Blur,
    Translation,
    /// A new camera: every statistic's mean as before, but what the network sees is spread
    /// wider around each class.
    Spread,
}

struct Object {
    class: usize,
    brightness: f64,
    sharpness: f64,
    /// Where this object sits around its class in embedding space (images of it vary around it).
    embedding: [f64; SKETCH_DIMENSIONS],
}

/// A class's centre in embedding space.
fn centre(class: usize, d: usize) -> f64 {
    (((class * 7 + d * 3) % 11) as f64 - 5.0) * 0.25
}

impl World {
    fn stationary() -> Self {
        Self {
            prior: [0.4, 0.3, 0.2, 0.1],
            confidence: [0.9, 0.8, 0.85, 0.7],
            brightness: [0.3, 0.5, 0.6, 0.4],
            sharpness: [0.10, 0.15, 0.08, 0.12],
            shift: Shift::None,
        }
    }

    fn class(&self, rng: &mut StdRng) -> usize {
        let mut u = rng.random::<f64>();
        for (c, p) in self.prior.iter().enumerate() {
            if u < *p {
                return c;
            }
            u -= p;
        }
        3
    }

    fn object(&self, rng: &mut StdRng) -> Object {
        let class = self.class(rng);
        Object {
            class,
            brightness: self.brightness[class] + 0.05 * normal(rng),
            sharpness: self.sharpness[class] + 0.02 * normal(rng),
            embedding: std::array::from_fn(|d| centre(class, d) + 0.3 * normal(rng)),
        }
    }

    fn image(&self, object: &Object, rng: &mut StdRng) -> Observation {
        let mut brightness = (object.brightness + 0.03 * normal(rng)).clamp(0.0, 1.0);
        let mut sharpness = (object.sharpness + 0.01 * normal(rng)).clamp(0.0, 1.0);
        let mut confidence = self.confidence[object.class] + 0.08 * normal(rng);
        let mut class = object.class;
        let mut embedding: [f64; SKETCH_DIMENSIONS] = std::array::from_fn(|d| object.embedding[d] + 0.2 * normal(rng));
        match self.shift {
            Shift::None => {}
            // The simulated network's outputs are what a real one does with such inputs: inverted
            // images leave it much less sure (and sometimes wrong); blurred or brighter ones it
            // takes in its stride, so only the input statistics can see them.
            Shift::Inversion => {
                brightness = 1.0 - brightness;
                confidence -= 0.2;
                if rng.random::<f64>() < 0.2 {
                    class = rng.random_range(0..4);
                }
            }
            Shift::Brighter => brightness = (brightness + 0.2).min(1.0),
            Shift::Blur => {
                sharpness *= 0.4;
                embedding
                    .iter_mut()
                    .enumerate()
                    .for_each(|(d, e)| *e = centre(object.class, d) + 0.5 * (*e - centre(object.class, d)));
            }
            Shift::Translation => {
                confidence -= 0.25;
                if rng.random::<f64>() < 0.3 {
                    class = rng.random_range(0..4);
                }
                embedding.iter_mut().for_each(|e| *e += 0.4);
            }
            Shift::Spread => {
                embedding
                    .iter_mut()
                    .enumerate()
                    .for_each(|(d, e)| *e = centre(object.class, d) + 2.5 * (*e - centre(object.class, d)));
            }
        }
        let embedding = Some(embedding.map(|e| e as f32));
        Observation { class, confidence: confidence.clamp(0.25, 1.0), brightness, sharpness, embedding }
    }

    /// The reference a calibration split of `n` independent images would give.
    fn reference(&self, n: usize, rng: &mut StdRng) -> Reference {
        let observations: Vec<Observation> = (0..n).map(|_| self.image(&self.object(rng), rng)).collect();
        let classes: Vec<usize> = observations.iter().map(|o| o.class).collect();
        let column = |f: fn(&Observation) -> f64| observations.iter().map(f).collect::<Vec<f64>>();
        let (class_confidence, confidence) =
            sluice_core::reference::class_means(&column(|o| o.confidence), &classes, 4);
        let (class_brightness, brightness) =
            sluice_core::reference::class_means(&column(|o| o.brightness), &classes, 4);
        let (class_sharpness, sharpness) = sluice_core::reference::class_means(&column(|o| o.sharpness), &classes, 4);
        let mut frequencies = vec![0.0; 4];
        classes.iter().for_each(|&c| frequencies[c] += 1.0 / n as f64);
        let projected: Vec<[f64; EMBEDDING_DIRECTIONS]> =
            observations.iter().map(|o| projections(&o.embedding.expect("simulated"))).collect();
        let mut class_embedding = vec![vec![0.0; EMBEDDING_DIRECTIONS]; 4];
        let embedding_variances = (0..EMBEDDING_DIRECTIONS)
            .map(|k| {
                let values: Vec<f64> = projected.iter().map(|p| p[k]).collect();
                let (means, variance) = sluice_core::reference::class_means(&values, &classes, 4);
                means.into_iter().enumerate().for_each(|(c, m)| class_embedding[c][k] = m);
                variance
            })
            .collect();
        let embedding_sample = observations
            .iter()
            .map(|o| SketchedSample { class: o.class as u32, sketch: o.embedding.expect("simulated").to_vec() })
            .collect();
        Reference {
            samples: n,
            predicted_class_frequencies: frequencies.clone(),
            label_frequencies: frequencies,
            confidence_histogram: vec![],
            confidence_sample: vec![],
            brightness_histogram: vec![],
            brightness_sample: vec![],
            brightness_mean: 0.45,
            brightness_std: 0.1,
            channel_means: vec![],
            temperature: 1.0,
            accuracy: 0.85,
            class_confidence,
            class_brightness,
            class_sharpness,
            residual_variances: Residuals { confidence, brightness, sharpness },
            class_embedding,
            embedding_variances,
            embedding_sample,
        }
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    let (u, v) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// How requests arrive.
#[derive(Clone, Copy, Debug)]
enum Traffic {
    /// One image per request, each of its own object.
    Independent,
    /// A camera on one object for a while: runs of single-image requests, mean length 40.
    Runs,
    /// Requests of 1 to 64 images of one object.
    SingleClassRequests,
    /// Requests of 1 to 64 independent images (a client batching what it sees).
    MixedRequests,
    /// Runs whose lengths are heavy-tailed: mostly short, sometimes hundreds.
    Bursts,
}

fn requests(world: &World, traffic: Traffic, predictions: usize, rng: &mut StdRng) -> Vec<Vec<Observation>> {
    let mut out = Vec::new();
    let mut made = 0;
    while made < predictions {
        let object = world.object(rng);
        let (requests, per_request) = match traffic {
            Traffic::Independent => (1, 1),
            Traffic::Runs => (1 + (rng.random::<f64>().ln() * -39.0) as usize, 1),
            Traffic::SingleClassRequests => (1, rng.random_range(1..=64)),
            Traffic::MixedRequests => {
                let request: Vec<Observation> =
                    (0..rng.random_range(1..=64)).map(|_| world.image(&world.object(rng), rng)).collect();
                made += request.len();
                out.push(request);
                continue;
            }
            Traffic::Bursts => {
                let length = 1 + (rng.random::<f64>().ln() * -10.0) as usize;
                (if rng.random::<f64>() < 0.05 { length * 20 } else { length }, 1)
            }
        };
        for _ in 0..requests {
            let request: Vec<Observation> = (0..per_request).map(|_| world.image(&object, rng)).collect();
            made += request.len();
            out.push(request);
        }
    }
    out
}

/// Feeds requests; returns (checks, flagged checks, retrain triggers, predictions at the first
/// trigger).
fn replay(
    window: &mut Window,
    requests: &[Vec<Observation>],
    config: &InferenceConfig,
) -> (u64, u64, u64, Option<usize>) {
    replay_seeing(window, requests, config, |_| {})
}

/// [`replay`], showing each verdict to `see`.
fn replay_seeing(
    window: &mut Window,
    requests: &[Vec<Observation>],
    config: &InferenceConfig,
    mut see: impl FnMut(&Verdict),
) -> (u64, u64, u64, Option<usize>) {
    let (mut checks, mut flagged, mut triggers, mut first, mut seen) = (0, 0, 0, None, 0usize);
    for request in requests {
        seen += request.len();
        if let Some(verdict) = window.observe(request, config) {
            see(verdict);
            checks += 1;
            if verdict.state == DriftState::Drift {
                flagged += 1;
                if verdict.consecutive == config.drift_sustain_checks {
                    triggers += 1;
                    first.get_or_insert(seen);
                }
            }
        }
    }
    (checks, flagged, triggers, first)
}

#[test]
fn stationary_correlated_traffic_stays_inside_the_false_alarm_budget() {
    let config = config();
    let kinds =
        [Traffic::Independent, Traffic::Runs, Traffic::SingleClassRequests, Traffic::MixedRequests, Traffic::Bursts];
    // 1.5 million simulated predictions: each stream on a thread of its own, so the test takes
    // the wall time of a third of them per core rather than of all fifteen in a row.
    let runs: Vec<Vec<StationaryRun>> = std::thread::scope(|scope| {
        let config = &config;
        let threads: Vec<Vec<_>> = kinds
            .iter()
            .map(|&traffic| (0..3).map(|seed| scope.spawn(move || stationary_run(config, traffic, seed))).collect())
            .collect();
        threads.into_iter().map(|seeds| seeds.into_iter().map(|t| t.join().expect("a replay")).collect()).collect()
    });
    for (traffic, seeds) in kinds.into_iter().zip(runs) {
        let checks: u64 = seeds.iter().map(|r| r.checks).sum();
        let flagged: u64 = seeds.iter().map(|r| r.flagged).sum();
        let triggers: u64 = seeds.iter().map(|r| r.triggers).sum();
        let kernel_p_values: Vec<f64> = seeds.into_iter().flat_map(|r| r.kernel_p_values).collect();
        // α = 0.002 per check: about 1.4 flagged checks expected in ~700; no pair of consecutive ones.
        assert_eq!(triggers, 0, "{traffic:?}: {triggers} false retrain requests in 300,000 predictions");
        assert!(flagged <= 6, "{traffic:?}: {flagged} of {checks} checks flagged");
        assert!(checks >= 60, "{traffic:?}: only {checks} checks");
        // The kernel test's p-values are about uniform on correlated streams too: its swaps
        // respect the units (a test that ignored the runs would reject nearly every window).
        let share =
            |level: f64| kernel_p_values.iter().filter(|&&p| p < level).count() as f64 / kernel_p_values.len() as f64;
        assert!(kernel_p_values.len() >= 100, "{traffic:?}: the kernel test ran {} times", kernel_p_values.len());
        assert!(share(0.05) <= 0.12 && share(0.01) <= 0.03, "{traffic:?}: {} {}", share(0.05), share(0.01));
    }
}

/// What one version's window saw over 100,000 stationary predictions.
struct StationaryRun {
    checks: u64,
    flagged: u64,
    triggers: u64,
    kernel_p_values: Vec<f64>,
}

/// One version (a reference from its own calibration draw, `seed`) serving 100,000 predictions
/// of an unchanged world arriving as `traffic`.
fn stationary_run(config: &InferenceConfig, traffic: Traffic, seed: u64) -> StationaryRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let world = World::stationary();
    let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
    let stream = requests(&world, traffic, 100_000, &mut rng);
    let mut kernel_p_values = Vec::new();
    let (checks, flagged, triggers, _) = replay_seeing(&mut window, &stream, config, |verdict| {
        let tested = verdict.statistics.iter().filter(|s| s.name == "embedding:mmd" && s.df > 0.0);
        kernel_p_values.extend(tested.map(|s| s.p_value));
    });
    StationaryRun { checks, flagged, triggers, kernel_p_values }
}

#[test]
fn a_large_single_class_request_raises_no_alarm() {
    let config = config();
    let mut rng = StdRng::seed_from_u64(9);
    let world = World::stationary();
    let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
    let mut stream = requests(&world, Traffic::Independent, 600, &mut rng);
    let object =
        Object { class: 3, brightness: 0.4, sharpness: 0.12, embedding: std::array::from_fn(|d| centre(3, d)) };
    stream.insert(200, (0..256).map(|_| world.image(&object, &mut rng)).collect());
    stream.extend(requests(&world, Traffic::Independent, 600, &mut rng));
    let (checks, flagged, _, _) = replay(&mut window, &stream, &config);
    assert!(checks >= 3);
    assert_eq!(flagged, 0);
}

#[test]
fn strong_shifts_are_caught_quickly_and_named() {
    let config = config();
    for (shift, fired) in [
        (Shift::Inversion, "confidence"),
        (Shift::Brighter, "brightness"),
        (Shift::Blur, "sharpness"),
        (Shift::Translation, "confidence"),
    ] {
        // Runs of 40 predictions of one object hold about ten independent units per 400
        // predictions, so a window needs more predictions before it can be sure.
        for (traffic, within) in [(Traffic::Independent, 1_200), (Traffic::Runs, 2_000)] {
            let mut rng = StdRng::seed_from_u64(4);
            let world = World::stationary();
            let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
            let shifted = World { shift, ..World::stationary() };
            let stream = requests(&shifted, traffic, 3_000, &mut rng);
            let (_, _, triggers, first) = replay(&mut window, &stream, &config);
            // (A process sends one request per cooldown however often the shift re-triggers.)
            assert!(triggers >= 1, "{traffic:?}: {shift:?} never requested a retrain");
            assert!(first.is_some_and(|at| at <= within), "{traffic:?} {shift:?}: retrain requested at {first:?}");
            let verdict = window.verdict(&config);
            assert_eq!(verdict.kind, DriftKind::CovariateShift, "{verdict:#?}");
            assert!(verdict.fired.iter().any(|f| f == fired), "{traffic:?} expected {fired}: {:?}", verdict.fired);
            assert!(!verdict.expected_accuracy_reliable);
        }
    }
}

#[test]
fn a_new_class_mix_is_reported_as_label_shift() {
    let config = config();
    let mut rng = StdRng::seed_from_u64(5);
    let world = World::stationary();
    let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
    let shifted = World { prior: [0.1, 0.1, 0.1, 0.7], ..World::stationary() };
    let stream = requests(&shifted, Traffic::Independent, 1_200, &mut rng);
    replay(&mut window, &stream, &config);
    let verdict = window.verdict(&config);
    assert_eq!(verdict.state, DriftState::Drift, "{verdict:#?}");
    assert_eq!(verdict.kind, DriftKind::LabelShift, "{verdict:#?}");
    assert!(verdict.fired.iter().all(|f| f.starts_with("class:")), "{:?}", verdict.fired);
    assert!(verdict.expected_accuracy_reliable);
}

#[test]
fn the_accuracy_estimate_has_an_interval_around_it() {
    let config = config();
    let mut rng = StdRng::seed_from_u64(6);
    let world = World::stationary();
    let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
    let stream = requests(&world, Traffic::Independent, 2_000, &mut rng);
    replay(&mut window, &stream, &config);
    let verdict = window.verdict(&config);
    let estimate = verdict.expected_accuracy.expect("an estimate");
    let [low, high] = verdict.expected_accuracy_interval.expect("an interval");
    // The stream's mean confidence is 0.4·0.9 + 0.3·0.8 + 0.2·0.85 + 0.1·0.7 = 0.84.
    assert!(low < estimate && estimate < high, "{low} {estimate} {high}");
    assert!(low <= 0.84 && 0.84 <= high, "[{low}, {high}]");
    assert!(high - low < 0.05, "[{low}, {high}]");
}

#[test]
fn a_shift_only_the_embedding_sees_is_caught_by_the_kernel_test() {
    // A new camera: class mix, confidence, brightness, sharpness and even the embedding's means
    // as before, but the network's penultimate layer sees each class spread wider.
    let config = config();
    let mut rng = StdRng::seed_from_u64(8);
    let world = World::stationary();
    let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
    let verdicts = |world: &World, count: usize, window: &mut Window, rng: &mut StdRng| {
        let mut out = Vec::new();
        for request in requests(world, Traffic::Independent, count, rng) {
            if let Some(v) = window.observe(&request, &config) {
                out.push(v.clone());
            }
        }
        out
    };
    let stationary = verdicts(&world, 2_000, &mut window, &mut rng);
    assert!(
        stationary.iter().all(|v| v.state == DriftState::Ok),
        "{:?}",
        stationary.iter().map(|v| &v.fired).collect::<Vec<_>>()
    );
    let mmd =
        |v: &Verdict| v.statistics.iter().find(|s| s.name == "embedding:mmd").cloned().expect("the kernel test ran");
    assert!(stationary.iter().all(|v| mmd(v).df >= mmd::MIN_GROUPS as f64), "every window had enough units");
    let shifted = verdicts(&World { shift: Shift::Spread, ..World::stationary() }, 1_200, &mut window, &mut rng);
    let last = shifted.last().expect("a check");
    assert_eq!(last.kind, DriftKind::CovariateShift, "{last:#?}");
    assert_eq!(last.fired, vec!["embedding:mmd".to_owned()], "only the kernel test sees a wider spread");
    assert!(last.consecutive >= 2);
    assert!(mmd(last).value > 0.0);
}

#[test]
fn the_kernel_test_does_not_mistake_a_new_class_mix_for_new_inputs() {
    let config = config();
    let mut rng = StdRng::seed_from_u64(12);
    let world = World::stationary();
    let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
    let shifted = World { prior: [0.05, 0.05, 0.1, 0.8], ..World::stationary() };
    let mut p_values = Vec::new();
    for request in requests(&shifted, Traffic::Independent, 4_000, &mut rng) {
        if let Some(v) = window.observe(&request, &config) {
            p_values.extend(v.statistics.iter().filter(|s| s.name == "embedding:mmd").map(|s| s.p_value));
        }
    }
    assert!(p_values.len() >= 8);
    assert!(p_values.iter().all(|&p| p > 1e-3), "{p_values:?}");
}

#[test]
fn a_shift_that_starts_mid_window_requests_a_retrain_within_1200_predictions() {
    let config = config();
    for shift in [Shift::Brighter, Shift::Blur, Shift::Translation] {
        let mut rng = StdRng::seed_from_u64(11);
        let world = World::stationary();
        let mut window = Window::new(world.reference(300, &mut rng), (0..4).map(|c| c.to_string()).collect());
        // 150 stationary predictions in mixed requests of 50, then the shift.
        let mut stream: Vec<Vec<Observation>> =
            (0..3).map(|_| (0..50).map(|_| world.image(&world.object(&mut rng), &mut rng)).collect()).collect();
        let shifted = World { shift, ..World::stationary() };
        stream.extend((0..24).map(|_| (0..50).map(|_| shifted.image(&shifted.object(&mut rng), &mut rng)).collect()));
        let (_, _, triggers, first) = replay(&mut window, &stream, &config);
        assert!(triggers >= 1, "{shift:?}: no retrain request");
        assert!(first.is_some_and(|at| at <= 150 + 1_200), "{shift:?}: requested at {first:?}");
    }
}
