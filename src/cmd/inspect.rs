//! `ferrite inspect MODEL [--json]`: an ONNX model, or a llama.cpp GGUF file (`gguf`).

mod gguf;

use std::path::PathBuf;

use anyhow::Result;
use ferrite_runtime::{IoInfo, Model};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The ONNX model file, or a GGUF file (`.gguf`, or any file starting with `GGUF`).
    pub model: PathBuf,
    /// Print JSON (ONNX keys: inputs, outputs, ops, initializer_bytes, opset, metadata, ...;
    /// GGUF keys: format, version, alignment, architecture, hyperparameters, metadata,
    /// tensor_count, bytes_by_type, tensors, ...).
    #[arg(long)]
    pub json: bool,
}

fn io_json(io: &IoInfo) -> Value {
    let shape: Value = match &io.shape {
        None => Value::Null,
        Some(dims) => dims
            .iter()
            .map(|d| match d {
                ferrite_runtime::Dim::Fixed(n) => json!(n),
                ferrite_runtime::Dim::Symbolic(s) => json!(s),
                ferrite_runtime::Dim::Unknown => Value::Null,
            })
            .collect(),
    };
    json!({ "name": io.name, "dtype": io.dtype_name, "shape": shape })
}

pub fn run(args: InspectArgs) -> Result<()> {
    if gguf::is_gguf(&args.model) {
        return gguf::run(&args.model, args.json);
    }
    let model = Model::open(&args.model)?;
    let info = model.info();
    if args.json {
        let out = json!({
            "inputs": info.inputs.iter().map(io_json).collect::<Vec<_>>(),
            "outputs": info.outputs.iter().map(io_json).collect::<Vec<_>>(),
            "ops": info.ops,
            "initializer_bytes": info.initializer_bytes,
            "opset": info.opsets,
            "metadata": info.metadata,
            "ir_version": info.ir_version,
            "producer": info.producer,
            "external_data": info.external_data_files,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("model      {}", model.path().display());
    println!(
        "ir_version {}  producer {}",
        info.ir_version,
        if info.producer.is_empty() { "?" } else { &info.producer }
    );
    let opsets: Vec<String> = info
        .opsets
        .iter()
        .map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d }))
        .collect();
    println!("opset      {}", opsets.join(" "));
    println!("inputs");
    for i in &info.inputs {
        println!("  {:<24} {:<6} {}", i.name, i.dtype_name, i.shape_string());
    }
    println!("outputs");
    for o in &info.outputs {
        println!("  {:<24} {:<6} {}", o.name, o.dtype_name, o.shape_string());
    }
    println!("ops");
    for (op, n) in &info.ops {
        println!("  {op:<24} {n}");
    }
    println!("initializer bytes");
    for (dtype, bytes) in &info.initializer_bytes {
        println!("  {dtype:<24} {bytes}");
    }
    if !info.external_data_files.is_empty() {
        println!("external data  {}", info.external_data_files.join(", "));
    }
    if !info.metadata.is_empty() {
        println!("metadata");
        for (k, v) in &info.metadata {
            println!("  {k} = {v}");
        }
    }
    Ok(())
}
