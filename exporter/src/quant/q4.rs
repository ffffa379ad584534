//! `q4`: 4-bit symmetric blocks of 32 weights along the input dimension (com.microsoft
//! `MatMulNBits`, bits 4, block 32), the only non-standard op ferrite exports.
//!
//! Each block stores one f32 scale and 32 codes in 0..=15 with an implicit zero point of 8 —
//! exactly llama.cpp's Q4_0, the layout tract keeps packed in memory. The scale is chosen so the
//! block's largest-magnitude weight maps to code 0 (value -8·scale), using the full 16 levels.
//! Activations stay f32: this scheme saves memory and bandwidth, not arithmetic.

use super::Linear;
use crate::onnx::{Attr, GraphBuilder};

/// Weights per block (along the input dimension).
pub const BLOCK: usize = 32;

/// Quantises one block: (scale, 16 packed bytes, low nibble first).
fn quantise_block(block: &[f32]) -> (f32, [u8; BLOCK / 2]) {
    let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let scale = max / -8.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut packed = [0u8; BLOCK / 2];
    for (i, v) in block.iter().enumerate() {
        let q = ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
        packed[i / 2] |= q << (4 * (i % 2));
    }
    (scale, packed)
}

/// `x · Wᵀ` through `MatMulNBits`; `layer.inp` must be a multiple of [`BLOCK`].
pub fn matmul(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let blocks = layer.inp / BLOCK;
    let mut codes = Vec::with_capacity(layer.out * blocks * BLOCK / 2);
    let mut scales = Vec::with_capacity(layer.out * blocks);
    for row in layer.weight.chunks_exact(layer.inp) {
        for block in row.chunks_exact(BLOCK) {
            let (s, packed) = quantise_block(block);
            scales.push(s);
            codes.extend_from_slice(&packed);
        }
    }
    let b = g.init_bytes(
        &format!("{}.weight_q4", layer.name),
        crate::onnx::ElemType::U8,
        &[layer.out, blocks, BLOCK / 2],
        codes,
    );
    let s = g.init_f32(&format!("{}.weight_q4_scale", layer.name), &[layer.out * blocks], &scales);
    g.op_ms(
        "MatMulNBits",
        &[x, &b, &s],
        vec![
            ("K", Attr::Int(layer.inp as i64)),
            ("N", Attr::Int(layer.out as i64)),
            ("bits", Attr::Int(4)),
            ("block_size", Attr::Int(BLOCK as i64)),
        ],
    )
}
