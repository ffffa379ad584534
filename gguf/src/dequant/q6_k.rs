//! Q6_K: a 256-value super-block of sixteen 16-value sub-blocks, 6-bit codes around 32, each
//! sub-block with a signed 8-bit scale.

use half::f16;

use super::{Block, Fields};
use crate::tensor::GgmlType;

/// ggml's `block_q6_K`, 210 bytes (the scale comes last):
///
/// | bytes | field | meaning |
/// |---|---|---|
/// | 0..128 | `ql: [u8; 128]` | low 4 bits; per 128-value half `n`, byte `l` (0..64) of `ql[64n..]` holds value `128n + l` in its low nibble and `128n + 64 + l` in its high nibble |
/// | 128..192 | `qh: [u8; 64]` | high 2 bits; per half, bits `2k..2k+2` of byte `l` (0..32) of `qh[32n..]` belong to value `128n + 32k + l` |
/// | 192..208 | `scales: [i8; 16]` | one scale per 16 consecutive values |
/// | 208..210 | `d: f16` | scale of the scales |
///
/// Value `i` = `(d * scales[i / 16]) * (q - 32)`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name, block_q6_K
pub struct BlockQ6_K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

impl BlockQ6_K {
    /// The 6-bit codes (0..=63) in value order.
    pub fn codes(&self) -> [u8; 256] {
        let mut q = [0; 256];
        for ((qs, ql), qh) in
            q.chunks_exact_mut(128).zip(self.ql.chunks_exact(64)).zip(self.qh.chunks_exact(32))
        {
            for l in 0..32 {
                qs[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                qs[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                qs[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                qs[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        q
    }

    pub fn dequantize(&self) -> [f32; 256] {
        let d = self.d.to_f32();
        let mut y = [0.0; 256];
        for ((ys, qs), &sc) in y.chunks_exact_mut(16).zip(self.codes().chunks_exact(16)).zip(&self.scales) {
            let ds = d * f32::from(sc);
            for (yi, &q) in ys.iter_mut().zip(qs) {
                *yi = ds * f32::from(i16::from(q) - 32);
            }
        }
        y
    }
}

impl Block for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const VALUES: usize = 256;
    const BYTES: usize = 210;

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut f = Fields::new(bytes);
        let block = BlockQ6_K {
            ql: f.bytes()?,
            qh: f.bytes()?,
            scales: f.bytes::<16>()?.map(|b| b as i8),
            d: f.f16()?,
        };
        f.end().map(|()| block)
    }

    fn dequantize_into(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.dequantize());
    }
}
