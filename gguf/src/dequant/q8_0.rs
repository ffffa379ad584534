//! Q8_0: 32 values as signed 8-bit codes, one f16 scale.

use half::f16;

use super::{Block, Fields};
use crate::tensor::GgmlType;

/// ggml's `block_q8_0`, 34 bytes:
///
/// | bytes | field | meaning |
/// |---|---|---|
/// | 0..2 | `d: f16` | scale |
/// | 2..34 | `qs: [i8; 32]` | one code per value, in order |
///
/// Value = `q * d`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

impl BlockQ8_0 {
    pub fn dequantize(&self) -> [f32; 32] {
        let d = self.d.to_f32();
        self.qs.map(|q| f32::from(q) * d)
    }
}

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const VALUES: usize = 32;
    const BYTES: usize = 34;

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut f = Fields::new(bytes);
        let block = BlockQ8_0 { d: f.f16()?, qs: f.bytes::<32>()?.map(|b| b as i8) };
        f.end().map(|()| block)
    }

    fn dequantize_into(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.dequantize());
    }
}
