//! The exporter's one error type: each failure names the file or tensor it is about.
//!
//! Bad checkpoints (a missing tensor, a wrong shape, NaN weights) are the common case and must be
//! fixable from the message alone, so those variants carry the tensor's name and both shapes.
//! Runtime failures while checking the exported graph are wrapped, not flattened to strings.

use std::path::PathBuf;

/// Result alias used throughout the exporter.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// Everything that can go wrong while exporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A JSON file (config, vocabulary) is malformed or lacks a field.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The source's architecture could not be detected or is not supported.
    #[error("unknown architecture: {0}")]
    UnknownArchitecture(String),

    /// The checkpoint file itself is not valid safetensors.
    #[error("{}: not a valid safetensors file ({message})", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },

    /// A Keras `.keras` archive is not a readable zip, lacks an entry, or its HDF5 weights file
    /// cannot be parsed.
    #[error("{}: not a readable Keras archive ({message})", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it (the entry or tensor and the reader's message).
        message: String,
    },

    /// A GGUF file is malformed, or a tensor in it cannot be read (the reader's typed error).
    #[error("{}: {source}", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What the GGUF reader found.
        source: ferrite_gguf::Error,
    },

    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// The tensor's name (as looked up, prefix included).
        name: String,
    },

    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the checkpoint.
        found: Vec<usize>,
    },

    /// A tensor has an element type the exporter cannot read (only f32, f16, bf16).
    #[error("tensor `{name}`: unsupported dtype {dtype}")]
    TensorDType {
        /// The tensor's name.
        name: String,
        /// The stored dtype.
        dtype: String,
    },

    /// A tensor holds NaN or infinite values: exporting it would produce a useless model.
    #[error("tensor `{name}` holds {count} non-finite value(s) (NaN or Inf)")]
    NonFinite {
        /// The tensor's name.
        name: String,
        /// How many values are not finite.
        count: usize,
    },

    /// The chosen quantisation cannot express a layer (e.g. q4 needs inner sizes divisible by 32).
    #[error("quantisation {scheme}: {message}")]
    Quantisation {
        /// The scheme's name.
        scheme: &'static str,
        /// Why it does not apply.
        message: String,
    },

    /// The output directory exists and `--force` was not given.
    #[error("{} already exists (pass --force to replace it)", path.display())]
    OutputExists {
        /// The output directory.
        path: PathBuf,
    },

    /// Running the exported graph (to check it and compute goldens) failed.
    #[error("checking the exported graph: {0}")]
    Runtime(#[from] ferrite_runtime::Error),

    /// Writing golden.npz failed.
    #[error("writing {}: {message}", path.display())]
    Golden {
        /// The file.
        path: PathBuf,
        /// The writer's message.
        message: String,
    },

    /// A deliberately injected failure (tests of the atomic write use it).
    #[error("injected failure at stage `{0}`")]
    Injected(&'static str),
}

impl ExportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExportError::Io { path: path.into(), source }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ExportError::Config { path: path.into(), message: message.into() }
    }
}
