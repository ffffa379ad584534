//! Hugging Face GPT-2 (`model_type: gpt2`) as one graph for prefill and decode, with a KV cache.
//!
//! Interface: `input_ids[B,S]` and `past_key.{l}`/`past_value.{l}` `[B,heads,P,head_dim]` →
//! `logits[B,S,V]` and `present_key.{l}`/`present_value.{l}` `[B,heads,P+S,head_dim]`. Positions
//! are `P..P+S`, P read from the cache's shape, so prefill (P = 0, an empty cache) and decode
//! (S = 1) are the same graph and need no extra input; the causal mask lets query `P+i` see keys
//! `0..=P+i`. It assumes unpadded rows (every row of a batch has the same length): padded batches
//! would need an attention mask input, which this interface does not have.
//!
//! Checkpoint quirks handled: names with or without `transformer.`, Conv1D weights stored
//! `[in, out]`, fused `c_attn` (q, k, v), `lm_head` tied to `wte` (or separate when untied), and
//! the legacy `attn.bias`/`attn.masked_bias` buffers, which are simply never read.

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_runtime::Tensor;
use serde_json::Value;

use super::layers::{Dense, Norm};
use super::{ArchKind, Architecture, Calibration, IoRole, read_config, sample_ids, usize_field};
use crate::checkpoint::Checkpoint;
use crate::error::{ExportError, Result};
use crate::onnx::{Attr, Dim, ElemType, GraphBuilder};
use crate::quant::{self, Linear, QuantScheme};

#[derive(Debug)]
struct Block {
    ln_1: Norm,
    c_attn: Dense,
    attn_proj: Dense,
    ln_2: Norm,
    c_fc: Dense,
    mlp_proj: Dense,
}

/// A loaded GPT-2 model.
#[derive(Debug)]
pub struct Gpt2 {
    vocab: usize,
    d: usize,
    heads: usize,
    positions: usize,
    eps: f32,
    inverse_layer_scale: bool,
    wte: Vec<f32>,
    wpe: Vec<f32>,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// `lm_head.weight` `[vocab, d]` of an untied model; `None` when the head is `wte`.
    lm_head: Option<Vec<f32>>,
    special: BTreeMap<String, i64>,
}

/// The LM head while building the graph: the token table itself, or the model's own matrix.
enum Head<'a> {
    Tied(quant::TiedTable),
    Own(&'a [f32]),
}

impl Gpt2 {
    /// Reads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Gpt2> {
        let cfg = read_config(dir)?;
        let cfg_path = dir.join("config.json");
        let vocab = usize_field(&cfg, dir, "vocab_size")?;
        let d = usize_field(&cfg, dir, "n_embd")?;
        let heads = usize_field(&cfg, dir, "n_head")?;
        let layers = usize_field(&cfg, dir, "n_layer")?;
        let positions = usize_field(&cfg, dir, "n_positions")?;
        let inner = cfg.get("n_inner").and_then(Value::as_u64).map_or(4 * d, |v| v as usize);
        let eps = cfg.get("layer_norm_epsilon").and_then(Value::as_f64).unwrap_or(1e-5) as f32;
        let act = cfg.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(ExportError::config(
                &cfg_path,
                format!("activation_function `{act}` is not supported (gelu_new only)"),
            ));
        }
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(ExportError::config(
                &cfg_path,
                format!("n_embd {d} is not a multiple of n_head {heads}"),
            ));
        }
        let inverse_layer_scale =
            cfg.get("scale_attn_by_inverse_layer_idx").and_then(Value::as_bool).unwrap_or(false);
        let tied = cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true);

        let mut ckpt = Checkpoint::open(&dir.join("model.safetensors"))?;
        let untied_head = if !tied && ckpt.contains("lm_head.weight") {
            Some(ckpt.tensor("lm_head.weight", &[vocab, d])?)
        } else {
            None
        };
        if ckpt.contains("transformer.wte.weight") {
            ckpt.set_prefix("transformer.");
        }
        let wte = ckpt.tensor("wte.weight", &[vocab, d])?;
        let wpe = ckpt.tensor("wpe.weight", &[positions, d])?;
        let blocks = (0..layers)
            .map(|l| {
                let p = format!("h.{l}");
                Ok(Block {
                    ln_1: Norm::load(&ckpt, &format!("{p}.ln_1"), d)?,
                    c_attn: Dense::conv1d(&ckpt, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                    attn_proj: Dense::conv1d(&ckpt, &format!("{p}.attn.c_proj"), d, d)?,
                    ln_2: Norm::load(&ckpt, &format!("{p}.ln_2"), d)?,
                    c_fc: Dense::conv1d(&ckpt, &format!("{p}.mlp.c_fc"), d, inner)?,
                    mlp_proj: Dense::conv1d(&ckpt, &format!("{p}.mlp.c_proj"), inner, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = Norm::load(&ckpt, "ln_f", d)?;
        let mut special = BTreeMap::new();
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(id) = cfg.get(key).and_then(Value::as_i64) {
                special.insert(key.trim_end_matches("_token_id").to_string(), id);
            }
        }
        Ok(Gpt2 {
            vocab,
            d,
            heads,
            positions,
            eps,
            inverse_layer_scale,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head: untied_head,
            special,
        })
    }

    fn head_dim(&self) -> usize {
        self.d / self.heads
    }
}

/// GPT-2's tanh approximation of GELU: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn gelu_new(g: &mut GraphBuilder, x: &str) -> String {
    let x2 = g.op("Mul", &[x, x], vec![]);
    let x3 = g.op("Mul", &[&x2, x], vec![]);
    let c = g.scalar_f32(0.044715);
    let t = g.op("Mul", &[&x3, &c], vec![]);
    let t = g.op("Add", &[x, &t], vec![]);
    let k = g.scalar_f32((2.0f64 / std::f64::consts::PI).sqrt() as f32);
    let t = g.op("Mul", &[&t, &k], vec![]);
    let t = g.op("Tanh", &[&t], vec![]);
    let one = g.scalar_f32(1.0);
    let t = g.op("Add", &[&t, &one], vec![]);
    let half = g.scalar_f32(0.5);
    let hx = g.op("Mul", &[x, &half], vec![]);
    g.op("Mul", &[&hx, &t], vec![])
}

impl Architecture for Gpt2 {
    fn kind(&self) -> ArchKind {
        ArchKind::Gpt2
    }

    fn build(&self, scheme: QuantScheme, mut g: GraphBuilder) -> Result<GraphBuilder> {
        let (d, h, hd) = (self.d, self.heads, self.head_dim());
        let super::KvDecoderFrame { ids, past, cache_out, pos, causal_bias, .. } =
            super::kv_decoder_frame(&mut g, self.blocks.len(), h, hd);

        // A tied head (the usual GPT-2) shares the token table: stored once, in the head's layout.
        let head = match &self.lm_head {
            Some(w) => Head::Own(w),
            None => Head::Tied(quant::tied_table(&mut g, scheme, "wte.weight", [self.vocab, d], &self.wte)),
        };
        let tok = match &head {
            Head::Tied(table) => quant::tied_embedding(&mut g, table, &ids),
            Head::Own(_) => quant::embedding(&mut g, scheme, "wte.weight", [self.vocab, d], &self.wte, &ids),
        };
        let pe = quant::embedding(&mut g, scheme, "wpe.weight", [self.positions, d], &self.wpe, &pos);
        let mut x = g.op("Add", &[&tok, &pe], vec![]);

        let split = g.const_i64(&[d as i64; 3]);
        let to_heads = g.const_i64(&[0, 0, h as i64, hd as i64]);
        let from_heads = g.const_i64(&[0, 0, d as i64]);
        let mut presents = Vec::new();
        let mut full_bias: Option<String> = None;
        for (l, (block, (past_k, past_v))) in self.blocks.iter().zip(&past).enumerate() {
            let a = block.ln_1.apply(&mut g, &x, self.eps);
            let qkv = block.c_attn.apply(&mut g, scheme, &a)?;
            let parts = g.op_n("Split", &[&qkv, &split], 3, vec![("axis", Attr::Int(2))]);
            let heads: Vec<String> = parts
                .iter()
                .map(|t| {
                    let r = g.op("Reshape", &[t, &to_heads], vec![]);
                    g.op("Transpose", &[&r], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))])
                })
                .collect();
            let k = g.op("Concat", &[past_k, &heads[1]], vec![("axis", Attr::Int(2))]);
            let v = g.op("Concat", &[past_v, &heads[2]], vec![("axis", Attr::Int(2))]);
            // Keys-major attention: scores are [B, heads, T, S] = K · Qᵀ, and the context is
            // [B, heads, D, S] = Vᵀ · probs. With S = 1 (a decode step) both products have the
            // long dim (T, or D) as rows and one column, which tract runs with its matrix-vector
            // kernel; the usual Q · Kᵀ puts the single query on the rows, and tract pads that
            // row to its 64-row kernel (measured: attention at position 200 cost 6× more).
            let mut scale = 1.0 / (hd as f32).sqrt();
            if self.inverse_layer_scale {
                scale /= (l + 1) as f32;
            }
            let scale = g.scalar_f32(scale);
            let qt = g.op("Transpose", &[&heads[0]], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
            let scores = g.op("MatMul", &[&k, &qt], vec![]);
            let scores = g.op("Mul", &[&scores, &scale], vec![]);
            // Expanded once to the scores' full shape, then shared: tract's Add between equal
            // shapes is a vectorised loop, its broadcasting Add/Where a slow generic one.
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
            let vt = g.op("Transpose", &[&v], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
            let ctx_t = g.op("MatMul", &[&vt, &probs], vec![]);
            // [B, heads, D, S] → [B, S, heads, D]
            let ctx = g.op("Transpose", &[&ctx_t], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))]);
            let ctx = g.op("Reshape", &[&ctx, &from_heads], vec![]);
            let attn = block.attn_proj.apply(&mut g, scheme, &ctx)?;
            x = g.op("Add", &[&x, &attn], vec![]);
            let m = block.ln_2.apply(&mut g, &x, self.eps);
            let f = block.c_fc.apply(&mut g, scheme, &m)?;
            let f = gelu_new(&mut g, &f);
            let f = block.mlp_proj.apply(&mut g, scheme, &f)?;
            x = g.op("Add", &[&x, &f], vec![]);
            presents.push((k, v));
        }
        let x = self.ln_f.apply(&mut g, &x, self.eps);
        let logits = match head {
            Head::Tied(table) => quant::tied_head(&mut g, &table, &x),
            Head::Own(w) => {
                let head = Linear { name: "lm_head", weight: w, out: self.vocab, inp: d, bias: None };
                quant::linear(&mut g, scheme, &x, &head)?
            }
        };
        g.output(
            &logits,
            "logits",
            ElemType::F32,
            &[Dim::Sym("batch"), Dim::Sym("sequence"), Dim::Fixed(self.vocab)],
        );
        for (l, (k, v)) in presents.iter().enumerate() {
            g.output(k, &format!("present_key.{l}"), ElemType::F32, &cache_out);
            g.output(v, &format!("present_value.{l}"), ElemType::F32, &cache_out);
        }
        Ok(g)
    }

    fn inputs(&self) -> Vec<IoRole> {
        super::kv_decoder_inputs(self.blocks.len(), "heads")
    }

    fn outputs(&self) -> Vec<IoRole> {
        super::kv_decoder_outputs(self.blocks.len(), "heads")
    }

    fn sample_inputs(&self) -> Result<Vec<(String, Tensor)>> {
        let (b, s) = (2, 8.min(self.positions));
        let mut v =
            vec![("input_ids".to_string(), Tensor::new(vec![b, s], sample_ids(b, s, self.vocab, 29))?)];
        for l in 0..self.blocks.len() {
            for kv in ["key", "value"] {
                let empty = Tensor::new(vec![b, self.heads, 0, self.head_dim()], Vec::<f32>::new())?;
                v.push((format!("past_{kv}.{l}"), empty));
            }
        }
        Ok(v)
    }

    fn context_length(&self) -> Option<usize> {
        Some(self.positions)
    }

    fn special_tokens(&self) -> BTreeMap<String, i64> {
        self.special.clone()
    }

    /// 8-bit activation codes cap the shipped GPT's top-1 agreement with fp32 at ~98.4 % whatever
    /// the weights; 16-bit ones with GPTQ weights reach 99.15 %, and with ferrite's fused ops the
    /// int8 step stays faster than fp32's on both backends (exporter/README.md, "int8: GPTQ and
    /// 16-bit activation codes").
    fn int8_activation_bits(&self) -> u8 {
        16
    }

    fn calibration(&self) -> Option<Calibration> {
        Some(Calibration::Decoder {
            layers: self.blocks.len(),
            heads: self.heads,
            head_dim: self.head_dim(),
            start: self.special.get("bos").copied().unwrap_or(0),
            length: self.positions.min(CALIBRATION_LENGTH),
        })
    }
}

/// Tokens per self-generated calibration sequence (at most the context).
const CALIBRATION_LENGTH: usize = 256;
