//! `ferrite inspect MODEL.gguf [--json]`: a llama.cpp GGUF file described: version, alignment,
//! the architecture's hyper-parameters, metadata (long arrays and strings summarised), tensor
//! count and bytes by type. Nothing is dequantised.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use ferrite_gguf::{Array, GgufFile, Value};
use serde_json::{Value as Json, json};

/// Array items shown by the text output and the JSON's `first`.
const FIRST_ITEMS: usize = 8;
/// Longest string the text output prints whole.
const MAX_TEXT_CHARS: usize = 72;

/// A `.gguf` file name, or a file that starts with GGUF's magic.
pub fn is_gguf(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && &magic == ferrite_gguf::MAGIC
}

pub fn run(path: &Path, as_json: bool) -> Result<()> {
    let file = match GgufFile::open(path) {
        Ok(file) => file,
        // An I/O error names the path already.
        Err(e @ ferrite_gguf::Error::Io { .. }) => return Err(e.into()),
        Err(e) => return Err(e).with_context(|| format!("GGUF file {}", path.display())),
    };
    let arch = file.architecture().ok();
    // `{arch}.*` keys: the model's hyper-parameters (llama.block_count, llama.rope.freq_base...).
    let prefix = arch.map(|a| format!("{a}."));
    let is_hparam = |key: &str| prefix.as_deref().is_some_and(|p| key.starts_with(p));
    if as_json {
        let hparams: serde_json::Map<String, Json> = file
            .metadata()
            .iter()
            .filter(|(k, _)| is_hparam(k))
            .map(|(k, v)| (k.to_string(), value_json(v)))
            .collect();
        let metadata: Vec<Json> = file.metadata().iter().map(|(k, v)| entry_json(k, v)).collect();
        let bytes_by_type: serde_json::Map<String, Json> =
            file.bytes_by_type().into_iter().map(|(t, b)| (t.name().to_string(), json!(b))).collect();
        let tensors: Vec<Json> = file
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name(),
                    "type": t.ggml_type().name(),
                    "dims": t.dims(),
                    "offset": t.offset(),
                    "bytes": t.n_bytes(),
                })
            })
            .collect();
        let out = json!({
            "format": "gguf",
            "version": file.version(),
            "alignment": file.alignment(),
            "data_offset": file.data_offset(),
            "file_bytes": file.len(),
            "architecture": arch,
            "hyperparameters": hparams,
            "metadata": metadata,
            "tensor_count": file.tensors().len(),
            "bytes_by_type": bytes_by_type,
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("model         {}", path.display());
    println!(
        "format        GGUF v{}, alignment {}, data at byte {}, {} bytes",
        file.version(),
        file.alignment(),
        file.data_offset(),
        file.len()
    );
    println!("architecture  {}", arch.unwrap_or("? (no general.architecture)"));
    if let Ok(name) = file.metadata().get_str("general.name") {
        println!("name          {}", name.escape_debug());
    }
    let hparams: Vec<_> = file.metadata().iter().filter(|(k, _)| is_hparam(k)).collect();
    if !hparams.is_empty() {
        println!("hyper-parameters");
        for (k, v) in hparams {
            println!("  {:<44} {}", k.escape_debug().to_string(), value_text(v));
        }
    }
    let total: u64 = file.tensors().iter().map(|t| t.n_bytes() as u64).sum();
    println!("tensors       {} ({total} bytes)", file.tensors().len());
    println!("bytes by type");
    for (ty, bytes) in file.bytes_by_type() {
        let n = file.tensors().iter().filter(|t| t.ggml_type() == ty).count();
        let tensors = if n == 1 { "tensor" } else { "tensors" };
        println!("  {:<8} {bytes:>14}  ({n} {tensors})", ty.name());
    }
    let rest: Vec<_> = file.metadata().iter().filter(|(k, _)| !is_hparam(k)).collect();
    println!("metadata      {} entries", file.metadata().len());
    for (k, v) in rest {
        println!("  {:<44} {}", k.escape_debug().to_string(), value_text(v));
    }
    Ok(())
}

/// One line: scalars as they are, strings quoted (long ones cut), arrays as type, length and
/// their first items.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => short_string(s),
        Value::Array(a) => {
            let mut items: Vec<String> = (0..a.len().min(FIRST_ITEMS))
                .filter_map(|i| a.get(i))
                .map(|item| match item {
                    Value::String(s) => short_string(&s),
                    other => other.to_string(),
                })
                .collect();
            if a.len() > FIRST_ITEMS {
                items.push("...".into());
            }
            format!("[{}; {}] {}", a.element_type(), a.len(), items.join(", "))
        }
        other => other.to_string(),
    }
}

fn short_string(s: &str) -> String {
    let n = s.chars().count();
    if n <= MAX_TEXT_CHARS {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(MAX_TEXT_CHARS).collect();
    format!("{head:?}... ({n} chars)")
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => array_json(a),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
    }
}

/// An array as its element type, length and first items (a tokenizer's vocabulary is not
/// printed whole).
fn array_json(a: &Array) -> Json {
    let first: Vec<Json> =
        (0..a.len().min(FIRST_ITEMS)).filter_map(|i| a.get(i)).map(|v| value_json(&v)).collect();
    json!({ "element_type": a.element_type().name(), "len": a.len(), "first": first })
}

fn entry_json(key: &str, v: &Value) -> Json {
    json!({ "key": key, "type": v.value_type().name(), "value": value_json(v) })
}
