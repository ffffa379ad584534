//! Sentence embeddings on a BERT bundle into a caller-provided float buffer.

use std::ffi::{CString, c_char};
use std::sync::Arc;

use ferrite_runtime::model::Dim;
use ferrite_runtime::{Bundle, Embedder};

use crate::bundle::ferrite_bundle;
use crate::status::{Fail, FfiResult, HandleError, ferrite_status, guard, on_handle};
use crate::util::{clear_out, copy_out, destroy, give, handle_mut, handle_ref, slice_arg, str_arg};

/// Embeds texts with a BERT bundle (one thread at a time).
pub struct ferrite_embedder {
    embedder: Embedder<Arc<Bundle>>,
    /// The embedding size when the model declares it (the last dim of `sentence_embedding`).
    dim: Option<usize>,
    last_error: CString,
}

impl HandleError for ferrite_embedder {
    fn error_slot(&mut self) -> &mut CString {
        &mut self.last_error
    }
}

/// Makes an embedder on a BERT bundle with a tokenizer (an LM bundle is
/// `FERRITE_ERR_INVALID_GENERATION`). `out` receives the handle (NULL on failure); free it with
/// `ferrite_embedder_destroy`. The embedder keeps the bundle alive.
///
/// # Safety
/// `bundle` is NULL or a live bundle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_embedder_create(
    bundle: *const ferrite_bundle,
    out: *mut *mut ferrite_embedder,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        unsafe { clear_out(out, "out") }?;
        // SAFETY: this function's contract.
        let b = unsafe { handle_ref(bundle, "bundle") }?;
        let embedder = Embedder::new(b.bundle.clone())?;
        let dim =
            b.bundle.plan().info().outputs.iter().find(|o| o.name == "sentence_embedding").and_then(|o| {
                match o.shape.as_deref()?.last()? {
                    Dim::Fixed(n) => Some(*n),
                    _ => None,
                }
            });
        // SAFETY: `out` was checked by `clear_out`.
        unsafe { give(out, ferrite_embedder { embedder, dim, last_error: CString::default() }) };
        Ok(())
    })
}

/// Frees an embedder and sets `*embedder` to NULL; NULL or `*embedder == NULL` does nothing.
///
/// # Safety
/// `embedder` is NULL or points to NULL or a live embedder no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_embedder_destroy(embedder: *mut *mut ferrite_embedder) {
    // SAFETY: this function's contract.
    unsafe { destroy(embedder) }
}

/// The message of this embedder's last failed call ("" when none). Owned by the embedder:
/// valid until its next call or its destruction. A NULL embedder gives a static message.
///
/// # Safety
/// `embedder` is NULL or a live embedder.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_embedder_last_error(embedder: *const ferrite_embedder) -> *const c_char {
    // SAFETY: this function's contract.
    match unsafe { embedder.as_ref() } {
        Some(e) => e.last_error.as_ptr(),
        None => c"embedder is NULL".as_ptr(),
    }
}

/// The size of one embedding (384 for all-MiniLM-L6-v2), or 0 when the model does not
/// declare it (then `ferrite_embedder_embed` reports the length it needs).
///
/// # Safety
/// `embedder` is NULL or a live embedder; `dim` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_embedder_dimension(
    embedder: *const ferrite_embedder,
    dim: *mut usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let e = unsafe { handle_ref(embedder, "embedder") }?;
        if dim.is_null() {
            return Err(Fail::null("dim"));
        }
        // SAFETY: non-NULL, writable per this function's contract.
        unsafe { *dim = e.dim.unwrap_or(0) };
        Ok(())
    })
}

/// Embeds `n_texts` NUL-terminated UTF-8 texts in one model run and writes the L2-normalised
/// embeddings row after row (`n_texts × dimension` floats) into `out` (capacity `capacity`
/// floats). `len` receives the number of floats the result has. When `capacity` is too small
/// the call returns `FERRITE_ERR_BUFFER_TOO_SMALL` with `*len` set and writes nothing (without
/// running the model when the dimension is declared). 0 texts is success with `*len` = 0.
///
/// # Safety
/// `embedder` is NULL or a live embedder not used by another thread during the call; `texts`
/// points to `n_texts` strings (NULL only when `n_texts` is 0); `out` is NULL or `capacity`
/// writable floats; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_embedder_embed(
    embedder: *mut ferrite_embedder,
    texts: *const *const c_char,
    n_texts: usize,
    out: *mut f32,
    capacity: usize,
    len: *mut usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let e = unsafe { handle_mut(embedder, "embedder") }?;
        let r = (|| -> FfiResult {
            if len.is_null() {
                return Err(Fail::null("len"));
            }
            // SAFETY: this function's contract.
            let list = unsafe { slice_arg(texts, n_texts, "texts") }?;
            let texts = list
                .iter()
                .enumerate()
                // SAFETY: this function's contract.
                .map(|(i, &t)| unsafe { str_arg(t, &format!("texts[{i}]")) })
                .collect::<FfiResult<Vec<_>>>()?;
            if let Some(needed) = e.dim.and_then(|d| d.checked_mul(texts.len()))
                && capacity < needed
            {
                // SAFETY: non-NULL (checked above), writable per this function's contract.
                unsafe { *len = needed };
                return Err(Fail::new(
                    ferrite_status::FERRITE_ERR_BUFFER_TOO_SMALL,
                    format!("{} texts need {needed} floats, capacity is {capacity}", texts.len()),
                ));
            }
            let rows = e.embedder.embed(&texts)?;
            let flat: Vec<f32> = rows.concat();
            // SAFETY: this function's contract.
            unsafe { copy_out(&flat, out, capacity, len, "out") }
        })();
        on_handle(e, r)
    })
}
