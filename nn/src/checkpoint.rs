//! The two safetensors files this crate writes: checkpoints (resume a session) and exports
//! (rebuild the network for inference).
//!
//! All metadata goes in one `__metadata__` entry, `"sluice"`, holding a JSON object: safetensors
//! writes its metadata map in hash order, so a single key is what keeps the bytes identical
//! from run to run. Tensors are little-endian f32 and sorted by name by safetensors itself.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::hyper::Hyper;
use crate::{Architecture, InputShape, NnError, Result};

const KEY: &str = "sluice";
/// Bumped when the layout of either file changes incompatibly.
pub(crate) const FORMAT: u32 = 1;

/// Everything about a session that is not a tensor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct CheckpointMeta {
    pub format: u32,
    pub kind: String,
    pub architecture: Architecture,
    pub shape: InputShape,
    pub classes: usize,
    pub hyper: Hyper,
    pub seed: u64,
    pub epochs_done: usize,
    pub step: u64,
    /// `f64::to_bits` of the best validation loss, exact where a decimal could round.
    pub best_val_loss_bits: Option<u64>,
    pub best_epoch: Option<usize>,
    pub bad_epochs: usize,
    pub stopped: bool,
}

/// What inference needs besides the weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct ExportMeta {
    pub format: u32,
    pub kind: String,
    pub architecture: Architecture,
    pub shape: InputShape,
    pub classes: usize,
    pub hidden: usize,
    /// Activation layout the dense weights were trained against (`"nchw"`).
    pub layout: String,
}

/// Serialises named f32 tensors with `meta` as the only metadata entry.
pub(crate) fn encode<M: Serialize>(meta: &M, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
    let json = serde_json::to_string(meta).map_err(|e| NnError::InvalidFile(format!("metadata: {e}")))?;
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, Some(HashMap::from([(KEY.to_string(), json)])))?)
}

/// A parsed file: its metadata and its tensors by name.
#[derive(Debug)]
pub(crate) struct Decoded<M> {
    pub meta: M,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl<M> Decoded<M> {
    /// Removes and returns the tensor `name`, checking its shape.
    pub(crate) fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.tensors.remove(name) {
            Some((s, v)) if s == shape => Ok(v),
            Some((s, _)) => Err(NnError::InvalidFile(format!("{name} has shape {s:?}, expected {shape:?}"))),
            None => Err(NnError::InvalidFile(format!("missing tensor {name}"))),
        }
    }

    /// True when the file has a tensor `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Parses a file written by [`encode`].
pub(crate) fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<Decoded<M>> {
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(KEY))
        .ok_or_else(|| NnError::InvalidFile(format!("no {KEY:?} metadata: not a Sluice model file")))?;
    let meta = serde_json::from_str(json).map_err(|e| NnError::InvalidFile(format!("metadata: {e}")))?;
    let file = SafeTensors::deserialize(bytes)?;
    let mut tensors = HashMap::new();
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(NnError::InvalidFile(format!("{name} is {:?}, expected F32", view.dtype())));
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name.to_string(), (view.shape().to_vec(), values));
    }
    Ok(Decoded { meta, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Meta {
        a: u32,
        b: String,
    }

    #[test]
    fn encode_is_byte_stable_and_decodes_back() {
        let meta = Meta { a: 3, b: "x".into() };
        let t =
            [("w".to_string(), vec![2, 2], &[1.0f32, -2.0, 3.5, 0.0][..]), ("b".to_string(), vec![1], &[9.0f32][..])];
        let bytes = encode(&meta, &t).expect("encode");
        assert_eq!(bytes, encode(&meta, &t).expect("encode"));
        let mut d: Decoded<Meta> = decode(&bytes).expect("decode");
        assert_eq!(d.meta, meta);
        assert!(d.take("w", &[4]).is_err());
        assert_eq!(d.take("b", &[1]).expect("b"), vec![9.0]);
        assert!(d.take("b", &[1]).is_err());
    }

    #[test]
    fn rejects_garbage_and_foreign_safetensors() {
        assert!(decode::<Meta>(b"not a model").is_err());
        let foreign =
            safetensors::serialize(vec![("x", TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).expect("view"))], None)
                .expect("serialize");
        let err = decode::<Meta>(&foreign).expect_err("no metadata");
        assert!(err.to_string().contains("not a Sluice model file"), "{err}");
    }
}
