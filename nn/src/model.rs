//! The two networks: their parameter layout, seeded initialisation and forward pass.

use candle_core::{Device, Tensor, Var};
use rand::Rng;

use crate::layers::{conv_block, dense};
use crate::rng::{Purpose, stream};
use crate::{Architecture, InputShape, NnError, Result};

/// Output channels of the CNN's two convolution blocks.
const CONV_CHANNELS: [usize; 2] = [16, 32];

/// What determines the parameter shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModelSpec {
    pub architecture: Architecture,
    pub shape: InputShape,
    pub classes: usize,
    pub hidden: usize,
}

/// One named parameter's shape and how to initialise it.
#[derive(Clone, Debug)]
pub(crate) struct ParamLayout {
    pub name: &'static str,
    pub shape: Vec<usize>,
    fan_in: usize,
    /// Weights feeding a ReLU get He-uniform bounds; the output layer gets 1/sqrt(fan_in).
    relu: bool,
    bias: bool,
}

impl ModelSpec {
    pub(crate) fn validate(&self) -> Result<()> {
        self.shape.validate(self.architecture)?;
        if !(2..=100_000).contains(&self.classes) {
            return Err(NnError::InvalidSpec(format!("classes must be between 2 and 100000, got {}", self.classes)));
        }
        if self.hidden == 0 {
            return Err(NnError::InvalidSpec("hidden must be at least 1".into()));
        }
        Ok(())
    }

    /// Parameters in a fixed order (the order of initialisation and of optimiser state).
    pub(crate) fn layout(&self) -> Vec<ParamLayout> {
        let InputShape { channels, height, width } = self.shape;
        let mut out = Vec::new();
        let mut push = |name: &'static str, shape: Vec<usize>, fan_in: usize, relu: bool| {
            out.push(ParamLayout { name, shape, fan_in, relu, bias: name.ends_with(".bias") });
        };
        let features = match self.architecture {
            Architecture::Mlp => channels * height * width,
            Architecture::Cnn => {
                let [c1, c2] = CONV_CHANNELS;
                push("conv1.weight", vec![c1, channels, 3, 3], 9 * channels, true);
                push("conv1.bias", vec![c1], 9 * channels, true);
                push("conv2.weight", vec![c2, c1, 3, 3], 9 * c1, true);
                push("conv2.bias", vec![c2], 9 * c1, true);
                c2 * (height / 2 / 2) * (width / 2 / 2)
            }
        };
        push("dense1.weight", vec![self.hidden, features], features, true);
        push("dense1.bias", vec![self.hidden], features, true);
        push("out.weight", vec![self.classes, self.hidden], self.hidden, false);
        push("out.bias", vec![self.classes], self.hidden, false);
        out
    }
}

/// Weights on a device, as candle variables so autograd tracks them.
#[derive(Debug)]
pub(crate) struct Model {
    pub spec: ModelSpec,
    pub layout: Vec<ParamLayout>,
    pub vars: Vec<Var>,
}

impl Model {
    /// Fresh weights drawn from the seed's init stream: He-uniform for layers before a ReLU,
    /// uniform ±1/sqrt(fan_in) for the output layer, zero biases.
    pub(crate) fn init(spec: ModelSpec, seed: u64, device: &Device) -> Result<Self> {
        spec.validate()?;
        let mut rng = stream(seed, Purpose::Init, 0);
        let values = spec
            .layout()
            .iter()
            .map(|p| {
                let n: usize = p.shape.iter().product();
                if p.bias {
                    return vec![0f32; n];
                }
                let bound = if p.relu { (6.0 / p.fan_in as f64).sqrt() } else { (1.0 / p.fan_in as f64).sqrt() };
                let bound = bound as f32;
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            })
            .collect();
        Self::from_values(spec, values, device)
    }

    /// Weights from host values in [`ModelSpec::layout`] order.
    pub(crate) fn from_values(spec: ModelSpec, values: Vec<Vec<f32>>, device: &Device) -> Result<Self> {
        spec.validate()?;
        let layout = spec.layout();
        if values.len() != layout.len() {
            return Err(NnError::InvalidFile(format!("{} parameter tensors, expected {}", values.len(), layout.len())));
        }
        let vars = layout
            .iter()
            .zip(values)
            .map(|(p, v)| {
                if v.len() != p.shape.iter().product::<usize>() {
                    return Err(NnError::InvalidFile(format!(
                        "{} has {} values, expected shape {:?}",
                        p.name,
                        v.len(),
                        p.shape
                    )));
                }
                Ok(Var::from_tensor(&Tensor::from_vec(v, p.shape.as_slice(), device)?)?)
            })
            .collect::<Result<_>>()?;
        Ok(Model { spec, layout, vars })
    }

    /// Host copies of every parameter, in layout order.
    pub(crate) fn values(&self) -> Result<Vec<Vec<f32>>> {
        self.vars.iter().map(|v| Ok(v.as_tensor().flatten_all()?.to_vec1()?)).collect()
    }

    /// Logits `[n, classes]` for a batch `[n, channels, height, width]`.
    ///
    /// `train` builds the autograd graph (and keeps what the conv backward needs); evaluation
    /// reads detached weights so nothing is recorded. `dropout` is a `[n, hidden]` mask already
    /// scaled by 1/(1-p), applied after the hidden ReLU.
    pub(crate) fn forward(&self, x: &Tensor, train: bool, dropout: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_with_hidden(x, train, dropout)?.0)
    }

    /// Logits and the hidden layer's activations (the penultimate layer, after its ReLU and any
    /// dropout): what the network "sees", for drift references.
    pub(crate) fn forward_with_hidden(
        &self,
        x: &Tensor,
        train: bool,
        dropout: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let p = |i: usize| if train { self.vars[i].as_tensor().clone() } else { self.vars[i].as_detached_tensor() };
        let n = x.dim(0)?;
        let (features, next) = match self.spec.architecture {
            Architecture::Mlp => (x.reshape((n, ()))?, 0),
            Architecture::Cnn => {
                let y = conv_block(x, &p(0), &p(1), train)?;
                let y = conv_block(&y, &p(2), &p(3), train)?;
                (y.reshape((n, ()))?, 4)
            }
        };
        let mut hidden = dense(&features, &p(next), &p(next + 1))?.relu()?;
        if let Some(mask) = dropout {
            hidden = hidden.mul(mask)?;
        }
        let logits = dense(&hidden, &p(next + 2), &p(next + 3))?;
        Ok((logits, hidden))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(architecture: Architecture) -> ModelSpec {
        ModelSpec { architecture, shape: InputShape { channels: 3, height: 9, width: 12 }, classes: 5, hidden: 7 }
    }

    #[test]
    fn both_architectures_produce_class_logits() {
        for arch in [Architecture::Mlp, Architecture::Cnn] {
            let model = Model::init(spec(arch), 1, &Device::Cpu).expect("init");
            let x = Tensor::zeros((4, 3, 9, 12), candle_core::DType::F32, &Device::Cpu).expect("x");
            let logits = model.forward(&x, false, None).expect("forward");
            assert_eq!(logits.dims(), &[4, 5]);
        }
    }

    #[test]
    fn initialisation_depends_only_on_the_seed() {
        let a = Model::init(spec(Architecture::Cnn), 9, &Device::Cpu).expect("init").values().expect("values");
        let b = Model::init(spec(Architecture::Cnn), 9, &Device::Cpu).expect("init").values().expect("values");
        let c = Model::init(spec(Architecture::Cnn), 10, &Device::Cpu).expect("init").values().expect("values");
        assert_eq!(a, b);
        assert_ne!(a, c);
        // 9×12 pools to 4×6 then 2×3, times 32 channels.
        assert_eq!(a[4].len(), 7 * 2 * 3 * 32);
    }
}
