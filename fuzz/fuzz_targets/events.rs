//! Every event type Sluice consumes, decoded from arbitrary bytes as its consumer decodes it.
//! Properties: no panic and no unbounded work; whatever decodes re-encodes, and the re-encoding
//! decodes again to the same id, type and version (what a relay re-publishing it relies on).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::{
    batch_predictions::BatchPredictionRequested,
    capture::MediaCaptured,
    events::{Envelope, Event},
    models::{AliasMoved, AliasRemoved, ModelEvent, ModelVersionRegistered},
    observations::RequestObserved,
    parking::WorkParked,
    pipeline::{MediaFailed, MediaProcessed},
    training::{self, RetrainRequested, TrialAssigned, TrialFinished, TrialProgress},
    uploads::MediaIngested,
};

fn round_trip<T: Event>(bytes: &[u8]) {
    let Ok(first) = Envelope::<T>::decode(bytes) else { return };
    assert_eq!(first.event_type, T::TYPE);
    assert!(first.schema_version <= T::SCHEMA_VERSION);
    let encoded = first.to_json();
    let second =
        Envelope::<T>::decode(&encoded).unwrap_or_else(|e| panic!("{} re-encoded does not decode: {e}", T::TYPE));
    assert_eq!(
        (second.event_id, &second.event_type, second.schema_version),
        (first.event_id, &first.event_type, first.schema_version)
    );
    assert_eq!(training::event_type(&encoded).as_deref(), Some(T::TYPE));
}

fuzz_target!(|data: &[u8]| {
    let _ = training::event_type(data);
    round_trip::<MediaIngested>(data);
    round_trip::<MediaProcessed>(data);
    round_trip::<MediaFailed>(data);
    round_trip::<TrialAssigned>(data);
    round_trip::<TrialProgress>(data);
    round_trip::<TrialFinished>(data);
    round_trip::<RetrainRequested>(data);
    round_trip::<ModelVersionRegistered>(data);
    round_trip::<AliasMoved>(data);
    round_trip::<AliasRemoved>(data);
    round_trip::<WorkParked>(data);
    round_trip::<BatchPredictionRequested>(data);
    round_trip::<RequestObserved>(data);
    round_trip::<MediaCaptured>(data);
    if let Ok(event) = ModelEvent::decode(data) {
        let (model, _, aliases) = event.state();
        assert!(model.len() <= data.len() && aliases.len() <= data.len());
    }
});
