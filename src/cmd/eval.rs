//! `ferrite eval BUNDLE --text FILE [--json]`: cross-entropy and perplexity on a text file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrite_runtime::evaluate;

use super::BundleFlags;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The bundle directory (an LSTM or GPT-2 language model).
    pub bundle: PathBuf,
    /// The UTF-8 text file to score.
    #[arg(long = "text", value_name = "FILE")]
    pub text: PathBuf,
    /// Print `{"tokens", "cross_entropy", "perplexity"}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: BundleFlags,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let bundle = args.flags.open(&args.bundle)?;
    let e = evaluate(&bundle, &text)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "tokens": e.tokens, "cross_entropy": e.cross_entropy, "perplexity": e.perplexity })
        );
    } else {
        println!(
            "tokens {}  cross-entropy {:.4} nats  perplexity {:.3}",
            e.tokens, e.cross_entropy, e.perplexity
        );
    }
    Ok(())
}
