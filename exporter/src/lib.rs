//! ferrite's exporter: reads a trained checkpoint (ferrite's LSTM, Hugging Face GPT-2, BERT /
//! sentence-transformers or Llama-family decoders, a llama.cpp GGUF file, or a Keras 3 `.keras`
//! LSTM next-word model) and writes an ONNX bundle that both ferrite backends (tract and ONNX
//! Runtime) run — fp32, fp16, int8 or 4-bit — with a manifest, goldens and an accuracy report.
//!
//! It needs no Python and no PyTorch. It does not train (see `ferrite-trainer`) and does not
//! serve (see `ferrite-runtime`, which it uses only to check what it wrote).
//!
//! ```no_run
//! use ferrite_exporter::{ExportOptions, QuantScheme, export};
//! let manifest = export(
//!     "checkpoints/lstm".as_ref(),
//!     "bundles/lstm-int8".as_ref(),
//!     &ExportOptions { quant: QuantScheme::Int8, ..Default::default() },
//! )?;
//! println!("{:?}", manifest.accuracy);
//! # Ok::<(), ferrite_exporter::ExportError>(())
//! ```
#![warn(missing_docs)]

pub mod accuracy;
pub mod arch;
pub mod bundle;
pub mod calibrate;
mod chat_spec;
pub mod checkpoint;
pub mod cli;
pub mod error;
pub mod gguf_tokenizer;
pub mod golden;
mod model_file;
pub mod onnx;
pub mod progress;
pub mod quant;
pub mod vocab;

pub use arch::ArchKind;
pub use bundle::{ExportOptions, Manifest, export};
pub use error::{ExportError, Result};
pub use quant::QuantScheme;
