//! Q5_K: Q4_K's layout plus a fifth bit per value.

use half::f16;

use super::q4_k::scale_min;
use super::{Block, Fields};
use crate::tensor::GgmlType;

/// ggml's `block_q5_K`, 176 bytes:
///
/// | bytes | field | meaning |
/// |---|---|---|
/// | 0..2 | `d: f16` | scale of the sub-block scales |
/// | 2..4 | `dmin: f16` | scale of the sub-block minimums |
/// | 4..16 | `scales: [u8; 12]` | eight 6-bit scales and minimums, packed as in Q4_K |
/// | 16..48 | `qh: [u8; 32]` | fifth bits: bit `s` of byte `l` belongs to value `32s + l` |
/// | 48..176 | `qs: [u8; 128]` | low 4 bits, packed as in Q4_K |
///
/// Value `i` of sub-block `s` = `(d * sc[s]) * (q + 16 * h) - (dmin * m[s])`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)] // ggml's name, block_q5_K
pub struct BlockQ5_K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

impl BlockQ5_K {
    pub fn dequantize(&self) -> [f32; 256] {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        let mut y = [0.0; 256];
        for (c, (ys, qs)) in y.chunks_exact_mut(64).zip(self.qs.chunks_exact(32)).enumerate() {
            let (sc1, m1) = scale_min(2 * c, &self.scales);
            let (sc2, m2) = scale_min(2 * c + 1, &self.scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let (lo, hi) = ys.split_at_mut(32);
            for (((yl, yh), &q), &h) in lo.iter_mut().zip(hi.iter_mut()).zip(qs).zip(&self.qh) {
                let h1 = (h >> (2 * c)) & 1;
                let h2 = (h >> (2 * c + 1)) & 1;
                *yl = d1 * f32::from((q & 0x0F) | (h1 << 4)) - m1;
                *yh = d2 * f32::from((q >> 4) | (h2 << 4)) - m2;
            }
        }
        y
    }
}

impl Block for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const VALUES: usize = 256;
    const BYTES: usize = 176;

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut f = Fields::new(bytes);
        let block =
            BlockQ5_K { d: f.f16()?, dmin: f.f16()?, scales: f.bytes()?, qh: f.bytes()?, qs: f.bytes()? };
        f.end().map(|()| block)
    }

    fn dequantize_into(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.dequantize());
    }
}
