//! int8 weight rows: the per-row symmetric scale and round-to-nearest codes that both the int8
//! scheme ([`super::int8`]) and GPTQ ([`super::gptq`], which rounds column by column with error
//! feedback instead) start from. Plain arithmetic, below both.

/// The symmetric int8 scale of one weight row: `max|w| / 127`.
pub fn row_scale(row: &[f32]) -> f32 {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    // An all-zero row keeps scale 1 so the dequantised row is exactly zero, not NaN.
    if max > 0.0 { max / 127.0 } else { 1.0 }
}

/// Per-row symmetric quantisation of a `[rows, cols]` matrix: (codes, one scale per row).
pub fn quantise_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = vec![0i8; w.len()];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let scale = row_scale(row);
        scales[r] = scale;
        for (c, v) in row.iter().enumerate() {
            codes[r * cols + c] = (v / scale).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (codes, scales)
}
