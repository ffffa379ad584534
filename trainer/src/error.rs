//! The library's error type. It names the file, flag or tensor at fault so a user can act on the
//! message; it does not wrap burn's panics (burn reports shape bugs by panicking, which are our
//! bugs, not input errors).

use std::path::PathBuf;

/// Everything the trainer reports as a user-facing failure.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A flag or flag combination is invalid (checked before any work starts).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No corpus file was found under the given paths, or every file was empty.
    #[error("empty corpus: {0}")]
    EmptyCorpus(String),
    /// The corpus (or one of its splits) holds fewer tokens than one training window needs.
    #[error(
        "corpus too short: the {split} split has {tokens} tokens but one context window needs {needed} (context + 1); add text or lower --context"
    )]
    CorpusTooShort {
        /// `train` or `validation`.
        split: &'static str,
        /// Tokens available in that split.
        tokens: usize,
        /// Tokens one window needs.
        needed: usize,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The character tokenizer met bytes that are not UTF-8.
    #[error(
        "{path}: not valid UTF-8 at byte {offset}; the char tokenizer needs UTF-8 text, use --tokenizer bpe:N (byte-level) for arbitrary bytes"
    )]
    NotUtf8 {
        /// The file at fault.
        path: PathBuf,
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Training, saving or loading a tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A checkpoint directory is missing a file, or a file does not match its config.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Drawing the loss plot failed.
    #[error("plot {path}: {message}")]
    Plot {
        /// The image being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl TrainError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// A checkpoint problem at `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.into(), message: message.into() }
    }
}

/// Result alias for the trainer.
pub type Result<T> = std::result::Result<T, TrainError>;
