//! A small ONNX graph builder over `tract_onnx::pb` and the writer that lays weights out as
//! page-aligned external data.
//!
//! The builder only knows ONNX, not models: architectures (`crate::arch`) describe their graph
//! through it and quantisation schemes (`crate::quant`) emit their matmuls through it. It does no
//! shape inference and no optimisation; both backends do their own.

mod graph;
mod write;

pub use graph::{Attr, Dim, ElemType, GraphBuilder, OPSET, OPSET_MS};
pub use write::{DATA_FILE, EXTERNAL_ALIGN, MODEL_FILE, write_model};
