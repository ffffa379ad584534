//! `ferrite eval BUNDLE --text FILE [--reference BUNDLE] [--json]`: cross-entropy and perplexity
//! on a text file; with `--reference` (for example the fp32 export of the same checkpoint), also
//! the reference's perplexity, the top-1 agreement and the largest logit difference.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrite_runtime::{compare, evaluate};

use super::BundleFlags;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The bundle directory (an LSTM or GPT-2 language model).
    pub bundle: PathBuf,
    /// The UTF-8 text file to score.
    #[arg(long = "text", value_name = "FILE")]
    pub text: PathBuf,
    /// Compare with this bundle (same tokenizer): adds `reference_cross_entropy`,
    /// `reference_perplexity`, `perplexity_increase`, `top1_agreement`, `max_abs_logit_error`.
    #[arg(long, value_name = "BUNDLE")]
    pub reference: Option<PathBuf>,
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
    if let Some(reference) = &args.reference {
        let reference = args.flags.open(reference)?;
        let a = compare(&bundle, &reference, &text)?;
        let increase = a.evaluation.perplexity / a.reference.perplexity - 1.0;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "tokens": a.evaluation.tokens,
                    "cross_entropy": a.evaluation.cross_entropy,
                    "perplexity": a.evaluation.perplexity,
                    "reference_cross_entropy": a.reference.cross_entropy,
                    "reference_perplexity": a.reference.perplexity,
                    "perplexity_increase": increase,
                    "top1_agreement": a.top1_agreement,
                    "max_abs_logit_error": a.max_abs_logit_error,
                })
            );
        } else {
            println!(
                "tokens {}  perplexity {:.3} (reference {:.3}, {:+.2}%)  top-1 agreement {:.2}%  max |logit error| {:.3}",
                a.evaluation.tokens,
                a.evaluation.perplexity,
                a.reference.perplexity,
                increase * 100.0,
                a.top1_agreement * 100.0,
                a.max_abs_logit_error
            );
        }
        return Ok(());
    }
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
