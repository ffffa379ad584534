//! Autoregressive generation on a bundle: prefill the prompt in one call, then one token per call,
//! carrying the LSTM's `h`/`c` or GPT-2's KV cache between calls (the prefix is never re-run).
//!
//! Context: a GPT-2 bundle has a context length. A prompt that does not fit is
//! [`Error::ContextFull`]; [`Generator::feed`] past the limit is the same error; [`Generator::generate`]
//! stops with [`StopReason::ContextFull`] when the next token would not fit (its text is still
//! returned). Positions are never wrapped or shifted. This module does not tokenize: see
//! [`Generator::generate_text`] (feature `text`) for text in, text out.

use std::ops::Deref;
use std::time::{Duration, Instant};

use crate::bundle::{Architecture, Bundle};
use crate::error::{Error, Result};
use crate::model::Dim;
use crate::sample::{Sampler, SamplingParams};
use crate::session::Session;
use crate::stream::{StopStrings, TextStream};
use crate::tensor::{Tensor, TensorData};

/// Most stop token ids a generation accepts.
pub const MAX_STOP_IDS: usize = 8;
/// Most token ids reserved up front for a generation's history (it grows past this if needed).
const MAX_RESERVED_TOKENS: usize = 1 << 16;
/// Most elements of one initial state tensor (LSTM h/c, an empty KV cache): 1 GiB of f32.
pub const MAX_STATE_ELEMENTS: usize = 1 << 28;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most new tokens (at least 1).
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampling: SamplingParams,
    /// Generation ends after any of these ids (the id is included in `ids`, its text is not emitted).
    pub stop_ids: heapless::Vec<u32, MAX_STOP_IDS>,
    /// Generation ends when the text contains any of these (never emitted).
    pub stop_strings: StopStrings,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 64,
            sampling: SamplingParams::default(),
            stop_ids: heapless::Vec::new(),
            stop_strings: StopStrings::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop token id was generated.
    StopToken,
    /// A stop string appeared in the text.
    StopString,
    /// The model's context is full.
    ContextFull,
    /// The text callback asked to stop ([`Generator::generate_streaming`]).
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids only (not the prompt).
    pub ids: Vec<u32>,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// Logits at the last prompt position (before any penalty).
    pub prompt_logits: Vec<f32>,
    /// From the start of the prefill until the first token was chosen.
    pub time_to_first_token: Duration,
    /// Whole generation, prefill included.
    pub elapsed: Duration,
    /// Why it ended.
    pub stop: StopReason,
}

impl Generation {
    /// Decode speed: generated tokens per second after the first one.
    pub fn tokens_per_s(&self) -> f64 {
        let decode = self.elapsed.saturating_sub(self.time_to_first_token).as_secs_f64();
        let n = self.ids.len().saturating_sub(1);
        if n == 0 || decode <= 0.0 { 0.0 } else { n as f64 / decode }
    }
}

/// The first `len` entries of `t` along `axis` (f32 or f16), as a new tensor.
fn keep_prefix(t: &Tensor, axis: usize, len: usize) -> Result<Tensor> {
    fn cut<T: Copy>(data: &[T], shape: &[usize], axis: usize, len: usize) -> Vec<T> {
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let (from, to) = (shape[axis] * inner, len * inner);
        (0..outer).flat_map(|o| data[o * from..o * from + to].iter().copied()).collect()
    }
    let shape = t.shape();
    if axis >= shape.len() || len > shape[axis] {
        return Err(Error::InvalidGeneration(format!(
            "cannot keep {len} positions of a state of shape {shape:?}"
        )));
    }
    let mut out_shape = shape.to_vec();
    out_shape[axis] = len;
    match t.data() {
        TensorData::F32(v) => Tensor::new(out_shape, cut(v, shape, axis, len)),
        TensorData::F16(v) => Tensor::new(out_shape, cut(v, shape, axis, len)),
        _ => Err(Error::InvalidGeneration(format!("a {} state cannot be rewound", t.dtype()))),
    }
}

/// One sequence's stateful run of a causal LM bundle (LSTM or GPT-2).
///
/// `B` is how the generator holds its bundle: a borrow (`&Bundle`, what `Generator::new(&bundle)`
/// gives) or shared ownership (`Arc<Bundle>`, for handles that outlive a stack frame, as the C API's).
pub struct Generator<B: Deref<Target = Bundle>> {
    bundle: B,
    /// The state inputs (LSTM h/c, KV cache) are carried inside the session between steps.
    session: Session,
    position: usize,
    vocab: usize,
    logits: Vec<f32>,
}

impl<B: Deref<Target = Bundle>> std::fmt::Debug for Generator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("position", &self.position).finish_non_exhaustive()
    }
}

impl<B: Deref<Target = Bundle>> Generator<B> {
    /// A generator with empty state. The bundle must be an LSTM or GPT-2 language model.
    pub fn new(bundle: B) -> Result<Generator<B>> {
        if bundle.architecture() == Architecture::Bert {
            return Err(Error::InvalidGeneration("a BERT bundle embeds text; it does not generate".into()));
        }
        let vocab = bundle.vocab_size().ok_or_else(|| Error::InvalidBundle {
            path: bundle.dir().to_path_buf(),
            reason: "the logits output has no fixed vocabulary size".into(),
        })?;
        if vocab > MAX_STATE_ELEMENTS {
            return Err(Error::ResourceLimit(format!(
                "a vocabulary of {vocab} tokens (the logits' last dim)"
            )));
        }
        let session = bundle.plan().session()?;
        let mut g = Generator { bundle, session, position: 0, vocab, logits: vec![0.0; vocab] };
        g.reset()?;
        Ok(g)
    }

    /// Forgets the sequence: zero LSTM state / empty KV cache, position 0.
    pub fn reset(&mut self) -> Result<()> {
        let arch = self.bundle.architecture();
        for input in &self.bundle.plan().info().inputs {
            if input.name == "input_ids" {
                continue;
            }
            let out = match arch {
                Architecture::Lstm => input.name.replace("h0", "hN").replace("c0", "cN"),
                _ => input.name.replace("past_", "present_"),
            };
            let shape: Vec<usize> = input
                .shape
                .as_ref()
                .ok_or_else(|| Error::InvalidModel(format!("state input `{}` has no shape", input.name)))?
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    // batch = 1; a cache's past length starts at 0.
                    Dim::Symbolic(s) if s == "batch" => 1,
                    _ => 0,
                })
                .collect();
            // The dims come from the file: check their product before allocating the zeros.
            let n = crate::tensor::element_count(&shape)?;
            if n > MAX_STATE_ELEMENTS {
                return Err(Error::ResourceLimit(format!(
                    "state input `{}` of shape {shape:?} has more than {MAX_STATE_ELEMENTS} elements",
                    input.name
                )));
            }
            let zeros = Tensor::new(shape, vec![0f32; n])?;
            // The backend keeps the state between steps: no copy through ferrite tensors.
            self.session.carry(&input.name, &out, zeros.view())?;
        }
        self.position = 0;
        Ok(())
    }

    /// Forgets every position from `len` on, keeping the first `len` (a conversation whose new
    /// prompt shares only part of what was fed). A KV cache is cut along its past-sequence axis;
    /// a recurrent state (LSTM `h`/`c`) cannot be rewound and is [`Error::InvalidGeneration`]
    /// unless `len` is 0 (a reset) or the current position (nothing to do).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len == self.position {
            return Ok(());
        }
        if len > self.position {
            return Err(Error::InvalidGeneration(format!(
                "cannot keep {len} positions: only {} were fed",
                self.position
            )));
        }
        if len == 0 {
            return self.reset();
        }
        for input in &self.bundle.plan().info().inputs {
            if input.name == "input_ids" {
                continue;
            }
            // The past-sequence axis: the one symbolic dim that is not the batch.
            let axis = input
                .shape
                .as_ref()
                .and_then(|dims| dims.iter().position(|d| matches!(d, Dim::Symbolic(s) if s != "batch")));
            let Some(axis) = axis else {
                return Err(Error::InvalidGeneration(format!(
                    "state `{}` has no sequence axis: a recurrent state cannot be rewound",
                    input.name
                )));
            };
            let held = self.session.carried(&input.name)?;
            let cut = keep_prefix(&held, axis, len)?;
            self.session.set_carried(&input.name, cut.view())?;
        }
        self.position = len;
        Ok(())
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Vocabulary size (length of a logits row).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Runs `ids` after everything fed so far, in one call, and returns the logits of every
    /// new position, `[ids.len() * vocab]` row-major. Checks ids and the context first.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let t = self.run(ids)?;
        Ok(t.as_slice::<f32>()?.to_vec())
    }

    /// Like [`Generator::feed`] but keeps only the last position's logits, in an internal buffer.
    pub fn feed_last(&mut self, ids: &[u32]) -> Result<&[f32]> {
        let t = self.run(ids)?;
        let all = t.as_slice::<f32>()?;
        let v = self.vocab;
        if all.len() < v {
            return Err(Error::InvalidModel("logits shorter than the vocabulary".into()));
        }
        self.logits.copy_from_slice(&all[all.len() - v..]);
        Ok(&self.logits)
    }

    fn run(&mut self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::InvalidGeneration("no tokens to feed (empty prompt)".into()));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(Error::UnknownToken { id: i64::from(id), vocab: self.vocab });
        }
        if let Some(ctx) = self.bundle.context_length()
            && self.bundle.architecture().is_kv_decoder()
            && self.position + ids.len() > ctx
        {
            return Err(Error::ContextFull { needed: self.position + ids.len(), context_length: ctx });
        }
        let input_ids =
            Tensor::new(vec![1, ids.len()], ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>())?;
        let mut outputs = self.session.step(&[("input_ids", input_ids.view())])?.into_vec();
        let i = outputs
            .iter()
            .position(|(n, _)| n == "logits")
            .ok_or_else(|| Error::InvalidModel("the model has no `logits` output".into()))?;
        self.position += ids.len();
        Ok(outputs.swap_remove(i).1)
    }

    /// The bundle this generator runs.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Generates after `prompt` (ids), from a fresh state. `token_bytes` maps an id to its text
    /// bytes for `on_text` (pass `|_| None` to stream nothing); `on_text` never sees a split
    /// UTF-8 character nor a stop string.
    pub fn generate<'t>(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        token_bytes: &dyn Fn(u32) -> Option<&'t [u8]>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.generate_streaming(prompt, opts, token_bytes, &mut |s| {
            on_text(s);
            true
        })
    }

    /// Like [`Generator::generate`], but `on_text` returns whether to go on: `false` ends the
    /// generation after the current token with [`StopReason::Cancelled`] (no text is emitted
    /// after that).
    pub fn generate_streaming<'t>(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        token_bytes: &dyn Fn(u32) -> Option<&'t [u8]>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::InvalidGeneration("the prompt is empty".into()));
        }
        if opts.max_tokens == 0 {
            return Err(Error::InvalidGeneration("max_tokens must be at least 1".into()));
        }
        let mut sampler = Sampler::new(opts.sampling, self.vocab)?;
        if let Some(ctx) = self.bundle.context_length()
            && self.bundle.architecture().is_kv_decoder()
            && prompt.len() > ctx
        {
            return Err(Error::ContextFull { needed: prompt.len(), context_length: ctx });
        }
        // The budget checked at open may have counted fewer positions than this generation
        // reaches (its KV cache and prompt logits): refuse before the prefill allocates them.
        if self.bundle.architecture().is_kv_decoder() {
            self.bundle.check_memory(prompt.len().saturating_add(opts.max_tokens))?;
        }
        self.reset()?;
        let start = Instant::now();
        // `max_tokens` is a limit, not a size: reserve no more than a generation can plausibly use.
        let reserve = opts.max_tokens.min(MAX_RESERVED_TOKENS);
        let mut history: Vec<u32> = Vec::with_capacity(prompt.len().saturating_add(reserve));
        history.extend_from_slice(prompt);
        self.feed_last(prompt)?;
        let prompt_logits = self.logits.clone();
        let mut stream = TextStream::new(opts.stop_strings.clone());
        let cancelled = std::cell::Cell::new(false);
        let mut emit = |s: &str| {
            if !cancelled.get() && !on_text(s) {
                cancelled.set(true);
            }
        };
        let mut ids = Vec::with_capacity(reserve);
        let mut time_to_first_token = Duration::ZERO;
        let ctx = match self.bundle.architecture() {
            Architecture::Gpt2 | Architecture::Llama => self.bundle.context_length(),
            _ => None,
        };
        let stop = loop {
            let id = sampler.sample(&mut self.logits, &history);
            if ids.is_empty() {
                time_to_first_token = start.elapsed();
            }
            ids.push(id);
            history.push(id);
            if opts.stop_ids.contains(&id) {
                break StopReason::StopToken;
            }
            if stream.push(token_bytes(id).unwrap_or_default(), &mut emit) {
                break StopReason::StopString;
            }
            if cancelled.get() {
                break StopReason::Cancelled;
            }
            if ids.len() >= opts.max_tokens {
                break StopReason::MaxTokens;
            }
            if ctx.is_some_and(|c| self.position >= c) {
                break StopReason::ContextFull;
            }
            self.feed_last(&[id])?;
        };
        if !cancelled.get() {
            stream.finish(&mut emit);
        }
        Ok(Generation {
            ids,
            prompt_tokens: prompt.len(),
            prompt_logits,
            time_to_first_token,
            elapsed: start.elapsed(),
            stop,
        })
    }

    /// Text in, text out: tokenizes `prompt` with the bundle's tokenizer, generates, and streams
    /// the new text to `on_text`.
    #[cfg(feature = "text")]
    pub fn generate_text(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation>
    where
        B: Clone,
    {
        // A second holder of the bundle, so the tokenizer's borrow does not hold `self`.
        let bundle = self.bundle.clone();
        let tok = bundle.require_tokenizer()?;
        let ids = tok.encode(prompt, false)?;
        self.generate(&ids, opts, &|id| tok.token_bytes(id), on_text)
    }
}
