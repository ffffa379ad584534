//! The runtime's one error type: every failure a caller can act on has its own kind.
//!
//! Backends' own errors (tract's `anyhow`, ONNX Runtime's status messages) are mapped onto these
//! kinds at the backend boundary, so a caller never matches on a backend's message text.

use std::path::PathBuf;

/// Result alias used throughout the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while opening or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read (missing, unreadable, or not mappable).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file the runtime tried to read.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// The file is not an ONNX model at all (empty, random bytes, another format).
    #[error("{}: not an ONNX model ({reason})", path.display())]
    NotOnnx {
        /// The file that was opened.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },

    /// The file looks like ONNX but is corrupt, truncated or inconsistent.
    #[error("invalid model: {0}")]
    InvalidModel(String),

    /// The model uses an operator the chosen backend does not implement.
    #[error("operator `{op}` is not supported by the {backend} backend")]
    UnsupportedOp {
        /// The operator's type, prefixed with its domain when it is not the default one.
        op: String,
        /// The backend that refused it.
        backend: &'static str,
    },

    /// An input tensor's shape does not fit the model's declared shape.
    #[error("input `{input}`: expected shape {expected}, got {got}")]
    ShapeMismatch {
        /// The model input's name.
        input: String,
        /// The declared shape, symbolic dims by name (`[batch, 64]`).
        expected: String,
        /// The shape that was passed.
        got: String,
    },

    /// An input tensor's element type does not match the model's declared type.
    #[error("input `{input}`: expected dtype {expected}, got {got}")]
    DTypeMismatch {
        /// The model input's name.
        input: String,
        /// The declared element type.
        expected: String,
        /// The element type that was passed.
        got: String,
    },

    /// Inputs that do not match the model's input list (unknown or missing names).
    #[error("invalid inputs: {0}")]
    InvalidInput(String),

    /// The requested backend is not compiled in, or its shared library cannot be loaded.
    #[error("{backend} backend unavailable: {reason}")]
    BackendUnavailable {
        /// `tract` or `ort`.
        backend: &'static str,
        /// What is missing and where the runtime looked.
        reason: String,
    },

    /// A size or count is beyond what the runtime accepts or can allocate.
    #[error("resource limit: {0}")]
    ResourceLimit(String),

    /// The backend failed while preparing or running a model that passed validation.
    #[error("{backend} backend failed: {message}")]
    Backend {
        /// `tract` or `ort`.
        backend: &'static str,
        /// The backend's own message.
        message: String,
    },

    /// A bundle directory is incomplete or its `ferrite.json` is malformed.
    #[error("{}: invalid bundle: {reason}", path.display())]
    InvalidBundle {
        /// The bundle directory or the file inside it that is wrong.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A bundle file's SHA-256 differs from the one its manifest lists (tampered or corrupt).
    #[error("{}: sha256 mismatch (manifest {expected}, file {actual})", path.display())]
    HashMismatch {
        /// The file whose contents changed.
        path: PathBuf,
        /// The hash `ferrite.json` lists.
        expected: String,
        /// The hash of the file on disk.
        actual: String,
    },

    /// Text could not be tokenized or ids could not be decoded, or the bundle has no tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A token id outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary (0..{vocab})")]
    UnknownToken {
        /// The offending id.
        id: i64,
        /// The vocabulary size.
        vocab: usize,
    },

    /// Generation or sampling settings that cannot be honoured (empty prompt, `max_tokens` 0,
    /// a negative temperature, `top_p` outside (0, 1]…).
    #[error("invalid generation settings: {0}")]
    InvalidGeneration(String),

    /// The bundle has no chat template, or its template failed: a syntax error, a value it cannot
    /// use, or its own `raise_exception(...)`. (A template that runs out of its fuel, recursion
    /// or output bounds is [`Error::ResourceLimit`].)
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// The sequence would exceed the model's context length.
    #[error("context full: {needed} positions needed, the model handles {context_length}")]
    ContextFull {
        /// Positions the request needs.
        needed: usize,
        /// The model's context length.
        context_length: usize,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
