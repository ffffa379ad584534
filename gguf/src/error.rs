//! Everything that can go wrong reading a GGUF file, as one typed error.
//!
//! A GGUF file is untrusted input: every variant names the place in the file that is wrong and
//! what was expected, in words a user who never read the GGUF specification can act on. Keys and
//! tensor names from the file are printed quoted and escaped (`{name:?}`), so a message is always
//! one line whatever bytes the file holds.

use std::path::PathBuf;

use crate::types::{GgmlType, ValueType};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a GGUF file, or a request made of it, was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or mapped. The OS error is part of the message and not a
    /// `source()`, so a printed error chain names it once.
    #[error("cannot read {}: {reason}", path.display())]
    Io { path: PathBuf, reason: std::io::Error },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: it starts with \"{}\", not \"GGUF\"", found.escape_ascii())]
    BadMagic { found: Vec<u8> },
    /// A GGUF version other than 2 or 3.
    #[error("GGUF version {version} is not supported (ferrite reads versions 2 and 3)")]
    UnsupportedVersion { version: u32 },
    /// Something the file declares runs past its end.
    #[error(
        "the file is truncated: {what} needs {needed} bytes at offset {offset}, but the file ends at {len}"
    )]
    Truncated { what: String, offset: u64, needed: u64, len: u64 },
    /// A size computed from the file's numbers does not fit in 64 bits (or in `usize`).
    #[error("{what} is too large: {detail}")]
    Overflow { what: String, detail: String },
    /// A tensor's data lies (partly) outside the file.
    #[error(
        "tensor {name:?} lies outside the file: its data would be bytes {start}..{end}, but the file has {len} bytes"
    )]
    OutOfBounds { name: String, start: u64, end: u64, len: u64 },
    /// A metadata value type code outside the GGUF specification.
    #[error("metadata {key:?} has unknown value type {code}")]
    UnknownValueType { key: String, code: u32 },
    /// A tensor type code that is not a ggml type.
    #[error("tensor {name:?} has unknown ggml type {code}")]
    UnknownType { name: String, code: u32 },
    /// A tensor offset that is not a multiple of the file's alignment.
    #[error(
        "tensor {name:?} starts at data offset {offset}, which is not a multiple of the file's alignment {alignment}"
    )]
    Misaligned { name: String, offset: u64, alignment: u64 },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment is {alignment}; it must be a power of two")]
    BadAlignment { alignment: u64 },
    /// Two tensors with one name.
    #[error("tensor {name:?} appears more than once")]
    DuplicateTensor { name: String },
    /// Two metadata entries with one key.
    #[error("metadata key {key:?} appears more than once")]
    DuplicateKey { key: String },
    /// A tensor the caller asked for is not in the file.
    #[error("the file has no tensor named {name:?}")]
    MissingTensor { name: String },
    /// A metadata key the caller asked for is not in the file.
    #[error("the file has no metadata key {key:?}")]
    MissingKey { key: String },
    /// A key, tensor name or string value that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadString { what: String },
    /// More than four dimensions.
    #[error("tensor {name:?} has {n_dims} dimensions; GGUF allows at most {max}")]
    TooManyDims { name: String, n_dims: u32, max: usize },
    /// A row length that is not a whole number of the type's blocks.
    #[error("tensor {name:?}: its row length {ne0} is not a multiple of {ty}'s block size {block}")]
    BadShape { name: String, ty: GgmlType, ne0: u64, block: u64 },
    /// Arrays of arrays nested deeper than the reader allows.
    #[error("metadata {key:?} nests arrays more than {max} levels deep")]
    TooDeep { key: String, max: usize },
    /// A metadata value of another type than the one asked for.
    #[error("metadata {key:?} is {found}, not {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
    /// Dequantising a ggml type this crate does not implement.
    #[error(
        "tensor {name:?} is {ty}; ferrite dequantises only F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K"
    )]
    Unsupported { name: String, ty: GgmlType },
    /// Raw blocks of one type asked of a tensor of another.
    #[error("tensor {name:?} is {found}, not {expected}")]
    WrongTensorType { name: String, expected: GgmlType, found: GgmlType },
}

impl Error {
    /// The variant's name (`"Truncated"`, `"BadMagic"`, ...): for logs and test corpora.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "Io",
            Error::BadMagic { .. } => "BadMagic",
            Error::UnsupportedVersion { .. } => "UnsupportedVersion",
            Error::Truncated { .. } => "Truncated",
            Error::Overflow { .. } => "Overflow",
            Error::OutOfBounds { .. } => "OutOfBounds",
            Error::UnknownValueType { .. } => "UnknownValueType",
            Error::UnknownType { .. } => "UnknownType",
            Error::Misaligned { .. } => "Misaligned",
            Error::BadAlignment { .. } => "BadAlignment",
            Error::DuplicateTensor { .. } => "DuplicateTensor",
            Error::DuplicateKey { .. } => "DuplicateKey",
            Error::MissingTensor { .. } => "MissingTensor",
            Error::MissingKey { .. } => "MissingKey",
            Error::BadString { .. } => "BadString",
            Error::TooManyDims { .. } => "TooManyDims",
            Error::BadShape { .. } => "BadShape",
            Error::TooDeep { .. } => "TooDeep",
            Error::WrongType { .. } => "WrongType",
            Error::Unsupported { .. } => "Unsupported",
            Error::WrongTensorType { .. } => "WrongTensorType",
        }
    }

    pub(crate) fn wrong_type(key: &str, expected: &'static str, found: ValueType) -> Error {
        Error::WrongType { key: key.to_string(), expected, found: format!("of type {found}") }
    }
}
