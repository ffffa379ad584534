//! `ferrite generate BUNDLE (--prompt TEXT | --ids 1,2,3 | --chat MESSAGE [--system TEXT]) [sampling
//! flags] [--json] [--dump-logits FILE.npy]`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferrite_runtime::Message;
use ferrite_runtime::generate::Generator;

use super::{BundleFlags, SamplingFlags};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The bundle directory (`ferrite export` output).
    pub bundle: PathBuf,
    /// Prompt text (tokenized with the bundle's tokenizer).
    #[arg(long, conflicts_with_all = ["ids", "chat"], required_unless_present_any = ["ids", "chat"])]
    pub prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "chat")]
    pub ids: Option<Vec<u32>>,
    /// A user message: the prompt is a one-turn conversation rendered with the bundle's chat
    /// template (ending with the opening of the assistant's turn), and generation stops at the
    /// template's end-of-turn tokens. A bundle without a chat template refuses it.
    #[arg(long, value_name = "MESSAGE")]
    pub chat: Option<String>,
    /// System message of the --chat conversation.
    #[arg(long, value_name = "TEXT", requires = "chat")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingFlags,
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
    // The prompt's length is known once the bundle's tokenizer has read it: the generator
    // checks the budget again at prompt plus --max-tokens positions.
    let bundle = args.flags.open_for(&args.bundle, args.sampling.max_tokens.saturating_add(1))?;
    let tok = bundle.tokenizer();
    let mut gen_opts = args.sampling.options()?;
    let prompt: Vec<u32> = match (&args.ids, &args.prompt, &args.chat) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(text), _) => bundle.require_tokenizer()?.encode(text, false)?,
        (None, None, Some(message)) => {
            let template = bundle.require_chat_template().context("--chat needs a chat template")?;
            let mut messages: Vec<Message> = args.system.iter().map(Message::system).collect();
            messages.push(Message::user(message));
            let text = template.render(&messages, true)?;
            for &id in template.stop_ids() {
                if !gen_opts.stop_ids.contains(&id) {
                    gen_opts.stop_ids.push(id).map_err(|_| anyhow::anyhow!("too many end-of-turn tokens"))?;
                }
            }
            bundle.require_tokenizer()?.encode(&text, false)?
        }
        (None, None, None) => bail!("give --prompt TEXT, --ids 1,2,3 or --chat MESSAGE"),
    };
    if let Some(eos) = bundle.special_token("eos").and_then(|e| u32::try_from(e).ok())
        && !gen_opts.stop_ids.contains(&eos)
    {
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
