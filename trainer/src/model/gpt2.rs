//! GPT-2-architecture decoder: learned token and position embeddings, pre-LayerNorm blocks with
//! causal multi-head attention and a GELU-tanh (`gelu_new`) MLP, a final LayerNorm and an LM head
//! tied to the token embedding. Fields and tensor layouts are Hugging Face's (`Conv1D` weights
//! stored `[in, out]`, fused `c_attn`), so the checkpoint loads in
//! `transformers.GPT2LMHeadModel.from_pretrained`. No dropout, no KV cache, no padding masks:
//! this module trains on full windows; generation belongs to the exporter and runtime.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::gelu_approximate;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{LanguageModel, ModelConfig, Weights, affine, filled};
use crate::error::Result;
use crate::rng::SplitMix64;

fn default_gelu_new() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_init_range() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}

/// Hugging Face `GPT2Config` as `config.json` holds it (the subset that defines the network, plus
/// the keys transformers expects to see).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Always `"gpt2"`.
    pub model_type: String,
    /// `["GPT2LMHeadModel"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (rows of `wpe`).
    pub n_positions: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads (must divide `n_embd`).
    pub n_head: usize,
    /// MLP width; `null` means `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Always `"gelu_new"` (GELU, tanh approximation).
    #[serde(default = "default_gelu_new")]
    pub activation_function: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Std of the normal initialisation (informational for transformers).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Dropout probabilities: 0, because ferrite trains without dropout.
    #[serde(default)]
    pub resid_pdrop: f64,
    /// See `resid_pdrop`.
    #[serde(default)]
    pub embd_pdrop: f64,
    /// See `resid_pdrop`.
    #[serde(default)]
    pub attn_pdrop: f64,
    /// Id of `<|endoftext|>`.
    pub bos_token_id: u32,
    /// Id of `<|endoftext|>`.
    pub eos_token_id: u32,
    /// The LM head is the token embedding.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Attention scores are divided by √head_dim.
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Lets transformers use its KV cache when generating.
    #[serde(default = "default_true")]
    pub use_cache: bool,
}

impl Gpt2Config {
    /// A config with the fixed keys filled in.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
        end_of_text: u32,
    ) -> Self {
        Self {
            model_type: "gpt2".into(),
            architectures: vec!["GPT2LMHeadModel".into()],
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_gelu_new(),
            layer_norm_epsilon: default_eps(),
            initializer_range: default_init_range(),
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            bos_token_id: end_of_text,
            eos_token_id: end_of_text,
            tie_word_embeddings: true,
            scale_attn_weights: true,
            use_cache: true,
        }
    }

    fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Fresh weights with GPT-2's initialisation: N(0, 0.02) everywhere, residual projections
    /// scaled by 1/√(2·n_layer), zero biases, unit LayerNorm gains.
    pub fn init_weights(&self, rng: &mut SplitMix64) -> Weights {
        let (d, f) = (self.n_embd, self.inner());
        let std = self.initializer_range as f32;
        let proj_std = std / (2.0 * self.n_layer as f32).sqrt();
        let mut w = Weights::default();
        let mut normal = |shape: &[usize], s: f32| filled(shape, || rng.normal() * s);
        let zeros = |shape: &[usize]| filled(shape, || 0.0);
        let ones = |shape: &[usize]| filled(shape, || 1.0);
        w.insert("transformer.wte.weight", normal(&[self.vocab_size, d], std));
        w.insert("transformer.wpe.weight", normal(&[self.n_positions, d], std));
        for i in 0..self.n_layer {
            let p = format!("transformer.h.{i}");
            w.insert(format!("{p}.ln_1.weight"), ones(&[d]));
            w.insert(format!("{p}.ln_1.bias"), zeros(&[d]));
            w.insert(format!("{p}.attn.c_attn.weight"), normal(&[d, 3 * d], std));
            w.insert(format!("{p}.attn.c_attn.bias"), zeros(&[3 * d]));
            w.insert(format!("{p}.attn.c_proj.weight"), normal(&[d, d], proj_std));
            w.insert(format!("{p}.attn.c_proj.bias"), zeros(&[d]));
            w.insert(format!("{p}.ln_2.weight"), ones(&[d]));
            w.insert(format!("{p}.ln_2.bias"), zeros(&[d]));
            w.insert(format!("{p}.mlp.c_fc.weight"), normal(&[d, f], std));
            w.insert(format!("{p}.mlp.c_fc.bias"), zeros(&[f]));
            w.insert(format!("{p}.mlp.c_proj.weight"), normal(&[f, d], proj_std));
            w.insert(format!("{p}.mlp.c_proj.bias"), zeros(&[d]));
        }
        w.insert("transformer.ln_f.weight", ones(&[d]));
        w.insert("transformer.ln_f.bias", zeros(&[d]));
        w
    }
}

/// LayerNorm over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm {
    weight: Param<Tensor<1>>,
    bias: Param<Tensor<1>>,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &mut Weights, prefix: &str, d: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: w.param(&format!("{prefix}.weight"), [d], device)?,
            bias: w.param(&format!("{prefix}.bias"), [d], device)?,
            eps,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (var, mean) = x.clone().var_mean_bias(2);
        let x = (x - mean) / (var + self.eps).sqrt();
        x * self.weight.val().unsqueeze::<3>() + self.bias.val().unsqueeze::<3>()
    }

    fn export(&self, prefix: &str, out: &mut Vec<(String, TensorData)>) {
        out.push((format!("{prefix}.weight"), self.weight.val().into_data()));
        out.push((format!("{prefix}.bias"), self.bias.val().into_data()));
    }
}

/// HF `Conv1D`: `y = x @ weight + bias` with `weight: [in, out]`.
#[derive(Module, Debug)]
pub struct Conv1D {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

impl Conv1D {
    fn load(w: &mut Weights, prefix: &str, d_in: usize, d_out: usize, dev: &Device) -> Result<Self> {
        Ok(Self {
            weight: w.param(&format!("{prefix}.weight"), [d_in, d_out], dev)?,
            bias: w.param(&format!("{prefix}.bias"), [d_out], dev)?,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        affine(x, self.weight.val(), self.bias.val())
    }

    fn export(&self, prefix: &str, out: &mut Vec<(String, TensorData)>) {
        out.push((format!("{prefix}.weight"), self.weight.val().into_data()));
        out.push((format!("{prefix}.bias"), self.bias.val().into_data()));
    }
}

/// One pre-LayerNorm transformer block (`transformer.h.{i}`).
#[derive(Module, Debug)]
pub struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_c_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_c_proj: Conv1D,
    n_head: usize,
}

impl Block {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, d] = x.dims();
        let hd = d / self.n_head;
        let qkv = self.c_attn.forward(self.ln_1.forward(x.clone()));
        let heads = |t: Tensor<3>| t.reshape([batch, seq, self.n_head, hd]).swap_dims(1, 2);
        let q = heads(qkv.clone().narrow(2, 0, d));
        let k = heads(qkv.clone().narrow(2, d, d));
        let v = heads(qkv.narrow(2, 2 * d, d));
        let options = AttentionModuleOptions {
            scale: None, // 1/√head_dim, as GPT-2's scale_attn_weights
            softcap: None,
            is_causal: true,
        };
        let y = attention(q, k, v, None, None, options).swap_dims(1, 2).reshape([batch, seq, d]);
        let x = x + self.attn_c_proj.forward(y);
        let h = gelu_approximate(self.c_fc.forward(self.ln_2.forward(x.clone())));
        x + self.mlp_c_proj.forward(h)
    }
}

/// The GPT-2 language model.
#[derive(Module, Debug)]
pub struct Gpt2Lm {
    wte: Param<Tensor<2>>,
    wpe: Param<Tensor<2>>,
    h: Vec<Block>,
    ln_f: LayerNorm,
    n_positions: usize,
    n_inner: usize,
    bos: u32,
}

impl Gpt2Lm {
    /// Builds the model from named weights (fresh or loaded), checking every name and shape.
    /// Keys without the `transformer.` prefix are not accepted: ferrite writes the prefix.
    pub fn load(config: &Gpt2Config, mut w: Weights, device: &Device) -> Result<Self> {
        let (d, f, eps) = (config.n_embd, config.inner(), config.layer_norm_epsilon);
        if config.n_head == 0 || !d.is_multiple_of(config.n_head) {
            return Err(crate::TrainError::InvalidArgument(format!(
                "n_embd {d} is not divisible by n_head {}",
                config.n_head
            )));
        }
        let wte = w.param("transformer.wte.weight", [config.vocab_size, d], device)?;
        let wpe = w.param("transformer.wpe.weight", [config.n_positions, d], device)?;
        let mut h = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("transformer.h.{i}");
            h.push(Block {
                ln_1: LayerNorm::load(&mut w, &format!("{p}.ln_1"), d, eps, device)?,
                c_attn: Conv1D::load(&mut w, &format!("{p}.attn.c_attn"), d, 3 * d, device)?,
                attn_c_proj: Conv1D::load(&mut w, &format!("{p}.attn.c_proj"), d, d, device)?,
                ln_2: LayerNorm::load(&mut w, &format!("{p}.ln_2"), d, eps, device)?,
                c_fc: Conv1D::load(&mut w, &format!("{p}.mlp.c_fc"), d, f, device)?,
                mlp_c_proj: Conv1D::load(&mut w, &format!("{p}.mlp.c_proj"), f, d, device)?,
                n_head: config.n_head,
            });
        }
        let ln_f = LayerNorm::load(&mut w, "transformer.ln_f", d, eps, device)?;
        w.finish()?;
        Ok(Self { wte, wpe, h, ln_f, n_positions: config.n_positions, n_inner: f, bos: config.bos_token_id })
    }
}

impl LanguageModel for Gpt2Lm {
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        assert!(seq <= self.n_positions, "sequence {seq} longer than n_positions {}", self.n_positions);
        let wte = self.wte.val();
        let [vocab, d] = wte.dims();
        let pos = self.wpe.val().narrow(0, 0, seq).unsqueeze::<3>();
        let mut x = burn::tensor::module::embedding(wte.clone(), tokens) + pos;
        for block in &self.h {
            x = block.forward(x);
        }
        let x = self.ln_f.forward(x).reshape([batch * seq, d]);
        // Tied head: logits = x · wteᵀ.
        x.matmul(wte.transpose()).reshape([batch, seq, vocab])
    }

    fn named_tensors(&self) -> Vec<(String, TensorData)> {
        let mut out = vec![
            ("transformer.wte.weight".to_string(), self.wte.val().into_data()),
            ("transformer.wpe.weight".to_string(), self.wpe.val().into_data()),
        ];
        for (i, b) in self.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            b.ln_1.export(&format!("{p}.ln_1"), &mut out);
            b.c_attn.export(&format!("{p}.attn.c_attn"), &mut out);
            b.attn_c_proj.export(&format!("{p}.attn.c_proj"), &mut out);
            b.ln_2.export(&format!("{p}.ln_2"), &mut out);
            b.c_fc.export(&format!("{p}.mlp.c_fc"), &mut out);
            b.mlp_c_proj.export(&format!("{p}.mlp.c_proj"), &mut out);
        }
        self.ln_f.export("transformer.ln_f", &mut out);
        out
    }

    fn config(&self) -> ModelConfig {
        let [vocab, d] = self.wte.val().dims();
        let n_head = self.h.first().map_or(1, |b| b.n_head);
        let mut c = Gpt2Config::new(vocab, self.n_positions, d, self.h.len(), n_head, self.bos);
        if self.n_inner != 4 * d {
            c.n_inner = Some(self.n_inner);
        }
        if let Some(b) = self.h.first() {
            c.layer_norm_epsilon = b.ln_1.eps;
        }
        ModelConfig::Gpt2(c)
    }

    fn no_decay_ids(&self) -> Vec<ParamId> {
        let mut ids = vec![self.wte.id, self.wpe.id, self.ln_f.weight.id, self.ln_f.bias.id];
        for b in &self.h {
            ids.extend([b.ln_1.weight.id, b.ln_1.bias.id, b.ln_2.weight.id, b.ln_2.bias.id]);
            ids.extend([b.c_attn.bias.id, b.attn_c_proj.bias.id]);
            ids.extend([b.c_fc.bias.id, b.mlp_c_proj.bias.id]);
        }
        ids
    }
}
