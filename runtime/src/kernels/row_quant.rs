//! The arithmetic of ferrite's fused int8 quantisation (`rewrite/int8_pattern.rs`), shared by tract's
//! ops (`backend/tract/fuse.rs`) and ONNX Runtime's custom operators (`backend/ort/ops.rs`). Each function
//! computes exactly what the standard nodes it replaces compute, in the same order and with the
//! same f32 operations (division, not a multiplied reciprocal; ties-to-even rounding).

/// 1.5·2²³: for 0 ≤ v < 2²², `v + MAGIC` rounds `v` half to even (the default rounding mode)
/// and the low byte of its bits is that integer when it is at most 255. A plain float add and a
/// bit mask, which the compiler vectorises; `f32::round_ties_even` is a libm call per element on
/// x86-64 builds without SSE4.1, and `as u8` a saturating branch.
pub(crate) const MAGIC: f32 = 12_582_912.0;

/// The smallest and largest value of a non-empty row (ReduceMin, ReduceMax). Eight independent
/// lanes so the compiler emits packed min/max.
pub(crate) fn row_range(row: &[f32]) -> (f32, f32) {
    let first = row[0];
    let mut lo = [first; 8];
    let mut hi = [first; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let mut l = lo.iter().fold(first, |m, &v| m.min(v));
    let mut h = hi.iter().fold(first, |m, &v| m.max(v));
    for &v in chunks.remainder() {
        l = l.min(v);
        h = h.max(v);
    }
    (l, h)
}

/// One non-empty row's scale and minimum for `levels` + 1 codes (255 or 65535), as the replaced
/// nodes compute them.
pub(crate) fn row_scale(row: &[f32], levels: f32) -> (f32, f32) {
    let (lo, hi) = row_range(row);
    let scale = (hi - lo).max(f32::MIN_POSITIVE) * (1.0f32 / levels);
    (scale, lo)
}

/// `Round((v − lo) / scale)` as 16-bit codes, split into `high = Floor(q / 256)` and
/// `low = q − 256·high`, for one row.
pub(crate) fn quantise_row_digits(row: &[f32], scale: f32, lo: f32, high: &mut [u8], low: &mut [u8]) {
    for ((h, l), &v) in high.iter_mut().zip(low.iter_mut()).zip(row) {
        // As in `quantise_row`: 0 ≤ (v − lo) / scale ≤ 65535·(1 + 2⁻²²) < 2²², so the magic
        // rounding is exact and the low 16 mantissa bits hold q.
        let q = ((v - lo) / scale + MAGIC).to_bits() & 0xffff;
        *h = (q >> 8) as u8;
        *l = (q & 0xff) as u8;
    }
}

/// `Cast<u8>(Round((v − lo) / scale))` for one row.
pub(crate) fn quantise_row(row: &[f32], scale: f32, lo: f32, out: &mut [u8]) {
    for (q, &v) in out.iter_mut().zip(row) {
        // 0 ≤ (v − lo) / scale ≤ 255·(1 + 2⁻²²) by construction of `scale` (f32 rounding is
        // monotone), so the magic rounding is exact and lands on 0..=255, whose low mantissa
        // byte is the code. NaN/∞ inputs give unspecified codes, as the standard nodes do.
        *q = (((v - lo) / scale + MAGIC).to_bits() & 0xff) as u8;
    }
}

/// Quantises every `d`-wide row of `xs`: codes into `codes` (`xs.len()` bytes, or with `digits`
/// `2 · xs.len()`: all high digits, then all low digits), each row's scale and minimum into
/// `scales` / `minima`. What both backends' fused quantisation op computes.
pub(crate) fn quantise_rows(
    xs: &[f32],
    d: usize,
    digits: bool,
    codes: &mut [u8],
    scales: &mut [f32],
    minima: &mut [f32],
) {
    let rows = xs.chunks_exact(d);
    let stats = scales.iter_mut().zip(minima.iter_mut());
    if digits {
        let (high, low) = codes.split_at_mut(xs.len());
        let out = high.chunks_exact_mut(d).zip(low.chunks_exact_mut(d));
        for ((row, (h, l)), (s, m)) in rows.zip(out).zip(stats) {
            let (scale, lo) = row_scale(row, 65535.0);
            quantise_row_digits(row, scale, lo, h, l);
            (*s, *m) = (scale, lo);
        }
    } else {
        for ((row, out), (s, m)) in rows.zip(codes.chunks_exact_mut(d)).zip(stats) {
            let (scale, lo) = row_scale(row, 255.0);
            quantise_row(row, scale, lo, out);
            (*s, *m) = (scale, lo);
        }
    }
}

/// `(f32(product) · row_scale + row_min · column_sum) · weight_scale (+ bias) (+ residual)` for
/// every row of `out` (`N` = `sums.len()` columns); with `low` (16-bit codes), `f32(product)` is
/// `256·f32(high) + f32(low)` with `acc` the high digits' products. Slice lengths are checked by
/// the callers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dequantise_rows(
    out: &mut [f32],
    acc: &[i32],
    low: Option<&[i32]>,
    minima: &[f32],
    scale: &[f32],
    sums: &[f32],
    wscale: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) {
    let n = sums.len();
    if n == 0 {
        return;
    }
    // One pass per row, the row still in cache, in the order of the replaced nodes:
    // ((product · scale + min · column sum) · weight scale + bias) + residual.
    for (r, (o, a)) in out.chunks_exact_mut(n).zip(acc.chunks_exact(n)).enumerate() {
        let (lo, s) = (minima[r], scale[r]);
        match low {
            // `ReduceSum(Cast(product) · [256, 1])` over the digits, then as below.
            Some(low) => {
                let l = &low[r * n..(r + 1) * n];
                for ((((o, &h), &l), &cs), &ws) in o.iter_mut().zip(a).zip(l).zip(sums).zip(wscale) {
                    let p = h as f32 * 256.0 + l as f32;
                    *o = (p * s + lo * cs) * ws;
                }
            }
            None => {
                for (((o, &a), &cs), &ws) in o.iter_mut().zip(a).zip(sums).zip(wscale) {
                    *o = (a as f32 * s + lo * cs) * ws;
                }
            }
        }
        if let Some(bias) = bias {
            o.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
        }
        if let Some(res) = residual {
            o.iter_mut().zip(&res[r * n..(r + 1) * n]).for_each(|(o, &x)| *o += x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantises_like_the_definition() {
        // Ties, a constant row, an all-negative row, a lone spike, a row longer than 8 lanes.
        let long: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let rows: [&[f32]; 5] =
            [&[0.5, 1.5, 2.5, -0.5], &[0.25; 4], &[-1.0, -2.0, -3.0, -4.0], &[0.0, 0.0, 1e-3, 100.0], &long];
        for row in rows {
            let (scale, lo) = row_scale(row, 255.0);
            let want_lo = row.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want_scale = (hi - want_lo).max(f32::MIN_POSITIVE) * (1.0 / 255.0);
            assert_eq!(lo.to_bits(), want_lo.to_bits());
            assert_eq!(scale.to_bits(), want_scale.to_bits());
            let mut codes = vec![0u8; row.len()];
            quantise_row(row, scale, lo, &mut codes);
            for (c, &v) in codes.iter().zip(row) {
                assert_eq!(*c, ((v - lo) / scale).round_ties_even() as u8, "{row:?}");
            }
            assert_eq!(codes.iter().min(), Some(&0), "{row:?}");

            // 16-bit digits: Round, then Floor(q · 1/256) and q − 256·high, as the exporter's nodes.
            let (scale, lo) = row_scale(row, 65535.0);
            let want_scale = (hi - want_lo).max(f32::MIN_POSITIVE) * (1.0 / 65535.0);
            assert_eq!(scale.to_bits(), want_scale.to_bits());
            let (mut high, mut low) = (vec![0u8; row.len()], vec![0u8; row.len()]);
            quantise_row_digits(row, scale, lo, &mut high, &mut low);
            for ((&h, &l), &v) in high.iter().zip(&low).zip(row) {
                let q = ((v - lo) / scale).round_ties_even();
                let want_high = (q * (1.0 / 256.0)).floor();
                assert_eq!((h, l), (want_high as u8, (q - want_high * 256.0) as u8), "{row:?}");
            }
        }
    }
}
