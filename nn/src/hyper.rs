//! Hyper-parameters: defaults, validation, and setting one by name from a search space.

use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use serde_json::Value;

/// Which update rule trains the weights.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam with decoupled weight decay.
    #[default]
    Adamw,
    /// Stochastic gradient descent with momentum and L2 weight decay.
    Sgd,
}

/// How the learning rate changes over the epoch budget (one value per epoch).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Half-cosine from the base rate towards zero over `epochs` (epoch 0 uses the full rate).
    Cosine,
    /// The base rate, ×0.1 from half the budget on, ×0.01 from three quarters on.
    Step,
}

impl Schedule {
    /// The learning rate of `epoch` (0-based) for a budget of `epochs`.
    pub fn rate(self, base: f64, epoch: usize, epochs: usize) -> f64 {
        let epochs = epochs.max(1);
        let epoch = epoch.min(epochs);
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos()),
            Schedule::Step => {
                if epoch * 4 >= epochs * 3 {
                    base * 0.01
                } else if epoch * 2 >= epochs {
                    base * 0.1
                } else {
                    base
                }
            }
        }
    }
}

/// Training hyper-parameters. Every field has a default so a search space may name any subset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Hyper {
    /// Base learning rate (> 0).
    pub learning_rate: f64,
    /// Images per optimiser step (>= 1); the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// The epoch budget; successive halving sets it per rung.
    pub epochs: usize,
    /// The update rule.
    pub optimizer: Optimizer,
    /// SGD momentum in [0, 1); unused by AdamW.
    pub momentum: f64,
    /// AdamW's decoupled decay or SGD's L2 penalty (>= 0).
    pub weight_decay: f64,
    /// Probability of dropping a hidden unit while training, in [0, 1).
    pub dropout: f64,
    /// Width of the dense hidden layer (the MLP's hidden layer, the CNN's first dense layer).
    pub hidden: usize,
    /// Learning-rate schedule over the epoch budget.
    pub schedule: Schedule,
    /// Stop after this many epochs without a lower validation loss; 0 turns early stopping off.
    pub patience: usize,
    /// The epochs the learning-rate schedule spans, when they differ from `epochs`: successive
    /// halving sets a trial's whole budget, so a schedule runs once across its rungs instead of
    /// restarting at each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon: Option<usize>,
    /// Training-time augmentation (none by default); set per job, not searched.
    #[serde(skip_serializing_if = "Augment::is_identity")]
    pub augment: Augment,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            learning_rate: 1e-3,
            batch_size: 64,
            epochs: 10,
            optimizer: Optimizer::Adamw,
            momentum: 0.9,
            weight_decay: 1e-4,
            dropout: 0.0,
            hidden: 64,
            schedule: Schedule::Constant,
            patience: 3,
            horizon: None,
            augment: Augment::default(),
        }
    }
}

/// Upper bounds that keep a typo from allocating the machine away.
const MAX_BATCH: usize = 65_536;
const MAX_EPOCHS: usize = 10_000;
const MAX_HIDDEN: usize = 65_536;

impl Hyper {
    /// The epochs the learning-rate schedule spans.
    pub fn schedule_epochs(&self) -> usize {
        self.horizon.unwrap_or(self.epochs)
    }

    /// Names of the fields a search space may set, as accepted by [`Hyper::set`].
    pub const PARAMS: &[&str] = &[
        "learning_rate",
        "batch_size",
        "epochs",
        "optimizer",
        "momentum",
        "weight_decay",
        "dropout",
        "hidden",
        "schedule",
        "patience",
    ];

    /// Checks every field; the message names the field and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!("learning_rate must be a positive number, got {}", self.learning_rate));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(format!("batch_size must be between 1 and {MAX_BATCH}, got {}", self.batch_size));
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(format!("epochs must be between 1 and {MAX_EPOCHS}, got {}", self.epochs));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!("weight_decay must be >= 0, got {}", self.weight_decay));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(1..=MAX_HIDDEN).contains(&self.hidden) {
            return Err(format!("hidden must be between 1 and {MAX_HIDDEN}, got {}", self.hidden));
        }
        if let Some(horizon) = self.horizon
            && !(1..=MAX_EPOCHS).contains(&horizon)
        {
            return Err(format!("horizon must be between 1 and {MAX_EPOCHS}, got {horizon}"));
        }
        self.augment.validate()
    }

    /// Sets the field `name` from a JSON value (a number, or a string for `optimizer` and
    /// `schedule`). Rejects unknown names and values of the wrong type; ranges are checked by
    /// [`Hyper::validate`].
    pub fn set(&mut self, name: &str, value: &Value) -> Result<(), String> {
        match name {
            "learning_rate" => self.learning_rate = float(name, value)?,
            "batch_size" => self.batch_size = count(name, value)?,
            "epochs" => self.epochs = count(name, value)?,
            "optimizer" => self.optimizer = named(name, value)?,
            "momentum" => self.momentum = float(name, value)?,
            "weight_decay" => self.weight_decay = float(name, value)?,
            "dropout" => self.dropout = float(name, value)?,
            "hidden" => self.hidden = count(name, value)?,
            "schedule" => self.schedule = named(name, value)?,
            "patience" => self.patience = count(name, value)?,
            _ => return Err(format!("unknown parameter {name:?}; known: {}", Self::PARAMS.join(", "))),
        }
        Ok(())
    }
}

fn float(name: &str, value: &Value) -> Result<f64, String> {
    value.as_f64().ok_or_else(|| format!("{name} must be a number, got {value}"))
}

fn count(name: &str, value: &Value) -> Result<usize, String> {
    // Accept 32.0 from a search space that produced floats, but not 32.5 or -1.
    let n = match value.as_u64() {
        Some(n) => n,
        None => match value.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => f as u64,
            _ => return Err(format!("{name} must be a non-negative integer, got {value}")),
        },
    };
    usize::try_from(n).map_err(|_| format!("{name} is too large: {n}"))
}

fn named<T: serde::de::DeserializeOwned>(name: &str, value: &Value) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|_| format!("{name}: unsupported value {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_valid_and_partial_json_fills_the_rest() {
        assert_eq!(Hyper::default().validate(), Ok(()));
        let h: Hyper = serde_json::from_value(json!({"learning_rate": 0.01, "optimizer": "sgd"})).expect("parse");
        assert_eq!(h.learning_rate, 0.01);
        assert_eq!(h.optimizer, Optimizer::Sgd);
        assert_eq!(h.batch_size, 64);
    }

    #[test]
    fn set_accepts_every_listed_param() {
        let mut h = Hyper::default();
        for name in Hyper::PARAMS {
            let value = match *name {
                "optimizer" => json!("sgd"),
                "schedule" => json!("cosine"),
                "learning_rate" | "momentum" | "weight_decay" | "dropout" => json!(0.5),
                _ => json!(7),
            };
            h.set(name, &value).expect(name);
        }
        assert_eq!(h.validate(), Ok(()));
        assert_eq!((h.batch_size, h.schedule), (7, Schedule::Cosine));
    }

    #[test]
    fn set_rejects_unknown_params_and_wrong_types() {
        let mut h = Hyper::default();
        assert!(h.set("lr", &json!(0.1)).expect_err("unknown").contains("unknown parameter"));
        assert!(h.set("batch_size", &json!(-1)).is_err());
        assert!(h.set("batch_size", &json!(2.5)).is_err());
        assert!(h.set("learning_rate", &json!("fast")).is_err());
        assert!(h.set("optimizer", &json!("adam")).is_err());
        assert!(h.set("schedule", &json!(3)).is_err());
        assert_eq!(h, Hyper::default());
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        let bad: &[(&str, Value)] = &[
            ("learning_rate", json!(0.0)),
            ("learning_rate", json!(-0.001)),
            ("batch_size", json!(0)),
            ("epochs", json!(0)),
            ("dropout", json!(1.0)),
            ("dropout", json!(-0.1)),
            ("momentum", json!(1.0)),
            ("weight_decay", json!(-1e-4)),
            ("hidden", json!(0)),
        ];
        for (name, value) in bad {
            let mut h = Hyper::default();
            h.set(name, value).expect("type is right");
            let err = h.validate().expect_err(name);
            assert!(err.contains(name), "{err}");
        }
        let nan = Hyper { learning_rate: f64::NAN, ..Hyper::default() };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn schedules_follow_the_epoch_budget() {
        assert_eq!(Schedule::Constant.rate(0.1, 9, 10), 0.1);
        assert_eq!(Schedule::Cosine.rate(0.1, 0, 10), 0.1);
        assert!((Schedule::Cosine.rate(0.1, 5, 10) - 0.05).abs() < 1e-12);
        assert!(Schedule::Cosine.rate(0.1, 9, 10) > 0.0);
        let step: Vec<f64> = (0..4).map(|e| Schedule::Step.rate(1.0, e, 4)).collect();
        assert_eq!(step, vec![1.0, 1.0, 0.1, 0.01]);
    }
}
