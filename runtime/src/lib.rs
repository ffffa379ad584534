//! ferrite's no-frills runtime: memory-map an ONNX model, check it, and run it on
//! [tract](https://github.com/sonos/tract) (pure Rust, the default) or ONNX Runtime (feature
//! `ort`, loaded from its shared library at run time).
//!
//! It does not train, export or download anything, and never depends on ferrite's exporter or
//! trainer: firmware builds compile this crate alone.
//!
//! ```no_run
//! use ferrite_runtime::{Model, Options, Tensor};
//!
//! let model = Model::open("tests/models/external_data/model.onnx")?;
//! let mut session = model.prepare(&Options::default())?.session()?;
//! let x = Tensor::new(vec![3, 32], vec![0.25f32; 96])?;
//! let y = session.run(&[("x", x.view())])?;
//! assert_eq!(y.get("y").unwrap().shape(), &[3, 16]);
//! # Ok::<(), ferrite_runtime::Error>(())
//! ```
#![warn(missing_docs)]

pub mod backend;
pub mod budget;
pub mod bundle;
#[cfg(feature = "text")]
pub mod chat;
#[cfg(feature = "text")]
pub mod embed;
pub mod error;
#[cfg(feature = "text")]
pub mod eval;
pub mod generate;
pub(crate) mod heap;
#[cfg(any(feature = "tract", feature = "ort"))]
pub(crate) mod kernels;
pub mod model;
#[cfg(feature = "npy")]
pub mod npy;
pub(crate) mod rewrite;
pub mod sample;
pub mod session;
pub mod stream;
pub mod tensor;
#[cfg(feature = "text")]
pub mod tokenizer;

pub use backend::{BackendKind, Options};
pub use budget::MemoryEstimate;
pub use bundle::{Architecture, Bundle, BundleOptions};
#[cfg(feature = "text")]
pub use chat::{ChatTemplate, Conversation, Message, Reply};
#[cfg(feature = "text")]
pub use embed::Embedder;
pub use error::{Error, Result};
#[cfg(feature = "text")]
pub use eval::{Agreement, Evaluation, compare, evaluate};
pub use generate::{GenerateOptions, Generation, Generator, StopReason};
pub use model::{Dim, IoInfo, Model, ModelInfo};
pub use sample::{Sampler, SamplingParams};
pub use session::{Outputs, Plan, Session};
pub use tensor::{DType, Element, Tensor, TensorData, TensorDataView, TensorView};
#[cfg(feature = "text")]
pub use tokenizer::TextTokenizer;

/// Re-exported so callers can build f16 tensors without naming the `half` crate themselves.
pub use half::f16;
