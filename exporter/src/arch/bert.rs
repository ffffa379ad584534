//! Hugging Face BERT encoders (`model_type: bert`), sentence-transformers folders included, with
//! the sentence embedding computed in the graph.
//!
//! Interface: `input_ids`, `attention_mask`, `token_type_ids` (all `[B,S]` i64) →
//! `last_hidden_state[B,S,D]` and `sentence_embedding[B,D]`. The embedding is what
//! sentence-transformers computes: masked mean pooling, then L2 normalisation when the folder's
//! `modules.json` has a `Normalize` module (plain BERT folders get both, the common recipe).
//! Only mean pooling is supported; CLS/max pooling configs are refused rather than silently
//! changed. The BERT pooler (`pooler.dense`) is not exported: sentence-transformers ignores it.

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_runtime::Tensor;
use serde_json::Value;

use super::layers::{Dense, Norm};
use super::{ArchKind, Architecture, IoRole, OutputKind, read_config, sample_ids, usize_field};
use crate::checkpoint::Checkpoint;
use crate::error::{ExportError, Result};
use crate::onnx::{Attr, Dim, ElemType, GraphBuilder};
use crate::quant::{self, QuantScheme};

#[derive(Debug)]
struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    intermediate: Dense,
    output: Dense,
    out_norm: Norm,
}

/// A loaded BERT encoder.
#[derive(Debug)]
pub struct Bert {
    vocab: usize,
    d: usize,
    heads: usize,
    positions: usize,
    types: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    normalize: bool,
    special: BTreeMap<String, i64>,
}

/// Reads the pooling and normalisation choices of a sentence-transformers folder.
fn sentence_transformers_head(dir: &Path) -> Result<bool> {
    let modules_path = dir.join("modules.json");
    let Ok(text) = std::fs::read_to_string(&modules_path) else {
        return Ok(true);
    };
    let modules: Value =
        serde_json::from_str(&text).map_err(|e| ExportError::config(&modules_path, e.to_string()))?;
    let list = modules.as_array().cloned().unwrap_or_default();
    let type_of = |m: &Value| m.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    let normalize = list.iter().any(|m| type_of(m).ends_with("Normalize"));
    if let Some(pool) = list.iter().find(|m| type_of(m).ends_with("Pooling")) {
        let path =
            dir.join(pool.get("path").and_then(Value::as_str).unwrap_or("1_Pooling")).join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ExportError::io(&path, e))?;
        let cfg: Value =
            serde_json::from_str(&text).map_err(|e| ExportError::config(&path, e.to_string()))?;
        let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        if !flag("pooling_mode_mean_tokens")
            || flag("pooling_mode_cls_token")
            || flag("pooling_mode_max_tokens")
            || flag("pooling_mode_mean_sqrt_len_tokens")
        {
            return Err(ExportError::config(
                &path,
                "only mean pooling (pooling_mode_mean_tokens alone) is supported",
            ));
        }
    }
    Ok(normalize)
}

/// Ids of BERT's special tokens from `vocab.txt` (one token per line, id = line number).
fn special_from_vocab(dir: &Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("vocab.txt")) {
        for (i, tok) in text.lines().enumerate() {
            let key = match tok {
                "[PAD]" => "pad",
                "[UNK]" => "unk",
                "[CLS]" => "cls",
                "[SEP]" => "sep",
                "[MASK]" => "mask",
                _ => continue,
            };
            out.insert(key.to_string(), i as i64);
        }
    }
    out
}

impl Bert {
    /// Reads `config.json`, `model.safetensors` and the sentence-transformers files from `dir`.
    pub fn load(dir: &Path) -> Result<Bert> {
        let cfg = read_config(dir)?;
        let cfg_path = dir.join("config.json");
        let vocab = usize_field(&cfg, dir, "vocab_size")?;
        let d = usize_field(&cfg, dir, "hidden_size")?;
        let heads = usize_field(&cfg, dir, "num_attention_heads")?;
        let n_layers = usize_field(&cfg, dir, "num_hidden_layers")?;
        let inner = usize_field(&cfg, dir, "intermediate_size")?;
        let positions = usize_field(&cfg, dir, "max_position_embeddings")?;
        let types = cfg.get("type_vocab_size").and_then(Value::as_u64).unwrap_or(2) as usize;
        let eps = cfg.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12) as f32;
        let act = cfg.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
        if act != "gelu" {
            return Err(ExportError::config(
                &cfg_path,
                format!("hidden_act `{act}` is not supported (gelu only)"),
            ));
        }
        let pos_type = cfg.get("position_embedding_type").and_then(Value::as_str).unwrap_or("absolute");
        if pos_type != "absolute" {
            return Err(ExportError::config(
                &cfg_path,
                format!("position_embedding_type `{pos_type}` is not supported"),
            ));
        }
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(ExportError::config(
                &cfg_path,
                format!("hidden_size {d} is not a multiple of {heads} heads"),
            ));
        }
        let normalize = sentence_transformers_head(dir)?;
        let mut ckpt = Checkpoint::open(&dir.join("model.safetensors"))?;
        if ckpt.contains("bert.embeddings.word_embeddings.weight") {
            ckpt.set_prefix("bert.");
        }
        let layers = (0..n_layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                Ok(Layer {
                    query: Dense::linear(&ckpt, &format!("{p}.attention.self.query"), d, d)?,
                    key: Dense::linear(&ckpt, &format!("{p}.attention.self.key"), d, d)?,
                    value: Dense::linear(&ckpt, &format!("{p}.attention.self.value"), d, d)?,
                    attn_out: Dense::linear(&ckpt, &format!("{p}.attention.output.dense"), d, d)?,
                    attn_norm: Norm::load(&ckpt, &format!("{p}.attention.output.LayerNorm"), d)?,
                    intermediate: Dense::linear(&ckpt, &format!("{p}.intermediate.dense"), inner, d)?,
                    output: Dense::linear(&ckpt, &format!("{p}.output.dense"), d, inner)?,
                    out_norm: Norm::load(&ckpt, &format!("{p}.output.LayerNorm"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            vocab,
            d,
            heads,
            positions,
            types,
            eps,
            word: ckpt.tensor("embeddings.word_embeddings.weight", &[vocab, d])?,
            position: ckpt.tensor("embeddings.position_embeddings.weight", &[positions, d])?,
            token_type: ckpt.tensor("embeddings.token_type_embeddings.weight", &[types, d])?,
            emb_norm: Norm::load(&ckpt, "embeddings.LayerNorm", d)?,
            layers,
            normalize,
            special: special_from_vocab(dir),
        })
    }
}

/// Exact GELU: `0.5·x·(1 + erf(x/√2))`.
fn gelu(g: &mut GraphBuilder, x: &str) -> String {
    let r = g.scalar_f32(std::f32::consts::FRAC_1_SQRT_2);
    let t = g.op("Mul", &[x, &r], vec![]);
    let t = g.op("Erf", &[&t], vec![]);
    let one = g.scalar_f32(1.0);
    let t = g.op("Add", &[&t, &one], vec![]);
    let half = g.scalar_f32(0.5);
    let hx = g.op("Mul", &[x, &half], vec![]);
    g.op("Mul", &[&hx, &t], vec![])
}

impl Architecture for Bert {
    fn kind(&self) -> ArchKind {
        ArchKind::Bert
    }

    fn build(&self, scheme: QuantScheme, mut g: GraphBuilder) -> Result<GraphBuilder> {
        let (d, h) = (self.d, self.heads);
        let hd = d / h;
        let bs = [Dim::Sym("batch"), Dim::Sym("sequence")];
        let ids = g.input("input_ids", ElemType::I64, &bs);
        let mask = g.input("attention_mask", ElemType::I64, &bs);
        let types = g.input("token_type_ids", ElemType::I64, &bs);

        let one_i = g.scalar_i64(1);
        let zero_i = g.scalar_i64(0);
        let shape = g.op("Shape", &[&ids], vec![]);
        let s = g.op("Gather", &[&shape, &one_i], vec![("axis", Attr::Int(0))]);
        let pos = g.op("Range", &[&zero_i, &s, &one_i], vec![]);
        let e = quant::embedding(
            &mut g,
            scheme,
            "embeddings.word_embeddings.weight",
            [self.vocab, d],
            &self.word,
            &ids,
        );
        let p = quant::embedding(
            &mut g,
            scheme,
            "embeddings.position_embeddings.weight",
            [self.positions, d],
            &self.position,
            &pos,
        );
        // Two rows: not worth quantising.
        let token_type = quant::float_weight(
            &mut g,
            scheme,
            "embeddings.token_type_embeddings.weight",
            &[self.types, d],
            &self.token_type,
        );
        let t = g.op("Gather", &[&token_type, &types], vec![("axis", Attr::Int(0))]);
        let e = g.op("Add", &[&e, &p], vec![]);
        let e = g.op("Add", &[&e, &t], vec![]);
        let mut x = self.emb_norm.apply(&mut g, &e, self.eps);

        // Additive mask as transformers builds it: 0 where attended, the lowest f32 elsewhere.
        let maskf = g.op("Cast", &[&mask], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
        let one = g.scalar_f32(1.0);
        let inv = g.op("Sub", &[&one, &maskf], vec![]);
        let low = g.scalar_f32(f32::MIN);
        let add = g.op("Mul", &[&inv, &low], vec![]);
        let ax12 = g.const_i64(&[1, 2]);
        let add = g.op("Unsqueeze", &[&add, &ax12], vec![]);

        let to_heads = g.const_i64(&[0, 0, h as i64, hd as i64]);
        let from_heads = g.const_i64(&[0, 0, d as i64]);
        let scale = g.scalar_f32(1.0 / (hd as f32).sqrt());
        for layer in &self.layers {
            let mut heads = Vec::new();
            for dense in [&layer.query, &layer.key, &layer.value] {
                let y = dense.apply(&mut g, scheme, &x)?;
                let y = g.op("Reshape", &[&y, &to_heads], vec![]);
                heads.push(g.op("Transpose", &[&y], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]));
            }
            let kt = g.op("Transpose", &[&heads[1]], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
            let scores = g.op("MatMul", &[&heads[0], &kt], vec![]);
            let scores = g.op("Mul", &[&scores, &scale], vec![]);
            let scores = g.op("Add", &[&scores, &add], vec![]);
            let probs = g.op("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
            let ctx = g.op("MatMul", &[&probs, &heads[2]], vec![]);
            let ctx = g.op("Transpose", &[&ctx], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
            let ctx = g.op("Reshape", &[&ctx, &from_heads], vec![]);
            let a = layer.attn_out.apply(&mut g, scheme, &ctx)?;
            let a = g.op("Add", &[&a, &x], vec![]);
            x = layer.attn_norm.apply(&mut g, &a, self.eps);
            let f = layer.intermediate.apply(&mut g, scheme, &x)?;
            let f = gelu(&mut g, &f);
            let f = layer.output.apply(&mut g, scheme, &f)?;
            let f = g.op("Add", &[&f, &x], vec![]);
            x = layer.out_norm.apply(&mut g, &f, self.eps);
        }

        // Masked mean pooling, then L2 normalisation, exactly as sentence-transformers does.
        let ax1 = g.const_i64(&[1]);
        let ax2 = g.const_i64(&[2]);
        let m = g.op("Unsqueeze", &[&maskf, &ax2], vec![]);
        let hm = g.op("Mul", &[&x, &m], vec![]);
        let sum = g.op("ReduceSum", &[&hm, &ax1], vec![("keepdims", Attr::Int(0))]);
        let count = g.op("ReduceSum", &[&m, &ax1], vec![("keepdims", Attr::Int(0))]);
        let tiny = g.scalar_f32(1e-9);
        let count = g.op("Max", &[&count, &tiny], vec![]);
        let mut emb = g.op("Div", &[&sum, &count], vec![]);
        if self.normalize {
            let sq = g.op("Mul", &[&emb, &emb], vec![]);
            let n = g.op("ReduceSum", &[&sq, &ax1], vec![("keepdims", Attr::Int(1))]);
            let n = g.op("Sqrt", &[&n], vec![]);
            let eps = g.scalar_f32(1e-12);
            let n = g.op("Max", &[&n, &eps], vec![]);
            emb = g.op("Div", &[&emb, &n], vec![]);
        }
        g.output(
            &x,
            "last_hidden_state",
            ElemType::F32,
            &[Dim::Sym("batch"), Dim::Sym("sequence"), Dim::Fixed(d)],
        );
        g.output(&emb, "sentence_embedding", ElemType::F32, &[Dim::Sym("batch"), Dim::Fixed(d)]);
        Ok(g)
    }

    fn inputs(&self) -> Vec<IoRole> {
        let bs = ["batch", "sequence"];
        vec![
            IoRole::new("input_ids", "token ids (WordPiece, [CLS] … [SEP])", &bs, "i64", OutputKind::State),
            IoRole::new("attention_mask", "1 for real tokens, 0 for padding", &bs, "i64", OutputKind::State),
            IoRole::new(
                "token_type_ids",
                "segment ids (zeros for one sentence)",
                &bs,
                "i64",
                OutputKind::State,
            ),
        ]
    }

    fn outputs(&self) -> Vec<IoRole> {
        let role = if self.normalize {
            "mean-pooled, L2-normalised sentence embedding"
        } else {
            "mean-pooled sentence embedding"
        };
        vec![
            IoRole::new(
                "last_hidden_state",
                "per-token hidden states",
                &["batch", "sequence", "hidden"],
                "f32",
                OutputKind::State,
            ),
            IoRole::new("sentence_embedding", role, &["batch", "hidden"], "f32", OutputKind::Embedding),
        ]
    }

    fn sample_inputs(&self) -> Result<Vec<(String, Tensor)>> {
        let (b, s) = (4, 16.min(self.positions));
        let ids = sample_ids(b, s, self.vocab, 41);
        // Rows of different lengths so the golden exercises the padding mask.
        let mask: Vec<i64> = (0..b * s).map(|i| i64::from(i % s < s - (i / s) * 3)).collect();
        Ok(vec![
            ("input_ids".into(), Tensor::new(vec![b, s], ids)?),
            ("attention_mask".into(), Tensor::new(vec![b, s], mask)?),
            ("token_type_ids".into(), Tensor::new(vec![b, s], vec![0i64; b * s])?),
        ])
    }

    fn context_length(&self) -> Option<usize> {
        Some(self.positions)
    }

    fn special_tokens(&self) -> BTreeMap<String, i64> {
        self.special.clone()
    }
}
