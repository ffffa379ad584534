//! Cross-entropy and perplexity of a causal LM bundle on a text, with windows that carry the
//! model's state: an LSTM runs the whole text in chunks passing `h`/`c` along (every token after
//! the first is scored once); GPT-2 runs windows of its context length, each one prefill call.
//!
//! GPT-2 windows do not overlap, so the first token of each window is not scored (it has no
//! prefix inside its window): no quadratic recomputation, at the cost of a few unscored tokens.

use crate::bundle::{Architecture, Bundle};
use crate::error::{Error, Result};
use crate::generate::Generator;

/// Tokens per call for state-carrying models.
const CHUNK: usize = 128;

/// The result of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Number of predicted (scored) tokens.
    pub tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub cross_entropy: f64,
    /// `exp(cross_entropy)`.
    pub perplexity: f64,
}

/// Scores `text` (tokenized with the bundle's tokenizer) under the bundle's model.
pub fn evaluate(bundle: &Bundle, text: &str) -> Result<Evaluation> {
    let ids = bundle.require_tokenizer()?.encode(text, false)?;
    evaluate_ids(bundle, &ids)
}

/// Scores a token sequence.
pub fn evaluate_ids(bundle: &Bundle, ids: &[u32]) -> Result<Evaluation> {
    if ids.len() < 2 {
        return Err(Error::InvalidGeneration("evaluation needs at least 2 tokens".into()));
    }
    let mut g = Generator::new(bundle)?;
    let v = g.vocab_size();
    let window = match (bundle.architecture(), bundle.context_length()) {
        (Architecture::Gpt2, Some(ctx)) => ctx.max(2),
        _ => usize::MAX,
    };
    let mut nll = 0f64;
    let mut scored = 0usize;
    for win in ids.chunks(window) {
        g.reset()?;
        let mut prev_last: Option<Vec<f32>> = None;
        for chunk in win.chunks(CHUNK.min(window)) {
            if let Some(last) = &prev_last {
                nll += nll_of(last, chunk[0]);
                scored += 1;
            }
            let logits = g.feed(chunk)?;
            for (i, &next) in chunk.iter().enumerate().skip(1) {
                nll += nll_of(&logits[(i - 1) * v..i * v], next);
                scored += 1;
            }
            prev_last = Some(logits[(chunk.len() - 1) * v..].to_vec());
        }
    }
    if scored == 0 {
        return Err(Error::InvalidGeneration("no token could be scored".into()));
    }
    let cross_entropy = nll / scored as f64;
    Ok(Evaluation { tokens: scored, cross_entropy, perplexity: cross_entropy.exp() })
}

/// `-log softmax(logits)[target]`, computed stably in f64.
fn nll_of(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    lse - logits[target as usize] as f64
}
