//! Llama-family decoders (Hugging Face `model_type` `llama`, `qwen2`, `mistral`; GGUF `llama`,
//! `qwen2` through [`super::gguf`]) as one graph for prefill and decode, with a KV cache of the
//! KV heads only. It does not do sliding-window attention (Mistral's window is ignored, with a
//! log line: outputs equal the model's for sequences up to the window), partial rotary
//! dimensions, nor RoPE scalings other than none, `linear` and `llama3`.
//!
//! Interface (GPT-2's, [`super::gpt2`]): `input_ids[B,S]` and `past_key.{l}`/`past_value.{l}`
//! `[B, KV, P, D]` → `logits[B,S,V]` and `present_key.{l}`/`present_value.{l}` `[B, KV, P+S, D]`,
//! with KV the number of key/value heads and D the head size. Positions are `P..P+S` with
//! `P = Gather(Shape(past_key.0), 2)`; prefill (P = 0) and decode (S = 1) are the same graph.
//! Cached keys are rotated (RoPE is applied before the `Concat`), as in transformers.
//!
//! Per layer the graph is, with H query heads, G = H / KV query heads per KV head, `x` `[B, S, d]`:
//!
//! ```text
//! a    = RMSNorm(x)                 Mul(x, x) → ReduceMean(−1) → Add(eps) → Sqrt → Reciprocal → Mul(x) → Mul(w)
//! qkv  = linear(a, self_attn.qkv_proj)          q, k, v rows stacked: one matmul (+ Qwen2's biases)
//! q, k, v = Split(qkv, [H·D, KV·D, KV·D], axis 2)
//! q    = Transpose(Reshape(q, [0, 0, H, D]), 0 2 1 3)      [B, H, S, D]   (k, v: [B, KV, S, D])
//! q, k = rope(q), rope(k)       Add(Mul(x, cos), Mul(Concat(x₂, x₁), Concat(−sin, sin)))
//! K    = Concat(past_key.l, k, axis 2)  → present_key.l     [B, KV, T, D]   (V likewise)
//! Kₕ   = Reshape(Expand(Unsqueeze(K, [2]), [1, 1, G, 1, 1]), [0, H, −1, D])   [B, H, T, D]
//!        (Vₕ likewise; only when G > 1: transformers' `repeat_kv`, query head h reads KV head h / G)
//! probs = Softmax(Add(Mul(MatMul(Kₕ, Transpose(q, 0 1 3 2)), 1/√D), bias), axis −2)   [B, H, T, S]
//! ctx  = Reshape(Transpose(MatMul(Transpose(Vₕ, 0 1 3 2), probs), 0 3 1 2), [0, 0, H·D])
//! x    = x + linear(ctx, self_attn.o_proj)
//! m    = RMSNorm(x);  gate, up = Split(linear(m, mlp.gate_up_proj), [I, I], axis 2)
//! x    = x + linear(Mul(Mul(gate, Sigmoid(gate)), up), mlp.down_proj)
//! ```
//!
//! From `MatMul(Kₕ, …)` to the last `Reshape` this is GPT-2's keys-major attention node for node
//! (the same `Shape`/`Expand`ed causal bias `Where(Greater(key pos, query pos), f32::MIN, 0)`,
//! shared by every layer), with `Kₕ`/`Vₕ` in place of the `Concat`s. With G = 1 the `repeat_kv`
//! nodes are not emitted and the block is exactly GPT-2's, rotary embedding aside: on tract the
//! fused attention and the in-place cache take it over (ONNX Runtime's in-place rewrite expects
//! the new keys straight from their `Transpose` and leaves it as written). With G > 1 tract's
//! fused attention sees an ordinary multi-head block over the repeated keys, and no in-place cache
//! applies (the `Concat` has a reader other than the attention), so a step copies each layer's
//! cache G more times; a rewrite that keeps it in place matches `Concat → Unsqueeze → Expand →
//! Reshape` and reads KV head h / G for query head h. (Grouping the queries instead,
//! `Reshape(q, [0, KV, G·S, D])` against the unrepeated cache, needs no repeat, but tract's
//! in-place cache takes that block for its own and requires as many query rows as new keys: an
//! error at run time, not a slower step.)
//! The rotary tables are built once per step from the positions, `cos = Cos(Concat(f, f))`,
//! `sin = Sin(f)` with `f = Mul(Unsqueeze(Cast(P..P+S)), inv_freq)` `[S, D/2]` (transformers'
//! arithmetic, in f32), and broadcast over `[B, heads, S, D]`; the initializer
//! `rotary.inv_freq` carries the scaling.
//!
//! The checkpoint's separate `q_proj`/`k_proj`/`v_proj` (and `gate_proj`/`up_proj`) are stacked
//! into one dense layer each, so an int8 step quantises each activation once for three products;
//! every scheme quantises rows independently, so stacking changes no code.

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_runtime::Tensor;
use serde_json::Value;

use super::{ArchKind, Architecture, Calibration, IoRole, read_config, sample_ids, usize_field};
use crate::checkpoint::Checkpoint;
use crate::error::{ExportError, Result};
use crate::onnx::{Attr, Dim, ElemType, GraphBuilder};
use crate::quant::{self, Linear, QuantScheme};

/// Which model a Llama-family checkpoint is (they differ in biases and in config keys only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Llama 2/3, SmolLM2, TinyLlama (`model_type: llama`).
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k and v.
    Qwen2,
    /// Mistral: a sliding window, ignored.
    Mistral,
}

/// Rotary embedding frequencies: `inv_freq[i]` for the pairs `(i, i + D/2)` of every head.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rope {
    pub(crate) inv_freq: Vec<f32>,
}

/// How the frequencies are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (= frequencies divided by it).
    Linear { factor: f32 },
    /// Llama 3.1's piecewise scaling of low frequencies.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_context: f32 },
}

/// Largest head size accepted (a bound on what a file can make the exporter allocate for RoPE).
pub(crate) const MAX_HEAD_DIM: usize = 1 << 12;

/// Checks a head size from a file before anything is sized by it.
pub(crate) fn check_head_dim(head_dim: usize) -> std::result::Result<(), String> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_HEAD_DIM {
        return Err(format!(
            "head size {head_dim}: rotary embeddings need an even size in 2..={MAX_HEAD_DIM}"
        ));
    }
    Ok(())
}

impl Rope {
    /// transformers' `inv_freq = 1 / theta^(2i/D)` in f32, then the scaling
    /// (`_compute_llama3_parameters` for `llama3`). `head_dim` must have passed [`check_head_dim`].
    pub(crate) fn new(theta: f32, head_dim: usize, scaling: RopeScaling) -> Rope {
        let base = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32));
        let inv_freq = match scaling {
            RopeScaling::None => base.collect(),
            RopeScaling::Linear { factor } => base.map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => {
                let low_wavelen = original_context / low_freq_factor;
                let high_wavelen = original_context / high_freq_factor;
                base.map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        };
        Rope { inv_freq }
    }
}

/// The hyper-parameters of a Llama-family model, whatever file they came from.
#[derive(Debug, Clone)]
pub(crate) struct LlamaConfig {
    pub(crate) vocab: usize,
    pub(crate) d: usize,
    pub(crate) layers: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    /// SwiGLU inner size.
    pub(crate) inner: usize,
    pub(crate) eps: f32,
    pub(crate) context: usize,
    pub(crate) rope: Rope,
    /// The head is the token table.
    pub(crate) tied: bool,
    /// q, k, v projections have biases (Qwen2; Llama's `attention_bias`).
    pub(crate) qkv_bias: bool,
    /// The output projection has a bias (Llama's `attention_bias`).
    pub(crate) o_bias: bool,
    /// The MLP's projections have biases (Llama's `mlp_bias`).
    pub(crate) mlp_bias: bool,
    pub(crate) special: BTreeMap<String, i64>,
}

impl LlamaConfig {
    /// Checks the sizes against each other (a file may say anything).
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        if [self.vocab, self.d, self.layers, h, kv, hd, self.inner].contains(&0) {
            return Err("a size (vocab, hidden, layers, heads, KV heads, head size, inner) is 0".into());
        }
        if !h.is_multiple_of(kv) {
            return Err(format!("{h} attention heads are not a multiple of {kv} key/value heads"));
        }
        check_head_dim(hd)?;
        if self.rope.inv_freq.len() != hd / 2 {
            return Err(format!("{} rotary frequencies for head size {hd}", self.rope.inv_freq.len()));
        }
        // Sizes come from a file: refuse products that overflow before anything uses them.
        let q = h.checked_mul(hd).and_then(|r| r.checked_mul(self.d));
        let big = [self.vocab.checked_mul(self.d), self.inner.checked_mul(self.d), q];
        if big.iter().any(|p| p.is_none_or(|n| n > 1 << 40)) {
            return Err("tensor sizes overflow".into());
        }
        Ok(())
    }

    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// One weight of a Llama-family model, named independently of the file it is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weight {
    /// `[vocab, d]`.
    TokenEmbedding,
    /// `[d]`.
    FinalNorm,
    /// `[vocab, d]` (untied models only).
    Head,
    /// A weight of block `.0`.
    Layer(usize, LayerWeight),
}

/// A weight of one block. Matrices are `[out, inp]` (PyTorch's layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerWeight {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    O,
    OBias,
    FfnNorm,
    Gate,
    Up,
    Down,
    GateBias,
    UpBias,
    DownBias,
}

/// Where weights come from: a safetensors checkpoint ([`HfWeights`]) or a GGUF file. Every
/// tensor comes out as f32 in PyTorch's layout (matrices `[out, inp]`; q/k rows in transformers'
/// rotate-half order), checked to have `shape` and only finite values.
pub(crate) trait WeightSource {
    /// Reads `w`.
    fn read(&self, w: Weight, shape: &[usize]) -> Result<Vec<f32>>;
}

/// A Hugging Face `model.safetensors` under transformers' names.
struct HfWeights(Checkpoint);

impl HfWeights {
    fn name(w: Weight) -> String {
        use LayerWeight::*;
        match w {
            Weight::TokenEmbedding => "model.embed_tokens.weight".into(),
            Weight::FinalNorm => "model.norm.weight".into(),
            Weight::Head => "lm_head.weight".into(),
            Weight::Layer(l, lw) => {
                let part = match lw {
                    AttnNorm => "input_layernorm.weight",
                    Q => "self_attn.q_proj.weight",
                    K => "self_attn.k_proj.weight",
                    V => "self_attn.v_proj.weight",
                    QBias => "self_attn.q_proj.bias",
                    KBias => "self_attn.k_proj.bias",
                    VBias => "self_attn.v_proj.bias",
                    O => "self_attn.o_proj.weight",
                    OBias => "self_attn.o_proj.bias",
                    FfnNorm => "post_attention_layernorm.weight",
                    Gate => "mlp.gate_proj.weight",
                    Up => "mlp.up_proj.weight",
                    Down => "mlp.down_proj.weight",
                    GateBias => "mlp.gate_proj.bias",
                    UpBias => "mlp.up_proj.bias",
                    DownBias => "mlp.down_proj.bias",
                };
                format!("model.layers.{l}.{part}")
            }
        }
    }
}

impl WeightSource for HfWeights {
    fn read(&self, w: Weight, shape: &[usize]) -> Result<Vec<f32>> {
        self.0.tensor(&Self::name(w), shape)
    }
}

/// A dense layer: `[out, inp]` weight, optional bias, named for the graph's initializers.
#[derive(Debug)]
struct Proj {
    name: String,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    out: usize,
    inp: usize,
}

impl Proj {
    /// Reads `parts` (weight, its bias, rows) and stacks their rows into one layer; the biases
    /// are read when `with_bias`.
    fn stacked(
        src: &dyn WeightSource,
        name: String,
        parts: &[(Weight, Weight, usize)],
        inp: usize,
        with_bias: bool,
    ) -> Result<Proj> {
        // No capacity reserved up front: the sizes come from the file, and each read is checked
        // against the tensor the file actually holds before anything is allocated for it.
        let out = parts.iter().map(|p| p.2).sum();
        let mut weight = Vec::new();
        let mut bias = with_bias.then(Vec::new);
        for &(w, b, rows) in parts {
            weight.extend(src.read(w, &[rows, inp])?);
            if let Some(acc) = &mut bias {
                acc.extend(src.read(b, &[rows])?);
            }
        }
        Ok(Proj { name, weight, bias, out, inp })
    }

    fn apply(&self, g: &mut GraphBuilder, scheme: QuantScheme, x: &str) -> Result<String> {
        let layer = Linear {
            name: &self.name,
            weight: &self.weight,
            out: self.out,
            inp: self.inp,
            bias: self.bias.as_deref(),
        };
        quant::linear(g, scheme, x, &layer)
    }
}

/// RMSNorm's weight; stays f32 under every scheme (tiny and sensitive), as LayerNorm does.
#[derive(Debug)]
struct RmsNorm {
    name: String,
    weight: Vec<f32>,
}

impl RmsNorm {
    fn read(src: &dyn WeightSource, w: Weight, name: String, d: usize) -> Result<RmsNorm> {
        Ok(RmsNorm { name, weight: src.read(w, &[d])? })
    }

    /// transformers' `LlamaRMSNorm`: `w · x / √(mean(x²) + eps)` over the last axis.
    fn apply(&self, g: &mut GraphBuilder, x: &str, eps: &str) -> String {
        let w = g.init_f32(&self.name, &[self.weight.len()], &self.weight);
        let sq = g.op("Mul", &[x, x], vec![]);
        let mean =
            g.op("ReduceMean", &[&sq], vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))]);
        let var = g.op("Add", &[&mean, eps], vec![]);
        let rms = g.op("Sqrt", &[&var], vec![]);
        let inv = g.op("Reciprocal", &[&rms], vec![]);
        let y = g.op("Mul", &[x, &inv], vec![]);
        g.op("Mul", &[&y, &w], vec![])
    }
}

#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    qkv_proj: Proj,
    o_proj: Proj,
    post_attention_layernorm: RmsNorm,
    gate_up_proj: Proj,
    down_proj: Proj,
}

/// A loaded Llama-family model.
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Vec<f32>,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// `lm_head.weight` `[vocab, d]` of an untied model; `None` when the head is the token table.
    lm_head: Option<Vec<f32>>,
}

/// The LM head while building the graph: the token table itself, or the model's own matrix.
enum Head<'a> {
    Tied(quant::TiedTable),
    Own(&'a [f32]),
}

fn f64_field(cfg: &Value, key: &str) -> Option<f64> {
    cfg.get(key).and_then(Value::as_f64)
}

/// The RoPE settings of a transformers config: the newer `rope_parameters` object (which holds
/// `rope_theta`), or the older top-level `rope_theta` with an optional `rope_scaling` object.
fn rope_from_config(cfg: &Value, path: &Path, head_dim: usize, context: usize) -> Result<Rope> {
    let params = cfg.get("rope_parameters").filter(|v| v.is_object());
    let scaling = params.or_else(|| cfg.get("rope_scaling").filter(|v| v.is_object()));
    let theta = params
        .and_then(|p| f64_field(p, "rope_theta"))
        .or_else(|| f64_field(cfg, "rope_theta"))
        .unwrap_or(10000.0) as f32;
    let kind = scaling
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |key: &str| -> Result<f32> {
        scaling.and_then(|s| f64_field(s, key)).map(|v| v as f32).ok_or_else(|| {
            ExportError::config(path, format!("rope scaling `{kind}` lacks the number `{key}`"))
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_context: need("original_max_position_embeddings").unwrap_or(context as f32),
        },
        other => {
            return Err(ExportError::config(
                path,
                format!("rope scaling `{other}` is not supported (default, linear, llama3)"),
            ));
        }
    };
    if let Some(p) = scaling_partial(cfg, params)
        && p != 1.0
    {
        return Err(ExportError::config(path, format!("partial_rotary_factor {p} is not supported")));
    }
    if !theta.is_finite() || theta <= 1.0 {
        return Err(ExportError::config(path, format!("rope_theta {theta} is not a base > 1")));
    }
    Ok(Rope::new(theta, head_dim, scaling))
}

fn scaling_partial(cfg: &Value, params: Option<&Value>) -> Option<f64> {
    params
        .and_then(|p| f64_field(p, "partial_rotary_factor"))
        .or_else(|| f64_field(cfg, "partial_rotary_factor"))
}

/// `bos`/`eos`/`pad` ids from a config; a list of end ids (Llama 3) keeps its first.
fn special_from_config(cfg: &Value) -> BTreeMap<String, i64> {
    let mut special = BTreeMap::new();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        let id = match cfg.get(key) {
            Some(Value::Array(ids)) => {
                if ids.len() > 1 {
                    log::info!("{key}: {} ids, the first is the manifest's", ids.len());
                }
                ids.first().and_then(Value::as_i64)
            }
            Some(v) => v.as_i64(),
            None => None,
        };
        if let Some(id) = id {
            special.insert(key.trim_end_matches("_token_id").to_string(), id);
        }
    }
    special
}

impl LlamaConfig {
    /// Reads a transformers `config.json` of `model_type` llama, qwen2 or mistral.
    pub(crate) fn from_hf(dir: &Path) -> Result<LlamaConfig> {
        let cfg = read_config(dir)?;
        let path = dir.join("config.json");
        let family = match cfg.get("model_type").and_then(Value::as_str) {
            Some("llama") => Family::Llama,
            Some("qwen2") => Family::Qwen2,
            Some("mistral") => Family::Mistral,
            other => {
                return Err(ExportError::config(
                    &path,
                    format!("model_type {other:?} is not a Llama-family model (llama, qwen2, mistral)"),
                ));
            }
        };
        let act = cfg.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(ExportError::config(&path, format!("hidden_act `{act}` is not supported (silu)")));
        }
        let d = usize_field(&cfg, dir, "hidden_size")?;
        let heads = usize_field(&cfg, dir, "num_attention_heads")?;
        let kv_heads = cfg.get("num_key_value_heads").and_then(Value::as_u64).map_or(heads, |v| v as usize);
        let head_dim = match cfg.get("head_dim").and_then(Value::as_u64) {
            Some(hd) => hd as usize,
            None if heads > 0 && d.is_multiple_of(heads) => d / heads,
            None => {
                return Err(ExportError::config(
                    &path,
                    format!("hidden_size {d} is not a multiple of {heads} heads"),
                ));
            }
        };
        check_head_dim(head_dim).map_err(|m| ExportError::config(&path, m))?;
        let context = usize_field(&cfg, dir, "max_position_embeddings")?;
        let window = match family {
            Family::Mistral => cfg.get("sliding_window").and_then(Value::as_u64),
            Family::Qwen2 if cfg.get("use_sliding_window").and_then(Value::as_bool) == Some(true) => {
                cfg.get("sliding_window").and_then(Value::as_u64)
            }
            _ => None,
        };
        if let Some(w) = window {
            log::info!(
                "sliding window of {w} tokens ignored: attention spans the whole context, so outputs \
                 equal the model's for sequences up to {w} tokens"
            );
        }
        let attention_bias = cfg.get("attention_bias").and_then(Value::as_bool).unwrap_or(false);
        let config = LlamaConfig {
            vocab: usize_field(&cfg, dir, "vocab_size")?,
            d,
            layers: usize_field(&cfg, dir, "num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            inner: usize_field(&cfg, dir, "intermediate_size")?,
            eps: f64_field(&cfg, "rms_norm_eps").unwrap_or(1e-6) as f32,
            context,
            rope: rope_from_config(&cfg, &path, head_dim, context)?,
            tied: cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: attention_bias,
            mlp_bias: cfg.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            special: special_from_config(&cfg),
        };
        config.validate().map_err(|m| ExportError::config(&path, m))?;
        Ok(config)
    }
}

impl Llama {
    /// Reads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Llama> {
        let cfg = LlamaConfig::from_hf(dir)?;
        let file = dir.join("model.safetensors");
        if !file.is_file() && dir.join("model.safetensors.index.json").is_file() {
            return Err(ExportError::config(
                dir.join("model.safetensors.index.json"),
                "sharded checkpoints are not supported: one model.safetensors is",
            ));
        }
        let src = HfWeights(Checkpoint::open(&file)?);
        Llama::from_source(cfg, &src)
    }

    /// Reads every weight `cfg` implies from `src`.
    pub(crate) fn from_source(cfg: LlamaConfig, src: &dyn WeightSource) -> Result<Llama> {
        use LayerWeight::*;
        let (d, hd) = (cfg.d, cfg.head_dim);
        let (q_rows, kv_rows) = (cfg.heads * hd, cfg.kv_heads * hd);
        let embed_tokens = src.read(Weight::TokenEmbedding, &[cfg.vocab, d])?;
        // A tied config ties even when the file also holds a head (transformers does the same).
        let lm_head = if cfg.tied { None } else { Some(src.read(Weight::Head, &[cfg.vocab, d])?) };
        let progress = crate::progress::Stage::new("reading", cfg.layers as u64, "blocks");
        let blocks = (0..cfg.layers)
            .map(|l| {
                progress.inc(1);
                let w = |lw| Weight::Layer(l, lw);
                let p = format!("model.layers.{l}");
                Ok(Block {
                    input_layernorm: RmsNorm::read(
                        src,
                        w(AttnNorm),
                        format!("{p}.input_layernorm.weight"),
                        d,
                    )?,
                    qkv_proj: Proj::stacked(
                        src,
                        format!("{p}.self_attn.qkv_proj"),
                        &[(w(Q), w(QBias), q_rows), (w(K), w(KBias), kv_rows), (w(V), w(VBias), kv_rows)],
                        d,
                        cfg.qkv_bias,
                    )?,
                    o_proj: Proj::stacked(
                        src,
                        format!("{p}.self_attn.o_proj"),
                        &[(w(O), w(OBias), d)],
                        q_rows,
                        cfg.o_bias,
                    )?,
                    post_attention_layernorm: RmsNorm::read(
                        src,
                        w(FfnNorm),
                        format!("{p}.post_attention_layernorm.weight"),
                        d,
                    )?,
                    gate_up_proj: Proj::stacked(
                        src,
                        format!("{p}.mlp.gate_up_proj"),
                        &[(w(Gate), w(GateBias), cfg.inner), (w(Up), w(UpBias), cfg.inner)],
                        d,
                        cfg.mlp_bias,
                    )?,
                    down_proj: Proj::stacked(
                        src,
                        format!("{p}.mlp.down_proj"),
                        &[(w(Down), w(DownBias), d)],
                        cfg.inner,
                        cfg.mlp_bias,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        progress.finish();
        let norm = RmsNorm::read(src, Weight::FinalNorm, "model.norm.weight".into(), d)?;
        Ok(Llama { cfg, embed_tokens, blocks, norm, lm_head })
    }
}

/// Rotates `x` `[B, heads, S, D]` by the step's tables (transformers' `apply_rotary_pos_emb`):
/// `x·cos + rotate_half(x)·sin`, with `rotate_half(x) = Concat(−x₂, x₁)` written as
/// `Concat(x₂, x₁)·Concat(−sin, sin)` (`sin_signed`), the same products.
fn rope(g: &mut GraphBuilder, x: &str, cos: &str, sin_signed: &str, halves: &str) -> String {
    let parts = g.op_n("Split", &[x, halves], 2, vec![("axis", Attr::Int(-1))]);
    let swapped = g.op("Concat", &[&parts[1], &parts[0]], vec![("axis", Attr::Int(-1))]);
    let a = g.op("Mul", &[x, cos], vec![]);
    let b = g.op("Mul", &[&swapped, sin_signed], vec![]);
    g.op("Add", &[&a, &b], vec![])
}

impl Architecture for Llama {
    fn kind(&self) -> ArchKind {
        ArchKind::Llama
    }

    fn build(&self, scheme: QuantScheme, mut g: GraphBuilder) -> Result<GraphBuilder> {
        let c = &self.cfg;
        let (h, kv, hd, groups) = (c.heads, c.kv_heads, c.head_dim, c.groups());
        let super::KvDecoderFrame { ids, past, cache_out, pos, causal_bias, axis1: ax1 } =
            super::kv_decoder_frame(&mut g, self.blocks.len(), kv, hd);

        // Rotary tables for this step's positions, [S, D], shared by every layer.
        let posf = g.op("Cast", &[&pos], vec![("to", Attr::Int(i64::from(ElemType::F32.code())))]);
        let posf = g.op("Unsqueeze", &[&posf, &ax1], vec![]);
        let inv_freq = g.init_f32("rotary.inv_freq", &[hd / 2], &c.rope.inv_freq);
        let freqs = g.op("Mul", &[&posf, &inv_freq], vec![]);
        let emb = g.op("Concat", &[&freqs, &freqs], vec![("axis", Attr::Int(-1))]);
        let cos = g.op("Cos", &[&emb], vec![]);
        let sin = g.op("Sin", &[&freqs], vec![]);
        let neg_sin = g.op("Neg", &[&sin], vec![]);
        let sin_signed = g.op("Concat", &[&neg_sin, &sin], vec![("axis", Attr::Int(-1))]);
        let halves = g.const_i64(&[(hd / 2) as i64; 2]);

        // A tied head shares the token table: stored once, in the head's layout (as gpt2.rs).
        let head = match &self.lm_head {
            Some(w) => Head::Own(w),
            None => Head::Tied(quant::tied_table(
                &mut g,
                scheme,
                "model.embed_tokens.weight",
                [c.vocab, c.d],
                &self.embed_tokens,
            )),
        };
        let mut x = match &head {
            Head::Tied(table) => quant::tied_embedding(&mut g, table, &ids),
            Head::Own(_) => quant::embedding(
                &mut g,
                scheme,
                "model.embed_tokens.weight",
                [c.vocab, c.d],
                &self.embed_tokens,
                &ids,
            ),
        };

        let eps = g.scalar_f32(c.eps);
        let split_qkv = g.const_i64(&[(h * hd) as i64, (kv * hd) as i64, (kv * hd) as i64]);
        let split_mlp = g.const_i64(&[c.inner as i64; 2]);
        let q_heads = g.const_i64(&[0, 0, h as i64, hd as i64]);
        let kv_heads = g.const_i64(&[0, 0, kv as i64, hd as i64]);
        let group_axis = g.const_i64(&[2]);
        let groups_shape = g.const_i64(&[1, 1, groups as i64, 1, 1]);
        let all_heads = g.const_i64(&[0, h as i64, -1, hd as i64]);
        let from_heads = g.const_i64(&[0, 0, (h * hd) as i64]);
        let scale = g.scalar_f32(1.0 / (hd as f32).sqrt());
        let mut presents = Vec::new();
        let mut full_bias: Option<String> = None;
        for (block, (past_k, past_v)) in self.blocks.iter().zip(&past) {
            let a = block.input_layernorm.apply(&mut g, &x, &eps);
            let qkv = block.qkv_proj.apply(&mut g, scheme, &a)?;
            let parts = g.op_n("Split", &[&qkv, &split_qkv], 3, vec![("axis", Attr::Int(2))]);
            let heads: Vec<String> = parts
                .iter()
                .zip([&q_heads, &kv_heads, &kv_heads])
                .map(|(t, shape)| {
                    let r = g.op("Reshape", &[t, shape], vec![]);
                    g.op("Transpose", &[&r], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))])
                })
                .collect();
            let q = rope(&mut g, &heads[0], &cos, &sin_signed, &halves);
            let k_new = rope(&mut g, &heads[1], &cos, &sin_signed, &halves);
            let k = g.op("Concat", &[past_k, &k_new], vec![("axis", Attr::Int(2))]);
            let v = g.op("Concat", &[past_v, &heads[2]], vec![("axis", Attr::Int(2))]);
            // transformers' `repeat_kv`: KV head j serves query heads j·G..(j+1)·G.
            let repeat = |g: &mut GraphBuilder, x: &str| {
                let u = g.op("Unsqueeze", &[x, &group_axis], vec![]);
                let e = g.op("Expand", &[&u, &groups_shape], vec![]);
                g.op("Reshape", &[&e, &all_heads], vec![])
            };
            let (k_all, v_all) =
                if groups > 1 { (repeat(&mut g, &k), repeat(&mut g, &v)) } else { (k.clone(), v.clone()) };
            // Keys-major attention (why: gpt2.rs), [B, H, T, S].
            let qt = g.op("Transpose", &[&q], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
            let scores = g.op("MatMul", &[&k_all, &qt], vec![]);
            let scores = g.op("Mul", &[&scores, &scale], vec![]);
            let bias = match &full_bias {
                Some(b) => b.clone(),
                None => {
                    let shape = g.op("Shape", &[&scores], vec![]);
                    let b = g.op("Expand", &[&causal_bias, &shape], vec![]);
                    full_bias = Some(b.clone());
                    b
                }
            };
            let scores = g.op("Add", &[&scores, &bias], vec![]);
            let probs = g.op("Softmax", &[&scores], vec![("axis", Attr::Int(-2))]);
            let vt = g.op("Transpose", &[&v_all], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
            let ctx_t = g.op("MatMul", &[&vt, &probs], vec![]);
            // [B, H, D, S] → [B, S, H, D]
            let ctx = g.op("Transpose", &[&ctx_t], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))]);
            let ctx = g.op("Reshape", &[&ctx, &from_heads], vec![]);
            let attn = block.o_proj.apply(&mut g, scheme, &ctx)?;
            x = g.op("Add", &[&x, &attn], vec![]);
            let m = block.post_attention_layernorm.apply(&mut g, &x, &eps);
            let gu = block.gate_up_proj.apply(&mut g, scheme, &m)?;
            let gu = g.op_n("Split", &[&gu, &split_mlp], 2, vec![("axis", Attr::Int(2))]);
            let sig = g.op("Sigmoid", &[&gu[0]], vec![]);
            let silu = g.op("Mul", &[&gu[0], &sig], vec![]);
            let f = g.op("Mul", &[&silu, &gu[1]], vec![]);
            let f = block.down_proj.apply(&mut g, scheme, &f)?;
            x = g.op("Add", &[&x, &f], vec![]);
            presents.push((k, v));
        }
        let x = self.norm.apply(&mut g, &x, &eps);
        let logits = match head {
            Head::Tied(table) => quant::tied_head(&mut g, &table, &x),
            Head::Own(w) => {
                let head = Linear { name: "lm_head", weight: w, out: c.vocab, inp: c.d, bias: None };
                quant::head(&mut g, scheme, &x, &head)?
            }
        };
        g.output(
            &logits,
            "logits",
            ElemType::F32,
            &[Dim::Sym("batch"), Dim::Sym("sequence"), Dim::Fixed(c.vocab)],
        );
        for (l, (k, v)) in presents.iter().enumerate() {
            g.output(k, &format!("present_key.{l}"), ElemType::F32, &cache_out);
            g.output(v, &format!("present_value.{l}"), ElemType::F32, &cache_out);
        }
        Ok(g)
    }

    fn inputs(&self) -> Vec<IoRole> {
        super::kv_decoder_inputs(self.blocks.len(), "kv_heads")
    }

    fn outputs(&self) -> Vec<IoRole> {
        super::kv_decoder_outputs(self.blocks.len(), "kv_heads")
    }

    fn sample_inputs(&self) -> Result<Vec<(String, Tensor)>> {
        let c = &self.cfg;
        let (b, s) = (2, 8.min(c.context));
        let mut v = vec![("input_ids".to_string(), Tensor::new(vec![b, s], sample_ids(b, s, c.vocab, 29))?)];
        for l in 0..self.blocks.len() {
            for kv in ["key", "value"] {
                let empty = Tensor::new(vec![b, c.kv_heads, 0, c.head_dim], Vec::<f32>::new())?;
                v.push((format!("past_{kv}.{l}"), empty));
            }
        }
        Ok(v)
    }

    fn context_length(&self) -> Option<usize> {
        Some(self.cfg.context)
    }

    fn special_tokens(&self) -> BTreeMap<String, i64> {
        self.cfg.special.clone()
    }

    /// As for GPT-2: 16-bit activation codes (two uint8 digits) for decoders.
    fn int8_activation_bits(&self) -> u8 {
        16
    }

    fn calibration(&self) -> Option<Calibration> {
        Some(Calibration::Decoder {
            layers: self.blocks.len(),
            heads: self.cfg.kv_heads,
            head_dim: self.cfg.head_dim,
            start: self.cfg.special.get("bos").copied().unwrap_or(0),
            length: self.cfg.context.min(CALIBRATION_LENGTH),
        })
    }
}

/// Tokens per self-generated calibration sequence (at most the context).
const CALIBRATION_LENGTH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// `llama3` scaling leaves high frequencies, divides low ones by the factor and interpolates
    /// between (transformers' `_compute_llama3_parameters`, values computed by hand).
    #[test]
    fn llama3_scaling_splits_the_spectrum() {
        let plain = Rope::new(500000.0, 8, RopeScaling::None).inv_freq;
        let scaled = Rope::new(
            500000.0,
            8,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 256.0,
            },
        )
        .inv_freq;
        // wavelengths 2π/f: 6.3 (< 64: kept), 167 (between 64 and 256: smoothed), 4443 and 1.2e5 (> 256: / 8).
        assert_eq!(scaled[0], plain[0]);
        let smooth = (256.0 / (2.0 * std::f32::consts::PI / plain[1]) - 1.0) / 3.0;
        assert!((scaled[1] - ((1.0 - smooth) * plain[1] / 8.0 + smooth * plain[1])).abs() < 1e-9);
        assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0);
        assert_eq!(scaled[2], plain[2] / 8.0);
        assert_eq!(scaled[3], plain[3] / 8.0);
    }
}
