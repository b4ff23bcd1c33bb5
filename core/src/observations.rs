//! What inference replicas tell the drift monitor: each predict request's statistics, on
//! `inference.observations`.

use serde::{Deserialize, Serialize};

use crate::events::Event;

/// One predict request's predictions as the drift monitor sees them (on `inference.observations`,
/// keyed by model, so one monitor holds each model's windows: one verdict per version across all
/// inference replicas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestObserved {
    pub model: String,
    pub version: i32,
    pub images: Vec<ObservedImage>,
}

/// One prediction: its class, calibrated top-1 confidence, and input brightness and sharpness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedImage {
    pub class: u32,
    pub confidence: f32,
    pub brightness: f32,
    pub sharpness: f32,
    /// The penultimate-layer embedding's sketch (`reference::sketch`, 16 values; replicas from
    /// before sketches sent 4, which the monitor ignores).
    #[serde(default)]
    pub embedding: Vec<f32>,
}

impl Event for RequestObserved {
    const TYPE: &'static str = "inference.request_observed";
    const SCHEMA_VERSION: u32 = 1;
}
