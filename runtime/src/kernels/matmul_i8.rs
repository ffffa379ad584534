//! The few-row int8 matrix product's inner loop: one activation row (u8 codes widened to i16)
//! against weights stored transposed (one row of K codes per output column), exact in i32.
//! tract's op `FerriteMatMulI8` (backend/tract/matmul_i8.rs) calls it for each of up to four
//! rows; the reference below is the definition every compiled path is tested against.
//!
//! One loop, compiled twice: portably (the compiler emits `pmaddwd` on x86-64 SSE2 and `smlal`
//! on aarch64) and for AVX2 (`vpmaddwd`, 16 products per instruction), picked once per call
//! from the CPU's features.

/// `out[j] = Σₖ x[k] · columns[j·K + k]`, AVX2 when the CPU has it.
pub(crate) fn dot_rows(x: &[i16], columns: &[i8], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `dot_rows_avx2` only requires AVX2, which the line above found on this CPU.
        unsafe { dot_rows_avx2(x, columns, out) };
        return;
    }
    dot_rows_portable(x, columns, out)
}

/// [`dot_rows_portable`] compiled for AVX2 (16 i16 products per `vpmaddwd` instead of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_rows_avx2(x: &[i16], columns: &[i8], out: &mut [i32]) {
    dot_rows_portable(x, columns, out)
}

/// The loop both variants compile. Products of an i16 (a u8 code) and an i8 sum exactly in i32
/// for K < 2¹⁶ (255 · 128 · K < 2³¹), and the compiler turns `i32(a)·i32(b)` of i16 values into
/// the pairwise multiply-add instructions.
#[inline(always)]
fn dot_rows_portable(x: &[i16], columns: &[i8], out: &mut [i32]) {
    for (o, column) in out.iter_mut().zip(columns.chunks_exact(x.len())) {
        *o = x.iter().zip(column).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
    }
}

/// The definition: `out[j] = Σₖ x[k] · columns[j·K + k]`, in i64 and narrowed at the end (the
/// unit tests hold every compiled path to it).
#[cfg(test)]
fn dot_rows_reference(x: &[i16], columns: &[i8], out: &mut [i32]) {
    for (o, column) in out.iter_mut().zip(columns.chunks_exact(x.len())) {
        let sum: i64 = x.iter().zip(column).map(|(&a, &b)| i64::from(a) * i64::from(b)).sum();
        *o = i32::try_from(sum).expect("|sum| < 2^31 for K < 2^16");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extreme codes (0 and 255 against −128 and 127) and lengths around the vector widths.
    #[test]
    fn every_path_equals_the_reference() {
        for k in [1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 577] {
            let x: Vec<i16> = (0..k).map(|i| [0i16, 255, (i * 37 % 256) as i16][i % 3]).collect();
            let columns: Vec<i8> =
                (0..k * 5).map(|i| [-128i8, 127, ((i * 91 % 255) as i32 - 127) as i8][i % 3]).collect();
            let mut want = vec![0i32; 5];
            dot_rows_reference(&x, &columns, &mut want);
            let mut got = vec![0i32; 5];
            dot_rows_portable(&x, &columns, &mut got);
            assert_eq!(got, want, "portable, K = {k}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut got = vec![0i32; 5];
                // SAFETY: AVX2 was detected on this CPU just above.
                unsafe { dot_rows_avx2(&x, &columns, &mut got) };
                assert_eq!(got, want, "AVX2, K = {k}");
            }
            let mut got = vec![0i32; 5];
            dot_rows(&x, &columns, &mut got);
            assert_eq!(got, want, "dispatch, K = {k}");
        }
    }
}
