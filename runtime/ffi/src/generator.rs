//! Text generation on an LSTM or GPT-2 bundle: a generator handle per sequence, fed with text or
//! ids, then either pulled one token at a time or run to the end with a streaming callback.

use std::ffi::{CString, c_char, c_void};
use std::mem::size_of;
use std::sync::Arc;

use ferrite_runtime::Bundle;
use ferrite_runtime::generate::{GenerateOptions, Generation, Generator, StopReason};
use ferrite_runtime::sample::{Sampler, SamplingParams};
use ferrite_runtime::stream::{self, TextStream};

use crate::bundle::ferrite_bundle;
use crate::status::{Fail, FfiResult, HandleError, ferrite_status, guard, on_handle};
use crate::util::{
    Versioned, clear_out, copy_out, destroy, give, handle_mut, handle_ref, read_params, set_opt, slice_arg,
    str_arg, write_result,
};

/// How a generator picks tokens. Fill with `ferrite_sampling_default_params()` (greedy).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_sampling_params {
    /// `sizeof(ferrite_sampling_params)`.
    pub struct_size: usize,
    /// Softmax temperature; 0 is greedy (argmax). Default 0.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = off, at most 256). Default 0.
    pub top_k: u32,
    /// Nucleus threshold in (0, 1] (1 = off). Default 1.
    pub top_p: f32,
    /// Penalty on tokens already in the sequence (1 = off), > 0. Default 1.
    pub repetition_penalty: f32,
    /// PRNG seed: the same seed gives the same tokens. Default 0.
    pub seed: u64,
}

impl Versioned for ferrite_sampling_params {
    const V1_SIZE: usize = size_of::<ferrite_sampling_params>();
}

impl Default for ferrite_sampling_params {
    fn default() -> Self {
        let d = SamplingParams::default();
        ferrite_sampling_params {
            struct_size: size_of::<Self>(),
            temperature: d.temperature,
            top_k: d.top_k as u32,
            top_p: d.top_p,
            repetition_penalty: d.repetition_penalty,
            seed: d.seed,
        }
    }
}

/// Greedy sampling (temperature 0, no top-k/top-p, no penalty, seed 0).
#[unsafe(no_mangle)]
pub extern "C" fn ferrite_sampling_default_params() -> ferrite_sampling_params {
    ferrite_sampling_params::default()
}

/// What one `ferrite_generator_generate*` call does. Fill with `ferrite_generate_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_generate_params {
    /// `sizeof(ferrite_generate_params)`.
    pub struct_size: usize,
    /// Most new tokens (at least 1). Default 64.
    pub max_tokens: u32,
    /// Non-zero stops after the bundle's end-of-sequence token (as `ferrite generate` does).
    /// Default 1.
    pub stop_at_eos: i32,
    /// `n_stop_strings` NUL-terminated UTF-8 strings (at most 8, each at most 64 bytes):
    /// generation ends when the text contains one; it is never passed to the callback. Read
    /// during the call only. May be NULL when `n_stop_strings` is 0. Default NULL.
    pub stop_strings: *const *const c_char,
    /// Number of stop strings. Default 0.
    pub n_stop_strings: usize,
}

impl Versioned for ferrite_generate_params {
    const V1_SIZE: usize = size_of::<ferrite_generate_params>();
}

impl Default for ferrite_generate_params {
    fn default() -> Self {
        ferrite_generate_params {
            struct_size: size_of::<Self>(),
            max_tokens: 64,
            stop_at_eos: 1,
            stop_strings: std::ptr::null(),
            n_stop_strings: 0,
        }
    }
}

/// 64 tokens at most, stop at the end-of-sequence token, no stop strings.
#[unsafe(no_mangle)]
pub extern "C" fn ferrite_generate_default_params() -> ferrite_generate_params {
    ferrite_generate_params::default()
}

/// Why a generation ended (`ferrite_generation.stop_reason`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ferrite_stop_reason {
    /// `max_tokens` reached.
    FERRITE_STOP_MAX_TOKENS = 0,
    /// The end-of-sequence token was generated (it is in the ids, its text is not emitted).
    FERRITE_STOP_EOS = 1,
    /// A stop string appeared (it is not emitted).
    FERRITE_STOP_STRING = 2,
    /// The model's context is full.
    FERRITE_STOP_CONTEXT_FULL = 3,
    /// The callback returned non-zero.
    FERRITE_STOP_CALLBACK = 4,
}

/// What a generation did. Set `struct_size = sizeof(ferrite_generation)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_generation {
    /// Set by the caller: `sizeof(ferrite_generation)`.
    pub struct_size: usize,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (their ids: `ferrite_generator_generated_ids`).
    pub generated_tokens: usize,
    /// A `ferrite_stop_reason` value.
    pub stop_reason: i32,
    /// From the start of the prompt's run until the first token was chosen, in milliseconds.
    pub time_to_first_token_ms: f64,
    /// Tokens per second after the first one.
    pub tokens_per_s: f64,
}

impl Versioned for ferrite_generation {
    const V1_SIZE: usize = size_of::<ferrite_generation>();
}

/// Receives generated text as it becomes final: `text` is `len` bytes of UTF-8 (never a split
/// character, never part of a stop string) followed by a NUL, valid only during the call.
/// Return 0 to go on, non-zero to stop generation after this token (`FERRITE_STOP_CALLBACK`).
/// It runs on the thread that called `ferrite_generator_generate*` and must not call functions
/// on the same generator.
pub type ferrite_text_callback =
    Option<unsafe extern "C" fn(text: *const c_char, len: usize, user_data: *mut c_void) -> i32>;

/// One sequence's generation state on a bundle (one thread at a time).
pub struct ferrite_generator {
    bundle: Arc<Bundle>,
    generator: Generator<Arc<Bundle>>,
    sampling: SamplingParams,
    sampler: Sampler,
    /// Ids fed and generated so far (the repetition penalty's history).
    history: Vec<u32>,
    /// Logits of the last fed position, copied out so the sampler may modify them.
    logits: Vec<f32>,
    has_logits: bool,
    /// The last token handed out by `next`, to be fed before anything else.
    pending: Option<u32>,
    /// A sampled token whose text did not fit the caller's buffer: handed out next time.
    ready: Option<(u32, Vec<u8>)>,
    stream: TextStream,
    /// Ids of the last `generate` call.
    generated: Vec<u32>,
    last_error: CString,
}

impl HandleError for ferrite_generator {
    fn error_slot(&mut self) -> &mut CString {
        &mut self.last_error
    }
}

impl ferrite_generator {
    fn new(bundle: Arc<Bundle>, sampling: SamplingParams) -> FfiResult<ferrite_generator> {
        let generator = Generator::new(bundle.clone())?;
        let vocab = generator.vocab_size();
        Ok(ferrite_generator {
            sampler: Sampler::new(sampling, vocab)?,
            bundle,
            generator,
            sampling,
            history: Vec::new(),
            logits: vec![0.0; vocab],
            has_logits: false,
            pending: None,
            ready: None,
            stream: TextStream::default(),
            generated: Vec::new(),
            last_error: CString::default(),
        })
    }

    fn reset(&mut self) -> FfiResult {
        self.generator.reset()?;
        self.sampler.reset();
        self.history.clear();
        self.has_logits = false;
        self.pending = None;
        self.ready = None;
        self.stream = TextStream::default();
        Ok(())
    }

    fn feed(&mut self, ids: &[u32]) -> FfiResult {
        if ids.is_empty() {
            return Err(Fail::new(ferrite_status::FERRITE_ERR_INVALID_GENERATION, "no tokens to feed"));
        }
        let mut run = Vec::with_capacity(ids.len() + 1);
        run.extend(self.pending);
        run.extend_from_slice(ids);
        let last = self.generator.feed_last(&run)?;
        self.logits.copy_from_slice(last);
        self.has_logits = true;
        self.pending = None;
        self.ready = None;
        self.history.extend_from_slice(ids);
        Ok(())
    }

    fn tokenize(&self, text: &str) -> FfiResult<Vec<u32>> {
        Ok(self.bundle.require_tokenizer()?.encode(text, false)?)
    }

    /// Samples the next token (feeding the previous one first) unless one is ready.
    fn prepare_next(&mut self) -> FfiResult<(u32, &[u8])> {
        if self.ready.is_none() {
            if let Some(id) = self.pending {
                let last = self.generator.feed_last(&[id])?;
                self.logits.copy_from_slice(last);
                self.has_logits = true;
                self.pending = None;
            }
            if !self.has_logits {
                return Err(Fail::new(
                    ferrite_status::FERRITE_ERR_INVALID_GENERATION,
                    "nothing fed yet: call ferrite_generator_feed_text or _feed_ids first",
                ));
            }
            let id = self.sampler.sample(&mut self.logits, &self.history);
            self.has_logits = false;
            self.history.push(id);
            self.pending = Some(id);
            let bytes = self.bundle.tokenizer().and_then(|t| t.token_bytes(id)).unwrap_or_default();
            let mut text = Vec::new();
            self.stream.push(bytes, &mut |s| text.extend_from_slice(s.as_bytes()));
            self.ready = Some((id, text));
        }
        let (id, text) = self.ready.as_ref().expect("set above");
        Ok((*id, text))
    }

    fn generate(
        &mut self,
        prompt: &[u32],
        params: &ferrite_generate_params,
        stops: stream::StopStrings,
        callback: ferrite_text_callback,
        user_data: *mut c_void,
    ) -> FfiResult<Generation> {
        let mut opts = GenerateOptions {
            max_tokens: params.max_tokens as usize,
            sampling: self.sampling,
            stop_strings: stops,
            ..GenerateOptions::default()
        };
        if params.stop_at_eos != 0
            && let Some(eos) = self.bundle.special_token("eos").and_then(|e| u32::try_from(e).ok())
        {
            let _ = opts.stop_ids.push(eos);
        }
        self.reset()?;
        let bundle = self.bundle.clone();
        let tok = bundle.tokenizer();
        let mut buf = Vec::new();
        let mut on_text = |s: &str| {
            let Some(cb) = callback else { return true };
            buf.clear();
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
            // SAFETY: the caller's callback per the API contract; `buf` is NUL-terminated and
            // lives for the call.
            unsafe { cb(buf.as_ptr().cast(), s.len(), user_data) == 0 }
        };
        let generation = self.generator.generate_streaming(
            prompt,
            &opts,
            &|id| tok.and_then(|t| t.token_bytes(id)),
            &mut on_text,
        )?;
        // Leave the sequence where the generation left it, so feed/next continue it.
        self.history.clear();
        self.history.extend_from_slice(prompt);
        self.history.extend_from_slice(&generation.ids);
        self.pending = generation.ids.last().copied();
        self.generated.clone_from(&generation.ids);
        Ok(generation)
    }
}

/// Makes a generator on an LSTM or GPT-2 bundle (a BERT bundle is
/// `FERRITE_ERR_INVALID_GENERATION`). `sampling`: NULL for greedy; used by
/// `ferrite_generator_next` and `ferrite_generator_generate*`. `out` receives the handle (NULL
/// on failure); free it with `ferrite_generator_destroy`. The generator keeps the bundle alive.
///
/// # Safety
/// `bundle` is NULL or a live bundle; `sampling` is NULL or a params struct; `out` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_create(
    bundle: *const ferrite_bundle,
    sampling: *const ferrite_sampling_params,
    out: *mut *mut ferrite_generator,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        unsafe { clear_out(out, "out") }?;
        // SAFETY: this function's contract.
        let b = unsafe { handle_ref(bundle, "bundle") }?;
        // SAFETY: this function's contract.
        let p = unsafe { read_params(sampling, ferrite_sampling_params::default(), "sampling") }?;
        let sampling = SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            seed: p.seed,
        };
        let g = ferrite_generator::new(b.bundle.clone(), sampling)?;
        // SAFETY: `out` was checked by `clear_out`.
        unsafe { give(out, g) };
        Ok(())
    })
}

/// Frees a generator and sets `*generator` to NULL; NULL or `*generator == NULL` does nothing.
///
/// # Safety
/// `generator` is NULL or points to NULL or a live generator no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_destroy(generator: *mut *mut ferrite_generator) {
    // SAFETY: this function's contract.
    unsafe { destroy(generator) }
}

/// The message of this generator's last failed call ("" when none). Owned by the generator:
/// valid until its next call or its destruction. A NULL generator gives a static message.
///
/// # Safety
/// `generator` is NULL or a live generator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_last_error(generator: *const ferrite_generator) -> *const c_char {
    // SAFETY: this function's contract.
    match unsafe { generator.as_ref() } {
        Some(g) => g.last_error.as_ptr(),
        None => c"generator is NULL".as_ptr(),
    }
}

/// Forgets the sequence: empty LSTM state / KV cache, position 0, sampler reseeded.
///
/// # Safety
/// `generator` is NULL or a live generator not used by another thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_reset(generator: *mut ferrite_generator) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let g = unsafe { handle_mut(generator, "generator") }?;
        let r = g.reset();
        on_handle(g, r)
    })
}

/// Appends `text` (tokenized with the bundle's tokenizer, no special tokens) to the sequence and
/// runs it in one call. Needs a tokenizer (`FERRITE_ERR_TOKENIZER` otherwise).
///
/// # Safety
/// `generator` is NULL or a live generator not used by another thread during the call; `text`
/// is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_feed_text(
    generator: *mut ferrite_generator,
    text: *const c_char,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let g = unsafe { handle_mut(generator, "generator") }?;
        // SAFETY: this function's contract.
        let r = unsafe { str_arg(text, "text") }.and_then(|t| g.tokenize(t)).and_then(|ids| g.feed(&ids));
        on_handle(g, r)
    })
}

/// Appends `n_ids` token ids to the sequence and runs them in one call.
///
/// # Safety
/// `generator` is NULL or a live generator not used by another thread during the call; `ids`
/// points to `n_ids` ids (NULL only when `n_ids` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_feed_ids(
    generator: *mut ferrite_generator,
    ids: *const u32,
    n_ids: usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let g = unsafe { handle_mut(generator, "generator") }?;
        // SAFETY: this function's contract.
        let r = unsafe { slice_arg(ids, n_ids, "ids") }.and_then(|ids| g.feed(ids));
        on_handle(g, r)
    })
}

/// Picks the next token with the generator's sampling params and appends it to the sequence.
///
/// `token` receives its id. `piece` (capacity `piece_capacity` bytes) receives the text that
/// became final with this token, NUL-terminated; it may be empty when the token ends inside a
/// UTF-8 character (the rest comes with the next tokens), and concatenating the pieces gives
/// the text. `piece_len` (may be NULL) receives the text's length without the NUL. `piece` may
/// be NULL to skip the text. When `piece_capacity` is smaller than the length + 1, the call
/// returns `FERRITE_ERR_BUFFER_TOO_SMALL` with `*piece_len` set and consumes nothing: the
/// next call returns the same token. End-of-sequence is not special here: compare the id with
/// `ferrite_bundle_info.eos_id`.
///
/// # Safety
/// `generator` is NULL or a live generator not used by another thread during the call; `token`
/// is NULL or writable; `piece` is NULL or `piece_capacity` writable bytes; `piece_len` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_next(
    generator: *mut ferrite_generator,
    token: *mut u32,
    piece: *mut c_char,
    piece_capacity: usize,
    piece_len: *mut usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let g = unsafe { handle_mut(generator, "generator") }?;
        if token.is_null() {
            return on_handle(g, Err(Fail::null("token")));
        }
        let r = g.prepare_next().and_then(|(id, text)| {
            // SAFETY: this function's contract.
            unsafe { set_opt(piece_len, text.len()) };
            if !piece.is_null() {
                if piece_capacity < text.len() + 1 {
                    return Err(Fail::new(
                        ferrite_status::FERRITE_ERR_BUFFER_TOO_SMALL,
                        format!(
                            "the piece needs {} bytes with its NUL, piece_capacity is {piece_capacity}",
                            text.len() + 1
                        ),
                    ));
                }
                // SAFETY: `piece` has `piece_capacity >= len + 1` writable bytes (checked above)
                // owned by the caller, so it does not overlap `text`.
                unsafe {
                    std::ptr::copy_nonoverlapping(text.as_ptr(), piece.cast::<u8>(), text.len());
                    *piece.add(text.len()) = 0;
                }
            }
            // SAFETY: `token` is non-NULL (checked above) and writable per the contract.
            unsafe { *token = id };
            Ok(())
        });
        if r.is_ok() {
            g.ready = None;
        }
        on_handle(g, r)
    })
}

/// Shared body of the two generate entry points.
///
/// # Safety
/// As `ferrite_generator_generate`.
unsafe fn generate_entry(
    generator: *mut ferrite_generator,
    prompt: impl FnOnce(&ferrite_generator) -> FfiResult<Vec<u32>>,
    params: *const ferrite_generate_params,
    callback: ferrite_text_callback,
    user_data: *mut c_void,
    result: *mut ferrite_generation,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let g = unsafe { handle_mut(generator, "generator") }?;
        let r = (|| {
            // SAFETY: this function's contract.
            let p = unsafe { read_params(params, ferrite_generate_params::default(), "params") }?;
            // SAFETY: this function's contract.
            let list = unsafe { slice_arg(p.stop_strings, p.n_stop_strings, "params->stop_strings") }?;
            let stops = list
                .iter()
                .enumerate()
                // SAFETY: this function's contract.
                .map(|(i, &s)| unsafe { str_arg(s, &format!("params->stop_strings[{i}]")) })
                .collect::<FfiResult<Vec<_>>>()?;
            let stops = stream::stop_strings(&stops)?;
            let ids = prompt(g)?;
            let generation = g.generate(&ids, &p, stops, callback, user_data)?;
            if !result.is_null() {
                let value = ferrite_generation {
                    struct_size: size_of::<ferrite_generation>(),
                    prompt_tokens: generation.prompt_tokens,
                    generated_tokens: generation.ids.len(),
                    stop_reason: match generation.stop {
                        StopReason::MaxTokens => ferrite_stop_reason::FERRITE_STOP_MAX_TOKENS,
                        StopReason::StopToken => ferrite_stop_reason::FERRITE_STOP_EOS,
                        StopReason::StopString => ferrite_stop_reason::FERRITE_STOP_STRING,
                        StopReason::ContextFull => ferrite_stop_reason::FERRITE_STOP_CONTEXT_FULL,
                        StopReason::Cancelled => ferrite_stop_reason::FERRITE_STOP_CALLBACK,
                    } as i32,
                    time_to_first_token_ms: generation.time_to_first_token.as_secs_f64() * 1e3,
                    tokens_per_s: generation.tokens_per_s(),
                };
                // SAFETY: this function's contract.
                unsafe { write_result(result, &value, "result") }?;
            }
            Ok(())
        })();
        on_handle(g, r)
    })
}

/// Generates after `prompt` (tokenized without special tokens) from a fresh sequence, as
/// `ferrite generate` does: the prompt runs in one call, then one token per call; text is passed
/// to `callback` (may be NULL) as it becomes final. `params`: NULL for the defaults. `result`:
/// NULL, or a `ferrite_generation` with `struct_size` set. Afterwards the generated ids are in
/// `ferrite_generator_generated_ids`, and `ferrite_generator_feed_*` / `_next` continue the
/// sequence.
///
/// # Safety
/// `generator` is NULL or a live generator not used by another thread during the call; `prompt`
/// is NULL or a NUL-terminated string; `params` is NULL or a params struct whose stop strings
/// are valid; `callback` is NULL or a function as `ferrite_text_callback` describes; `result`
/// is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_generate(
    generator: *mut ferrite_generator,
    prompt: *const c_char,
    params: *const ferrite_generate_params,
    callback: ferrite_text_callback,
    user_data: *mut c_void,
    result: *mut ferrite_generation,
) -> ferrite_status {
    // SAFETY: this function's contract.
    let prompt = |g: &ferrite_generator| unsafe { str_arg(prompt, "prompt") }.and_then(|t| g.tokenize(t));
    // SAFETY: this function's contract.
    unsafe { generate_entry(generator, prompt, params, callback, user_data, result) }
}

/// `ferrite_generator_generate` with a prompt of `n_ids` token ids (NULL only when 0, which is
/// `FERRITE_ERR_INVALID_GENERATION`: a prompt is needed).
///
/// # Safety
/// As `ferrite_generator_generate`; `ids` points to `n_ids` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_generate_ids(
    generator: *mut ferrite_generator,
    ids: *const u32,
    n_ids: usize,
    params: *const ferrite_generate_params,
    callback: ferrite_text_callback,
    user_data: *mut c_void,
    result: *mut ferrite_generation,
) -> ferrite_status {
    // SAFETY: this function's contract.
    let prompt = |_: &ferrite_generator| unsafe { slice_arg(ids, n_ids, "ids") }.map(<[u32]>::to_vec);
    // SAFETY: this function's contract.
    unsafe { generate_entry(generator, prompt, params, callback, user_data, result) }
}

/// Copies the ids generated by the last `ferrite_generator_generate*` call into `ids`
/// (capacity `capacity`); `len` receives their number. When `capacity` is too small the call
/// returns `FERRITE_ERR_BUFFER_TOO_SMALL` with `*len` set and copies nothing.
///
/// # Safety
/// `generator` is NULL or a live generator not used by another thread during the call; `ids`
/// is NULL (only with `capacity` 0) or `capacity` writable ids; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_generator_generated_ids(
    generator: *mut ferrite_generator,
    ids: *mut u32,
    capacity: usize,
    len: *mut usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let g = unsafe { handle_mut(generator, "generator") }?;
        // SAFETY: this function's contract.
        let r = unsafe { copy_out(&g.generated, ids, capacity, len, "ids") };
        on_handle(g, r)
    })
}
