//! Quantisation schemes, one module each, behind one entry point per kind of weight.
//!
//! Architectures never emit a matmul against a weight themselves: they call [`linear`] (dense
//! layers, which each scheme may quantise), [`embedding`] (a gather from a table, which `int8` and
//! `q4` quantise too) or [`float_weight`] (recurrent weights and tiny tables that stay in float,
//! narrowed to f16 under `fp16`). Which layers a scheme touches is decided here, in
//! one place. Schemes only use ops both tract 0.23 and ONNX Runtime 1.31 run with real low-bit
//! compute: `MatMulInteger` (int8) and com.microsoft `MatMulNBits` (q4).

pub mod fp16;
pub mod gptq;
pub mod int8;
pub mod int8_rows;
pub mod q4;

use crate::error::Result;
use crate::onnx::GraphBuilder;

/// How the weights of an exported model are stored and multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantScheme {
    /// f32 weights, f32 compute: the reference.
    Fp32,
    /// f16 weights widened to f32 at load: half the size, same compute.
    Fp16,
    /// Per-output-channel symmetric int8 weights, dynamic uint8 activations, integer matmul.
    Int8,
    /// 4-bit blocks of 32 (`MatMulNBits`) for dense layers whose input size is a multiple of 32.
    Q4,
}

impl QuantScheme {
    /// The scheme's name as the CLI and manifest spell it.
    pub fn name(self) -> &'static str {
        match self {
            QuantScheme::Fp32 => "fp32",
            QuantScheme::Fp16 => "fp16",
            QuantScheme::Int8 => "int8",
            QuantScheme::Q4 => "q4",
        }
    }
}

/// A dense layer `y = x · Wᵀ + b` with `W` stored `[out, inp]` row-major (PyTorch's layout).
#[derive(Debug, Clone, Copy)]
pub struct Linear<'a> {
    /// Base name of the layer's initializers (the checkpoint name, for readability).
    pub name: &'a str,
    /// `[out, inp]` row-major.
    pub weight: &'a [f32],
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
    /// `[out]`, when the layer has one.
    pub bias: Option<&'a [f32]>,
}

/// Emits `x · Wᵀ + b` for a value `x` of shape `[..., inp]` under `scheme`; returns `[..., out]`.
pub fn linear(g: &mut GraphBuilder, scheme: QuantScheme, x: &str, layer: &Linear<'_>) -> Result<String> {
    let y = match scheme {
        QuantScheme::Fp32 => {
            g.tap(layer.name, x, layer.inp);
            let wt = crate::checkpoint::transpose(layer.weight, layer.out, layer.inp);
            let w = g.init_f32(&format!("{}.weight_t", layer.name), &[layer.inp, layer.out], &wt);
            g.op("MatMul", &[x, &w], vec![])
        }
        QuantScheme::Fp16 => fp16::matmul(g, x, layer),
        QuantScheme::Int8 if keeps_4bit_codes(g, layer) => q4::matmul(g, x, layer),
        QuantScheme::Int8 => int8::matmul_per_token(g, x, layer),
        QuantScheme::Q4 if q4_suits(layer) => q4::matmul(g, x, layer),
        // MatMulNBits blocks run along the input dimension; a layer it cannot block gets the
        // next-smallest scheme instead of failing the export, and so does an 8-bit source.
        QuantScheme::Q4 if layer.inp.is_multiple_of(q4::BLOCK) => int8::matmul_per_token(g, x, layer),
        QuantScheme::Q4 => {
            log::info!(
                "{}: input size {} is not a multiple of {}: int8 instead of q4",
                layer.name,
                layer.inp,
                q4::BLOCK
            );
            int8::matmul_per_token(g, x, layer)
        }
    };
    Ok(match layer.bias {
        Some(b) => {
            let b = g.init_f32(&format!("{}.bias", layer.name), &[layer.out], b);
            g.op("Add", &[&y, &b], vec![])
        }
        None => y,
    })
}

/// Whether `int8` keeps `layer`'s 4-bit codes (q4's blocks) instead of requantising it per row:
/// when the graph allows it ([`GraphBuilder::set_keep_4bit_codes`], the default) and the weights
/// are exactly on llama.cpp's Q4_0 or Q4_1 grid (a GGUF 4-bit tensor). Requantising such a layer
/// to int8 with one scale per output row cannot hold its per-block scales: on SmolLM2-135M's
/// Q4_1 file it cost 2–3 % of top-1 agreement with fp32 (docs/quantisation.md), while the codes
/// as they are lose nothing and take half the bytes.
fn keeps_4bit_codes(g: &GraphBuilder, layer: &Linear<'_>) -> bool {
    let keep = g.keep_4bit_codes() && q4::on_4bit_grid(layer.weight, layer.inp);
    if keep {
        log::info!("{}: weights on a 4-bit block grid: codes kept under int8", layer.name);
    }
    keep
}

/// Whether `q4` stores `layer` in 4-bit blocks: its input size is a multiple of the block, and its
/// weights are not already on an 8-bit grid (a GGUF Q8_0 tensor — llama.cpp's 4-bit files keep
/// the token table in Q8_0 because a 4-bit head costs most of their perplexity; such a layer is
/// stored int8, requantised per row).
fn q4_suits(layer: &Linear<'_>) -> bool {
    if !layer.inp.is_multiple_of(q4::BLOCK) {
        return false;
    }
    if q4::on_q8_0_grid(layer.weight) {
        log::info!("{}: weights on llama.cpp's Q8_0 grid: int8 instead of q4", layer.name);
        return false;
    }
    true
}

/// An LM head (`x · Wᵀ` into the logits) under `scheme`: as [`linear`], except that an int8
/// head whose weights are on llama.cpp's Q8_0 grid is stored as an int8 pair ([`head_pair`]).
pub fn head(g: &mut GraphBuilder, scheme: QuantScheme, x: &str, layer: &Linear<'_>) -> Result<String> {
    let int8 = match scheme {
        QuantScheme::Int8 => true,
        QuantScheme::Q4 => !q4_suits(layer),
        QuantScheme::Fp32 | QuantScheme::Fp16 => false,
    };
    if int8 && layer.bias.is_none() && head_pair(g, layer) {
        let w = int8::store_pair(g, layer);
        return Ok(int8::matmul_pair(g, x, &w));
    }
    linear(g, scheme, x, layer)
}

/// Whether an int8 LM head (or the token table tied to it) is stored as an int8 pair
/// ([`int8::store_pair`]) rather than one int8 layer: when the graph asks for pairs
/// ([`GraphBuilder::set_int8_head_pairs`]) and its weights are on llama.cpp's Q8_0 grid, whose
/// per-block scales one scale per row cannot hold. Only the head: the logits are
/// where that rounding shows (measured in [`int8::StoredPair`]); other Q8_0 layers stay one int8
/// layer, or a Q8_0 file's int8 bundle would be twice its size.
fn head_pair(g: &GraphBuilder, layer: &Linear<'_>) -> bool {
    let pair = g.int8_head_pairs() && q4::on_q8_0_grid(layer.weight);
    if pair {
        log::info!("{}: weights on llama.cpp's Q8_0 grid: stored as an int8 pair", layer.name);
    }
    pair
}

/// A float weight that no scheme quantises (LSTM gates, tiny tables): f32, or f16
/// plus a `Cast` under `fp16`. Returns the name of an f32 value.
pub fn float_weight(
    g: &mut GraphBuilder,
    scheme: QuantScheme,
    name: &str,
    dims: &[usize],
    data: &[f32],
) -> String {
    match scheme {
        QuantScheme::Fp16 => fp16::widened(g, name, dims, data),
        _ => g.init_f32(name, dims, data),
    }
}

/// A recurrent weight `[1, rows, cols]` that the `LSTM` op multiplies in float (its `W`/`R`
/// inputs must be float): f32 / f16 storage under `fp32` / `fp16`; under `int8` and `q4`, int8
/// codes with one scale per row, widened by `Cast` + `Mul` on constants, which both backends fold
/// into an f32 weight when the model is loaded. Weight-only quantisation: the bundle is ~4×
/// smaller, the compute (and the weights in RAM after load) stays f32. Measured on the shipped
/// LSTM in the exporter README. Returns the name of an f32 value.
pub fn recurrent_weight(
    g: &mut GraphBuilder,
    scheme: QuantScheme,
    name: &str,
    dims: [usize; 3],
    data: &[f32],
) -> String {
    match scheme {
        QuantScheme::Fp32 | QuantScheme::Fp16 => float_weight(g, scheme, name, &dims, data),
        QuantScheme::Int8 | QuantScheme::Q4 => int8::widened_rows(g, name, dims, data),
    }
}

/// Rows `ids` of an embedding table `[rows, cols]` (word and position embeddings): f32 or f16
/// under `fp32`/`fp16`, int8 per row under `int8`, 4-bit blocks under `q4` (int8 when `cols` is
/// not a multiple of 64). Returns an f32 value of shape `ids ++ [cols]`.
///
/// The tables are most of a small transformer's bytes (half of all-MiniLM-L6-v2), so the size
/// targets need them quantised; a gathered row feeds a LayerNorm or an add, never a matmul, so
/// the rounding costs little (measured in the README).
pub fn embedding(
    g: &mut GraphBuilder,
    scheme: QuantScheme,
    name: &str,
    dims: [usize; 2],
    data: &[f32],
    ids: &str,
) -> String {
    let [rows, cols] = dims;
    match scheme {
        QuantScheme::Fp32 | QuantScheme::Fp16 => {
            let table = float_weight(g, scheme, name, &dims, data);
            g.op("Gather", &[&table, ids], vec![("axis", crate::onnx::Attr::Int(0))])
        }
        QuantScheme::Q4
            if cols.is_multiple_of(2 * q4::BLOCK)
                && q4_suits(&Linear { name, weight: data, out: rows, inp: cols, bias: None }) =>
        {
            q4::gather(g, name, rows, cols, data, ids)
        }
        QuantScheme::Int8
            if cols.is_multiple_of(2 * q4::BLOCK)
                && keeps_4bit_codes(g, &Linear { name, weight: data, out: rows, inp: cols, bias: None }) =>
        {
            q4::gather(g, name, rows, cols, data, ids)
        }
        QuantScheme::Int8 | QuantScheme::Q4 => int8::gather(g, name, rows, cols, data, ids),
    }
}

/// A token table that is also the LM head (GPT-2's `wte` with `lm_head` tied to it), stored
/// once in the head's layout and gathered from there: a second copy would be the largest
/// tensor of a small decoder's bundle (28 % of the shipped GPT's fp32 weights).
pub enum TiedTable {
    /// fp32 / fp16: the table transposed, `[cols, rows]` (MatMul's B).
    Float {
        /// Name of the f32 value.
        value: String,
        /// The table's name, as the head's layer name.
        name: String,
        /// The table's columns (the head's input features).
        cols: usize,
    },
    /// int8: MatMulInteger codes `[cols, rows]`, per-row scales.
    Int8(int8::StoredWeight),
    /// int8 codes and their residual's (a table on llama.cpp's Q8_0 grid, see [`head_pair`]).
    Int8Pair(int8::StoredPair),
    /// q4: MatMulNBits blocks along each row.
    Q4(q4::StoredBlocks),
}

/// Stores the `[rows, cols]` table `data` once for [`tied_embedding`] and [`tied_head`]. Under
/// `q4` a table whose rows are not a multiple of the block size is stored `int8`.
pub fn tied_table(
    g: &mut GraphBuilder,
    scheme: QuantScheme,
    name: &str,
    dims: [usize; 2],
    data: &[f32],
) -> TiedTable {
    let [rows, cols] = dims;
    let layer = Linear { name, weight: data, out: rows, inp: cols, bias: None };
    match scheme {
        QuantScheme::Fp32 | QuantScheme::Fp16 => {
            let t = crate::checkpoint::transpose(data, rows, cols);
            let value = float_weight(g, scheme, &format!("{name}_t"), &[cols, rows], &t);
            TiedTable::Float { value, name: name.to_string(), cols }
        }
        QuantScheme::Q4 if q4_suits(&layer) => TiedTable::Q4(q4::store(g, &layer)),
        QuantScheme::Int8 if keeps_4bit_codes(g, &layer) => TiedTable::Q4(q4::store(g, &layer)),
        QuantScheme::Int8 | QuantScheme::Q4 if head_pair(g, &layer) => {
            TiedTable::Int8Pair(int8::store_pair(g, &layer))
        }
        QuantScheme::Int8 | QuantScheme::Q4 => TiedTable::Int8(int8::store(g, &layer)),
    }
}

/// Rows `ids` (`[batch, sequence]`) of a tied table, as f32 `[batch, sequence, cols]`.
pub fn tied_embedding(g: &mut GraphBuilder, table: &TiedTable, ids: &str) -> String {
    match table {
        TiedTable::Float { value, .. } => {
            let t = g.op("Gather", &[value, ids], vec![("axis", crate::onnx::Attr::Int(1))]);
            g.op("Transpose", &[&t], vec![("perm", crate::onnx::Attr::Ints(vec![1, 2, 0]))])
        }
        TiedTable::Int8(w) => int8::gather_columns(g, w, ids),
        TiedTable::Int8Pair(w) => int8::gather_columns_pair(g, w, ids),
        TiedTable::Q4(w) => q4::gather_rows(g, w, ids),
    }
}

/// `x · tableᵀ` (the LM head) for `x` of shape `[..., cols]`; returns `[..., rows]`.
pub fn tied_head(g: &mut GraphBuilder, table: &TiedTable, x: &str) -> String {
    match table {
        TiedTable::Float { value, name, cols } => {
            g.tap(name, x, *cols);
            g.op("MatMul", &[x, value], vec![])
        }
        TiedTable::Int8(w) => int8::matmul_stored(g, x, w),
        TiedTable::Int8Pair(w) => int8::matmul_pair(g, x, w),
        TiedTable::Q4(w) => q4::matmul_stored(g, x, w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table on the Q8_0 grid (each block of 32 reaches ±127 codes of its own f16 scale).
    fn q8_0_table(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let d = half::f16::from_f32(0.002 * (1 + (i / 32) % 7) as f32).to_f32();
                let code = if i % 32 == 0 { -127.0 } else { ((i * 31) % 255) as f32 - 127.0 };
                d * code
            })
            .collect()
    }

    fn stored_as(pairs: bool, scheme: QuantScheme, data: &[f32]) -> &'static str {
        stored_with(pairs, true, scheme, data)
    }

    fn stored_with(pairs: bool, keep_4bit: bool, scheme: QuantScheme, data: &[f32]) -> &'static str {
        let mut g = GraphBuilder::new();
        g.set_int8_head_pairs(pairs);
        g.set_keep_4bit_codes(keep_4bit);
        match tied_table(&mut g, scheme, "t", [64, 64], data) {
            TiedTable::Float { .. } => "float",
            TiedTable::Int8(_) => "int8",
            TiedTable::Int8Pair(_) => "pair",
            TiedTable::Q4(_) => "q4",
        }
    }

    /// Pairs only for 8-bit-grid tables under int8 and q4, and only when asked for.
    #[test]
    fn q8_0_tables_become_int8_pairs_when_asked() {
        let grid = q8_0_table(64, 64);
        let plain: Vec<f32> = (0..64 * 64).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5).collect();
        assert_eq!(stored_as(true, QuantScheme::Int8, &grid), "pair");
        assert_eq!(stored_as(true, QuantScheme::Q4, &grid), "pair");
        assert_eq!(stored_as(false, QuantScheme::Int8, &grid), "int8");
        assert_eq!(stored_as(false, QuantScheme::Q4, &grid), "int8");
        assert_eq!(stored_as(true, QuantScheme::Int8, &plain), "int8");
        assert_eq!(stored_as(true, QuantScheme::Q4, &plain), "q4");
        assert_eq!(stored_as(true, QuantScheme::Fp32, &grid), "float");
    }

    /// A table on llama.cpp's Q4_1 grid (codes 0..=15, per-block f16 scale and minimum).
    fn q4_1_table(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let b = i / 32;
                let d = half::f16::from_f32(0.001 * (1 + b % 5) as f32).to_f32();
                let m = half::f16::from_f32(-0.01 * (1 + b % 3) as f32).to_f32();
                // Each block reaches codes 0 and 15, as llama.cpp's quantiser leaves it.
                let q = match i % 32 {
                    0 => 0.0,
                    1 => 15.0,
                    j => ((j * 7 + b) % 16) as f32,
                };
                d * q + m
            })
            .collect()
    }

    /// Under int8, 4-bit-grid weights keep their codes as q4 blocks unless asked to requantise;
    /// any other weight is int8 as before, and q4 keeps them regardless.
    #[test]
    fn int8_keeps_4bit_codes_unless_asked() {
        let grid = q4_1_table(64, 64);
        let plain: Vec<f32> = (0..64 * 64).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5).collect();
        assert!(q4::on_4bit_grid(&grid, 64) && !q4::on_4bit_grid(&plain, 64));
        assert_eq!(stored_with(true, true, QuantScheme::Int8, &grid), "q4");
        assert_eq!(stored_with(true, false, QuantScheme::Int8, &grid), "int8");
        assert_eq!(stored_with(true, true, QuantScheme::Int8, &plain), "int8");
        assert_eq!(stored_with(true, false, QuantScheme::Q4, &grid), "q4");
        let mut g = GraphBuilder::new();
        g.set_keep_4bit_codes(true);
        let layer = Linear { name: "l", weight: &grid, out: 64, inp: 64, bias: None };
        let y = linear(&mut g, QuantScheme::Int8, "x", &layer).unwrap();
        assert!(!y.is_empty());
        assert!(keeps_4bit_codes(&g, &layer));
        g.set_keep_4bit_codes(false);
        assert!(!keeps_4bit_codes(&g, &layer));
    }
}
