use super::*;
use crate::synthetic::{self, SyntheticSpec};
use crate::{Network, Optimizer, Schedule};

fn data(size: usize, classes: usize, count: usize, seed: u64) -> Samples {
    synthetic::generate(&SyntheticSpec::rgb(size, classes, count, seed)).expect("synthetic")
}

fn spec(architecture: Architecture, size: usize, classes: usize, hyper: Hyper) -> SessionSpec {
    SessionSpec { architecture, shape: InputShape { channels: 3, height: size, width: size }, classes, hyper, seed: 42 }
}

/// Reports with the wall time zeroed, the only field allowed to differ between runs.
fn timeless(reports: Vec<EpochReport>) -> Vec<EpochReport> {
    reports.into_iter().map(|r| EpochReport { seconds: 0.0, ..r }).collect()
}

fn run(session: &mut Session, epochs: usize, train: &Samples, val: &Samples) -> Vec<EpochReport> {
    (0..epochs).map(|_| session.run_epoch(train, val).expect("epoch")).collect()
}

#[test]
fn cnn_reaches_95_percent_validation_accuracy_on_synthetic_shapes() {
    let train = data(32, 6, 3000, 1);
    let val = data(32, 6, 600, 2);
    let hyper = Hyper { learning_rate: 2e-3, batch_size: 32, epochs: 12, patience: 0, ..Hyper::default() };
    let mut session = Session::new(spec(Architecture::Cnn, 32, 6, hyper)).expect("session");
    let mut best = 0.0f64;
    while !session.finished() && best < 0.95 {
        let r = session.run_epoch(&train, &val).expect("epoch");
        eprintln!("{r:?}");
        best = best.max(r.val_accuracy);
    }
    assert!(best >= 0.95, "best validation accuracy {best}");
}

#[test]
fn same_seed_gives_identical_metrics_and_export_bytes() {
    let (train, val) = (data(16, 3, 150, 3), data(16, 3, 60, 4));
    for (arch, optimizer) in [(Architecture::Cnn, Optimizer::Adamw), (Architecture::Mlp, Optimizer::Sgd)] {
        let hyper =
            Hyper { epochs: 2, batch_size: 16, dropout: 0.3, optimizer, learning_rate: 0.01, ..Hyper::default() };
        let s = spec(arch, 16, 3, hyper);
        let mut a = Session::new(s.clone()).expect("session");
        let mut b = Session::new(s.clone()).expect("session");
        assert_eq!(timeless(run(&mut a, 2, &train, &val)), timeless(run(&mut b, 2, &train, &val)));
        assert_eq!(a.export_best().expect("export"), b.export_best().expect("export"));
        assert_eq!(a.checkpoint().expect("checkpoint"), b.checkpoint().expect("checkpoint"));
        let mut c = Session::new(SessionSpec { seed: 7, ..s }).expect("session");
        run(&mut c, 1, &train, &val);
        assert_ne!(a.export_best().expect("export"), c.export_best().expect("export"));
    }
}

#[test]
fn resumed_session_continues_exactly_like_an_uninterrupted_one() {
    let (train, val) = (data(16, 3, 150, 5), data(16, 3, 60, 6));
    let cases =
        [(Architecture::Cnn, Optimizer::Adamw, Schedule::Cosine), (Architecture::Mlp, Optimizer::Sgd, Schedule::Step)];
    for (arch, optimizer, schedule) in cases {
        let hyper = Hyper { epochs: 3, batch_size: 16, dropout: 0.2, optimizer, schedule, ..Hyper::default() };
        let s = spec(arch, 16, 3, hyper);
        let mut straight = Session::new(s.clone()).expect("session");
        let expected = timeless(run(&mut straight, 3, &train, &val));

        let mut first = Session::new(s.clone()).expect("session");
        let mut got = run(&mut first, 1, &train, &val);
        let bytes = first.checkpoint().expect("checkpoint");
        drop(first);
        let mut resumed = Session::resume(s.clone(), &bytes).expect("resume");
        assert_eq!(resumed.epochs_done(), 1);
        assert_eq!(resumed.checkpoint().expect("checkpoint"), bytes);
        got.extend(run(&mut resumed, 2, &train, &val));
        assert_eq!(timeless(got), expected, "{arch} {optimizer:?}");
        assert!(resumed.finished());
        assert_eq!(resumed.export_best().expect("export"), straight.export_best().expect("export"));
        assert_eq!(resumed.checkpoint().expect("checkpoint"), straight.checkpoint().expect("checkpoint"));
    }
}

#[test]
fn exported_network_logits_match_evaluate_best() {
    let (train, val) = (data(16, 3, 120, 7), data(16, 3, 50, 8));
    for arch in [Architecture::Cnn, Architecture::Mlp] {
        let hyper = Hyper { epochs: 2, batch_size: 16, ..Hyper::default() };
        let mut session = Session::new(spec(arch, 16, 3, hyper)).expect("session");
        run(&mut session, 2, &train, &val);
        let evaluation = session.evaluate_best(&val).expect("evaluate");
        let network = Network::load(&session.export_best().expect("export")).expect("load");
        assert_eq!((network.architecture(), network.classes(), network.shape()), (arch, 3, val.shape));
        assert_eq!(network.logits(&val.images, val.len()).expect("logits"), evaluation.logits);
        // Alone, an image goes through differently blocked matrix products: equal up to rounding.
        let alone = network.logits(val.image(3), 1).expect("logits");
        assert!(alone[0].iter().zip(&evaluation.logits[3]).all(|(a, b)| (a - b).abs() < 1e-4), "{alone:?}");
        assert!(network.logits(&val.images[1..], val.len()).is_err());
        assert_eq!(evaluation.predictions.len(), val.len());
    }
}

#[test]
fn early_stopping_keeps_the_weights_of_the_lowest_validation_loss() {
    let (train, val) = (data(16, 3, 90, 9), data(16, 3, 30, 10));
    // A learning rate this large makes validation loss blow up after the first epoch or two.
    let hyper = Hyper { epochs: 20, batch_size: 8, learning_rate: 0.5, patience: 2, ..Hyper::default() };
    let mut session = Session::new(spec(Architecture::Mlp, 16, 3, hyper)).expect("session");
    let mut reports = Vec::new();
    while !session.finished() {
        reports.push(session.run_epoch(&train, &val).expect("epoch"));
    }
    let last = reports.last().expect("an epoch");
    assert!(last.stopped_early && reports.len() < 20, "{reports:?}");
    assert!(session.run_epoch(&train, &val).is_err());
    let best = reports.iter().map(|r| r.val_loss).fold(f64::INFINITY, f64::min);
    assert_eq!(session.evaluate_best(&val).expect("evaluate").loss, best);
    // The stop survives a checkpoint.
    let resumed = Session::resume(session.spec().clone(), &session.checkpoint().expect("checkpoint")).expect("resume");
    assert!(resumed.finished());
    // Promoted to a larger budget (successive halving's next rung), it continues from its best
    // epoch's weights, and the early stop of the last rung does not carry over.
    let best_epoch = reports.iter().position(|r| r.val_loss == best).expect("the best epoch") + 1;
    let bigger = SessionSpec { hyper: Hyper { epochs: 40, ..session.spec().hyper.clone() }, ..session.spec().clone() };
    let promoted = Session::promote(bigger, &session.checkpoint().expect("checkpoint")).expect("promote");
    assert!(!promoted.finished());
    assert_eq!(promoted.epochs_done(), best_epoch);
    assert_eq!(promoted.evaluate_best(&val).expect("evaluate").loss, best);
}

#[test]
fn augmented_training_is_deterministic_and_differs_from_plain() {
    let (train, val) = (data(16, 3, 90, 11), data(16, 3, 30, 12));
    let augment = crate::Augment { translate: 0.1, rotate: 10.0, brightness: 0.1, ..crate::Augment::default() };
    let plain = Hyper { epochs: 2, batch_size: 16, ..Hyper::default() };
    let augmented = Hyper { augment, ..plain.clone() };
    let train_with = |hyper: Hyper| {
        let mut session = Session::new(spec(Architecture::Mlp, 16, 3, hyper)).expect("session");
        timeless(run(&mut session, 2, &train, &val))
    };
    assert_eq!(train_with(augmented.clone()), train_with(augmented.clone()));
    assert_ne!(train_with(augmented), train_with(plain));
}

#[test]
fn resume_rejects_foreign_checkpoints_but_allows_a_larger_budget() {
    let s = spec(Architecture::Mlp, 16, 3, Hyper { epochs: 2, ..Hyper::default() });
    let bytes = Session::new(s.clone()).expect("session").checkpoint().expect("checkpoint");
    assert!(Session::resume(SessionSpec { seed: 1, ..s.clone() }, &bytes).is_err());
    assert!(Session::resume(SessionSpec { classes: 4, ..s.clone() }, &bytes).is_err());
    let other = Hyper { learning_rate: 0.5, ..s.hyper.clone() };
    assert!(Session::resume(SessionSpec { hyper: other, ..s.clone() }, &bytes).is_err());
    assert!(Session::resume(s.clone(), b"garbage").is_err());
    let bigger = Hyper { epochs: 9, ..s.hyper.clone() };
    assert!(Session::resume(SessionSpec { hyper: bigger, ..s.clone() }, &bytes).is_ok());
    let export = Session::new(s.clone()).expect("session").export_best().expect("export");
    assert!(Session::resume(s, &export).is_err());
    assert!(Network::load(&bytes).is_err());
}

#[test]
fn rejects_invalid_specs_and_mismatched_samples() {
    let bad = Hyper { learning_rate: 0.0, ..Hyper::default() };
    assert!(matches!(Session::new(spec(Architecture::Cnn, 16, 3, bad)), Err(NnError::InvalidSpec(_))));
    assert!(Session::new(spec(Architecture::Cnn, 16, 1, Hyper::default())).is_err());
    let mut session = Session::new(spec(Architecture::Cnn, 16, 3, Hyper::default())).expect("session");
    let (train, val) = (data(16, 3, 20, 1), data(16, 3, 10, 2));
    assert!(session.run_epoch(&data(16, 4, 20, 1), &val).is_err());
    assert!(session.run_epoch(&data(8, 3, 20, 1), &val).is_err());
    assert!(session.run_epoch(&train, &Samples::new(val.shape)).is_err());
    assert_eq!(session.epochs_done(), 0);
}

#[test]
fn parameters_are_counted_from_the_spec_without_building_the_network() {
    let small = spec(Architecture::Mlp, 4, 3, Hyper { hidden: 8, ..Hyper::default() });
    // dense 48 → 8 (+8 biases), dense 8 → 3 (+3 biases).
    assert_eq!(small.parameters(), 48 * 8 + 8 + 8 * 3 + 3);
    let cnn = spec(Architecture::Cnn, 8, 2, Hyper { hidden: 4, ..Hyper::default() });
    // Two conv blocks, then 32 channels of 2×2 into 4 hidden units, then 2 classes.
    assert_eq!(cnn.parameters(), (16 * 3 * 9 + 16) + (32 * 16 * 9 + 32) + (4 * 32 * 2 * 2 + 4) + (2 * 4 + 2));
    let absurd = SessionSpec {
        shape: InputShape { channels: 3, height: 4096, width: 4096 },
        ..spec(Architecture::Mlp, 4, 3, Hyper { hidden: 65_536, ..Hyper::default() })
    };
    assert!(absurd.parameters() > 3_000_000_000_000, "{}", absurd.parameters());
}
