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
    let mut nll = 0f64;
    let scored = walk(&[bundle], ids, |logits, next| nll += nll_of(logits[0], next))?;
    let cross_entropy = nll / scored as f64;
    Ok(Evaluation { tokens: scored, cross_entropy, perplexity: cross_entropy.exp() })
}

/// How closely a (quantised) bundle follows a reference bundle on the same text: [`compare`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// The bundle's own score.
    pub evaluation: Evaluation,
    /// The reference bundle's score on the same tokens.
    pub reference: Evaluation,
    /// Fraction of scored positions where both bundles' most likely next token is the same.
    pub top1_agreement: f64,
    /// Largest absolute difference between the two bundles' logits over all scored positions.
    pub max_abs_logit_error: f64,
}

/// Scores `text` under `bundle` and `reference` in lockstep (same tokens, same windows) and
/// reports top-1 agreement and the perplexity of each. Both bundles must share the tokenizer
/// and vocabulary (for example the int8 and fp32 exports of one checkpoint).
pub fn compare(bundle: &Bundle, reference: &Bundle, text: &str) -> Result<Agreement> {
    let ids = bundle.require_tokenizer()?.encode(text, false)?;
    if reference.require_tokenizer()?.encode(text, false)? != ids {
        return Err(Error::InvalidGeneration("the two bundles tokenize the text differently".into()));
    }
    let (mut nll, mut ref_nll, mut agree, mut max_err) = (0f64, 0f64, 0usize, 0f64);
    let scored = walk(&[bundle, reference], &ids, |logits, next| {
        nll += nll_of(logits[0], next);
        ref_nll += nll_of(logits[1], next);
        if argmax(logits[0]) == argmax(logits[1]) {
            agree += 1;
        }
        for (a, b) in logits[0].iter().zip(logits[1]) {
            max_err = max_err.max((a - b).abs() as f64);
        }
    })?;
    let eval = |nll: f64| {
        let ce = nll / scored as f64;
        Evaluation { tokens: scored, cross_entropy: ce, perplexity: ce.exp() }
    };
    Ok(Agreement {
        evaluation: eval(nll),
        reference: eval(ref_nll),
        top1_agreement: agree as f64 / scored as f64,
        max_abs_logit_error: max_err,
    })
}

/// Runs `ids` through one generator per bundle with the same windows and calls
/// `visit(logits per bundle, next id)` for every scored position; returns how many were scored.
fn walk(bundles: &[&Bundle], ids: &[u32], mut visit: impl FnMut(&[&[f32]], u32)) -> Result<usize> {
    if ids.len() < 2 {
        return Err(Error::InvalidGeneration("evaluation needs at least 2 tokens".into()));
    }
    let mut gens = bundles.iter().map(|b| Generator::new(*b)).collect::<Result<Vec<_>>>()?;
    let v = gens[0].vocab_size();
    if gens.iter().any(|g| g.vocab_size() != v) {
        return Err(Error::InvalidGeneration("the bundles have different vocabulary sizes".into()));
    }
    let bundle = bundles[0];
    let window = match (bundle.architecture(), bundle.context_length()) {
        (Architecture::Gpt2 | Architecture::Llama, Some(ctx)) => ctx.max(2),
        _ => usize::MAX,
    };
    let mut scored = 0usize;
    for win in ids.chunks(window) {
        for g in &mut gens {
            g.reset()?;
        }
        let mut prev_last: Option<Vec<Vec<f32>>> = None;
        for chunk in win.chunks(CHUNK.min(window)) {
            if let Some(last) = &prev_last {
                let rows: Vec<&[f32]> = last.iter().map(Vec::as_slice).collect();
                visit(&rows, chunk[0]);
                scored += 1;
            }
            let logits = gens.iter_mut().map(|g| g.feed(chunk)).collect::<Result<Vec<_>>>()?;
            for (i, &next) in chunk.iter().enumerate().skip(1) {
                let rows: Vec<&[f32]> = logits.iter().map(|l| &l[(i - 1) * v..i * v]).collect();
                visit(&rows, next);
                scored += 1;
            }
            prev_last = Some(logits.iter().map(|l| l[(chunk.len() - 1) * v..].to_vec()).collect());
        }
    }
    if scored == 0 {
        return Err(Error::InvalidGeneration("no token could be scored".into()));
    }
    Ok(scored)
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// `-log softmax(logits)[target]`, computed stably in f64.
fn nll_of(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    lse - logits[target as usize] as f64
}
