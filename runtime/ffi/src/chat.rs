//! Chat templates from C: a conversation rendered with a bundle's chat template into a caller
//! buffer, and the token ids that end an assistant turn. Feeding the prompt and generating are
//! the generator's functions; this file adds no conversation state of its own.

use std::ffi::c_char;

use ferrite_runtime::Message;

use crate::bundle::ferrite_bundle;
use crate::status::{Fail, FfiResult, ferrite_status, guard};
use crate::util::{copy_out, handle_ref, slice_arg, str_arg};

/// One message of a conversation for `ferrite_chat_render`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_chat_message {
    /// `"system"`, `"user"` or `"assistant"` (a template may accept other roles): NUL-terminated
    /// UTF-8.
    pub role: *const c_char,
    /// The message's text: NUL-terminated UTF-8.
    pub content: *const c_char,
}

/// Renders `n_messages` messages with the bundle's chat template (the Jinja template in its
/// `ferrite.json`) into the caller's buffer, as a NUL-terminated UTF-8 prompt. Non-zero
/// `add_generation_prompt` appends the opening of an assistant turn: what a prompt for the
/// model's reply ends with. Feed the result with `ferrite_generator_feed_text` and stop at the
/// ids of `ferrite_chat_stop_ids`.
///
/// `*written` receives the prompt's length in bytes, without the NUL. When `buf_len` is less
/// than that length + 1 the call returns `FERRITE_ERR_BUFFER_TOO_SMALL` and writes nothing else:
/// call with `buf` NULL and `buf_len` 0 to learn the size. A bundle without a chat template, a
/// template error or a template's `raise_exception` is `FERRITE_ERR_CHAT_TEMPLATE`; a template
/// that exceeds its fuel, recursion or output bounds is `FERRITE_ERR_RESOURCE_LIMIT`.
///
/// `messages` and their strings are read during the call only. The bundle may be used by other
/// threads at the same time.
///
/// # Safety
/// `bundle` is NULL or a live bundle; `messages` points to `n_messages` messages (NULL only when
/// `n_messages` is 0) whose strings are NULL or NUL-terminated; `buf` is NULL (only with
/// `buf_len` 0) or `buf_len` writable bytes; `written` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_chat_render(
    bundle: *const ferrite_bundle,
    messages: *const ferrite_chat_message,
    n_messages: usize,
    add_generation_prompt: i32,
    buf: *mut c_char,
    buf_len: usize,
    written: *mut usize,
) -> ferrite_status {
    guard(|| {
        if written.is_null() {
            return Err(Fail::null("written"));
        }
        // SAFETY: this function's contract.
        let b = &unsafe { handle_ref(bundle, "bundle") }?.bundle;
        // SAFETY: this function's contract.
        let raw = unsafe { slice_arg(messages, n_messages, "messages") }?;
        let list = raw
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // SAFETY: each string is NULL or NUL-terminated (this function's contract).
                let role = unsafe { str_arg(m.role, &format!("messages[{i}].role")) }?;
                // SAFETY: as above.
                let content = unsafe { str_arg(m.content, &format!("messages[{i}].content")) }?;
                Ok(Message::new(role, content))
            })
            .collect::<FfiResult<Vec<_>>>()?;
        let text = b.require_chat_template()?.render(&list, add_generation_prompt != 0)?;
        // SAFETY: checked non-NULL above; writable per this function's contract.
        unsafe { *written = text.len() };
        if buf_len <= text.len() {
            return Err(Fail::new(
                ferrite_status::FERRITE_ERR_BUFFER_TOO_SMALL,
                format!("the prompt needs {} bytes with its NUL, `buf_len` is {buf_len}", text.len() + 1),
            ));
        }
        if buf.is_null() {
            return Err(Fail::null("buf"));
        }
        // SAFETY: `buf` has `buf_len > text.len()` writable bytes (this function's contract) and
        // belongs to the caller, so it does not overlap `text`.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            *buf.add(text.len()) = 0;
        }
        Ok(())
    })
}

/// The token ids that end an assistant turn for the bundle's chat template (its end-of-turn
/// tokens, then the end-of-sequence token): at most 8. They go to `ids` (capacity `capacity`),
/// their number to `*len`; when `capacity` is too small the call returns
/// `FERRITE_ERR_BUFFER_TOO_SMALL` with `*len` set and copies nothing. A bundle without a chat
/// template is `FERRITE_ERR_CHAT_TEMPLATE`.
///
/// # Safety
/// `bundle` is NULL or a live bundle; `ids` is NULL (only with `capacity` 0) or `capacity`
/// writable ids; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_chat_stop_ids(
    bundle: *const ferrite_bundle,
    ids: *mut u32,
    capacity: usize,
    len: *mut usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let b = &unsafe { handle_ref(bundle, "bundle") }?.bundle;
        let stop = b.require_chat_template()?.stop_ids();
        // SAFETY: this function's contract.
        unsafe { copy_out(stop, ids, capacity, len, "ids") }
    })
}
