//! Times training epochs of the benchmark network: the CNN on 64×64 RGB images,
//! batch 64, AdamW, 10 classes.
//!
//! `cargo run --release -p sluice-nn --example epoch -- [images] [epochs]` (defaults 10000 1).
#![allow(clippy::print_stdout, reason = "printing the timings is what this example is for")]

use std::time::Instant;

use sluice_nn::synthetic::{self, SyntheticSpec};
use sluice_nn::{Architecture, Hyper, Session, SessionSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let images: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let epochs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let classes = 10;
    let started = Instant::now();
    let train = synthetic::generate(&SyntheticSpec::rgb(64, classes, images, 1))?;
    let val = synthetic::generate(&SyntheticSpec::rgb(64, classes, 1_000, 2))?;
    println!("generated {images} + 1000 images in {:.1} s", started.elapsed().as_secs_f64());
    let hyper = Hyper { epochs, batch_size: 64, hidden: 64, patience: 0, ..Hyper::default() };
    let spec = SessionSpec { architecture: Architecture::Cnn, shape: train.shape, classes, hyper, seed: 1 };
    let mut session = Session::new(spec)?;
    for _ in 0..epochs {
        let r = session.run_epoch(&train, &val)?;
        let scoring = Instant::now();
        session.evaluate_best(&val)?;
        let eval = scoring.elapsed().as_secs_f64();
        println!(
            "epoch {}: {:.2} s training ({:.2} s with validation of 1000), train loss {:.4}, val accuracy {:.4}",
            r.epoch,
            r.seconds - eval,
            r.seconds,
            r.train_loss,
            r.val_accuracy
        );
    }
    Ok(())
}
