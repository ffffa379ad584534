//! Q4_K: a 256-value super-block of eight 32-value sub-blocks, 4-bit codes, each sub-block with
//! its own 6-bit scale and 6-bit minimum.

use half::f16;

use super::{Block, Fields};
use crate::tensor::GgmlType;

/// ggml's `block_q4_K`, 144 bytes:
///
/// | bytes | field | meaning |
/// |---|---|---|
/// | 0..2 | `d: f16` | scale of the sub-block scales |
/// | 2..4 | `dmin: f16` | scale of the sub-block minimums |
/// | 4..16 | `scales: [u8; 12]` | eight 6-bit scales and eight 6-bit minimums, packed (see [`scale_min`]) |
/// | 16..144 | `qs: [u8; 128]` | 32 bytes per 64 values: byte `l` of chunk `c` holds value `64c + l` in its low nibble, `64c + 32 + l` in its high nibble |
///
/// Value `i` of sub-block `s` = `(d * sc[s]) * q - (dmin * m[s])`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name, block_q4_K
pub struct BlockQ4_K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) from the 12 packed bytes (ggml's
/// `get_scale_min_k4`). Bytes 0-3 hold the low 6 bits of scales 0-3, bytes 4-7 those of minimums
/// 0-3; bytes 8-11 hold the low 4 bits of scale and minimum 4-7 (scale in the low nibble), whose
/// top 2 bits sit in the top 2 bits of bytes 0-3 (scales) and 4-7 (minimums).
pub fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

impl BlockQ4_K {
    pub fn dequantize(&self) -> [f32; 256] {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        let mut y = [0.0; 256];
        for (c, (ys, qs)) in y.chunks_exact_mut(64).zip(self.qs.chunks_exact(32)).enumerate() {
            let (sc1, m1) = scale_min(2 * c, &self.scales);
            let (sc2, m2) = scale_min(2 * c + 1, &self.scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let (lo, hi) = ys.split_at_mut(32);
            for ((yl, yh), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
                *yl = d1 * f32::from(q & 0x0F) - m1;
                *yh = d2 * f32::from(q >> 4) - m2;
            }
        }
        y
    }
}

impl Block for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const VALUES: usize = 256;
    const BYTES: usize = 144;

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut f = Fields::new(bytes);
        let block = BlockQ4_K { d: f.f16()?, dmin: f.f16()?, scales: f.bytes()?, qs: f.bytes()? };
        f.end().map(|()| block)
    }

    fn dequantize_into(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.dequantize());
    }
}
