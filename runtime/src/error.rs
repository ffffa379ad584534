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
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
