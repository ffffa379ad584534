//! ferrite-trainer trains small character- or BPE-level language models (an LSTM LM and a
//! GPT-2-architecture decoder) on one CPU with burn's `flex` backend, and writes each checkpoint
//! in exactly the layout the ferrite exporter reads: PyTorch `state_dict` names for the LSTM,
//! Hugging Face GPT-2 names for the decoder. It deliberately does not export ONNX, quantise,
//! run inference for users or train across machines: the exporter and runtime own the first
//! three, and models that outgrow one machine are trained with PyTorch and imported.
//!
//! Entry points: [`cli::TrainArgs`] / [`cli::run`] for the `ferrite train` command, and
//! [`train::train`] with a [`train::TrainConfig`] for programs and tests.

pub mod checkpoint;
pub mod cli;
pub mod corpus;
pub mod error;
pub mod model;
pub mod report;
pub mod rng;
pub mod schedule;
pub mod tokenizer;
pub mod train;

pub use error::TrainError;
