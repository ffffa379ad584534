//! The int8 matrix product of tract's op `FerriteMatMulI8` (backend/tract/matmul_i8.rs):
//! activation rows of u8 codes against weights stored transposed (one row of K int8 codes per
//! output column), exact in i32. The reference below is the definition every compiled path is
//! tested against; all paths give the same integers.
//!
//! - [`matmul_rows`] with AVX-VNNI (x86-64 CPUs since Alder Lake / Zen 4): `vpdpbusd`
//!   multiplies 32 u8 × i8 pairs and adds them in fours into eight i32 lanes in one
//!   instruction; up to four rows share each load of a column's codes.
//! - Otherwise one row at a time through [`dot_rows`]: the codes widened to i16, one loop
//!   compiled twice: portably (the compiler emits `pmaddwd` on x86-64 SSE2 and `smlal` on
//!   aarch64) and for AVX2 (`vpmaddwd`, 16 products per instruction), picked once per call
//!   from the CPU's features.

/// `out[r·W + j] = Σₖ a[r·K + k] · columns[(cols.start + j)·K + k]` for every row of `a` (u8
/// codes, `rows · K`) and the output columns `cols` (`W` of them: a sub-range of `0..N`, so
/// callers can split the work between threads).
pub(crate) fn matmul_rows(a: &[u8], k: usize, columns: &[i8], cols: std::ops::Range<usize>, out: &mut [i32]) {
    if k == 0 || cols.is_empty() {
        out.fill(0); // an empty sum, or no output at all
        return;
    }
    let columns = &columns[cols.start * k..cols.end * k];
    let width = cols.len();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avxvnni") {
        for (rows, out) in a.chunks(4 * k).zip(out.chunks_mut(4 * width)) {
            // SAFETY: `rows_vnni` only requires AVX-VNNI (and the AVX2 it implies), found above.
            unsafe { rows_vnni(rows, k, columns, out) };
        }
        return;
    }
    let mut wide = vec![0i16; k];
    for (row, out) in a.chunks_exact(k).zip(out.chunks_exact_mut(width)) {
        wide.iter_mut().zip(row).for_each(|(w, &v)| *w = i16::from(v));
        dot_rows(&wide, columns, out);
    }
}

/// Up to four rows (`a`: `rows · K`) against every column, with `vpdpbusd`: per 32 codes of a
/// column, one load shared by the rows and one instruction per row. Exact: each i32 lane
/// sums products of |u8 · i8| ≤ 255 · 128, at most K/8 · 4 of them (< 2³¹ for K < 2¹⁶).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avxvnni")]
fn rows_vnni(a: &[u8], k: usize, columns: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let rows = a.len() / k;
    assert!(rows <= 4 && out.len() >= rows * (columns.len() / k), "rows_vnni: 1–4 rows");
    let width = columns.len() / k;
    let full = k / 32 * 32;
    for (j, column) in columns.chunks_exact(k).enumerate() {
        let mut acc = [_mm256_setzero_si256(); 4];
        for at in (0..full).step_by(32) {
            // SAFETY: `at + 32 ≤ K`, the length of `column` and of each row of `a`; unaligned.
            let w = unsafe { _mm256_loadu_si256(column.as_ptr().add(at).cast()) };
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                // SAFETY: as above, within row `r` of `a` (`r < rows`).
                let x = unsafe { _mm256_loadu_si256(a.as_ptr().add(r * k + at).cast()) };
                *acc = _mm256_dpbusd_avx_epi32(*acc, x, w);
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` is 8 i32s, the width of an unaligned 256-bit store.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *acc) };
            let tail: i32 = a[r * k + full..(r + 1) * k]
                .iter()
                .zip(&column[full..])
                .map(|(&x, &w)| i32::from(x) * i32::from(w))
                .sum();
            out[r * width + j] = lanes.iter().sum::<i32>() + tail;
        }
    }
}

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

    /// Every row count (across the four-row groups) and column range, on the dispatched path,
    /// equals the reference row by row; with AVX-VNNI also the VNNI path on its own.
    #[test]
    fn rows_equal_the_reference() {
        for k in [1, 31, 32, 33, 64, 100, 577] {
            let n = 7;
            let columns: Vec<i8> =
                (0..k * n).map(|i| [-128i8, 127, ((i * 91 % 255) as i32 - 127) as i8][i % 3]).collect();
            for rows in [1, 3, 4, 5, 9] {
                let a: Vec<u8> = (0..rows * k).map(|i| [0u8, 255, (i * 37 % 256) as u8][i % 3]).collect();
                let mut want = vec![0i32; rows * n];
                for (row, want) in a.chunks_exact(k).zip(want.chunks_exact_mut(n)) {
                    let x: Vec<i16> = row.iter().map(|&v| i16::from(v)).collect();
                    dot_rows_reference(&x, &columns, want);
                }
                let mut got = vec![0i32; rows * n];
                matmul_rows(&a, k, &columns, 0..n, &mut got);
                assert_eq!(got, want, "K = {k}, rows = {rows}");
                let mut part = vec![0i32; rows * 3];
                matmul_rows(&a, k, &columns, 2..5, &mut part);
                for r in 0..rows {
                    assert_eq!(
                        part[r * 3..(r + 1) * 3],
                        want[r * n + 2..r * n + 5],
                        "range, K = {k}, rows = {rows}"
                    );
                }
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avxvnni") {
                    let mut got = vec![0i32; rows * n];
                    for (rows, out) in a.chunks(4 * k).zip(got.chunks_mut(4 * n)) {
                        // SAFETY: AVX-VNNI was detected on this CPU just above.
                        unsafe { rows_vnni(rows, k, &columns, out) };
                    }
                    assert_eq!(got, want, "VNNI, K = {k}, rows = {rows}");
                }
            }
        }
    }
}
