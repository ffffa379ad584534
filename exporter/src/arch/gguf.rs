//! llama.cpp GGUF files as a source format: `general.architecture` `llama` or `qwen2`, read into
//! the same [`Llama`] a Hugging Face checkpoint gives, and exported as a `llama` bundle.
//!
//! Hyper-parameters come from the `{arch}.*` metadata (block_count, embedding_length,
//! attention.head_count(_kv), feed_forward_length, context_length, rope.freq_base,
//! attention.layer_norm_rms_epsilon, rope.scaling.type/factor), the vocabulary size from
//! `token_embd`, and llama 3's rope scaling from the `rope_freqs` tensor (llama.cpp divides each
//! frequency by it). Every tensor is dequantised to f32 by `ferrite-gguf` and handed to the
//! requested scheme, which recognises weights already on a ggml grid from their values
//! (quant/q4.rs): under `q4`, Q4_0 and Q4_1 tensors keep their codes, scales and mins exactly,
//! and Q8_0 tensors (the token table of llama.cpp's 4-bit files) are stored int8 rather than
//! 4-bit. K-quants and 8-bit tensors under other schemes are requantised, and the export's
//! accuracy report says what that cost.
//!
//! llama.cpp's converter (convert_hf_to_gguf.py, `LlamaModel.permute`) reorders the rows of each
//! head of `attn_q`/`attn_k` for its interleaved rotary layout: HF row `j·D/2 + i` becomes GGUF
//! row `2i + j` (i < D/2, j ∈ {0, 1}). [`unpermute`] puts them back for `llama` files. Qwen2 uses
//! llama.cpp's NEOX rotary layout, which is transformers', and is converted unpermuted.
//!
//! The tokenizer (`tokenizer.ggml.*` → tokenizer.json) is [`tokenizer_from_gguf`]'s job.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferrite_gguf::GgufFile;

use super::llama::{Family, LayerWeight, Llama, LlamaConfig, Rope, RopeScaling, Weight, WeightSource};
use crate::error::{ExportError, Result};

/// A `.gguf` file name, or a file that starts with GGUF's magic.
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && &magic == ferrite_gguf::MAGIC
}

fn gguf_error(path: &Path, source: ferrite_gguf::Error) -> ExportError {
    ExportError::Gguf { path: path.to_path_buf(), source }
}

/// Reads the GGUF file at `path` as a Llama-family model.
pub fn load(path: &Path) -> Result<Llama> {
    let file = GgufFile::open(path).map_err(|e| gguf_error(path, e))?;
    let arch = file.architecture().map_err(|e| gguf_error(path, e))?.to_string();
    let family = match arch.as_str() {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        other => {
            return Err(ExportError::UnknownArchitecture(format!(
                "{}: GGUF general.architecture `{other}` (supported: llama, qwen2)",
                path.display()
            )));
        }
    };
    let cfg = config(&file, path, &arch)?;
    let heads = match family {
        Family::Llama => Some((cfg.heads, cfg.kv_heads)),
        _ => None,
    };
    log::info!(
        "{}: GGUF {arch}, {} blocks, d {}, {} heads / {} KV heads, vocab {}, {} tensors",
        path.display(),
        cfg.layers,
        cfg.d,
        cfg.heads,
        cfg.kv_heads,
        cfg.vocab,
        file.tensors().len()
    );
    let src =
        GgufWeights { file: &file, path: path.to_path_buf(), rotary_rows: heads, head_dim: cfg.head_dim };
    Llama::from_source(cfg, &src)
}

/// The hyper-parameters of a `llama`/`qwen2` GGUF file.
fn config(file: &GgufFile, path: &Path, arch: &str) -> Result<LlamaConfig> {
    let meta = file.metadata();
    let key = |k: &str| format!("{arch}.{k}");
    let size = |k: &str| -> Result<usize> {
        let v = meta.get_u64(&key(k)).map_err(|e| gguf_error(path, e))?;
        usize::try_from(v).map_err(|_| ExportError::config(path, format!("{arch}.{k} = {v} does not fit")))
    };
    let optional_size = |k: &str| -> Result<Option<usize>> {
        if meta.contains(&key(k)) { size(k).map(Some) } else { Ok(None) }
    };
    let float = |k: &str| -> Result<Option<f32>> {
        if meta.contains(&key(k)) {
            meta.get_f32(&key(k)).map(Some).map_err(|e| gguf_error(path, e))
        } else {
            Ok(None)
        }
    };
    let d = size("embedding_length")?;
    let heads = size("attention.head_count")?;
    let kv_heads = optional_size("attention.head_count_kv")?.unwrap_or(heads);
    if heads == 0 {
        return Err(ExportError::config(path, format!("{arch}.attention.head_count is 0")));
    }
    let head_dim = optional_size("attention.key_length")?.unwrap_or(d / heads);
    if let Some(v) = optional_size("attention.value_length")?
        && v != head_dim
    {
        return Err(ExportError::config(
            path,
            format!("value length {v} differs from key length {head_dim}"),
        ));
    }
    super::llama::check_head_dim(head_dim).map_err(|m| ExportError::config(path, m))?;
    if let Some(r) = optional_size("rope.dimension_count")?
        && r != head_dim
    {
        return Err(ExportError::config(
            path,
            format!(
                "rotary dimensions {r} of a head of {head_dim}: partial rotary embeddings are not supported"
            ),
        ));
    }
    let embed = file.tensor("token_embd.weight").map_err(|e| gguf_error(path, e))?;
    let vocab = match embed.dims() {
        [cols, rows] if *cols as usize == d => usize::try_from(*rows)
            .map_err(|_| ExportError::config(path, "token_embd.weight has too many rows"))?,
        dims => {
            return Err(ExportError::TensorShape {
                name: "token_embd.weight".into(),
                expected: vec![0, d],
                found: dims.iter().rev().map(|&n| n as usize).collect(),
            });
        }
    };
    let theta = float("rope.freq_base")?.unwrap_or(10000.0);
    if !theta.is_finite() || theta <= 1.0 {
        return Err(ExportError::config(path, format!("{arch}.rope.freq_base {theta} is not a base > 1")));
    }
    let scaling_type = if meta.contains(&key("rope.scaling.type")) {
        meta.get_str(&key("rope.scaling.type")).map_err(|e| gguf_error(path, e))?.to_string()
    } else {
        "none".to_string()
    };
    let scaling = match scaling_type.as_str() {
        "none" => RopeScaling::None,
        "linear" => match float("rope.scaling.factor")? {
            Some(f) if f.is_finite() && f > 0.0 => RopeScaling::Linear { factor: f },
            other => return Err(ExportError::config(path, format!("linear rope scaling factor {other:?}"))),
        },
        other => {
            return Err(ExportError::config(
                path,
                format!("rope scaling `{other}` is not supported (none, linear, or llama 3's rope_freqs)"),
            ));
        }
    };
    let mut rope = Rope::new(theta, head_dim, scaling);
    // Llama 3.x: per-frequency divisors, the `llama3` scaling as llama.cpp applies it.
    if file.tensor("rope_freqs.weight").is_ok() {
        let src = GgufWeights { file, path: path.to_path_buf(), rotary_rows: None, head_dim };
        let factors = src.read_named("rope_freqs.weight", &[head_dim / 2])?;
        for (f, by) in rope.inv_freq.iter_mut().zip(factors) {
            *f /= by;
        }
    }
    let has = |name: &str| file.tensor(name).is_ok();
    let mut special = BTreeMap::new();
    for (name, k) in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")] {
        let k = format!("tokenizer.ggml.{k}");
        if meta.contains(&k) {
            special.insert(name.to_string(), meta.get_i64(&k).map_err(|e| gguf_error(path, e))?);
        }
    }
    let cfg = LlamaConfig {
        vocab,
        d,
        layers: size("block_count")?,
        heads,
        kv_heads,
        head_dim,
        inner: size("feed_forward_length")?,
        eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        context: size("context_length")?,
        rope,
        tied: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_gate.bias"),
        special,
    };
    cfg.validate().map_err(|m| ExportError::config(path, m))?;
    Ok(cfg)
}

/// A GGUF file's tensors under llama.cpp's names, dequantised to f32.
struct GgufWeights<'f> {
    file: &'f GgufFile,
    path: PathBuf,
    /// `(heads, kv_heads)` when `attn_q`/`attn_k` rows are in llama.cpp's rotary order.
    rotary_rows: Option<(usize, usize)>,
    head_dim: usize,
}

impl GgufWeights<'_> {
    fn name(w: Weight) -> String {
        use LayerWeight::*;
        match w {
            Weight::TokenEmbedding => "token_embd.weight".into(),
            Weight::FinalNorm => "output_norm.weight".into(),
            Weight::Head => "output.weight".into(),
            Weight::Layer(l, lw) => {
                let part = match lw {
                    AttnNorm => "attn_norm.weight",
                    Q => "attn_q.weight",
                    K => "attn_k.weight",
                    V => "attn_v.weight",
                    QBias => "attn_q.bias",
                    KBias => "attn_k.bias",
                    VBias => "attn_v.bias",
                    O => "attn_output.weight",
                    OBias => "attn_output.bias",
                    FfnNorm => "ffn_norm.weight",
                    Gate => "ffn_gate.weight",
                    Up => "ffn_up.weight",
                    Down => "ffn_down.weight",
                    GateBias => "ffn_gate.bias",
                    UpBias => "ffn_up.bias",
                    DownBias => "ffn_down.bias",
                };
                format!("blk.{l}.{part}")
            }
        }
    }

    /// Tensor `name` as f32, checked to have the row-major `shape` and only finite values.
    fn read_named(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info =
            self.file.tensor(name).map_err(|_| ExportError::MissingTensor { name: name.to_string() })?;
        let found: Vec<usize> = info.shape().iter().map(|&n| n as usize).collect();
        if found != shape {
            return Err(ExportError::TensorShape { name: name.into(), expected: shape.to_vec(), found });
        }
        let values = self.file.dequantize(info).map_err(|e| gguf_error(&self.path, e))?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(ExportError::NonFinite { name: name.into(), count: bad });
        }
        Ok(values)
    }
}

impl WeightSource for GgufWeights<'_> {
    fn read(&self, w: Weight, shape: &[usize]) -> Result<Vec<f32>> {
        let values = self.read_named(&Self::name(w), shape)?;
        let heads = match (self.rotary_rows, w) {
            (Some((h, _)), Weight::Layer(_, LayerWeight::Q | LayerWeight::QBias)) => h,
            (Some((_, kv)), Weight::Layer(_, LayerWeight::K | LayerWeight::KBias)) => kv,
            _ => return Ok(values),
        };
        Ok(unpermute(&values, heads, self.head_dim))
    }
}

/// Undoes llama.cpp's `LlamaModel.permute` of a q/k projection `[heads · head_dim, cols]` (or
/// its bias, `cols` = 1): within each head, GGUF row `2i + j` goes back to row `j · head_dim/2 + i`.
pub(crate) fn unpermute(values: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let cols = values.len() / (heads * head_dim);
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = (h * head_dim + 2 * i + j) * cols;
                let to = (h * head_dim + j * half + i) * cols;
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            }
        }
    }
    out
}

/// The bundle's tokenizer files made from the GGUF's `tokenizer.ggml.*` metadata, as
/// `(file name, contents)`: `tokenizer.json` ([`crate::gguf_tokenizer`] does the conversion),
/// or nothing for a file without a tokenizer (said in the log).
pub fn tokenizer_from_gguf(path: &Path) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let file = GgufFile::open(path).map_err(|e| gguf_error(path, e))?;
    if !file.metadata().contains("tokenizer.ggml.model") {
        log::info!("{}: no tokenizer in the GGUF metadata: the bundle has none", path.display());
        return Ok(Vec::new());
    }
    let json = crate::gguf_tokenizer::tokenizer_json(&file)?;
    Ok(vec![("tokenizer.json", json.into_bytes())])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's permutation, as convert_hf_to_gguf.py writes it:
    /// `w.reshape(n_head, 2, D/2, cols).swapaxes(1, 2).reshape(w.shape)`.
    fn permute(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
        let half = head_dim / 2;
        let mut out = Vec::with_capacity(w.len());
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let row = h * head_dim + j * half + i;
                    out.extend_from_slice(&w[row * cols..(row + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, head_dim, cols) = (3, 8, 5);
        let w: Vec<f32> = (0..heads * head_dim * cols).map(|i| i as f32).collect();
        let p = permute(&w, heads, head_dim, cols);
        assert_ne!(p, w);
        assert_eq!(unpermute(&p, heads, head_dim), w);
        // A bias is a matrix of one column.
        let b: Vec<f32> = (0..heads * head_dim).map(|i| i as f32).collect();
        assert_eq!(unpermute(&permute(&b, heads, head_dim, 1), heads, head_dim), b);
        // Row 1 of GGUF head 0 is HF row D/2 (the partner of row 0).
        assert_eq!(p[cols..2 * cols], w[(head_dim / 2) * cols..(head_dim / 2 + 1) * cols]);
    }
}
