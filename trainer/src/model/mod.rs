//! The two architectures, as plain burn modules whose fields follow their checkpoint's tensor
//! names (read `lstm.rs` beside `model.safetensors` and they match), plus what they share: the
//! named-weights map that both initialisation and loading go through, the config written to
//! `config.json`, and the language-model loss. It deliberately holds no training logic, no
//! dropout (the shipped models are small and trained for few epochs) and no generation.

pub mod gpt2;
pub mod lstm;

use std::collections::BTreeMap;

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Result, TrainError};

pub use gpt2::{Gpt2Config, Gpt2Lm};
pub use lstm::{LstmConfig, LstmLm};

/// A language model the training loop can drive.
pub trait LanguageModel: Module + Clone + std::fmt::Debug + 'static {
    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3>;

    /// Every parameter under its checkpoint name, in the checkpoint's layout, as f32.
    fn named_tensors(&self) -> Vec<(String, TensorData)>;

    /// The `config.json` this model is saved with.
    fn config(&self) -> ModelConfig;

    /// Parameters excluded from weight decay (biases, LayerNorm, embeddings), by id.
    fn no_decay_ids(&self) -> Vec<ParamId>;
}

/// `config.json` of either architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// ferrite/PyTorch LSTM LM.
    Lstm(LstmConfig),
    /// Hugging Face GPT-2.
    Gpt2(Gpt2Config),
}

impl ModelConfig {
    /// Parses a `config.json`: `"arch": "lstm"` or `"model_type": "gpt2"`.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if value.get("arch").and_then(|v| v.as_str()) == Some("lstm") {
            return serde_json::from_value(value).map(Self::Lstm).map_err(|e| e.to_string());
        }
        if value.get("model_type").and_then(|v| v.as_str()) == Some("gpt2") {
            return serde_json::from_value(value).map(Self::Gpt2).map_err(|e| e.to_string());
        }
        Err("neither \"arch\": \"lstm\" nor \"model_type\": \"gpt2\"".into())
    }

    /// Serialises to the exact `config.json` the exporter reads.
    pub fn to_json(&self) -> Vec<u8> {
        let value = match self {
            Self::Lstm(c) => serde_json::to_value(c),
            Self::Gpt2(c) => serde_json::to_value(c),
        };
        // Both configs are plain structs of numbers and strings: serialisation cannot fail.
        serde_json::to_vec_pretty(&value.unwrap_or_default()).unwrap_or_default()
    }

    /// `lstm` or `gpt2`.
    pub fn arch(&self) -> &'static str {
        match self {
            Self::Lstm(_) => "lstm",
            Self::Gpt2(_) => "gpt2",
        }
    }

    /// Vocabulary size the model was built for.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Lstm(c) => c.vocab_size,
            Self::Gpt2(c) => c.vocab_size,
        }
    }
}

/// Named f32 tensors: what initialisation produces, a safetensors file holds and loading
/// consumes. Going through one map for both init and load means a loaded model is built by the
/// same code as a fresh one, so save → load is exact by construction (and tested).
#[derive(Debug, Default, Clone)]
pub struct Weights {
    tensors: BTreeMap<String, TensorData>,
    next_id: u64,
}

impl Weights {
    /// Wraps named tensors.
    pub fn new(tensors: BTreeMap<String, TensorData>) -> Self {
        Self { tensors, next_id: 0 }
    }

    /// Adds a tensor (used by initialisers).
    pub fn insert(&mut self, name: impl Into<String>, data: TensorData) {
        self.tensors.insert(name.into(), data);
    }

    /// Takes tensor `name`, checks its shape, and makes it a trainable parameter on `device`.
    ///
    /// Parameter ids are assigned in load order rather than randomly, so a model rebuilt from a
    /// checkpoint has the same ids as the one that was saved — the optimizer state is keyed by
    /// them, and that is what lets `--resume` restore AdamW's moments onto the right tensors.
    pub fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Param<Tensor<D>>> {
        let data = self.tensors.remove(name).ok_or_else(|| TrainError::checkpoint(name, "tensor missing"))?;
        if data.shape().as_slice() != shape.as_slice() {
            return Err(TrainError::checkpoint(
                name,
                format!("shape {:?}, expected {shape:?}", data.shape().as_slice()),
            ));
        }
        let data = data.convert::<f32>();
        let mut tensor = Tensor::<D>::from_data(data, device);
        if device.is_autodiff() {
            tensor = tensor.require_grad();
        }
        self.next_id += 1;
        Ok(Param::initialized(ParamId::from(self.next_id), tensor))
    }

    /// Fails if any tensor was not consumed (a checkpoint with extra or misnamed tensors).
    pub fn finish(self) -> Result<()> {
        match self.tensors.keys().next() {
            None => Ok(()),
            Some(name) => Err(TrainError::checkpoint(
                name.as_str(),
                "unexpected tensor (not part of this architecture)",
            )),
        }
    }
}

/// Tensor data of `shape` filled by `f`.
pub(crate) fn filled(shape: &[usize], mut f: impl FnMut() -> f32) -> TensorData {
    let n = shape.iter().product();
    TensorData::new((0..n).map(|_| f()).collect::<Vec<f32>>(), shape.to_vec())
}

/// `x @ w + b` for `x: [B, T, in]`, `w: [in, out]` (Conv1D/`Linear`-transposed layout).
pub(crate) fn affine(x: Tensor<3>, w: Tensor<2>, b: Tensor<1>) -> Tensor<3> {
    let [batch, seq, d_in] = x.dims();
    let d_out = w.dims()[1];
    let y = x.reshape([batch * seq, d_in]).matmul(w) + b.unsqueeze::<2>();
    y.reshape([batch, seq, d_out])
}

/// Mean next-token cross-entropy (nats) of `logits: [B, T, V]` against `targets: [B, T]`.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    let logp = log_softmax(logits.reshape([batch * seq, vocab]), 1);
    let picked = logp.gather(1, targets.reshape([batch * seq, 1]));
    picked.mean().neg()
}

/// One parameter of a model as the gradient-norm and test helpers see it.
pub(crate) struct ParamVisit {
    pub id: ParamId,
    pub sum_sq: f64,
    pub has_grad: bool,
}

/// Visits every float parameter, reporting the squared L2 norm of its gradient in `grads`.
pub(crate) fn gradient_sums<M: Module>(model: &M, grads: &burn::optim::GradientsParams) -> Vec<ParamVisit> {
    struct Visitor<'a> {
        grads: &'a burn::optim::GradientsParams,
        out: Vec<ParamVisit>,
    }
    impl burn::module::ModuleVisitor for Visitor<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (sum_sq, has_grad) = match self.grads.get::<D>(param.id) {
                Some(g) => (f64::from(g.square().sum().into_scalar::<f32>()), true),
                None => (0.0, false),
            };
            self.out.push(ParamVisit { id: param.id, sum_sq, has_grad });
        }
    }
    let mut v = Visitor { grads, out: Vec::new() };
    model.visit(&mut v);
    v.out
}
