//! Training-job requests as `POST /v1/training-jobs` reads them, expanded by the search planner.
//! Properties: no panic and bounded work whatever the space (huge grids, huge ranges, odd
//! numbers); a plan never exceeds the trial and epoch limits; every planned trial's
//! hyper-parameters validate; successive halving's rungs end.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_trainer::search::{self, JobRequest, Limits, Strategy};

const LIMITS: Limits = Limits { max_trials: 64, max_epochs: 200 };

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<JobRequest>(data) else { return };
    let Ok(plan) = search::plan(&request.search, request.seed, LIMITS) else { return };
    assert!(!plan.trials.is_empty() && plan.trials.len() <= LIMITS.max_trials as usize, "{} trials", plan.trials.len());
    for trial in &plan.trials {
        trial.validate().unwrap_or_else(|e| panic!("a planned trial is invalid: {e}"));
        assert!(trial.epochs as u32 <= LIMITS.max_epochs);
    }
    assert_eq!(search::strategy_of(&request, LIMITS).ok().as_ref(), Some(&plan.strategy));
    if matches!(plan.strategy, Strategy::Halving { .. }) {
        let mut alive = plan.trials.len();
        let mut budget = plan.trials[0].epochs as u32;
        let mut rungs = 0;
        while let Some((keep, epochs)) = search::next_rung(&plan.strategy, budget, alive) {
            assert!(keep >= 1 && keep <= alive && epochs > budget && epochs <= LIMITS.max_epochs);
            (alive, budget) = (keep, epochs);
            rungs += 1;
            assert!(rungs <= 64, "halving does not end");
        }
        if let Strategy::Halving { max_epochs, .. } = plan.strategy {
            assert_eq!(budget, max_epochs, "the last survivor trains the whole budget");
        }
    }
});
