//! LSTM language model: `Embedding(V, E) → LSTM(E, H, num_layers = L, batch_first) → Linear(H, V)`,
//! the same module PyTorch builds, with the same `state_dict` names, layouts and gate order
//! (i, f, g, o), so the checkpoint is what `torch.save(model.state_dict())` would hold. It does
//! not implement dropout between layers, projections or bidirectional LSTMs.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{LanguageModel, ModelConfig, Weights, affine, filled};
use crate::error::Result;
use crate::rng::SplitMix64;

/// `config.json` of an LSTM LM, exactly as the exporter reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LstmConfig {
    /// Always `"lstm"`.
    pub arch: String,
    /// V.
    pub vocab_size: usize,
    /// E.
    pub embed_dim: usize,
    /// H.
    pub hidden_size: usize,
    /// L.
    pub num_layers: usize,
}

impl LstmConfig {
    /// A config with `arch` filled in.
    pub fn new(vocab_size: usize, embed_dim: usize, hidden_size: usize, num_layers: usize) -> Self {
        Self { arch: "lstm".into(), vocab_size, embed_dim, hidden_size, num_layers }
    }

    /// Fresh weights with PyTorch's default initialisation: N(0, 1) embedding, U(±1/√H) for
    /// every LSTM tensor, U(±1/√H) for the head.
    pub fn init_weights(&self, rng: &mut SplitMix64) -> Weights {
        let (v, e, h) = (self.vocab_size, self.embed_dim, self.hidden_size);
        let k = 1.0 / (h as f32).sqrt();
        let mut w = Weights::default();
        w.insert("embedding.weight", filled(&[v, e], || rng.normal()));
        for l in 0..self.num_layers {
            let d_in = if l == 0 { e } else { h };
            w.insert(format!("lstm.weight_ih_l{l}"), filled(&[4 * h, d_in], || rng.uniform(-k, k)));
            w.insert(format!("lstm.weight_hh_l{l}"), filled(&[4 * h, h], || rng.uniform(-k, k)));
            w.insert(format!("lstm.bias_ih_l{l}"), filled(&[4 * h], || rng.uniform(-k, k)));
            w.insert(format!("lstm.bias_hh_l{l}"), filled(&[4 * h], || rng.uniform(-k, k)));
        }
        w.insert("head.weight", filled(&[v, h], || rng.uniform(-k, k)));
        w.insert("head.bias", filled(&[v], || rng.uniform(-k, k)));
        w
    }
}

/// One LSTM layer, PyTorch layout: `weight_ih [4H, in]`, `weight_hh [4H, H]`, two biases `[4H]`.
#[derive(Module, Debug)]
pub struct LstmLayer {
    weight_ih: Param<Tensor<2>>,
    weight_hh: Param<Tensor<2>>,
    bias_ih: Param<Tensor<1>>,
    bias_hh: Param<Tensor<1>>,
}

/// The LSTM language model.
#[derive(Module, Debug)]
pub struct LstmLm {
    embedding: Param<Tensor<2>>,
    lstm: Vec<LstmLayer>,
    head_weight: Param<Tensor<2>>,
    head_bias: Param<Tensor<1>>,
    vocab_size: usize,
    embed_dim: usize,
    hidden_size: usize,
}

impl LstmLm {
    /// Builds the model from named weights (fresh or loaded), checking every name and shape.
    pub fn load(config: &LstmConfig, mut w: Weights, device: &Device) -> Result<Self> {
        let (v, e, h) = (config.vocab_size, config.embed_dim, config.hidden_size);
        let embedding = w.param("embedding.weight", [v, e], device)?;
        let mut lstm = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let d_in = if l == 0 { e } else { h };
            lstm.push(LstmLayer {
                weight_ih: w.param(&format!("lstm.weight_ih_l{l}"), [4 * h, d_in], device)?,
                weight_hh: w.param(&format!("lstm.weight_hh_l{l}"), [4 * h, h], device)?,
                bias_ih: w.param(&format!("lstm.bias_ih_l{l}"), [4 * h], device)?,
                bias_hh: w.param(&format!("lstm.bias_hh_l{l}"), [4 * h], device)?,
            });
        }
        let head_weight = w.param("head.weight", [v, h], device)?;
        let head_bias = w.param("head.bias", [v], device)?;
        w.finish()?;
        Ok(Self { embedding, lstm, head_weight, head_bias, vocab_size: v, embed_dim: e, hidden_size: h })
    }
}

impl LanguageModel for LstmLm {
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let h_size = self.hidden_size;
        let device = tokens.device();
        // Inputs are kept as one [B, in] tensor per time step. Slicing a time step out of a
        // [B, T, ·] tensor instead (`narrow`) costs, in burn's autodiff, a zero-filled gradient of
        // the whole [B, T, ·] tensor per step in the backward pass: that was 2/3 of the training
        // time at T = 128 (perf). Concatenation's backward only slices, so each step multiplies
        // `[x_t, h]` by the stacked `[W_ih | W_hh]` once.
        let mut inputs: Vec<Tensor<2>> = (0..seq)
            .map(|t| {
                let ids = tokens.clone().narrow(1, t, 1).reshape([batch]);
                burn::tensor::module::embedding(self.embedding.val(), ids.unsqueeze_dim(1))
                    .reshape([batch, self.embed_dim])
            })
            .collect();
        for layer in &self.lstm {
            let w_t = Tensor::cat(vec![layer.weight_ih.val(), layer.weight_hh.val()], 1).transpose();
            let bias = (layer.bias_ih.val() + layer.bias_hh.val()).unsqueeze::<2>();
            let mut h = Tensor::<2>::zeros([batch, h_size], &device);
            let mut c = Tensor::<2>::zeros([batch, h_size], &device);
            let mut outputs = Vec::with_capacity(seq);
            for x_t in inputs {
                let gates = Tensor::cat(vec![x_t, h], 1).matmul(w_t.clone()) + bias.clone();
                let mut parts = gates.chunk(4, 1).into_iter();
                // PyTorch order: input, forget, cell (g), output.
                let (Some(i), Some(f), Some(g), Some(o)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    unreachable!("chunk(4) of a 4H-wide tensor yields four parts");
                };
                c = sigmoid(f) * c + sigmoid(i) * tanh(g);
                h = sigmoid(o) * tanh(c.clone());
                outputs.push(h.clone());
            }
            inputs = outputs;
        }
        let x = Tensor::stack(inputs, 1);
        affine(x, self.head_weight.val().transpose(), self.head_bias.val())
    }

    fn named_tensors(&self) -> Vec<(String, TensorData)> {
        let mut out = vec![("embedding.weight".to_string(), self.embedding.val().into_data())];
        for (l, layer) in self.lstm.iter().enumerate() {
            out.push((format!("lstm.weight_ih_l{l}"), layer.weight_ih.val().into_data()));
            out.push((format!("lstm.weight_hh_l{l}"), layer.weight_hh.val().into_data()));
            out.push((format!("lstm.bias_ih_l{l}"), layer.bias_ih.val().into_data()));
            out.push((format!("lstm.bias_hh_l{l}"), layer.bias_hh.val().into_data()));
        }
        out.push(("head.weight".into(), self.head_weight.val().into_data()));
        out.push(("head.bias".into(), self.head_bias.val().into_data()));
        out
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Lstm(LstmConfig::new(self.vocab_size, self.embed_dim, self.hidden_size, self.lstm.len()))
    }

    fn no_decay_ids(&self) -> Vec<ParamId> {
        let mut ids = vec![self.embedding.id, self.head_bias.id];
        for layer in &self.lstm {
            ids.push(layer.bias_ih.id);
            ids.push(layer.bias_hh.id);
        }
        ids
    }
}
