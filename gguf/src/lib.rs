//! A reader for llama.cpp's GGUF files (versions 2 and 3): the header, the metadata, the tensor
//! infos and the tensor data, memory-mapped, with dequantisation of F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q4_K, Q5_K and Q6_K tensors to f32.
//!
//! A GGUF file is untrusted input. Opening one checks the whole layout before anything else is
//! done with it: every length and count is bounded by the bytes left in the file before anything
//! is allocated for it, array nesting is capped, sizes are computed with checked arithmetic, and
//! each tensor must lie inside the file at an offset aligned to `general.alignment`. Every
//! failure is an [`Error`] that says what is wrong and where; nothing panics.
//!
//! It does not write GGUF files, interpret the model (architecture, tokenizer: that is the
//! exporter's job) or compute with the quantised blocks beyond turning them into f32.
//!
//! ```no_run
//! # fn main() -> ferrite_gguf::Result<()> {
//! let file = ferrite_gguf::GgufFile::open("model.gguf")?;
//! let layers = file.metadata().get_u32("llama.block_count")?;
//! let embed = file.tensor("token_embd.weight")?;
//! let values = file.dequantize(embed)?; // dims()[0] varies fastest
//! # let _ = (layers, values);
//! # Ok(())
//! # }
//! ```

mod cursor;
pub mod dequant;
mod error;
mod file;
mod metadata;
mod tensor;
mod types;

pub use error::{Error, Result};
pub use file::{DEFAULT_ALIGNMENT, GgufFile, MAGIC};
pub use metadata::{Array, MAX_DEPTH, Metadata, Value, ValueType};
pub use tensor::{GgmlType, MAX_DIMS, TensorInfo};
