//! Opening bundles (`ferrite export` output) and raw ONNX models: the shareable handles, and the
//! options both take.

use std::ffi::{CString, c_char};
use std::mem::size_of;
use std::sync::Arc;

use ferrite_runtime::{Architecture, BackendKind, Bundle, BundleOptions, Model, Options, Plan};

use crate::status::{Fail, FfiResult, ferrite_status, guard};
use crate::util::{
    Versioned, clear_out, copy_out, destroy, give, handle_ref, read_params, str_arg, write_result,
};

/// The engine that runs a model (a value for `ferrite_open_params.backend`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ferrite_backend {
    /// tract: pure Rust, linked into libferrite (the default).
    FERRITE_BACKEND_TRACT = 0,
    /// ONNX Runtime, loaded at run time from libonnxruntime.so (>= 1.31); needs a libferrite
    /// built with the `ort` feature, else `FERRITE_ERR_BACKEND_UNAVAILABLE`.
    FERRITE_BACKEND_ORT = 1,
}

/// A bundle's architecture (`ferrite_bundle_info.architecture`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ferrite_architecture {
    /// LSTM language model (generates).
    FERRITE_ARCH_LSTM = 0,
    /// GPT-2 language model with a KV cache (generates).
    FERRITE_ARCH_GPT2 = 1,
    /// BERT sentence encoder (embeds).
    FERRITE_ARCH_BERT = 2,
    /// Llama-family language model (Llama, Qwen2, Mistral) with a KV cache (generates).
    FERRITE_ARCH_LLAMA = 3,
}

/// How to open a bundle or a model. Fill with `ferrite_open_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_open_params {
    /// `sizeof(ferrite_open_params)`.
    pub struct_size: usize,
    /// A `ferrite_backend` value. Default `FERRITE_BACKEND_TRACT`.
    pub backend: i32,
    /// Compute threads per run; 0 is taken as 1, more than `FERRITE_MAX_THREADS` is
    /// `FERRITE_ERR_INVALID_ARGUMENT`. Default 1.
    pub threads: u32,
    /// Bundles only: non-zero checks every file's sha256 against `ferrite.json` before loading
    /// (`FERRITE_ERR_HASH_MISMATCH` on a difference). Default 1.
    pub verify_hashes: i32,
    /// ONNX Runtime only: non-zero lets it prepack weights (faster, more private memory).
    /// Default 1.
    pub ort_prepacking: i32,
    /// ONNX Runtime only: path of libonnxruntime.so, or NULL to search `ORT_DYLIB_PATH`, then
    /// next to the executable and in `../lib/`. Read during the open call only. A path that does
    /// not exist is `FERRITE_ERR_BACKEND_UNAVAILABLE`. Default NULL.
    pub ort_library: *const c_char,
}

impl Versioned for ferrite_open_params {
    const V1_SIZE: usize = size_of::<ferrite_open_params>();
}

impl Default for ferrite_open_params {
    fn default() -> Self {
        ferrite_open_params {
            struct_size: size_of::<Self>(),
            backend: ferrite_backend::FERRITE_BACKEND_TRACT as i32,
            threads: 1,
            verify_hashes: 1,
            ort_prepacking: 1,
            ort_library: std::ptr::null(),
        }
    }
}

/// Most compute threads `ferrite_open_params.threads` accepts (tract starts them all when the
/// model is opened).
pub const FERRITE_MAX_THREADS: u32 = 256;

/// Default options: tract, 1 thread, hashes verified, ONNX Runtime found by its search order.
#[unsafe(no_mangle)]
pub extern "C" fn ferrite_open_default_params() -> ferrite_open_params {
    ferrite_open_params::default()
}

/// Runtime options from the caller's params.
///
/// # Safety
/// `p` is NULL or a `ferrite_open_params` whose `ort_library` is NULL or a C string.
unsafe fn run_options(p: *const ferrite_open_params) -> FfiResult<(Options, bool)> {
    // SAFETY: NULL or a params struct per this function's contract.
    let p = unsafe { read_params(p, ferrite_open_params::default(), "params") }?;
    let backend = match p.backend {
        0 => BackendKind::Tract,
        1 => BackendKind::Ort,
        other => return Err(Fail::invalid(format!("`params->backend` is {other}: not a ferrite_backend"))),
    };
    if p.threads > FERRITE_MAX_THREADS {
        // tract starts a thread pool of this size at open: 4 billion would be 65 535 threads
        // (rayon's cap), each with its own stack.
        return Err(Fail::invalid(format!(
            "`params->threads` is {}: at most {FERRITE_MAX_THREADS}",
            p.threads
        )));
    }
    let mut options =
        Options::default().backend(backend).threads(p.threads as usize).ort_prepacking(p.ort_prepacking != 0);
    if !p.ort_library.is_null() {
        // SAFETY: a C string per this function's contract.
        options = options.ort_library(unsafe { str_arg(p.ort_library, "params->ort_library") }?);
    }
    Ok((options, p.verify_hashes != 0))
}

/// An opened bundle: shareable across threads (see the header's notes).
pub struct ferrite_bundle {
    pub(crate) bundle: Arc<Bundle>,
}

/// Opens the bundle directory `path` (what `ferrite export` writes): reads `ferrite.json`,
/// checks hashes (unless turned off), prepares the model and loads the tokenizer.
///
/// `path`: NUL-terminated UTF-8, read during the call. `params`: NULL for the defaults.
/// `out`: receives the new handle (NULL on failure); free it with `ferrite_bundle_destroy`.
///
/// # Safety
/// Pointer arguments are NULL or valid as described.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_bundle_open(
    path: *const c_char,
    params: *const ferrite_open_params,
    out: *mut *mut ferrite_bundle,
) -> ferrite_status {
    guard(|| {
        // SAFETY: the caller passes valid or NULL pointers (this function's contract).
        unsafe { clear_out(out, "out") }?;
        // SAFETY: as above.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: as above.
        let (run, verify) = unsafe { run_options(params) }?;
        let options = BundleOptions::default().run_options(run).verify_hashes(verify);
        let bundle = Bundle::open_with(path, &options)?;
        // SAFETY: `out` was checked by `clear_out`.
        unsafe { give(out, ferrite_bundle { bundle: Arc::new(bundle) }) };
        Ok(())
    })
}

/// Releases the caller's reference to a bundle and sets `*bundle` to NULL. Generators and
/// embedders made from it keep working. NULL or `*bundle == NULL` does nothing.
///
/// # Safety
/// `bundle` is NULL or points to NULL or a live bundle handle no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_bundle_destroy(bundle: *mut *mut ferrite_bundle) {
    // SAFETY: this function's contract.
    unsafe { destroy(bundle) }
}

/// What a bundle is. Set `struct_size = sizeof(ferrite_bundle_info)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_bundle_info {
    /// Set by the caller: `sizeof(ferrite_bundle_info)`.
    pub struct_size: usize,
    /// A `ferrite_architecture` value.
    pub architecture: i32,
    /// Non-zero when the bundle has a tokenizer (text in and out works).
    pub has_tokenizer: i32,
    /// Number of token ids the model accepts; 0 when unknown.
    pub vocab_size: usize,
    /// Longest sequence the model handles; 0 when it has no limit (LSTM).
    pub context_length: usize,
    /// The end-of-sequence token id, or -1 when the bundle has none.
    pub eos_id: i64,
}

impl Versioned for ferrite_bundle_info {
    const V1_SIZE: usize = size_of::<ferrite_bundle_info>();
}

/// Fills `info` with what the bundle is (architecture, vocabulary, context, EOS id).
///
/// # Safety
/// `bundle` is NULL or a live bundle; `info` is NULL or a writable `ferrite_bundle_info` whose
/// `struct_size` is set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_bundle_get_info(
    bundle: *const ferrite_bundle,
    info: *mut ferrite_bundle_info,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let b = &unsafe { handle_ref(bundle, "bundle") }?.bundle;
        let value = ferrite_bundle_info {
            struct_size: size_of::<ferrite_bundle_info>(),
            architecture: match b.architecture() {
                Architecture::Lstm => ferrite_architecture::FERRITE_ARCH_LSTM,
                Architecture::Gpt2 => ferrite_architecture::FERRITE_ARCH_GPT2,
                Architecture::Bert => ferrite_architecture::FERRITE_ARCH_BERT,
                Architecture::Llama => ferrite_architecture::FERRITE_ARCH_LLAMA,
            } as i32,
            has_tokenizer: i32::from(b.tokenizer().is_some()),
            vocab_size: b.vocab_size().unwrap_or(0),
            context_length: b.context_length().unwrap_or(0),
            eos_id: b.special_token("eos").unwrap_or(-1),
        };
        // SAFETY: this function's contract.
        unsafe { write_result(info, &value, "info") }
    })
}

/// Tokenizes `text` with the bundle's tokenizer, without special tokens (what
/// `ferrite_generator_feed_text` feeds): the ids go to `ids` (capacity `capacity`), their number
/// to `len`. When `capacity` is too small the call returns `FERRITE_ERR_BUFFER_TOO_SMALL` with
/// `*len` set and copies nothing. A bundle without a tokenizer is `FERRITE_ERR_TOKENIZER`.
///
/// # Safety
/// `bundle` is NULL or a live bundle; `text` is NULL or a NUL-terminated string; `ids` is NULL
/// (only with `capacity` 0) or `capacity` writable ids; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_bundle_tokenize(
    bundle: *const ferrite_bundle,
    text: *const c_char,
    ids: *mut u32,
    capacity: usize,
    len: *mut usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let b = &unsafe { handle_ref(bundle, "bundle") }?.bundle;
        // SAFETY: this function's contract.
        let text = unsafe { str_arg(text, "text") }?;
        let tokens = b.require_tokenizer()?.encode(text, false)?;
        // SAFETY: this function's contract.
        unsafe { copy_out(&tokens, ids, capacity, len, "ids") }
    })
}

/// A raw ONNX model prepared on a backend: shareable across threads; run it with sessions.
pub struct ferrite_model {
    pub(crate) plan: Arc<Plan>,
    /// Input and output names as C strings, in model order (for `ferrite_model_io`).
    pub(crate) input_names: Vec<CString>,
    pub(crate) output_names: Vec<CString>,
}

/// Opens and validates the ONNX file `path` and prepares it on the backend `params` choose
/// (`verify_hashes` is ignored). `out` receives the handle (NULL on failure); free it with
/// `ferrite_model_destroy`.
///
/// # Safety
/// Pointer arguments are NULL or valid as described.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_model_open(
    path: *const c_char,
    params: *const ferrite_open_params,
    out: *mut *mut ferrite_model,
) -> ferrite_status {
    guard(|| {
        // SAFETY: the caller passes valid or NULL pointers (this function's contract).
        unsafe { clear_out(out, "out") }?;
        // SAFETY: as above.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: as above.
        let (run, _) = unsafe { run_options(params) }?;
        let plan = Model::open(path)?.prepare(&run)?;
        let names = |list: &[ferrite_runtime::IoInfo]| {
            list.iter().map(|io| crate::status::c_message(&io.name)).collect::<Vec<_>>()
        };
        let model = ferrite_model {
            input_names: names(&plan.info().inputs),
            output_names: names(&plan.info().outputs),
            plan: Arc::new(plan),
        };
        // SAFETY: `out` was checked by `clear_out`.
        unsafe { give(out, model) };
        Ok(())
    })
}

/// Releases the caller's reference to a model and sets `*model` to NULL; sessions made from it
/// keep working. NULL or `*model == NULL` does nothing.
///
/// # Safety
/// `model` is NULL or points to NULL or a live model handle no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_model_destroy(model: *mut *mut ferrite_model) {
    // SAFETY: this function's contract.
    unsafe { destroy(model) }
}
