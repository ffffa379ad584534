//! ggml's block formats as plain structs, and their dequantisation to f32.
//!
//! Each quantised type is one struct laid out the way ggml declares it (`block_q4_0 { d: f16,
//! qs: [u8; 16] }`), read from the file's bytes field by field (little-endian, no alignment
//! assumed, no `unsafe`), with one `dequantize` function written as the scalar arithmetic of
//! ggml's `dequantize_row_*` reference in ggml-quants.c. Its operations are done in the same order
//! as ggml's and gguf-py's (`d * q - m`, never fused into one rounding), so the results equal
//! gguf-py's `gguf.quants.dequantize` bit for bit. The raw blocks are public so that an exporter
//! can keep Q4_0 or Q8_0 codes as they are instead of requantising.
//!
//! Nothing here is vectorised: it runs once, at export time.

mod float;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_0;

pub use float::{dequantize_bf16, dequantize_f16, dequantize_f32};
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4_K;
pub use q5_k::BlockQ5_K;
pub use q6_k::BlockQ6_K;
pub use q8_0::BlockQ8_0;

use crate::tensor::GgmlType;

/// A ggml quantisation block: `VALUES` values stored in `BYTES` bytes.
pub trait Block: Sized + 'static {
    /// The ggml type whose tensors are made of these blocks.
    const TYPE: GgmlType;
    /// Values per block.
    const VALUES: usize;
    /// Bytes per block in the file.
    const BYTES: usize;

    /// Reads one block; `None` unless `bytes` is exactly [`Self::BYTES`] long.
    fn from_bytes(bytes: &[u8]) -> Option<Self>;

    /// Appends the block's [`Self::VALUES`] values to `out`.
    fn dequantize_into(&self, out: &mut Vec<f32>);
}

/// The blocks in `data`, in order. Trailing bytes that do not make a whole block are ignored;
/// [`crate::GgufFile::blocks`] only passes whole tensors.
pub fn blocks<B: Block>(data: &[u8]) -> impl Iterator<Item = B> + '_ {
    // Every chunk is exactly B::BYTES long, so `from_bytes` never returns `None` here.
    data.chunks_exact(B::BYTES).filter_map(B::from_bytes)
}

/// Appends the values of `data`, a whole number of `ty` blocks, to `out`. Returns `false` (and
/// appends nothing) for a type this crate does not dequantise.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) -> bool {
    match ty {
        GgmlType::F32 => dequantize_f32(data, out),
        GgmlType::F16 => dequantize_f16(data, out),
        GgmlType::BF16 => dequantize_bf16(data, out),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(data, out),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(data, out),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(data, out),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4_K>(data, out),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5_K>(data, out),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6_K>(data, out),
        _ => return false,
    }
    true
}

fn dequantize_blocks<B: Block>(data: &[u8], out: &mut Vec<f32>) {
    for block in blocks::<B>(data) {
        block.dequantize_into(out);
    }
}

/// Reads a block's fields in order from its bytes.
pub(crate) struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Fields(bytes)
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub(crate) fn f16(&mut self) -> Option<half::f16> {
        self.bytes::<2>().map(half::f16::from_le_bytes)
    }

    /// `Some(())` when every byte has been read.
    pub(crate) fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}
