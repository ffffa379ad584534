//! ferrite's own arithmetic: plain functions over slices, with no tract or ONNX Runtime types,
//! shared by both backends' fused ops. Each kernel sits beside a scalar reference that its unit
//! tests hold every compiled path to; SIMD paths (AVX2 + FMA on x86-64, FMA on aarch64) are
//! chosen at run time from the CPU's features, in the kernel's own module, so the ops above never
//! branch on the CPU. What each computes and why: docs/kernels.md.
//!
//! - [`attention`]: dot product, `e^x`, softmax and a decoder step over an in-place KV cache;
//! - [`row_quant`]: per-row uint8 (and 16-bit as two digits) activation codes and their inverse;
//! - [`matmul_i8`]: the few-row int8 matrix product's inner loop (tract's decode-step matmul);
//! - [`matmul_q4`]: f32 rows times 4-bit block weights read in place (tract's `MatMulNBits`).

pub(crate) mod attention;
#[cfg(feature = "tract")]
pub(crate) mod matmul_i8;
#[cfg(feature = "tract")]
pub(crate) mod matmul_q4;
pub(crate) mod row_quant;

/// Buffers whose lengths do not fit the dimensions a kernel was given: the caller's op turns it
/// into its own error type (tract's, or an ONNX Runtime status).
#[cfg(feature = "ort")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShapeMismatch(pub String);

#[cfg(feature = "ort")]
impl std::fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(feature = "ort")]
impl std::error::Error for ShapeMismatch {}
