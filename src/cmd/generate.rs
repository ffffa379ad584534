//! `ferrite generate BUNDLE (--prompt TEXT | --ids 1,2,3) [sampling flags] [--json] [--dump-logits FILE.npy]`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::sample::SamplingParams;
use ferrite_runtime::stream;

use super::BundleFlags;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The bundle directory (`ferrite export` output).
    pub bundle: PathBuf,
    /// Prompt text (tokenized with the bundle's tokenizer).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    pub prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// Most new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold in (0, 1] (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// PRNG seed: the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains STR (repeatable; the stop string is not printed).
    #[arg(long = "stop", value_name = "STR")]
    pub stop: Vec<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Write the f32 logits of the last prompt position as a 1-D .npy file.
    #[arg(long, value_name = "FILE.npy")]
    pub dump_logits: Option<PathBuf>,
    #[command(flatten)]
    pub flags: BundleFlags,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let bundle = args.flags.open(&args.bundle)?;
    let tok = bundle.tokenizer();
    let prompt: Vec<u32> = match (&args.ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => bundle.require_tokenizer()?.encode(text, false)?,
        (None, None) => bail!("give --prompt TEXT or --ids 1,2,3"),
    };
    let mut gen_opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        stop_strings: stream::stop_strings(&args.stop)?,
        ..GenerateOptions::default()
    };
    if let Some(eos) = bundle.special_token("eos").and_then(|e| u32::try_from(e).ok()) {
        let _ = gen_opts.stop_ids.push(eos);
    }
    let mut generator = Generator::new(&bundle)?;
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let token_bytes = |id: u32| tok.and_then(|t| t.token_bytes(id));
    let generation = generator.generate(&prompt, &gen_opts, &token_bytes, &mut |s: &str| {
        text.push_str(s);
        if !json {
            let _ = stdout.write_all(s.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if let Some(path) = &args.dump_logits {
        write_npy_f32(path, &generation.prompt_logits)?;
    }
    if json {
        let obj = serde_json::json!({
            "ids": generation.ids,
            "text": text,
            "prompt_tokens": generation.prompt_tokens,
            "generated_tokens": generation.ids.len(),
            "time_to_first_token_ms": generation.time_to_first_token.as_secs_f64() * 1e3,
            "tokens_per_s": generation.tokens_per_s(),
        });
        writeln!(stdout, "{obj}")?;
    } else {
        writeln!(stdout)?;
    }
    Ok(())
}

/// Writes a 1-D little-endian f32 array as .npy (format 1.0), via a temporary file and rename.
fn write_npy_f32(path: &Path, data: &[f32]) -> Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", data.len());
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let tmp = path.with_extension("npy.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
