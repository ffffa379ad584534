//! `int8`: per-output-channel symmetric int8 weights, dynamic uint8 activations, integer matmul.
//!
//! The activation is quantised at run time to uint8 and multiplied with the int8 weight by
//! `MatMulInteger` into int32 (the only path with real int8 compute on tract, and a fast one on
//! ONNX Runtime); the product is scaled back by `x_scale · w_scale[out]` after the matmul. Dense
//! layers use one scale per token ([`matmul_per_token`]: measured better on all-MiniLM-L6-v2 than
//! `DynamicQuantizeLinear`'s one scale per tensor, [`matmul`], see the exporter README). The
//! weight's zero point is 0 (symmetric), so it is omitted. Weight scales use 127, not 128, so
//! that `-w` quantises to `-q` exactly. Embedding tables get int8 rows ([`gather`]).

use super::Linear;
use crate::onnx::{Attr, ElemType, GraphBuilder};

/// Per-row symmetric quantisation of a `[rows, cols]` matrix: (codes, one scale per row).
pub fn quantise_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = vec![0i8; w.len()];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        // An all-zero row keeps scale 1 so the dequantised row is exactly zero, not NaN.
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales[r] = scale;
        for (c, v) in row.iter().enumerate() {
            codes[r * cols + c] = (v / scale).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (codes, scales)
}

/// The layer's weight as int8 codes `[inp, out]` (MatMulInteger's B) and f32 scales `[out]`.
fn weight(g: &mut GraphBuilder, layer: &Linear<'_>) -> (String, String) {
    let (codes, scales) = quantise_rows(layer.weight, layer.out, layer.inp);
    // MatMulInteger wants B as [inp, out]: transpose the codes.
    let mut bt = vec![0u8; codes.len()];
    for o in 0..layer.out {
        for i in 0..layer.inp {
            bt[i * layer.out + o] = codes[o * layer.inp + i] as u8;
        }
    }
    let w = g.init_bytes(&format!("{}.weight_q", layer.name), ElemType::I8, &[layer.inp, layer.out], bt);
    let ws = g.init_f32(&format!("{}.weight_scale", layer.name), &[layer.out], &scales);
    (w, ws)
}

/// `x · Wᵀ` through `DynamicQuantizeLinear` + `MatMulInteger`.
pub fn matmul(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let (w, ws) = weight(g, layer);
    let q = g.op_n("DynamicQuantizeLinear", &[x], 3, vec![]);
    let acc = g.op("MatMulInteger", &[&q[0], &w, &q[2]], vec![]);
    let acc = g.op("Cast", &[&acc], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
    let scale = g.op("Mul", &[&q[1], &ws], vec![]);
    g.op("Mul", &[&acc, &scale], vec![])
}

/// Rows `ids` of an embedding table `[rows, cols]` stored as int8 codes with one scale per row:
/// `Gather` the codes and the scales, `Cast`, `Mul`. Returns an f32 value of shape `ids ++ [cols]`.
///
/// Only ops both backends run on any index shape; the table never exists in f32.
pub fn gather(g: &mut GraphBuilder, name: &str, rows: usize, cols: usize, data: &[f32], ids: &str) -> String {
    let (codes, scales) = quantise_rows(data, rows, cols);
    let bytes = codes.into_iter().map(|c| c as u8).collect();
    let table = g.init_bytes(&format!("{name}_q"), ElemType::I8, &[rows, cols], bytes);
    // Scales as [rows, 1] so the gathered scale broadcasts over the row without an Unsqueeze.
    let scale = g.init_f32(&format!("{name}_scale"), &[rows, 1], &scales);
    let q = g.op("Gather", &[&table, ids], vec![("axis", Attr::Int(0))]);
    let q = g.op("Cast", &[&q], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
    let s = g.op("Gather", &[&scale, ids], vec![("axis", Attr::Int(0))]);
    g.op("Mul", &[&q, &s], vec![])
}

/// `x · Wᵀ` with the activation quantised per token (per row of the last axis) rather than per
/// tensor: symmetric, scale `max|x_row| / 127`, stored as uint8 with the fixed zero point 128 so
/// the same `MatMulInteger` (uint8 × int8, scalar zero point) runs on both backends.
///
/// `DynamicQuantizeLinear` gives a whole `[B,S,D]` tensor one scale, so one token with large
/// activations (BERT's `[CLS]`/`[SEP]`/punctuation rows) coarsens every other token's codes.
pub fn matmul_per_token(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let (w, ws) = weight(g, layer);
    let a = g.op("Abs", &[x], vec![]);
    let max = g.op("ReduceMax", &[&a], vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))]);
    // An all-zero row would divide by zero: its codes are 128 (zero) whatever the scale.
    let tiny = g.scalar_f32(f32::MIN_POSITIVE);
    let max = g.op("Max", &[&max, &tiny], vec![]);
    let inv127 = g.scalar_f32(1.0 / 127.0);
    let scale = g.op("Mul", &[&max, &inv127], vec![]);
    let q = g.op("Div", &[x, &scale], vec![]);
    let q = g.op("Round", &[&q], vec![]);
    let zp_f = g.scalar_f32(128.0);
    let q = g.op("Add", &[&q, &zp_f], vec![]);
    // |x / scale| ≤ 127 so the codes lie in 1..=255; the clip guards rounding at the edge.
    let lo = g.scalar_f32(0.0);
    let hi = g.scalar_f32(255.0);
    let q = g.op("Clip", &[&q, &lo, &hi], vec![]);
    let q = g.op("Cast", &[&q], vec![("to", Attr::Int(ElemType::U8.code() as i64))]);
    let zp = g.init_bytes(&format!("{}.act_zero_point", layer.name), ElemType::U8, &[], vec![128]);
    let acc = g.op("MatMulInteger", &[&q, &w, &zp], vec![]);
    let acc = g.op("Cast", &[&acc], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
    let acc = g.op("Mul", &[&acc, &scale], vec![]);
    g.op("Mul", &[&acc, &ws], vec![])
}
