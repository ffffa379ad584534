//! `ferrite export`: the command-line face of [`crate::export`], mounted by the root binary.
//!
//! Only argument parsing and printing live here; errors become `anyhow` at this edge only.

use std::path::PathBuf;

use anyhow::Context;

use crate::arch::ArchKind;
use crate::bundle::{ExportOptions, export};
use crate::quant::QuantScheme;

/// Arguments of `ferrite export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Checkpoint directory (ferrite LSTM, Hugging Face GPT-2, BERT / sentence-transformers, or a
    /// Llama-family decoder: model_type llama, qwen2, mistral), llama.cpp GGUF file (llama, qwen2)
    /// or Keras 3 `.keras` archive (a Sequential or Functional chain of [TextVectorization],
    /// Embedding, LSTM…, Dense; `vocab.json` beside it is used when there is no --vocab).
    pub src: PathBuf,
    /// Output bundle directory.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// Weight storage: fp32, fp16, int8 (integer matmuls) or q4 (4-bit blocks).
    #[arg(long, value_enum, default_value_t = QuantScheme::Fp32)]
    pub quant: QuantScheme,
    /// Replace OUTDIR if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the manifest (with the accuracy report) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Source architecture, instead of detecting it from config.json (or a `.keras` file's contents).
    #[arg(long, value_enum)]
    pub arch: Option<ArchKind>,
    /// int8: round weights to nearest instead of GPTQ (which decoders calibrate on text they
    /// sample themselves); for comparisons.
    #[arg(long)]
    pub no_gptq: bool,
    /// int8: bits per activation value, 8 or 16 (two uint8 digits per value, one integer matmul
    /// over both: 99.15 % top-1 agreement instead of 98.24 % on the shipped GPT, at twice the
    /// integer work; see exporter/README.md). Default: 16 for decoders, 8 otherwise. Under q4,
    /// an explicit 8 also marks the 4-bit layers `accuracy_level = 4`: both backends may then
    /// quantise their activations to int8 (faster, as llama.cpp does; docs/quantisation.md).
    #[arg(long)]
    pub activation_bits: Option<u8>,
    /// The bundle's vocabulary, written as its tokenizer.json: a JSON object {token: index}, a
    /// Keras Tokenizer's JSON (`tokenizer.to_json()`), or a text file of one token per line
    /// (`TextVectorization.get_vocabulary()`). Replaces the source's own tokenizer files.
    #[arg(long, value_name = "FILE")]
    pub vocab: Option<PathBuf>,
    /// int8 and q4: how an LM head on llama.cpp's Q8_0 grid (a GGUF's token table) is stored:
    /// `pair` (int8 codes plus their residual's: near-exact, twice the head's bytes and matmuls)
    /// or `int8` (one int8 layer rounded per row). Default: `pair` under int8, `int8` under q4.
    /// On SmolLM2-135M q4, `pair` agrees with fp32 on 99.97 % of top-1 tokens instead of
    /// 97.96 %, for 28 MB more and ~12 % slower decoding (docs/gguf.md).
    #[arg(long, value_name = "int8|pair", value_parser = ["int8", "pair"])]
    pub q8_head: Option<String>,
    /// int8: requantise weights already on a 4-bit grid (a GGUF's Q4_0/Q4_1 tensors) to int8
    /// per row like any other. By default int8 keeps their codes as q4 blocks, which loses
    /// nothing (one scale per row cannot hold their per-block scales: SmolLM2-135M's Q4_1 file
    /// requantised agrees with fp32 on 97.0 % of top-1 tokens; docs/quantisation.md).
    #[arg(long)]
    pub requantize_4bit: bool,
    /// No progress on stderr (by default each long stage — reading, calibration, GPTQ, writing,
    /// verifying — shows a bar with rate and ETA, or plain lines when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `ferrite export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    crate::progress::show(!args.quiet);
    let opts = ExportOptions {
        quant: args.quant,
        arch: args.arch,
        force: args.force,
        fail_at: None,
        gptq: !args.no_gptq,
        activation_bits: args.activation_bits,
        vocab: args.vocab,
        int8_head_pairs: args.q8_head.as_deref().map(|h| h == "pair"),
        requantize_4bit: args.requantize_4bit,
    };
    let manifest = export(&args.src, &args.out, &opts)
        .with_context(|| format!("exporting {} to {}", args.src.display(), args.out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
        println!(
            "wrote {} ({}, {}, {} bytes)",
            args.out.display(),
            format!("{:?}", manifest.architecture).to_lowercase(),
            manifest.quantisation.name(),
            bytes
        );
        if let Some(acc) = &manifest.accuracy {
            for (name, a) in &acc.outputs {
                let mut line = format!("  {name}: max abs error {:.3e}", a.max_abs_error);
                if let Some(t) = a.top1_agreement {
                    line += &format!(", top-1 agreement {:.2}%", t * 100.0);
                }
                if let Some(c) = a.min_cosine {
                    line += &format!(", min cosine {c:.5}");
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}
