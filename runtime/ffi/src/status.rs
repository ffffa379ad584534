//! Status codes, error messages (per thread and per handle) and the guard every entry point runs
//! in: it turns runtime errors into a `ferrite_status`, records the message, and catches panics so
//! that none crosses into C.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ferrite_runtime::Error;

/// What a ferrite function returns. `FERRITE_OK` is 0; every other value is a failure whose
/// message is `ferrite_last_error()` (and, for a generator, embedder or session, its own
/// `*_last_error()`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ferrite_status {
    /// Success.
    FERRITE_OK = 0,
    /// A NULL handle or pointer, a value out of range, a `struct_size` too small, or a
    /// `byte_size` that does not match the shape.
    FERRITE_ERR_INVALID_ARGUMENT = 1,
    /// A text argument (path, prompt, text, stop string, tensor name) is not valid UTF-8.
    FERRITE_ERR_INVALID_UTF8 = 2,
    /// A caller buffer is too small; the needed length was written where documented and nothing
    /// else changed.
    FERRITE_ERR_BUFFER_TOO_SMALL = 3,
    /// A file could not be read (missing, unreadable).
    FERRITE_ERR_IO = 4,
    /// A file is not ONNX, or is corrupt, truncated or inconsistent.
    FERRITE_ERR_INVALID_MODEL = 5,
    /// A bundle directory is incomplete or its `ferrite.json` is malformed.
    FERRITE_ERR_INVALID_BUNDLE = 6,
    /// A bundle file's sha256 differs from its manifest (tampered or corrupt).
    FERRITE_ERR_HASH_MISMATCH = 7,
    /// The model uses an operator the chosen backend does not implement.
    FERRITE_ERR_UNSUPPORTED_OP = 8,
    /// The backend is not compiled into this library, or ONNX Runtime's shared library cannot
    /// be loaded (missing, or older than 1.31).
    FERRITE_ERR_BACKEND_UNAVAILABLE = 9,
    /// The backend failed on a model that passed validation.
    FERRITE_ERR_BACKEND = 10,
    /// Inputs that do not match the model's (unknown, missing or repeated names).
    FERRITE_ERR_INVALID_INPUT = 11,
    /// An input's shape does not fit the model's declared shape.
    FERRITE_ERR_SHAPE_MISMATCH = 12,
    /// An input's or a requested output's dtype differs from the model's.
    FERRITE_ERR_DTYPE_MISMATCH = 13,
    /// A size beyond what the library accepts or can allocate.
    FERRITE_ERR_RESOURCE_LIMIT = 14,
    /// Text that cannot be tokenized, or a bundle without a tokenizer given text.
    FERRITE_ERR_TOKENIZER = 15,
    /// A token id outside the model's vocabulary.
    FERRITE_ERR_UNKNOWN_TOKEN = 16,
    /// The sequence would not fit the model's context length.
    FERRITE_ERR_CONTEXT_FULL = 17,
    /// Generation settings or a call order that cannot be honoured: an empty prompt, `max_tokens`
    /// 0, bad sampling values, `ferrite_generator_next` before anything was fed, a BERT bundle
    /// given to a generator or an LM bundle to an embedder.
    FERRITE_ERR_INVALID_GENERATION = 18,
    /// A panic inside ferrite (a bug): the handle involved may be inconsistent, destroy it.
    FERRITE_ERR_INTERNAL = 19,
    /// The bundle has no chat template, or its template failed: a syntax error, a value it
    /// cannot use, or the template's own `raise_exception(...)`.
    FERRITE_ERR_CHAT_TEMPLATE = 20,
}

use ferrite_status::*;

/// A failure on its way to C: the status and its message.
#[derive(Debug)]
pub(crate) struct Fail {
    pub status: ferrite_status,
    pub message: String,
}

impl Fail {
    pub fn new(status: ferrite_status, message: impl Into<String>) -> Fail {
        Fail { status, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Fail {
        Fail::new(FERRITE_ERR_INVALID_ARGUMENT, message)
    }

    pub fn null(what: &str) -> Fail {
        Fail::invalid(format!("`{what}` is NULL"))
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let status = match &e {
            Error::Io { .. } => FERRITE_ERR_IO,
            Error::NotOnnx { .. } | Error::InvalidModel(_) => FERRITE_ERR_INVALID_MODEL,
            Error::UnsupportedOp { .. } => FERRITE_ERR_UNSUPPORTED_OP,
            Error::ShapeMismatch { .. } => FERRITE_ERR_SHAPE_MISMATCH,
            Error::DTypeMismatch { .. } => FERRITE_ERR_DTYPE_MISMATCH,
            Error::InvalidInput(_) => FERRITE_ERR_INVALID_INPUT,
            Error::BackendUnavailable { .. } => FERRITE_ERR_BACKEND_UNAVAILABLE,
            Error::ResourceLimit(_) => FERRITE_ERR_RESOURCE_LIMIT,
            Error::Backend { .. } => FERRITE_ERR_BACKEND,
            Error::InvalidBundle { .. } => FERRITE_ERR_INVALID_BUNDLE,
            Error::HashMismatch { .. } => FERRITE_ERR_HASH_MISMATCH,
            Error::Tokenizer(_) => FERRITE_ERR_TOKENIZER,
            Error::UnknownToken { .. } => FERRITE_ERR_UNKNOWN_TOKEN,
            Error::InvalidGeneration(_) => FERRITE_ERR_INVALID_GENERATION,
            Error::ContextFull { .. } => FERRITE_ERR_CONTEXT_FULL,
            Error::ChatTemplate(_) => FERRITE_ERR_CHAT_TEMPLATE,
            // `Error` is non-exhaustive: a kind added later is reported, never lost.
            _ => FERRITE_ERR_BACKEND,
        };
        Fail::new(status, e.to_string())
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, Fail>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A C string of `message`; interior NUL bytes (impossible in our messages, but cheap to rule
/// out) become U+FFFD.
pub(crate) fn c_message(message: &str) -> CString {
    CString::new(message.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

fn set_last_error(message: &str) {
    // A thread being torn down has no slot any more; the status still reaches the caller.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c_message(message));
}

/// Runs an entry point's body: `Ok` is `FERRITE_OK`; an error or a panic is recorded as this
/// thread's last error and returned as its status.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> ferrite_status {
    let fail = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return FERRITE_OK,
        Ok(Err(fail)) => fail,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Fail::new(FERRITE_ERR_INTERNAL, format!("internal error (a bug in ferrite): {what}"))
        }
    };
    set_last_error(&fail.message);
    fail.status
}

/// Runs a body that cannot fail but must still not unwind into C; `fallback` on a panic.
pub(crate) fn no_panic<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// A handle used by one thread at a time keeps the message of its own last failure.
pub(crate) trait HandleError {
    fn error_slot(&mut self) -> &mut CString;
}

/// Records `result`'s message on the handle too, and passes it on.
pub(crate) fn on_handle<H: HandleError, T>(handle: &mut H, result: FfiResult<T>) -> FfiResult<T> {
    if let Err(fail) = &result {
        *handle.error_slot() = c_message(&fail.message);
    }
    result
}

const EMPTY: &std::ffi::CStr = c"";

/// The message of the last failed ferrite call on the calling thread, or "" when none failed.
///
/// Owned by the library: valid until the next failed ferrite call on this thread; never free it.
/// Successful calls leave it unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn ferrite_last_error() -> *const c_char {
    no_panic(EMPTY.as_ptr(), || LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).unwrap_or(EMPTY.as_ptr()))
}

/// The name of a `ferrite_status` value as a static string (`"FERRITE_ERR_IO"`;
/// `"FERRITE_STATUS_UNKNOWN"` for a value that is none of them). Never NULL; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn ferrite_status_name(status: i32) -> *const c_char {
    const ALL: [ferrite_status; 21] = [
        FERRITE_OK,
        FERRITE_ERR_INVALID_ARGUMENT,
        FERRITE_ERR_INVALID_UTF8,
        FERRITE_ERR_BUFFER_TOO_SMALL,
        FERRITE_ERR_IO,
        FERRITE_ERR_INVALID_MODEL,
        FERRITE_ERR_INVALID_BUNDLE,
        FERRITE_ERR_HASH_MISMATCH,
        FERRITE_ERR_UNSUPPORTED_OP,
        FERRITE_ERR_BACKEND_UNAVAILABLE,
        FERRITE_ERR_BACKEND,
        FERRITE_ERR_INVALID_INPUT,
        FERRITE_ERR_SHAPE_MISMATCH,
        FERRITE_ERR_DTYPE_MISMATCH,
        FERRITE_ERR_RESOURCE_LIMIT,
        FERRITE_ERR_TOKENIZER,
        FERRITE_ERR_UNKNOWN_TOKEN,
        FERRITE_ERR_CONTEXT_FULL,
        FERRITE_ERR_INVALID_GENERATION,
        FERRITE_ERR_INTERNAL,
        FERRITE_ERR_CHAT_TEMPLATE,
    ];
    let Some(&status) = ALL.iter().find(|s| **s as i32 == status) else {
        return c"FERRITE_STATUS_UNKNOWN".as_ptr();
    };
    let name: &'static std::ffi::CStr = match status {
        FERRITE_OK => c"FERRITE_OK",
        FERRITE_ERR_INVALID_ARGUMENT => c"FERRITE_ERR_INVALID_ARGUMENT",
        FERRITE_ERR_INVALID_UTF8 => c"FERRITE_ERR_INVALID_UTF8",
        FERRITE_ERR_BUFFER_TOO_SMALL => c"FERRITE_ERR_BUFFER_TOO_SMALL",
        FERRITE_ERR_IO => c"FERRITE_ERR_IO",
        FERRITE_ERR_INVALID_MODEL => c"FERRITE_ERR_INVALID_MODEL",
        FERRITE_ERR_INVALID_BUNDLE => c"FERRITE_ERR_INVALID_BUNDLE",
        FERRITE_ERR_HASH_MISMATCH => c"FERRITE_ERR_HASH_MISMATCH",
        FERRITE_ERR_UNSUPPORTED_OP => c"FERRITE_ERR_UNSUPPORTED_OP",
        FERRITE_ERR_BACKEND_UNAVAILABLE => c"FERRITE_ERR_BACKEND_UNAVAILABLE",
        FERRITE_ERR_BACKEND => c"FERRITE_ERR_BACKEND",
        FERRITE_ERR_INVALID_INPUT => c"FERRITE_ERR_INVALID_INPUT",
        FERRITE_ERR_SHAPE_MISMATCH => c"FERRITE_ERR_SHAPE_MISMATCH",
        FERRITE_ERR_DTYPE_MISMATCH => c"FERRITE_ERR_DTYPE_MISMATCH",
        FERRITE_ERR_RESOURCE_LIMIT => c"FERRITE_ERR_RESOURCE_LIMIT",
        FERRITE_ERR_TOKENIZER => c"FERRITE_ERR_TOKENIZER",
        FERRITE_ERR_UNKNOWN_TOKEN => c"FERRITE_ERR_UNKNOWN_TOKEN",
        FERRITE_ERR_CONTEXT_FULL => c"FERRITE_ERR_CONTEXT_FULL",
        FERRITE_ERR_INVALID_GENERATION => c"FERRITE_ERR_INVALID_GENERATION",
        FERRITE_ERR_INTERNAL => c"FERRITE_ERR_INTERNAL",
        FERRITE_ERR_CHAT_TEMPLATE => c"FERRITE_ERR_CHAT_TEMPLATE",
    };
    name.as_ptr()
}
