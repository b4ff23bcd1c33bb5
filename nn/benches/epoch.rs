//! Training speed of the benchmark CNN (64×64 RGB, batch 64, AdamW, 10 classes):
//! `cargo bench -p sluice-nn --bench epoch`. One full epoch over 10,000 images is timed by
//! `cargo run --release -p sluice-nn --example epoch`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_nn::synthetic::{self, SyntheticSpec};
use sluice_nn::{Architecture, Hyper, Session, SessionSpec};

fn bench(c: &mut Criterion) {
    let classes = 10;
    let mut group = c.benchmark_group("cnn_64x64_rgb_adamw");
    group.sample_size(10);
    for images in [64, 640] {
        let train = synthetic::generate(&SyntheticSpec::rgb(64, classes, images, 1)).expect("train");
        let val = synthetic::generate(&SyntheticSpec::rgb(64, classes, 64, 2)).expect("val");
        let hyper = Hyper { epochs: 10_000, batch_size: 64, patience: 0, ..Hyper::default() };
        let spec = SessionSpec { architecture: Architecture::Cnn, shape: train.shape, classes, hyper, seed: 1 };
        let mut session = Session::new(spec.clone()).expect("session");
        group.throughput(Throughput::Elements(images as u64));
        group.bench_function(format!("epoch_of_{images}_images"), |b| {
            b.iter(|| {
                if session.finished() {
                    session = Session::new(spec.clone()).expect("session");
                }
                session.run_epoch(&train, &val).expect("epoch")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
