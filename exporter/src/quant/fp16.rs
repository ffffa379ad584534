//! `fp16`: weights stored as IEEE half floats and widened to f32 by a `Cast` in the graph.
//!
//! This halves the bundle without touching compute (both backends fold the `Cast` of a constant
//! at load), so accuracy loss is only the f16 rounding of the weights. It does not run f16
//! arithmetic: tract and ONNX Runtime's CPU kernels would be slower, not faster, at it.

use half::f16;

use super::Linear;
use crate::onnx::{Attr, ElemType, GraphBuilder};

/// An f16 initializer `name` widened to an f32 value; returns the f32 value's name.
pub fn widened(g: &mut GraphBuilder, name: &str, dims: &[usize], data: &[f32]) -> String {
    let bytes = data.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
    let w = g.init_bytes(name, ElemType::F16, dims, bytes);
    g.op("Cast", &[&w], vec![("to", Attr::Int(ElemType::F32.code() as i64))])
}

/// `x · Wᵀ` with W stored in f16.
pub fn matmul(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let wt = crate::checkpoint::transpose(layer.weight, layer.out, layer.inp);
    let w = widened(g, &format!("{}.weight_t", layer.name), &[layer.inp, layer.out], &wt);
    g.op("MatMul", &[x, &w], vec![])
}
