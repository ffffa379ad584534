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
//!
//! **Weights already on a 4-bit grid keep their codes.** A GGUF Q4_0 tensor, dequantised, is
//! requantised to exactly its own codes and scales by the rule above. A Q4_1 tensor
//! (`d·q + m`, f16 `d` and `m`, codes 0..=15) is not symmetric, so [`store`] recognises it from
//! its values — llama.cpp's quantiser sets `m` to the block minimum and `d` to a fifteenth of its
//! range, so the minimum, maximum and f16 rounding give back `d`, `m` and every code exactly —
//! and stores each block as `d·(q − 8) + o` with `o = m + 8d`: the same `MatMulNBits` codes and
//! scales plus a per-block offset, added as `blocksum(x) · Oᵀ` (a `[.., K/32] × [K/32, N]`
//! matmul, 1/32 of the layer's multiply-adds). The mins are stored f16 (Q4_1's own 20 bytes per
//! block) and `o` is computed from constants, which both backends fold at load — on tract only
//! while the scales read by that computation fit its 4 MiB folding budget (see int8.rs), which
//! every layer of a 135M–0.5B model does; a Q4_1 token table of a 128k vocabulary would not, and
//! its offsets would be recomputed at each step. This path is taken only when every block of a
//! layer is reproduced exactly; any other weights get the symmetric blocks.

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

/// The largest difference allowed between a weight and its reconstruction for a block to count
/// as exactly on a grid: a few f32 roundings of the block's magnitude.
fn exact_within(block: &[f32], rebuilt: impl Iterator<Item = f32>) -> bool {
    let magnitude = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tolerance = 4.0 * f32::EPSILON * magnitude;
    block.iter().zip(rebuilt).all(|(v, r)| (v - r).abs() <= tolerance)
}

/// The codes of a packed block in value order.
fn unpack(packed: &[u8; BLOCK / 2]) -> impl Iterator<Item = f32> + '_ {
    (0..BLOCK).map(|i| f32::from((packed[i / 2] >> (4 * (i % 2))) & 0x0f))
}

/// A block that is exactly `d·q + m` (llama.cpp's Q4_1: f16 `d` and `m`, codes 0..=15), read back
/// from its values: `(d, m, packed codes)`, or `None` when the values are not on such a grid.
fn exact_q4_1(block: &[f32]) -> Option<(f32, f32, [u8; BLOCK / 2])> {
    let lo = block.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let hi = block.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let m = f16::from_f32(lo).to_f32();
    let d = f16::from_f32((hi - lo) / 15.0).to_f32();
    if !m.is_finite() || !d.is_finite() || m != lo {
        return None;
    }
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut packed = [0u8; BLOCK / 2];
    for (i, v) in block.iter().enumerate() {
        let q = ((v - m) * inv).round().clamp(0.0, 15.0) as u8;
        packed[i / 2] |= q << (4 * (i % 2));
    }
    exact_within(block, unpack(&packed).map(|q| d * q + m)).then_some((d, m, packed))
}

/// Whether every block of 32 in `weight` (rows of `inp`) is exactly on a 4-bit grid [`store`]
/// keeps without loss: all blocks symmetric (llama.cpp's Q4_0), or all `d·q + m` (Q4_1, where a
/// symmetric block counts when its `m = −8d` is an f16) — a GGUF 4-bit tensor, dequantised.
/// [`super`] keeps such codes under `int8` too rather than requantising them per row.
pub fn on_4bit_grid(weight: &[f32], inp: usize) -> bool {
    if weight.is_empty() || !inp.is_multiple_of(BLOCK) || !weight.len().is_multiple_of(inp) {
        return false;
    }
    let symmetric = |block: &[f32]| {
        let (s, packed) = quantise_block(block);
        exact_within(block, unpack(&packed).map(|q| s * (q - 8.0))).then_some(s)
    };
    let blocks = || weight.chunks_exact(BLOCK);
    blocks().all(|b| symmetric(b).is_some())
        || blocks().all(|b| {
            exact_q4_1(b).is_some()
                || symmetric(b).is_some_and(|s| f16::from_f32(-8.0 * s).to_f32() == -8.0 * s)
        })
}

/// Whether every block of 32 in `weight` is exactly on llama.cpp's Q8_0 grid (`d·q`, f16 `d`,
/// codes −127..=127): an 8-bit source such as the token table llama.cpp's 4-bit files keep in
/// Q8_0. [`super`] stores such weights int8 under `q4` rather than halving their precision again.
pub fn on_q8_0_grid(weight: &[f32]) -> bool {
    !weight.is_empty()
        && weight.len().is_multiple_of(BLOCK)
        && weight.chunks_exact(BLOCK).all(|block| {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = f16::from_f32(amax / 127.0).to_f32();
            if d == 0.0 || !d.is_finite() {
                return amax == 0.0;
            }
            exact_within(block, block.iter().map(|v| d * (v / d).round().clamp(-127.0, 127.0)))
        })
}

/// A dense layer's weight as [`matmul`] stores it: packed codes `[out, inp/32, 16]` (two codes
/// per byte, low nibble first, MatMulNBits' B) and scales `[out · inp/32]` (f16 on disk, the
/// name held here is their f32 `Cast`), plus per-block offsets for weights imported on
/// llama.cpp's Q4_1 grid.
pub struct StoredBlocks {
    codes: String,
    scales: String,
    offsets: Option<Offsets>,
    out: usize,
    inp: usize,
}

/// Per-block offsets `o = m + 8d` (f32 values computed from stored constants): `[out, inp/32]`
/// for gathering rows and its transpose `[inp/32, out]` for the matmul correction.
struct Offsets {
    rows: String,
    transposed: String,
}

/// Codes, scales and (when the weight is on a Q4_1 grid) f16 mins of a whole `[out, inp]` weight.
struct Quantised {
    codes: Vec<u8>,
    scales: Vec<f32>,
    mins: Option<Vec<f32>>,
}

/// Quantises `weight` (`[out, inp]`, `inp` a multiple of [`BLOCK`]) in symmetric blocks, or keeps
/// its codes when every block is exactly on the symmetric or the Q4_1 grid and at least one needs
/// the Q4_1 offset.
fn quantise(name: &str, weight: &[f32], inp: usize) -> Quantised {
    let blocks = weight.len() / BLOCK;
    let mut codes = Vec::with_capacity(blocks * BLOCK / 2);
    let mut scales = Vec::with_capacity(blocks);
    let mut symmetric_exact = true;
    for row in weight.chunks_exact(inp) {
        for block in row.chunks_exact(BLOCK) {
            let (s, packed) = quantise_block(block);
            symmetric_exact &= exact_within(block, unpack(&packed).map(|q| s * (q - 8.0)));
            scales.push(s);
            codes.extend_from_slice(&packed);
        }
    }
    if symmetric_exact {
        return Quantised { codes, scales, mins: None };
    }
    let (mut grid_codes, mut grid_scales) = (Vec::with_capacity(codes.len()), Vec::with_capacity(blocks));
    let mut mins = Vec::with_capacity(blocks);
    for (i, block) in weight.chunks_exact(BLOCK).enumerate() {
        let (d, m, packed) = match exact_q4_1(block) {
            Some(found) => found,
            None => {
                // Exact on the symmetric grid: `s·(q − 8)` is `d·q + m` with `m = −8s`.
                let packed: [u8; BLOCK / 2] =
                    codes[i * BLOCK / 2..(i + 1) * BLOCK / 2].try_into().unwrap_or_default();
                let s = scales[i];
                let m = -8.0 * s;
                if f16::from_f32(m).to_f32() != m
                    || !exact_within(block, unpack(&packed).map(|q| s * (q - 8.0)))
                {
                    log::debug!("{name}: block {i} is on no 4-bit grid: symmetric blocks");
                    return Quantised { codes, scales, mins: None };
                }
                (s, m, packed)
            }
        };
        grid_codes.extend_from_slice(&packed);
        grid_scales.push(d);
        mins.push(m);
    }
    log::info!("{name}: weights on llama.cpp's Q4_1 grid, codes kept (scale and min per block)");
    Quantised { codes: grid_codes, scales: grid_scales, mins: Some(mins) }
}

/// Quantises `layer`'s weight in blocks of 32 and stores it; `layer.inp` must be a multiple of
/// [`BLOCK`].
pub fn store(g: &mut GraphBuilder, layer: &Linear<'_>) -> StoredBlocks {
    let blocks = layer.inp / BLOCK;
    let Quantised { codes, scales, mins } = quantise(layer.name, layer.weight, layer.inp);
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
    let offsets = mins.map(|mins| {
        let min_bytes = mins.iter().flat_map(|&m| f16::from_f32(m).to_le_bytes()).collect();
        let m = g.init_bytes(
            &format!("{}.weight_q4_min", layer.name),
            ElemType::F16,
            &[layer.out, blocks],
            min_bytes,
        );
        let m = g.op("Cast", &[&m], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
        let grid = g.const_i64(&[layer.out as i64, blocks as i64]);
        let d = g.op("Reshape", &[&s, &grid], vec![]);
        let eight = g.scalar_f32(8.0);
        let d8 = g.op("Mul", &[&d, &eight], vec![]);
        let rows = g.op("Add", &[&m, &d8], vec![]);
        let transposed = g.op("Transpose", &[&rows], vec![("perm", Attr::Ints(vec![1, 0]))]);
        Offsets { rows, transposed }
    });
    StoredBlocks { codes: b, scales: s, offsets, out: layer.out, inp: layer.inp }
}

/// `x · Wᵀ` through `MatMulNBits`; `layer.inp` must be a multiple of [`BLOCK`].
pub fn matmul(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let w = store(g, layer);
    matmul_stored(g, x, &w)
}

/// `x · Wᵀ` for a weight already stored by [`store`].
pub fn matmul_stored(g: &mut GraphBuilder, x: &str, w: &StoredBlocks) -> String {
    let mut attributes = vec![
        ("K", Attr::Int(w.inp as i64)),
        ("N", Attr::Int(w.out as i64)),
        ("bits", Attr::Int(4)),
        ("block_size", Attr::Int(BLOCK as i64)),
    ];
    if g.q4_int8_activations() {
        attributes.push(("accuracy_level", Attr::Int(4)));
    }
    let y = g.op_ms("MatMulNBits", &[x, &w.codes, &w.scales], attributes);
    let Some(offsets) = &w.offsets else { return y };
    // Σ_k x_k·o_{block(k)} = Σ_b (Σ_{k ∈ b} x_k)·o_b: block sums of x times the offsets.
    let lead = g.op("Shape", &[x], vec![("end", Attr::Int(-1))]);
    let grid = g.const_i64(&[(w.inp / BLOCK) as i64, BLOCK as i64]);
    let view = g.op("Concat", &[&lead, &grid], vec![("axis", Attr::Int(0))]);
    let xb = g.op("Reshape", &[x, &view], vec![]);
    let last = g.const_i64(&[-1]);
    let sums = g.op("ReduceSum", &[&xb, &last], vec![("keepdims", Attr::Int(0))]);
    let correction = g.op("MatMul", &[&sums, &offsets.transposed], vec![]);
    g.op("Add", &[&y, &correction], vec![])
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
    let mut y = g.op("Mul", &[&centred, &s], vec![]);
    if let Some(offsets) = &w.offsets {
        let o = g.op("Gather", &[&offsets.rows, ids], vec![("axis", Attr::Int(0))]);
        let o = g.op("Reshape", &[&o, &scale_view], vec![]);
        y = g.op("Add", &[&y, &o], vec![]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no `rand` dependency for a unit test).
    fn lcg(state: &mut u64) -> u32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*state >> 33) as u32
    }

    /// `rows × 64` weights on llama.cpp's Q4_1 grid (f16 `d` and `m`, every block using codes 0
    /// and 15 as its quantiser does), with their codes.
    fn q4_1_weights(rows: usize) -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>) {
        let mut state = 7;
        let (mut w, mut codes, mut ds, mut ms) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rows * 2 {
            let d = f16::from_f32(0.001 + (lcg(&mut state) % 1000) as f32 * 1e-5).to_f32();
            let m = f16::from_f32(-((lcg(&mut state) % 1000) as f32) * 1e-4).to_f32();
            let mut q: Vec<u8> = (0..BLOCK).map(|_| (lcg(&mut state) % 16) as u8).collect();
            q[3] = 0;
            q[17] = 15;
            w.extend(q.iter().map(|&q| d * f32::from(q) + m));
            codes.extend(q);
            ds.push(d);
            ms.push(m);
        }
        (w, codes, ds, ms)
    }

    #[test]
    fn q4_1_weights_keep_their_codes_scales_and_mins() {
        let (w, codes, ds, ms) = q4_1_weights(5);
        let got = quantise("w", &w, 64);
        assert_eq!(got.scales, ds);
        assert_eq!(got.mins.as_deref(), Some(&ms[..]));
        let unpacked: Vec<u8> = got.codes.iter().flat_map(|b| [b & 0x0f, b >> 4]).collect();
        assert_eq!(unpacked, codes);
        // The stored form d·(q − 8) + (m + 8d) gives the weights back.
        for (i, block) in w.chunks_exact(BLOCK).enumerate() {
            let o = got.mins.as_ref().unwrap()[i] + 8.0 * got.scales[i];
            for (j, v) in block.iter().enumerate() {
                let q = f32::from(unpacked[i * BLOCK + j]);
                assert!((got.scales[i] * (q - 8.0) + o - v).abs() <= 1e-6, "block {i} value {j}");
            }
        }
    }

    #[test]
    fn float_weights_and_a_single_off_grid_block_get_symmetric_blocks() {
        let mut state = 11;
        let w: Vec<f32> = (0..4 * 64).map(|_| (lcg(&mut state) % 2001) as f32 * 1e-4 - 0.1).collect();
        assert!(quantise("w", &w, 64).mins.is_none());
        let (mut w, ..) = q4_1_weights(4);
        w[70] += 1e-3;
        assert!(quantise("w", &w, 64).mins.is_none());
    }

    #[test]
    fn q8_0_weights_are_recognised_and_float_weights_are_not() {
        let mut state = 5;
        let mut w = vec![];
        for _ in 0..8 {
            let d = f16::from_f32(0.001 + (lcg(&mut state) % 100) as f32 * 1e-5).to_f32();
            let mut q: Vec<i32> = (0..BLOCK).map(|_| (lcg(&mut state) % 255) as i32 - 127).collect();
            q[5] = 127;
            w.extend(q.iter().map(|&q| d * q as f32));
        }
        assert!(on_q8_0_grid(&w));
        w[40] += 1e-4;
        assert!(!on_q8_0_grid(&w));
        let (q4_1, ..) = q4_1_weights(2);
        assert!(!on_q8_0_grid(&q4_1));
    }

    #[test]
    fn q4_0_weights_stay_symmetric_with_their_codes() {
        let mut state = 3;
        let mut w = vec![];
        let mut codes = vec![];
        for _ in 0..6 {
            let d = f16::from_f32(0.002 + (lcg(&mut state) % 100) as f32 * 1e-5).to_f32();
            let mut q: Vec<u8> = (0..BLOCK).map(|_| (lcg(&mut state) % 16) as u8).collect();
            q[0] = 0; // the largest magnitude, −8d, as llama.cpp's Q4_0 quantiser ensures
            q.iter_mut().skip(1).for_each(|c| *c = (*c).max(1));
            w.extend(q.iter().map(|&q| d * (f32::from(q) - 8.0)));
            codes.extend(q);
        }
        let got = quantise("w", &w, 64);
        assert!(got.mins.is_none());
        let unpacked: Vec<u8> = got.codes.iter().flat_map(|b| [b & 0x0f, b >> 4]).collect();
        assert_eq!(unpacked, codes);
    }
}
