//! `int8`: per-output-channel symmetric int8 weights, dynamic uint8 activations, integer matmul.
//!
//! `DynamicQuantizeLinear` turns the activation into uint8 with a per-tensor scale and zero point
//! computed at run time; `MatMulInteger` multiplies it with the int8 weight into int32 (the only
//! path with real int8 compute on tract, and a fast one on ONNX Runtime); the product is scaled
//! back by `x_scale · w_scale[out]` after the matmul. The weight's zero point is 0 (symmetric), so
//! it is omitted. Weight scales use 127, not 128, so that `-w` quantises to `-q` exactly.

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

/// `x · Wᵀ` through `DynamicQuantizeLinear` + `MatMulInteger`.
pub fn matmul(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
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
    let q = g.op_n("DynamicQuantizeLinear", &[x], 3, vec![]);
    let acc = g.op("MatMulInteger", &[&q[0], &w, &q[2]], vec![]);
    let acc = g.op("Cast", &[&acc], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
    let scale = g.op("Mul", &[&q[1], &ws], vec![]);
    g.op("Mul", &[&acc, &scale], vec![])
}
