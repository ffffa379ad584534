//! Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty,
//! with a small seeded PRNG so that a seed reproduces a run exactly.
//!
//! A [`Sampler`] allocates once, when it is made (a scratch buffer of vocabulary size); sampling a
//! token allocates nothing. Top-k candidates live in a `heapless::Vec` of [`MAX_TOP_K`]: the bound
//! is part of the contract. It does not run models or know about tokenizers.

use crate::error::{Error, Result};

/// Largest `top_k` accepted.
pub const MAX_TOP_K: usize = 256;

/// How to pick the next token. `temperature` 0 is greedy (the other settings are then ignored
/// except the repetition penalty).
///
/// ```
/// use ferrite_runtime::sample::SamplingParams;
/// let p = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, ..SamplingParams::default() };
/// assert!(p.validate().is_ok());
/// assert!(SamplingParams { top_p: 0.0, ..p }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off, at most [`MAX_TOP_K`]).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off), in (0, 1].
    pub top_p: f32,
    /// CTRL-style penalty on tokens already in the sequence (1 = off), > 0.
    pub repetition_penalty: f32,
    /// PRNG seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams::default()
    }

    /// Rejects values that have no meaning.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidGeneration(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if self.top_k > MAX_TOP_K {
            return bad(format!("top_k must be at most {MAX_TOP_K}, got {}", self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        Ok(())
    }
}

/// SplitMix64: tiny, fast, and fixed forever, so a seed means the same run on every machine.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Picks tokens from logits. Make one per generation (or [`Sampler::reset`] it).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// (id, logit → probability) for every token when top-k is off; capacity = vocabulary.
    scratch: Vec<(u32, f32)>,
    top: heapless::Vec<(u32, f32), MAX_TOP_K>,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab` ids. Validates `params`.
    pub fn new(params: SamplingParams, vocab: usize) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: SplitMix64(params.seed),
            scratch: Vec::with_capacity(vocab),
            top: heapless::Vec::new(),
        })
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Restarts the PRNG from the seed.
    pub fn reset(&mut self) {
        self.rng = SplitMix64(self.params.seed);
    }

    /// Chooses the next id. `logits` is modified in place (penalty); `history` is the sequence
    /// so far (prompt and generated ids) for the repetition penalty. Allocates nothing.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = self.params;
        if p.repetition_penalty != 1.0 {
            for (i, &id) in history.iter().enumerate() {
                // Penalise each distinct id once, without a set (no allocation).
                if history[..i].contains(&id) {
                    continue;
                }
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let candidates: &mut [(u32, f32)] = if p.top_k > 0 {
            self.top.clear();
            for (id, &l) in logits.iter().enumerate() {
                insert_top(&mut self.top, p.top_k, (id as u32, l));
            }
            &mut self.top
        } else {
            self.scratch.clear();
            self.scratch.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
            if p.top_p < 1.0 {
                self.scratch.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            &mut self.scratch
        };
        if candidates.is_empty() {
            return 0;
        }
        // Softmax with temperature, in place.
        let max = candidates.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let mut total = 0f32;
        for c in candidates.iter_mut() {
            c.1 = ((c.1 - max) / p.temperature).exp();
            total += c.1;
        }
        let mut keep = candidates.len();
        if p.top_p < 1.0 {
            let mut acc = 0f32;
            for (i, c) in candidates.iter().enumerate() {
                acc += c.1 / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            total = candidates[..keep].iter().map(|c| c.1).sum();
        }
        let mut r = self.rng.next_f32() * total;
        for c in &candidates[..keep] {
            r -= c.1;
            if r < 0.0 {
                return c.0;
            }
        }
        candidates[keep - 1].0
    }
}

/// Index of the largest logit (the first one on ties); NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    // The running maximum stays in a register (reading `logits[best]` back each step made this
    // ~4x slower: 3.8 % of a GPT decode step on ONNX Runtime, benches/decode_overhead.rs).
    let mut best = 0usize;
    let mut best_value = f32::NAN;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value || best_value.is_nan() {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

/// Keeps `top` sorted by descending logit (ties: lower id first) with at most `k` entries.
fn insert_top(top: &mut heapless::Vec<(u32, f32), MAX_TOP_K>, k: usize, item: (u32, f32)) {
    if top.len() == k && top.last().is_some_and(|last| last.1 >= item.1) {
        return;
    }
    let at = top.iter().position(|c| c.1 < item.1).unwrap_or(top.len());
    if top.len() == k {
        top.pop();
    }
    // Capacity is at least k (validated), so this cannot fail.
    let _ = top.insert(at, item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_seeds() {
        let logits = [0.1f32, 2.0, -1.0, 1.9, 0.0];
        let mut s = Sampler::new(SamplingParams::greedy(), 5).unwrap();
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        let p = SamplingParams { temperature: 1.0, top_k: 2, seed: 7, ..Default::default() };
        let mut a = Sampler::new(p, 5).unwrap();
        let mut b = Sampler::new(p, 5).unwrap();
        for _ in 0..50 {
            let x = a.sample(&mut logits.clone(), &[]);
            assert!(x == 1 || x == 3, "top-k 2 keeps ids 1 and 3, got {x}");
            assert_eq!(x, b.sample(&mut logits.clone(), &[]), "same seed, same draws");
        }
        // top_p tiny keeps only the best token.
        let p = SamplingParams { temperature: 1.0, top_p: 0.01, seed: 3, ..Default::default() };
        let mut c = Sampler::new(p, 5).unwrap();
        assert!((0..20).all(|_| c.sample(&mut logits.clone(), &[]) == 1));
        // A strong repetition penalty moves greedy off a repeated token.
        let p = SamplingParams { repetition_penalty: 100.0, ..Default::default() };
        let mut d = Sampler::new(p, 5).unwrap();
        assert_eq!(d.sample(&mut logits.clone(), &[1, 1]), 3);
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_never_a_nan() {
        let nan = f32::NAN;
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[nan, -5.0, nan, -4.0]), 3);
        assert_eq!(argmax(&[2.0, nan, 1.0]), 0);
        assert_eq!(argmax(&[nan, nan]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
    }
}
