//! `int8`: per-output-channel symmetric int8 weights, dynamic uint8 activations, integer matmul.
//!
//! The activation is quantised at run time to uint8 and multiplied with the int8 weight by
//! `MatMulInteger` into int32 (the only path with real int8 compute on tract, and a fast one on
//! ONNX Runtime); the product is scaled back by `x_scale · w_scale[out]` after the matmul. Dense
//! layers use one scale and minimum per token ([`matmul_per_token`]: measured better on all-MiniLM-L6-v2 than
//! `DynamicQuantizeLinear`'s one scale per tensor, [`matmul`], see the exporter README). The
//! weight's zero point is 0 (symmetric). Weight scales use 127, not 128, so
//! that `-w` quantises to `-q` exactly. Embedding tables get int8 rows ([`gather`]).

use super::Linear;
use super::int8_rows::quantise_rows;
use crate::onnx::{Attr, ElemType, GraphBuilder};

/// The layer's weight as int8 codes `[inp, out]` (MatMulInteger's B) and f32 scales `[out]`.
fn weight(g: &mut GraphBuilder, layer: &Linear<'_>, codes: &[i8], scales: &[f32]) -> (String, String) {
    // MatMulInteger wants B as [inp, out]: transpose the codes.
    let mut bt = vec![0u8; codes.len()];
    for o in 0..layer.out {
        for i in 0..layer.inp {
            bt[i * layer.out + o] = codes[o * layer.inp + i] as u8;
        }
    }
    let w = g.init_bytes(&format!("{}.weight_q", layer.name), ElemType::I8, &[layer.inp, layer.out], bt);
    let ws = g.init_f32(&format!("{}.weight_scale", layer.name), &[layer.out], scales);
    (w, ws)
}

/// `x · Wᵀ` through `DynamicQuantizeLinear` + `MatMulInteger`.
pub fn matmul(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let (codes, scales) = quantise_rows(layer.weight, layer.out, layer.inp);
    let (w, ws) = weight(g, layer, &codes, &scales);
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

/// A `[d0, rows, cols]` float weight stored as int8 codes with one scale per row (over all
/// `d0 · rows` rows) and widened back with `Cast` + `Mul`: every input is a constant, so both
/// backends fold it into an f32 initializer at load time (weight-only quantisation).
pub fn widened_rows(g: &mut GraphBuilder, name: &str, dims: [usize; 3], data: &[f32]) -> String {
    let [d0, rows, cols] = dims;
    let (codes, scales) = quantise_rows(data, d0 * rows, cols);
    let bytes = codes.into_iter().map(|c| c as u8).collect();
    let q = g.init_bytes(&format!("{name}_q"), ElemType::I8, &dims, bytes);
    let s = g.init_f32(&format!("{name}_scale"), &[d0, rows, 1], &scales);
    let w = g.op("Cast", &[&q], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
    g.op("Mul", &[&w, &s], vec![])
}

/// `x · Wᵀ` with the activation quantised per token (per row of the last axis), asymmetric:
/// each row's `[min, max]` range is mapped onto the 256 uint8 codes with its own scale, and
/// `MatMulInteger` (uint8 × int8, no zero-point inputs) multiplies the codes.
///
/// Why per token: `DynamicQuantizeLinear` gives a whole `[B,S,D]` tensor one scale, so one token
/// with large activations (BERT's `[CLS]`/`[SEP]`/punctuation rows) coarsens every other token's
/// codes. Why asymmetric: post-GELU and post-LayerNorm rows are lopsided, and a symmetric code
/// leaves half of its 256 levels unused (measured on all-MiniLM-L6-v2, see the exporter README).
///
/// The codes are `q = round((x − min) / scale)`, so `x ≈ scale·q + min` and the row minimum is
/// added back after the integer product: `Σ_i x_i·w_io ≈ scale·(q·W)_o + min·Σ_i w_io`, with the
/// column sums of the int8 codes (`ReduceSum` of the codes, a constant both backends fold at
/// load). This form takes 14 nodes per matmul; a rounded integer zero point folded out in int32
/// (`min(x, 0)`) takes 21 for the same accuracy, and ONNX Runtime running the standard nodes
/// dispatches every one at a decode step (shipped GPT at position 10: 0.35–0.36 ms against
/// 0.41–0.45 ms; exporter/README.md).
pub fn matmul_per_token(g: &mut GraphBuilder, x: &str, layer: &Linear<'_>) -> String {
    let w = store(g, layer);
    matmul_stored(g, x, &w)
}

/// A dense layer's weight as [`matmul_per_token`] stores it: int8 codes `[inp, out]`
/// (MatMulInteger's B), f32 scales `[out]` and the column sums of the codes `[out]` (exact
/// integers as f32, computed in the graph from the codes, folded at load).
pub struct StoredWeight {
    codes: String,
    scales: String,
    column_sums: String,
}

/// The largest constant tract 0.23 folds at load when several nodes read it.
const TRACT_FOLD_BYTES: usize = 4 << 20;

/// Quantises `layer`'s weight per output channel and stores it (see [`StoredWeight`]).
///
/// When the graph carries calibration statistics for the layer ([`GraphBuilder::with_hessians`]),
/// the codes are rounded with GPTQ ([`super::gptq`]); otherwise to nearest.
pub fn store(g: &mut GraphBuilder, layer: &Linear<'_>) -> StoredWeight {
    let gptq = g.hessian(layer.name).and_then(|h| {
        let q = super::gptq::quantise_rows(layer.weight, layer.out, layer.inp, h);
        if q.is_none() {
            log::warn!("{}: calibration Hessian not factorisable, rounding to nearest", layer.name);
        }
        q
    });
    if gptq.is_some() {
        g.gptq_layer_done();
    }
    let (codes, scales) = gptq.unwrap_or_else(|| quantise_rows(layer.weight, layer.out, layer.inp));
    stored(g, layer, &codes, &scales)
}

/// Writes `codes` and `scales` (per output channel) as [`store`] does.
fn stored(g: &mut GraphBuilder, layer: &Linear<'_>, codes: &[i8], scales: &[f32]) -> StoredWeight {
    let (w, ws) = weight(g, layer, codes, scales);
    // Small weights: derived from the codes in the graph rather than stored, a constant subgraph
    // both backends fold once at load (the file is 4 bytes per output channel smaller). tract
    // 0.23 folds a constant only within 4 MiB (tract-core's CONST_FOLD_MEM_BUDGET): a constant
    // read by several nodes (the codes feed the matmul and this sum; a tied table's also the
    // embedding gather) must fit, and so must each folded result — here the codes widened to
    // i32. Past that the sum is recomputed at every step (measured on SmolLM2-135M: its 28 MB
    // head and the 1.8 MB gate/up codes of each block took 70 % of a decode step), so it is
    // stored.
    let sums = if codes.len() * size_of::<i32>() > TRACT_FOLD_BYTES {
        let mut sums = vec![0f32; layer.out];
        for (sum, row) in sums.iter_mut().zip(codes.chunks_exact(layer.inp)) {
            *sum = row.iter().map(|&c| i32::from(c)).sum::<i32>() as f32;
        }
        g.init_f32(&format!("{}.weight_column_sums", layer.name), &[layer.out], &sums)
    } else {
        let wide = g.op("Cast", &[&w], vec![("to", Attr::Int(ElemType::I32.code() as i64))]);
        let rows = g.const_i64(&[0]);
        let sums = g.op("ReduceSum", &[&wide, &rows], vec![("keepdims", Attr::Int(0))]);
        g.op("Cast", &[&sums], vec![("to", Attr::Int(ElemType::F32.code() as i64))])
    };
    StoredWeight { codes: w, scales: ws, column_sums: sums }
}

/// A weight stored as two int8 layers, `W ≈ s₁·Q₁ + s₂·Q₂`: [`store`]'s round-to-nearest codes
/// and the codes of what they leave over, each with its own per-row scale. The second scale is
/// at most 1/254 of the first, so the pair holds ~15 bits per weight in two `MatMulInteger`s.
///
/// For an LM head on an 8-bit grid that is not per row (llama.cpp's Q8_0 token table: one scale
/// per block of 32). Requantised per row, SmolLM2-135M's Q8_0 table alone moves 2 % of the
/// top-1 tokens away from the fp32 bundle on held-out text (its Q4_1 layers kept exactly as
/// codes); with the pair, none (BENCHMARKS.md). The head is read once per position, so the
/// second pass costs one more head matmul and its bytes, not a second model.
pub struct StoredPair {
    first: StoredWeight,
    residual: StoredWeight,
}

/// Stores `layer`'s weight as a [`StoredPair`].
pub fn store_pair(g: &mut GraphBuilder, layer: &Linear<'_>) -> StoredPair {
    if g.hessian(layer.name).is_some() {
        // Calibrated but not needed: the residual codes recover what GPTQ would.
        g.gptq_layer_done();
    }
    let (codes, scales) = quantise_rows(layer.weight, layer.out, layer.inp);
    let mut left = vec![0f32; layer.weight.len()];
    for (r, scale) in scales.iter().enumerate() {
        let span = r * layer.inp..(r + 1) * layer.inp;
        for ((l, &w), &c) in left[span.clone()].iter_mut().zip(&layer.weight[span.clone()]).zip(&codes[span])
        {
            *l = w - scale * f32::from(c);
        }
    }
    let first = stored(g, layer, &codes, &scales);
    let name = format!("{}.residual", layer.name);
    let rest = Linear { name: &name, weight: &left, ..*layer };
    let (codes, scales) = quantise_rows(&left, layer.out, layer.inp);
    let residual = stored(g, &rest, &codes, &scales);
    StoredPair { first, residual }
}

/// `x · Wᵀ` for a weight stored by [`store_pair`]: two [`matmul_stored`]s, added.
pub fn matmul_pair(g: &mut GraphBuilder, x: &str, w: &StoredPair) -> String {
    let a = matmul_stored(g, x, &w.first);
    let b = matmul_stored(g, x, &w.residual);
    g.op("Add", &[&a, &b], vec![])
}

/// [`gather_columns`] of a [`StoredPair`]: both layers' rows, added.
pub fn gather_columns_pair(g: &mut GraphBuilder, w: &StoredPair, ids: &str) -> String {
    let a = gather_columns(g, &w.first, ids);
    let b = gather_columns(g, &w.residual, ids);
    g.op("Add", &[&a, &b], vec![])
}

/// Rows `ids` (`[batch, sequence]`) of the `[out, inp]` matrix whose codes `w` stores, as f32
/// `[batch, sequence, inp]`: the embedding side of a table tied to an LM head. The codes are
/// stored `[inp, out]`, so this gathers columns and moves the feature axis last; each row's
/// scale is its output channel's. Both backends run these ops on any index values.
pub fn gather_columns(g: &mut GraphBuilder, w: &StoredWeight, ids: &str) -> String {
    let q = g.op("Gather", &[&w.codes, ids], vec![("axis", Attr::Int(1))]);
    let q = g.op("Transpose", &[&q], vec![("perm", Attr::Ints(vec![1, 2, 0]))]);
    let q = g.op("Cast", &[&q], vec![("to", Attr::Int(ElemType::F32.code() as i64))]);
    let s = g.op("Gather", &[&w.scales, ids], vec![("axis", Attr::Int(0))]);
    let last = g.const_i64(&[-1]);
    let s = g.op("Unsqueeze", &[&s, &last], vec![]);
    g.op("Mul", &[&q, &s], vec![])
}

/// `x · Wᵀ` for a weight already stored by [`store`] (the per-token scheme of
/// [`matmul_per_token`]).
///
/// The node sequence below is a contract with ferrite's runtime: runtime/src/rewrite/
/// int8_pattern.rs recognises exactly these nodes (and constants), and both backends run them
/// as two fused ops.
/// Change them together; tests/fused_int8.rs fails when a pattern stops being fused.
pub fn matmul_stored(g: &mut GraphBuilder, x: &str, w: &StoredWeight) -> String {
    let digits = g.int8_activation_digits();
    let last_axis = || vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))];
    let lo = g.op("ReduceMin", &[x], last_axis());
    let hi = g.op("ReduceMax", &[x], last_axis());
    let range = g.op("Sub", &[&hi, &lo], vec![]);
    // A constant row would divide by zero: its codes are all 0 whatever the scale, and `lo`
    // carries its value exactly.
    let tiny = g.scalar_f32(f32::MIN_POSITIVE);
    let range = g.op("Max", &[&range, &tiny], vec![]);
    let levels = if digits { 65535.0 } else { 255.0 };
    let inv_levels = g.scalar_f32(1.0 / levels);
    let scale = g.op("Mul", &[&range, &inv_levels], vec![]);
    let shifted = g.op("Sub", &[x, &lo], vec![]);
    let q = g.op("Div", &[&shifted, &scale], vec![]);
    let q = g.op("Round", &[&q], vec![]);
    let u8_code = || vec![("to", Attr::Int(ElemType::U8.code() as i64))];
    let f32_code = || vec![("to", Attr::Int(ElemType::F32.code() as i64))];
    let acc = if digits {
        // q (0..=65535, exact in f32) = 256·high + low: both digits are uint8 codes, stacked
        // on a new leading axis of 2 so that one MatMulInteger multiplies both, then
        // recombined in f32 (256·(high·W) overflows int32 for inputs wider than 256) by a
        // weighted sum over that axis. (Stacking along the symbolic batch axis instead, with
        // a Split after, made tract's shape algebra run for minutes.)
        let inv256 = g.scalar_f32(1.0 / 256.0);
        let c256 = g.scalar_f32(256.0);
        let high = g.op("Mul", &[&q, &inv256], vec![]);
        let high = g.op("Floor", &[&high], vec![]);
        let high256 = g.op("Mul", &[&high, &c256], vec![]);
        let low = g.op("Sub", &[&q, &high256], vec![]);
        let lead = g.const_i64(&[0]);
        let high = g.op("Unsqueeze", &[&high, &lead], vec![]);
        let low = g.op("Unsqueeze", &[&low, &lead], vec![]);
        let both = g.op("Concat", &[&high, &low], vec![("axis", Attr::Int(0))]);
        let codes = g.op("Cast", &[&both], u8_code());
        let acc = g.op("MatMulInteger", &[&codes, &w.codes], vec![]);
        let acc = g.op("Cast", &[&acc], f32_code());
        // Rank 4: `x` is [batch, sequence, features], as every architecture's dense layers.
        let weights = g.init_f32(&format!("{}.digit_weights", w.codes), &[2, 1, 1, 1], &[256.0, 1.0]);
        let acc = g.op("Mul", &[&acc, &weights], vec![]);
        let axis = g.const_i64(&[0]);
        g.op("ReduceSum", &[&acc, &axis], vec![("keepdims", Attr::Int(0))])
    } else {
        let q = g.op("Cast", &[&q], u8_code());
        let acc = g.op("MatMulInteger", &[&q, &w.codes], vec![]);
        g.op("Cast", &[&acc], f32_code())
    };
    let acc = g.op("Mul", &[&acc, &scale], vec![]);
    let offset = g.op("Mul", &[&lo, &w.column_sums], vec![]);
    let acc = g.op("Add", &[&acc, &offset], vec![]);
    g.op("Mul", &[&acc, &w.scales], vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column_sums_initializer(out: usize, inp: usize) -> Option<Vec<f32>> {
        let weight: Vec<f32> = (0..out * inp).map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0).collect();
        let layer = Linear { name: "w", weight: &weight, out, inp, bias: None };
        let mut g = GraphBuilder::new();
        store(&mut g, &layer);
        initializer(&g, "w.weight_column_sums").map(f32s)
    }

    fn initializer<'g>(g: &'g GraphBuilder, name: &str) -> Option<&'g [u8]> {
        g.initializers.iter().find(|i| i.name == name).map(|i| i.bytes.as_slice())
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// A weight on llama.cpp's Q8_0 grid (one scale per block of 32, the blocks' scales spread
    /// over 16×): one int8 scale per row loses what the pair's residual keeps. The pair's
    /// dequantised weight is ≥ 100× closer than the single layer's, and within 1/500 of a
    /// single-layer step everywhere.
    #[test]
    fn a_pair_holds_a_q8_0_table_that_one_scale_per_row_cannot() {
        let (out, inp) = (8, 128);
        let weight: Vec<f32> = (0..out * inp)
            .map(|i| {
                let d = half::f16::from_f32(0.001 * (1 + (i / 32) % 16) as f32).to_f32();
                // Each block reaches ±127 (so `d` is its Q8_0 scale).
                let code = if i % 32 == 0 { 127.0 } else { ((i * 7919) % 255) as f32 - 127.0 };
                d * code
            })
            .collect();
        assert!(crate::quant::q4::on_q8_0_grid(&weight));
        let layer = Linear { name: "h", weight: &weight, out, inp, bias: None };
        let mut g = GraphBuilder::new();
        store_pair(&mut g, &layer);
        // Codes are stored [inp, out]; scales per output row.
        let dequantised = |codes: &str, scales: &str| {
            let c = initializer(&g, codes).expect("codes");
            let s = f32s(initializer(&g, scales).expect("scales"));
            (0..out * inp)
                .map(|j| s[j / inp] * f32::from(c[(j % inp) * out + j / inp] as i8))
                .collect::<Vec<_>>()
        };
        let first = dequantised("h.weight_q", "h.weight_scale");
        let rest = dequantised("h.residual.weight_q", "h.residual.weight_scale");
        let (_, scales) = quantise_rows(&weight, out, inp);
        let (mut single, mut pair) = (0f32, 0f32);
        for j in 0..out * inp {
            single = single.max((first[j] - weight[j]).abs() / scales[j / inp]);
            pair = pair.max((first[j] + rest[j] - weight[j]).abs() / scales[j / inp]);
        }
        assert!(single > 0.1, "one scale per row should not hold this table ({single} steps)");
        assert!(pair <= 1.0 / 500.0 && pair * 100.0 <= single, "pair {pair} steps, single {single}");
    }

    /// Codes whose i32 widening tract would not fold (> 4 MiB) get their column sums stored, and
    /// the stored sums are the sums of each output channel's codes; small layers derive them in
    /// the graph.
    #[test]
    fn large_layers_store_their_column_sums() {
        assert!(column_sums_initializer(64, 64).is_none());
        let (out, inp) = (2048, 640);
        let sums = column_sums_initializer(out, inp).expect("stored column sums");
        let weight: Vec<f32> = (0..out * inp).map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0).collect();
        let (codes, _) = quantise_rows(&weight, out, inp);
        assert_eq!(sums.len(), out);
        for (o, sum) in sums.iter().enumerate() {
            let want: i32 = codes[o * inp..(o + 1) * inp].iter().map(|&c| i32::from(c)).sum();
            assert_eq!(*sum, want as f32, "channel {o}");
        }
    }
}
