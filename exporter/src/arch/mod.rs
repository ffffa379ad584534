//! Source architectures: detection from a checkpoint directory (or a `.keras` archive or a GGUF
//! file), and one file per architecture that reads its weights and describes its graph.
//!
//! An architecture knows its checkpoint's tensor names and its ONNX interface; it does not know
//! how weights are quantised (it asks [`crate::quant`]) nor how bundles are written.

pub mod bert;
pub mod gguf;
pub mod gpt2;
pub mod keras;
mod layers;
pub mod llama;
pub mod lstm;

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_runtime::Tensor;
use serde_json::Value;

use crate::error::{ExportError, Result};
use crate::onnx::{Attr, Dim, ElemType, GraphBuilder};
use crate::quant::QuantScheme;

/// The architectures the exporter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchKind {
    /// ferrite's (= PyTorch's) Embedding → LSTM → Linear language model.
    Lstm,
    /// Hugging Face GPT-2.
    Gpt2,
    /// Hugging Face BERT encoders, sentence-transformers folders included.
    Bert,
    /// A Keras 3 `.keras` archive of a Sequential or Functional chain `[TextVectorization],
    /// Embedding, LSTM…, Dense`: a source format, exported as an `lstm` bundle (the manifest
    /// says `lstm`).
    Keras,
    /// Llama-family decoders: Hugging Face `llama`, `qwen2` and `mistral` checkpoints.
    Llama,
}

/// What an exported output is, for the accuracy report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Next-token logits `[B, S, V]`: max abs error and top-1 agreement.
    Logits,
    /// Embeddings `[B, D]`: cosine similarity.
    Embedding,
    /// Anything else (states, caches, hidden states): max abs error only.
    State,
}

/// One graph input or output and what it is for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IoRole {
    /// The tensor's name in the graph.
    pub name: String,
    /// What a caller does with it (`token ids`, `recurrent state in`…).
    pub role: String,
    /// The declared shape, symbolic dims by name.
    pub shape: Vec<String>,
    /// `f32` or `i64`.
    pub dtype: &'static str,
    /// How the accuracy report compares it (outputs only).
    #[serde(skip)]
    pub kind: OutputKind,
}

impl IoRole {
    pub(crate) fn new(name: &str, role: &str, shape: &[&str], dtype: &'static str, kind: OutputKind) -> Self {
        IoRole {
            name: name.into(),
            role: role.into(),
            shape: shape.iter().map(|s| s.to_string()).collect(),
            dtype,
            kind,
        }
    }
}

/// A loaded source model that can describe itself as an ONNX graph.
pub trait Architecture {
    /// Which architecture this is.
    fn kind(&self) -> ArchKind;
    /// Builds the graph into `g` (an empty [`GraphBuilder`], possibly tapping layer inputs or
    /// carrying calibration statistics) with weights stored under `scheme`.
    fn build(&self, scheme: QuantScheme, g: GraphBuilder) -> Result<GraphBuilder>;
    /// Graph inputs, in order.
    fn inputs(&self) -> Vec<IoRole>;
    /// Graph outputs, in order.
    fn outputs(&self) -> Vec<IoRole>;
    /// Deterministic sample inputs for the golden file and the accuracy report.
    fn sample_inputs(&self) -> Result<Vec<(String, Tensor)>>;
    /// Longest sequence the model was trained for, when it has a limit.
    fn context_length(&self) -> Option<usize>;
    /// Special token ids from the config (`bos`, `eos`, `pad`…).
    fn special_tokens(&self) -> BTreeMap<String, i64>;
    /// Number of token ids the model takes and predicts, when a vocabulary file must fit it.
    fn vocab_size(&self) -> Option<usize> {
        None
    }
    /// Bits per activation value under int8 when the caller does not say (8, or 16 as two uint8
    /// digits: see `GraphBuilder::set_int8_activation_digits`).
    fn int8_activation_bits(&self) -> u8 {
        8
    }
    /// How int8 weights of this model are calibrated (GPTQ), if they are.
    fn calibration(&self) -> Option<Calibration> {
        None
    }
}

/// Calibration inputs the exporter can make for a model by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// A decoder with the GPT-2 step interface (`input_ids` + `past_key/value.{l}` →
    /// `logits` + `present_key/value.{l}`): it samples its own text (see `crate::calibrate`).
    Decoder {
        /// Transformer layers (cache pairs).
        layers: usize,
        /// Heads of the KV cache (the key/value heads of a grouped-query model).
        heads: usize,
        /// Features per head.
        head_dim: usize,
        /// Token that starts every sequence.
        start: i64,
        /// Tokens per sequence.
        length: usize,
    },
}

/// Reads `dir/config.json`.
pub(crate) fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ExportError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ExportError::config(&path, e.to_string()))
}

/// A required unsigned integer field of a config.
pub(crate) fn usize_field(cfg: &Value, dir: &Path, key: &str) -> Result<usize> {
    cfg.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| {
        ExportError::config(dir.join("config.json"), format!("missing or non-integer field `{key}`"))
    })
}

/// Detects the architecture of a checkpoint directory from its `config.json`, or of a file from
/// its contents (Keras archives and GGUF files are single files).
pub fn detect(dir: &Path) -> Result<ArchKind> {
    if dir.is_file() {
        if gguf::is_gguf(dir) {
            return Ok(ArchKind::Llama);
        }
        if keras::is_archive(dir) {
            return Ok(ArchKind::Keras);
        }
        return Err(ExportError::UnknownArchitecture(format!(
            "{}: a file that is neither a Keras `.keras` archive nor a GGUF file (other sources are checkpoint directories)",
            dir.display()
        )));
    }
    let cfg = read_config(dir)?;
    if cfg.get("arch").and_then(Value::as_str) == Some("lstm") {
        return Ok(ArchKind::Lstm);
    }
    match cfg.get("model_type").and_then(Value::as_str) {
        Some("gpt2") => Ok(ArchKind::Gpt2),
        Some("bert") => Ok(ArchKind::Bert),
        Some("llama" | "qwen2" | "mistral") => Ok(ArchKind::Llama),
        Some(other) => Err(ExportError::UnknownArchitecture(format!(
            "{}: model_type `{other}` (supported: gpt2, bert, llama, qwen2, mistral, or ferrite's arch `lstm`)",
            dir.display()
        ))),
        None => Err(ExportError::UnknownArchitecture(format!(
            "{}: config.json has neither `arch` nor `model_type`",
            dir.display()
        ))),
    }
}

/// Loads the checkpoint in `dir` (a directory, a `.keras` file or a GGUF file) as `kind` (detected
/// when `None`).
pub fn load(dir: &Path, kind: Option<ArchKind>) -> Result<Box<dyn Architecture>> {
    let kind = match kind {
        Some(k) => k,
        None => detect(dir)?,
    };
    Ok(match kind {
        ArchKind::Lstm => Box::new(lstm::Lstm::load(dir)?),
        ArchKind::Gpt2 => Box::new(gpt2::Gpt2::load(dir)?),
        ArchKind::Bert => Box::new(bert::Bert::load(dir)?),
        ArchKind::Keras => Box::new(keras::load(dir)?),
        ArchKind::Llama if gguf::is_gguf(dir) => Box::new(gguf::load(dir)?),
        ArchKind::Llama => Box::new(llama::Llama::load(dir)?),
    })
}

/// Deterministic token ids in `1..vocab` (splitmix64), so sample inputs never depend on a RNG crate.
pub(crate) fn sample_ids(batch: usize, seq: usize, vocab: usize, seed: u64) -> Vec<i64> {
    let mut state = seed;
    (0..batch * seq)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            1 + (z % (vocab.max(2) as u64 - 1)) as i64
        })
        .collect()
}

/// The inputs of a decoder with a KV cache (GPT-2, the Llama family): `input_ids` and each
/// layer's `past_key.{l}` / `past_value.{l}`, `[batch, heads, past_sequence, head_dim]` with
/// `heads` named as the architecture's cache holds them (`heads`, or `kv_heads` under
/// grouped-query attention).
pub(crate) fn kv_decoder_inputs(layers: usize, heads: &str) -> Vec<IoRole> {
    let mut v = vec![IoRole::new("input_ids", "token ids", &["batch", "sequence"], "i64", OutputKind::State)];
    let shape = ["batch", heads, "past_sequence", "head_dim"];
    for l in 0..layers {
        for kv in ["key", "value"] {
            let role = format!("{kv} cache of layer {l} in (P = 0 for prefill); positions start at P");
            v.push(IoRole::new(&format!("past_{kv}.{l}"), &role, &shape, "f32", OutputKind::State));
        }
    }
    v
}

/// The outputs of a decoder with a KV cache: `logits` and each layer's `present_key.{l}` /
/// `present_value.{l}` (see [`kv_decoder_inputs`]).
pub(crate) fn kv_decoder_outputs(layers: usize, heads: &str) -> Vec<IoRole> {
    let mut v = vec![IoRole::new(
        "logits",
        "next-token logits",
        &["batch", "sequence", "vocab"],
        "f32",
        OutputKind::Logits,
    )];
    let shape = ["batch", heads, "total_sequence", "head_dim"];
    for l in 0..layers {
        for kv in ["key", "value"] {
            let role = format!("{kv} cache of layer {l} out (feed back as past_{kv}.{l})");
            v.push(IoRole::new(&format!("present_{kv}.{l}"), &role, &shape, "f32", OutputKind::State));
        }
    }
    v
}

/// The graph inputs and per-step values every KV-cache decoder starts from.
pub(crate) struct KvDecoderFrame {
    /// `input_ids` `[batch, sequence]`.
    pub ids: String,
    /// Each layer's `(past_key.{l}, past_value.{l})`.
    pub past: Vec<(String, String)>,
    /// The dims of each `present_*` output.
    pub cache_out: [Dim; 4],
    /// This step's positions `P..P+S`, with `P` the cache length.
    pub pos: String,
    /// `[T, S]` additive causal bias, keys-major (0, or `f32::MIN` where the key lies in the
    /// query's future), shared by every layer.
    pub causal_bias: String,
    /// The constant `[1]` (an axis for `Unsqueeze`).
    pub axis1: String,
}

/// Declares `input_ids` and the `past_*` caches (`cache_heads` heads of `head_dim`) and builds
/// the positions and the causal bias from the cache length: the one construction both GPT-2
/// and the Llama family emit, which the runtime's load-time rewrites match (the past length is
/// `Gather(Shape(past_key.0), 2)`; there is no position input to get wrong).
pub(crate) fn kv_decoder_frame(
    g: &mut GraphBuilder,
    layers: usize,
    cache_heads: usize,
    head_dim: usize,
) -> KvDecoderFrame {
    let ids = g.input("input_ids", ElemType::I64, &[Dim::Sym("batch"), Dim::Sym("sequence")]);
    let cache_in =
        [Dim::Sym("batch"), Dim::Fixed(cache_heads), Dim::Sym("past_sequence"), Dim::Fixed(head_dim)];
    let cache_out =
        [Dim::Sym("batch"), Dim::Fixed(cache_heads), Dim::Sym("total_sequence"), Dim::Fixed(head_dim)];
    let past: Vec<(String, String)> = (0..layers)
        .map(|l| {
            (
                g.input(&format!("past_key.{l}"), ElemType::F32, &cache_in),
                g.input(&format!("past_value.{l}"), ElemType::F32, &cache_in),
            )
        })
        .collect();
    let two = g.scalar_i64(2);
    let one_i = g.scalar_i64(1);
    let zero_i = g.scalar_i64(0);
    let past_shape = g.op("Shape", &[&past[0].0], vec![]);
    let p = g.op("Gather", &[&past_shape, &two], vec![("axis", Attr::Int(0))]);
    let ids_shape = g.op("Shape", &[&ids], vec![]);
    let s = g.op("Gather", &[&ids_shape, &one_i], vec![("axis", Attr::Int(0))]);
    let t = g.op("Add", &[&p, &s], vec![]);
    let pos = g.op("Range", &[&p, &t, &one_i], vec![]);
    let kpos = g.op("Range", &[&zero_i, &t, &one_i], vec![]);
    let ax0 = g.const_i64(&[0]);
    let axis1 = g.const_i64(&[1]);
    let kcol = g.op("Unsqueeze", &[&kpos, &axis1], vec![]);
    let qrow = g.op("Unsqueeze", &[&pos, &ax0], vec![]);
    // [T, S]: true where the key lies in the query's future. Attention runs keys-major, so this is
    // the transposed causal mask, turned once into an additive bias that every layer shares (an
    // Add is cheaper than a per-layer Where in tract).
    let future = g.op("Greater", &[&kcol, &qrow], vec![]);
    let masked = g.scalar_f32(f32::MIN);
    let unmasked = g.scalar_f32(0.0);
    let causal_bias = g.op("Where", &[&future, &masked, &unmasked], vec![]);
    KvDecoderFrame { ids, past, cache_out, pos, causal_bias, axis1 }
}
