//! Q4_1: 32 values as 4-bit codes with an f16 scale and an f16 minimum.

use half::f16;

use super::{Block, Fields};
use crate::tensor::GgmlType;

/// ggml's `block_q4_1`, 20 bytes:
///
/// | bytes | field | meaning |
/// |---|---|---|
/// | 0..2 | `d: f16` | scale |
/// | 2..4 | `m: f16` | minimum (the value of code 0) |
/// | 4..20 | `qs: [u8; 16]` | byte `j` holds value `j` in its low nibble, value `j + 16` in its high nibble |
///
/// Value = `d * q + m`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

impl BlockQ4_1 {
    /// The 4-bit codes (0..=15) in value order.
    pub fn codes(&self) -> [u8; 32] {
        let mut q = [0; 32];
        for (j, &b) in self.qs.iter().enumerate() {
            q[j] = b & 0x0F;
            q[j + 16] = b >> 4;
        }
        q
    }

    pub fn dequantize(&self) -> [f32; 32] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let mut y = [0.0; 32];
        for (yj, q) in y.iter_mut().zip(self.codes()) {
            *yj = d * f32::from(q) + m;
        }
        y
    }
}

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const VALUES: usize = 32;
    const BYTES: usize = 20;

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut f = Fields::new(bytes);
        let block = BlockQ4_1 { d: f.f16()?, m: f.f16()?, qs: f.bytes()? };
        f.end().map(|()| block)
    }

    fn dequantize_into(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.dequantize());
    }
}
