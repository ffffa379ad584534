//! Load-time rewrites of ONNX protobuf graphs, shared by both backends: [`graph`] indexes and
//! edits a `GraphProto` (consumers, constants, dead nodes, the KV-cache interface names), and
//! [`int8_pattern`] finds the exporter's per-row int8 quantisation subgraphs and replaces them by
//! two fused nodes. Each backend's own rewrites (tract's fused attention and in-place cache in
//! backend/tract/, ONNX Runtime's in-place attention in backend/ort/) are built on these. The
//! file on disk is never changed: rewrites edit the in-memory protobuf before a backend parses it.

pub(crate) mod graph;
#[cfg(any(feature = "tract", feature = "ort"))]
pub(crate) mod int8_pattern;
