//! The unquantised types: little-endian f32, IEEE half (f16) and bfloat16 (the top half of an
//! f32's bits). Conversions to f32 are exact.

use half::f16;

/// F32: four little-endian bytes per value.
pub fn dequantize_f32(data: &[u8], out: &mut Vec<f32>) {
    out.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
}

/// F16: two little-endian bytes per value, IEEE 754 binary16.
pub fn dequantize_f16(data: &[u8], out: &mut Vec<f32>) {
    out.extend(data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()));
}

/// BF16: two little-endian bytes per value, the upper 16 bits of an f32.
pub fn dequantize_bf16(data: &[u8], out: &mut Vec<f32>) {
    out.extend(
        data.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
    );
}
