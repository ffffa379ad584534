//! `q4`: 4-bit symmetric blocks of 32 weights along the input dimension (com.microsoft
//! `MatMulNBits`, bits 4, block 32), the only non-standard op ferrite exports.
//!
//! Each block stores one f16 scale and 32 codes in 0..=15 with an implicit zero point of 8 —
//! exactly llama.cpp's Q4_0, the layout tract keeps packed in memory. The scale is chosen so the
//! block's largest-magnitude weight maps to code 0 (value -8·scale), using the full 16 levels, and
//! rounded to f16 before the codes are computed (tract's Q4_0 packer keeps f16 scales anyway, so
//! both backends now see the same weights). `MatMulNBits` wants scales of the activations' type
//! (f32): they are stored f16 and widened by a `Cast` both backends fold at load — half the scale
//! bytes on disk (the scales are 1/8 of a q4 file).
//! Activations stay f32: this scheme saves memory and bandwidth, not arithmetic. Embedding tables
//! use the same blocks, unpacked after the gather ([`gather`]).

use super::Linear;
use half::f16;

use crate::onnx::{Attr, ElemType, GraphBuilder};

/// Weights per block (along the input dimension).
pub const BLOCK: usize = 32;

/// Quantises one block: (scale, 16 packed bytes, low nibble first).
fn quantise_block(block: &[f32]) -> (f32, [u8; BLOCK / 2]) {
    let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    // Rounded to what f16 stores (saturating: |max| > 8·65504 is not a trained weight).
    let scale = f16::from_f32((max / -8.0).clamp(-f16::MAX.to_f32(), f16::MAX.to_f32())).to_f32();
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut packed = [0u8; BLOCK / 2];
    for (i, v) in block.iter().enumerate() {
        let q = ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
        packed[i / 2] |= q << (4 * (i % 2));
    }
    (scale, packed)
}

/// A dense layer's weight as [`matmul`] stores it: packed codes `[out, inp/32, 16]` (two codes
/// per byte, low nibble first, MatMulNBits' B) and scales `[out · inp/32]` (f16 on disk, the
/// name held here is their f32 `Cast`).
pub struct StoredBlocks {
    codes: String,
    scales: String,
    out: usize,
    inp: usize,
}

/// Quantises `layer`'s weight in blocks of 32 and stores it; `layer.inp` must be a multiple of
/// [`BLOCK`].
pub fn store(g: &mut GraphBuilder, layer: &Linear<'_>) -> StoredBlocks {
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
    let scale_bytes = scales.iter().flat_map(|&s| f16::from_f32(s).to_le_bytes()).collect();
    let s = g.init_bytes(
        &format!("{}.weight_q4_scale", layer.name),
        ElemType::F16,
        &[layer.out * blocks],
        scale_bytes,
    );
    let s = g.op("Cast", &[&s], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
    StoredBlocks { codes: b, scales: s, out: layer.out, inp: layer.inp }
}

/// `x · Wᵀ` through `MatMulNBits`; `layer.inp` must be a multiple of [`BLOCK`].
pub fn matmul(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let w = store(g, layer);
    matmul_stored(g, x, &w)
}

/// `x · Wᵀ` for a weight already stored by [`store`].
pub fn matmul_stored(g: &mut GraphBuilder, x: &str, w: &StoredBlocks) -> String {
    g.op_ms(
        "MatMulNBits",
        &[x, &w.codes, &w.scales],
        vec![
            ("K", Attr::Int(w.inp as i64)),
            ("N", Attr::Int(w.out as i64)),
            ("bits", Attr::Int(4)),
            ("block_size", Attr::Int(BLOCK as i64)),
        ],
    )
}

/// Rows `ids` (`[batch, sequence]`) of the `[out, inp]` matrix stored by [`store`], as f32
/// `[batch, sequence, inp]`: the embedding side of a table tied to an LM head, read from the
/// head's own blocks. Byte `i` of a block holds codes `2i` (low nibble) and `2i + 1` (high), so
/// the unpacked nibbles are interleaved back with `Unsqueeze` + `Concat` on a new last axis.
pub fn gather_rows(g: &mut GraphBuilder, w: &StoredBlocks, ids: &str) -> String {
    let blocks = w.inp / BLOCK;
    let to_f32 = vec![("to", Attr::Int(ElemType::F32.code() as i64))];
    let b = g.op("Gather", &[&w.codes, ids], vec![("axis", Attr::Int(0))]);
    let b = g.op("Cast", &[&b], to_f32);
    let (lo, hi) = split_nibbles(g, &b);
    let last = g.const_i64(&[-1]);
    let lo = g.op("Unsqueeze", &[&lo, &last], vec![]);
    let hi = g.op("Unsqueeze", &[&hi, &last], vec![]);
    let codes = g.op("Concat", &[&lo, &hi], vec![("axis", Attr::Int(-1))]);
    let eight = g.scalar_f32(8.0);
    let centred = g.op("Sub", &[&codes, &eight], vec![]);
    let block_view = g.const_i64(&[-1, blocks as i64, BLOCK as i64]);
    let centred = g.op("Reshape", &[&centred, &block_view], vec![]);
    let table_scales = g.const_i64(&[w.out as i64, blocks as i64]);
    let scales = g.op("Reshape", &[&w.scales, &table_scales], vec![]);
    let s = g.op("Gather", &[&scales, ids], vec![("axis", Attr::Int(0))]);
    let scale_view = g.const_i64(&[-1, blocks as i64, 1]);
    let s = g.op("Reshape", &[&s, &scale_view], vec![]);
    let y = g.op("Mul", &[&centred, &s], vec![]);
    let ids_shape = g.op("Shape", &[ids], vec![]);
    let width = g.const_i64(&[w.inp as i64]);
    let out_shape = g.op("Concat", &[&ids_shape, &width], vec![("axis", Attr::Int(0))]);
    g.op("Reshape", &[&y, &out_shape], vec![])
}

/// The low and high nibbles of f32 values holding bytes: `hi = floor(b/16)`, `lo = b − 16·hi`.
fn split_nibbles(g: &mut GraphBuilder, b: &str) -> (String, String) {
    let sixteenth = g.scalar_f32(1.0 / 16.0);
    let hi = g.op("Mul", &[b, &sixteenth], vec![]);
    let hi = g.op("Floor", &[&hi], vec![]);
    let sixteen = g.scalar_f32(16.0);
    let hi16 = g.op("Mul", &[&hi, &sixteen], vec![]);
    let lo = g.op("Sub", &[b, &hi16], vec![]);
    (lo, hi)
}

/// Rows `ids` of an embedding table `[rows, cols]` in 4-bit blocks of 32 along the row (same
/// codes and scales as [`matmul`], scales stored f16); `cols` must be a multiple of `2·BLOCK`.
///
/// `MatMulNBits` has no gather, so the table is unpacked with plain float ops both backends run:
/// byte `j` of a row holds code `j` (low nibble) and code `j + cols/2` (high nibble), so
/// `hi = floor(b/16)`, `lo = b - 16·hi` and `Concat(lo, hi)` is the row in order; the blocks are
/// then scaled through a `[-1, blocks, 32]` view and reshaped to `ids ++ [cols]`.
pub fn gather(g: &mut GraphBuilder, name: &str, rows: usize, cols: usize, data: &[f32], ids: &str) -> String {
    let (half_cols, blocks) = (cols / 2, cols / BLOCK);
    let mut packed = vec![0u8; rows * half_cols];
    let mut scales = Vec::with_capacity(rows * blocks);
    for (r, row) in data.chunks_exact(cols).enumerate() {
        let mut codes = vec![0u8; cols];
        for (b, block) in row.chunks_exact(BLOCK).enumerate() {
            let (s, bytes) = quantise_block(block);
            scales.push(f16::from_f32(s));
            for (i, byte) in bytes.iter().enumerate() {
                codes[b * BLOCK + 2 * i] = byte & 0x0f;
                codes[b * BLOCK + 2 * i + 1] = byte >> 4;
            }
        }
        for j in 0..half_cols {
            packed[r * half_cols + j] = codes[j] | (codes[j + half_cols] << 4);
        }
    }
    let table = g.init_bytes(&format!("{name}_q4"), ElemType::U8, &[rows, half_cols], packed);
    let scale_bytes = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    let scale = g.init_bytes(&format!("{name}_q4_scale"), ElemType::F16, &[rows, blocks], scale_bytes);
    let to_f32 = vec![("to", Attr::Int(ElemType::F32.code() as i64))];
    let b = g.op("Gather", &[&table, ids], vec![("axis", Attr::Int(0))]);
    let b = g.op("Cast", &[&b], to_f32.clone());
    let (lo, hi) = split_nibbles(g, &b);
    let codes = g.op("Concat", &[&lo, &hi], vec![("axis", Attr::Int(-1))]);
    let eight = g.scalar_f32(8.0);
    let centred = g.op("Sub", &[&codes, &eight], vec![]);
    let block_view = g.const_i64(&[-1, blocks as i64, BLOCK as i64]);
    let centred = g.op("Reshape", &[&centred, &block_view], vec![]);
    let s = g.op("Gather", &[&scale, ids], vec![("axis", Attr::Int(0))]);
    let s = g.op("Cast", &[&s], to_f32);
    let scale_view = g.const_i64(&[-1, blocks as i64, 1]);
    let s = g.op("Reshape", &[&s, &scale_view], vec![]);
    let y = g.op("Mul", &[&centred, &s], vec![]);
    let ids_shape = g.op("Shape", &[ids], vec![]);
    let width = g.const_i64(&[cols as i64]);
    let out_shape = g.op("Concat", &[&ids_shape, &width], vec![("axis", Attr::Int(0))]);
    g.op("Reshape", &[&y, &out_shape], vec![])
}
