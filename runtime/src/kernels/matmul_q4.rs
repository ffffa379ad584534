//! The 4-bit block matrix product behind tract's `FerriteMatMulQ4` (backend/tract/matmul_q4.rs):
//! f32 activation rows times weights stored as the exporter's `MatMulNBits` blocks, read in
//! place — the packed codes are never widened into a second copy of the weights.
//!
//! A weight row (one output column `n`) is `K/32` blocks of 32 codes `q ∈ 0..=15`, two per byte
//! (element `2j` in the low nibble of byte `j`, `2j+1` in the high one), with a per-block scale
//! `d` and a per-block offset `c`: the weight is `d·q + c`. The exporter's symmetric blocks
//! (llama.cpp's Q4_0) have `c = −8d`; blocks kept from a GGUF Q4_1 tensor have `c = m`, the
//! block minimum. So
//!
//! ```text
//! y[n] = Σ_b ( d_b · Σ_i q_i·x_i  +  c_b · Σ_i x_i )
//! ```
//!
//! Each activation row is prepared once per call ([`Prepared`]), as llama.cpp does for its
//! Q4_0 × Q8_0 product: per block of 32, its largest magnitude sets a scale `e = max|x|/127`
//! and the values become int8 codes `p = round(x/e)`, stored in the order the code bytes are
//! unpacked (the 16 even positions, then the 16 odd ones: a byte's low nibble meets `x[2j]`, its
//! high nibble `x[2j+1]`), beside the block's exact f32 sum for the offset term. Then
//!
//! ```text
//! y[n] ≈ Σ_b ( d_b·e_b · Σ_i q_i·p_i  +  c_b · Σ_i x_i )
//! ```
//!
//! where `Σ q·p` is exact integer arithmetic (|Σ| ≤ 32·15·127): on AVX2 one `vpmaddubsw` and one
//! `vpmaddwd` per block of 32 weights. Each path keeps four chains of eight f32 lane sums
//! (block `b` goes to chain `b mod 4`; lane `t` takes bytes `4t..4t+4` of the unpacked block)
//! and adds them in the same order, with a multiply and
//! an add (no fused multiply-add), so the AVX2 and portable paths — and x86-64 and aarch64 —
//! give bit-identical outputs. The activation codes cost ≤ 1/254 of a block's largest value
//! per element (relative); [`reference`] is the definition with them, in f64.

use half::f16;

/// Weights per block, along K.
pub(crate) const BLOCK: usize = 32;
/// Code bytes per block.
const BLOCK_BYTES: usize = BLOCK / 2;

/// A `[N, K]` weight in 4-bit blocks, borrowed from the model's constants.
pub(crate) struct Q4Weights<'a> {
    pub k: usize,
    pub n: usize,
    /// `[N, K/32, 16]` code bytes.
    pub codes: &'a [u8],
    /// `[N, K/32]` block scales `d`.
    pub scales: &'a [f16],
    /// `[N, K/32]` block minimums `m` (offset `c = m`); `None`: symmetric blocks, `c = −8d`.
    pub mins: Option<&'a [f16]>,
}

impl Q4Weights<'_> {
    /// Checks that the slices have the sizes `k` and `n` say.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.k.is_multiple_of(BLOCK) {
            return Err(format!("K = {} is not a multiple of {BLOCK}", self.k));
        }
        let blocks = self.n.checked_mul(self.k / BLOCK).ok_or("N·K overflows")?;
        if self.codes.len() != blocks * BLOCK_BYTES {
            return Err(format!("{} code bytes for N = {}, K = {}", self.codes.len(), self.n, self.k));
        }
        if self.scales.len() != blocks || self.mins.is_some_and(|m| m.len() != blocks) {
            return Err(format!("scales or minimums are not N·K/32 = {blocks} values"));
        }
        Ok(())
    }
}

/// Activation rows laid out for the inner loop (module docs): per row, `K` codes in unpacking
/// order, and per block its scale `e` and exact sum. 8-bit codes are `p ∈ −127..=127`; 16-bit
/// codes `p ∈ −32767..=32767` are stored as a signed high byte and an unsigned low byte,
/// `p = 256·high + low`, the two operands `vpmaddubsw` takes.
pub(crate) struct Prepared {
    k: usize,
    /// The codes (8-bit), or their high bytes (16-bit).
    high: Vec<i8>,
    /// 16-bit only: the low bytes.
    low: Option<Vec<u8>>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl Prepared {
    /// `x`: `rows · K` values (`K` a multiple of 32), as `bits`-bit codes (8 or 16).
    pub(crate) fn new(x: &[f32], k: usize, bits: ActivationBits) -> Prepared {
        let mut high = vec![0i8; x.len()];
        let mut low = (bits == ActivationBits::Sixteen).then(|| vec![0u8; x.len()]);
        let mut scales = Vec::with_capacity(x.len() / BLOCK);
        let mut sums = Vec::with_capacity(x.len() / BLOCK);
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let at = b * BLOCK..(b + 1) * BLOCK;
            let low = low.as_mut().map(|l| &mut l[at.clone()]);
            let (scale, sum) = quantise_block(block, &mut high[at], low);
            scales.push(scale);
            sums.push(sum);
        }
        Prepared { k, high, low, scales, sums }
    }

    fn rows(&self) -> usize {
        self.high.len().checked_div(self.k).unwrap_or(0)
    }

    /// (high bytes or codes, low bytes, block scales, block sums) of row `r`.
    fn row(&self, r: usize) -> Row<'_> {
        let blocks = self.k / BLOCK;
        let b = r * blocks..(r + 1) * blocks;
        let at = r * self.k..(r + 1) * self.k;
        Row {
            high: &self.high[at.clone()],
            low: self.low.as_ref().map(|l| &l[at]),
            scales: &self.scales[b.clone()],
            sums: &self.sums[b],
        }
    }
}

/// One prepared activation row (see [`Prepared`]).
#[derive(Clone, Copy)]
struct Row<'a> {
    high: &'a [i8],
    low: Option<&'a [u8]>,
    scales: &'a [f32],
    sums: &'a [f32],
}

/// How finely [`Prepared`] codes the activations: 8 bits per value (llama.cpp's Q8_0
/// activations, ONNX Runtime's `accuracy_level` 4) or 16 (twice the integer work; within
/// 1/65534 of a block's largest value, near f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ActivationBits {
    Eight,
    Sixteen,
}

impl std::fmt::Display for ActivationBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActivationBits::Eight => "8",
            ActivationBits::Sixteen => "16",
        })
    }
}

/// Quantises 32 activations to codes in unpacking order (`high` the codes or their high bytes,
/// `low` their low bytes for 16-bit codes); returns (scale, exact sum).
fn quantise_block(block: &[f32], high: &mut [i8], low: Option<&mut [u8]>) -> (f32, f32) {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let limit = if low.is_some() { 32767.0 } else { 127.0 };
    let scale = max / limit;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let code = |v: f32| (v * inv).round().clamp(-limit, limit) as i32;
    let order = |j: usize| if j < BLOCK_BYTES { 2 * j } else { 2 * (j - BLOCK_BYTES) + 1 };
    match low {
        None => high.iter_mut().enumerate().for_each(|(j, h)| *h = code(block[order(j)]) as i8),
        Some(low) => {
            for (j, (h, l)) in high.iter_mut().zip(low.iter_mut()).enumerate() {
                let p = code(block[order(j)]);
                *l = (p & 0xff) as u8;
                *h = (p >> 8) as i8;
            }
        }
    }
    (scale, block.iter().sum())
}

/// Independent accumulators per row dot product: block `b` adds into accumulator `b % CHAINS`,
/// so consecutive blocks do not wait on each other's additions (an f32 add has 3–4 cycles of
/// latency; a block's integer work takes fewer).
const CHAINS: usize = 4;

/// `out[r·W + j] ≈ Σ_k x[r, k] · w[columns.start + j, k]` for the output columns `columns`
/// (a sub-range of `0..N`, so callers can split the work between threads; `W` its length).
pub(crate) fn matmul(w: &Q4Weights<'_>, x: &Prepared, columns: std::ops::Range<usize>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: `matmul_avx2` only requires AVX2 and F16C, which the line above found.
        unsafe { matmul_avx2(w, x, columns, out) };
        return;
    }
    columns_with(w, x, columns, out, widen_portable, dot_portable)
}

fn widen_portable(src: &[f16], dst: &mut [f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
}

/// f16 → f32 with F16C, eight values per `vcvtph2ps`, inline in the AVX2 column loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut groups = src.chunks_exact(8).zip(dst.chunks_exact_mut(8));
    for (s, d) in &mut groups {
        // SAFETY: `s` is 8 f16s (128 bits) and `d` 8 f32s (256 bits); unaligned load and store.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast()))) };
    }
    // The last 0–7 values through a zero-padded group (`f16::to_f32` would test the CPU's
    // features at every call).
    let n = src.len() / 8 * 8;
    if n < src.len() {
        let mut tail = [f16::ZERO; 8];
        tail[..src.len() - n].copy_from_slice(&src[n..]);
        let mut wide = [0f32; 8];
        // SAFETY: `tail` is 8 f16s and `wide` 8 f32s; unaligned load and store.
        unsafe {
            _mm256_storeu_ps(wide.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(tail.as_ptr().cast())))
        };
        let len = dst.len() - n;
        dst[n..].copy_from_slice(&wide[..len]);
    }
}

/// [`columns_with`] with [`dot_avx2`], compiled for AVX2 so the per-column loops (scales,
/// offsets) are vectorised as widely as the dot products.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn matmul_avx2(w: &Q4Weights<'_>, x: &Prepared, columns: std::ops::Range<usize>, out: &mut [f32]) {
    // The closure inherits this function's target features, so it calls `dot_avx2` safely.
    columns_with(
        w,
        x,
        columns,
        out,
        |s, d| widen_f16c(s, d),
        |codes, scales, row| dot_avx2(codes, scales, row),
    )
}

/// The per-column work shared by every path: block scales and offsets, then `dot` per row.
#[inline(always)]
fn columns_with(
    w: &Q4Weights<'_>,
    x: &Prepared,
    columns: std::ops::Range<usize>,
    out: &mut [f32],
    widen: impl Fn(&[f16], &mut [f32]),
    dot: impl Fn(&[u8], &[f32], Row<'_>) -> f32,
) {
    let blocks = w.k / BLOCK;
    let width = columns.len();
    let mut d = vec![0f32; blocks];
    let mut c = vec![0f32; blocks];
    let mut scales = vec![0f32; blocks];
    for (col, n) in columns.enumerate() {
        let range = n * blocks..(n + 1) * blocks;
        widen(&w.scales[range.clone()], &mut d);
        match w.mins {
            Some(mins) => widen(&mins[range], &mut c),
            None => c.iter_mut().zip(&d).for_each(|(c, &d)| *c = -8.0 * d),
        }
        let codes = &w.codes[n * blocks * BLOCK_BYTES..(n + 1) * blocks * BLOCK_BYTES];
        for r in 0..x.rows() {
            let row = x.row(r);
            let sums = row.sums;
            scales.iter_mut().zip(&d).zip(row.scales).for_each(|((s, &d), &e)| *s = d * e);
            let mut offset = [0f32; CHAINS];
            let mut groups = c.chunks_exact(CHAINS).zip(sums.chunks_exact(CHAINS));
            for (c, sums) in &mut groups {
                for i in 0..CHAINS {
                    offset[i] += c[i] * sums[i];
                }
            }
            let tail = c.chunks_exact(CHAINS).remainder().iter().zip(sums.chunks_exact(CHAINS).remainder());
            for (i, (&c, &sum)) in tail.enumerate() {
                offset[i] += c * sum;
            }
            let offset = (offset[0] + offset[1]) + (offset[2] + offset[3]);
            out[r * width + col] = dot(codes, &scales, row) + offset;
        }
    }
}

/// Adds the chains' eight lanes in the one order every path uses.
#[inline(always)]
fn combine(acc: &[[f32; 8]; CHAINS]) -> f32 {
    let mut lanes = [0f32; 8];
    for (t, lane) in lanes.iter_mut().enumerate() {
        *lane = (acc[0][t] + acc[1][t]) + (acc[2][t] + acc[3][t]);
    }
    lanes.iter().fold(0.0, |s, &a| s + a)
}

/// `Σ_b scale_b · Σ_i q_i·p_i` over one weight row: per chain, eight lane sums (module docs).
fn dot_portable(codes: &[u8], scales: &[f32], row: Row<'_>) -> f32 {
    let mut acc = [[0f32; 8]; CHAINS];
    let mut p = [0i32; BLOCK];
    let blocks = codes.chunks_exact(BLOCK_BYTES).zip(row.high.chunks_exact(BLOCK)).zip(scales);
    for (b, ((bytes, high), &scale)) in blocks.enumerate() {
        match row.low {
            None => p.iter_mut().zip(high).for_each(|(p, &h)| *p = i32::from(h)),
            Some(low) => {
                let low = &low[b * BLOCK..(b + 1) * BLOCK];
                p.iter_mut()
                    .zip(high.iter().zip(low))
                    .for_each(|(p, (&h, &l))| *p = 256 * i32::from(h) + i32::from(l));
            }
        }
        block_portable(&mut acc[b % CHAINS], bytes, &p, scale);
    }
    combine(&acc)
}

#[inline(always)]
fn block_portable(acc: &mut [f32; 8], bytes: &[u8], p: &[i32; BLOCK], scale: f32) {
    for t in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for j in 4 * t..4 * t + 4 {
            lo += i32::from(bytes[j] & 0x0f) * p[j];
            hi += i32::from(bytes[j] >> 4) * p[BLOCK_BYTES + j];
        }
        acc[t] += lo as f32 * scale;
        acc[4 + t] += hi as f32 * scale;
    }
}

/// [`dot_portable`] with AVX2 integer multiply-adds: per block, the 32 codes as one vector
/// (low nibbles, then high), `vpmaddubsw` against the activation codes (u8 × i8 → pairs of
/// i16, no saturation: 2·15·127 < 2¹⁵), `vpmaddwd` by ones (→ eight i32 lane sums of four
/// products, lane `t` = bytes `4t..4t+4`), converted exactly to f32, times the block scale.
/// 16-bit codes take two: the weight codes against the high bytes, the low bytes (unsigned)
/// against the weight codes (as signed: 0..=15), the first sum shifted left by 8 — exactly
/// `Σ q·(256·high + low)` (|Σ| ≤ 4·15·32767 per lane).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(codes: &[u8], scales: &[f32], row: Row<'_>) -> f32 {
    use std::arch::x86_64::*;
    let blocks = scales.len();
    let p = row.high;
    assert!(
        codes.len() >= blocks * BLOCK_BYTES
            && p.len() >= blocks * BLOCK
            && row.low.is_none_or(|l| l.len() >= blocks * BLOCK),
        "dot_avx2: short slices"
    );
    let mask = _mm_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let weights = |b: usize| {
        // SAFETY: b < blocks, and blocks · 16 code bytes are in bounds (the assert above).
        let raw = unsafe { _mm_loadu_si128(codes.as_ptr().add(b * BLOCK_BYTES).cast()) };
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), mask);
        _mm256_set_m128i(hi, lo)
    };
    let scaled = |acc: __m256, sums: __m256i, b: usize| {
        _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(scales[b])))
    };
    let block8 = |acc: __m256, b: usize| {
        // SAFETY: b < blocks, and blocks · 32 activation codes are in bounds (the assert above).
        let x = unsafe { _mm256_loadu_si256(p.as_ptr().add(b * BLOCK).cast()) };
        scaled(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(weights(b), x), ones), b)
    };
    let low = row.low.unwrap_or_default();
    let block16 = |acc: __m256, b: usize| {
        let q = weights(b);
        // SAFETY: b < blocks, and blocks · 32 high and low bytes are in bounds (the assert above).
        let (h, l) = unsafe {
            (
                _mm256_loadu_si256(p.as_ptr().add(b * BLOCK).cast()),
                _mm256_loadu_si256(low.as_ptr().add(b * BLOCK).cast()),
            )
        };
        let high = _mm256_madd_epi16(_mm256_maddubs_epi16(q, h), ones);
        let low = _mm256_madd_epi16(_mm256_maddubs_epi16(l, q), ones);
        scaled(acc, _mm256_add_epi32(_mm256_slli_epi32::<8>(high), low), b)
    };
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    let full = blocks / CHAINS * CHAINS;
    if row.low.is_some() {
        for g in (0..full).step_by(CHAINS) {
            acc =
                [block16(acc[0], g), block16(acc[1], g + 1), block16(acc[2], g + 2), block16(acc[3], g + 3)];
        }
        for b in full..blocks {
            acc[b - full] = block16(acc[b - full], b);
        }
    } else {
        for g in (0..full).step_by(CHAINS) {
            acc = [block8(acc[0], g), block8(acc[1], g + 1), block8(acc[2], g + 2), block8(acc[3], g + 3)];
        }
        for b in full..blocks {
            acc[b - full] = block8(acc[b - full], b);
        }
    }
    // `combine`'s order, lane-wise in registers: (a0 + a1) + (a2 + a3), then the eight lanes.
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 f32s, the width of an unaligned 256-bit store.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().fold(0.0, |s, &a| s + a)
}

/// The definition, weight by weight in f64: `y[r, n] = Σ_k x̂[r, k] · (d·q + c)` where `x̂` is
/// `x` with each block's int8 codes times its scale, except in the offset term, which takes the
/// exact `x` (module docs).
#[cfg(test)]
pub(crate) fn reference(w: &Q4Weights<'_>, x: &[f32], bits: ActivationBits) -> Vec<f32> {
    let blocks = w.k / BLOCK;
    let rows = x.len() / w.k;
    let mut out = vec![0f32; rows * w.n];
    let (mut high, mut low) = ([0i8; BLOCK], [0u8; BLOCK]);
    for r in 0..rows {
        for n in 0..w.n {
            let mut sum = 0f64;
            for blk in 0..blocks {
                let xs = &x[r * w.k + blk * BLOCK..][..BLOCK];
                let sixteen = bits == ActivationBits::Sixteen;
                let (e, _) = quantise_block(xs, &mut high, sixteen.then_some(&mut low[..]));
                let b = n * blocks + blk;
                let d = f64::from(w.scales[b].to_f32());
                let c = w.mins.map_or(-8.0 * d, |m| f64::from(m[b].to_f32()));
                for (i, &xi) in xs.iter().enumerate() {
                    let byte = w.codes[b * BLOCK_BYTES + i / 2];
                    let q = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    let j = (i % 2) * BLOCK_BYTES + i / 2;
                    let code = if sixteen {
                        256 * i32::from(high[j]) + i32::from(low[j])
                    } else {
                        i32::from(high[j])
                    };
                    sum += d * f64::from(q) * f64::from(e) * f64::from(code) + c * f64::from(xi);
                }
            }
            out[r * w.n + n] = sum as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(k: usize, n: usize, seed: u32) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
        let blocks = n * k / BLOCK;
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        };
        let codes = (0..blocks * BLOCK_BYTES).map(|_| next() as u8).collect();
        let scales = (0..blocks).map(|_| f16::from_f32((next() % 1000) as f32 / 1e4 - 0.05)).collect();
        let mins = (0..blocks).map(|_| f16::from_f32(-((next() % 1000) as f32) / 2e3)).collect();
        (codes, scales, mins)
    }

    /// Both layouts (symmetric, with minimums), several row counts and column ranges: every
    /// compiled path gives the same bits, within f32 rounding of the f64 definition.
    #[test]
    fn every_path_equals_the_reference() {
        for (k, n) in [(32, 1), (64, 5), (96, 7), (576, 9)] {
            let (codes, scales, mins) = weights(k, n, (k * n) as u32);
            for with_mins in [false, true] {
                let w = Q4Weights {
                    k,
                    n,
                    codes: &codes,
                    scales: &scales,
                    mins: with_mins.then_some(mins.as_slice()),
                };
                w.check().unwrap();
                for rows in [1, 3, 8] {
                    let x: Vec<f32> = (0..rows * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
                    let tolerance = |v: f32| 1e-5 * (1.0 + v.abs()) * (k as f32).sqrt();
                    for bits in [ActivationBits::Eight, ActivationBits::Sixteen] {
                        let want = reference(&w, &x, bits);
                        let prepared = Prepared::new(&x, k, bits);
                        let mut paths: Vec<(&str, Vec<f32>)> = Vec::new();
                        let mut out = vec![0f32; rows * n];
                        columns_with(&w, &prepared, 0..n, &mut out, widen_portable, dot_portable);
                        paths.push(("portable", out));
                        let mut out = vec![0f32; rows * n];
                        matmul(&w, &prepared, 0..n, &mut out);
                        paths.push(("dispatch", out));
                        assert_eq!(paths[0].1, paths[1].1, "the paths differ: K={k} N={n} rows={rows}");
                        for (path, got) in paths {
                            for (i, (g, v)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (g - v).abs() <= tolerance(*v),
                                    "{path} K={k} N={n} rows={rows} [{i}]: {g} vs {v}"
                                );
                            }
                        }
                        // A column range writes only its own columns, at the same values.
                        if n > 2 {
                            let mut part = vec![0f32; rows * (n - 2)];
                            matmul(&w, &prepared, 1..n - 1, &mut part);
                            for r in 0..rows {
                                for (j, g) in part[r * (n - 2)..(r + 1) * (n - 2)].iter().enumerate() {
                                    let v = want[r * n + 1 + j];
                                    assert!((g - v).abs() <= tolerance(v), "range K={k} N={n} rows={rows}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// 16-bit activation codes are far closer than 8-bit ones to the product with the exact
    /// activations (`x · (d·q + c)` in f64).
    #[test]
    fn sixteen_bit_codes_are_near_exact() {
        let (k, n, rows) = (576, 16, 2);
        let (codes, scales, mins) = weights(k, n, 7);
        let w = Q4Weights { k, n, codes: &codes, scales: &scales, mins: Some(&mins) };
        let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0).collect();
        let exact = |r: usize, col: usize| -> f64 {
            (0..k)
                .map(|i| {
                    let b = col * (k / BLOCK) + i / BLOCK;
                    let byte = codes[b * BLOCK_BYTES + (i % BLOCK) / 2];
                    let q = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    let wv = f64::from(scales[b].to_f32()) * f64::from(q) + f64::from(mins[b].to_f32());
                    f64::from(x[r * k + i]) * wv
                })
                .sum()
        };
        let error = |bits| {
            let mut out = vec![0f32; rows * n];
            matmul(&w, &Prepared::new(&x, k, bits), 0..n, &mut out);
            (0..rows * n).map(|i| (f64::from(out[i]) - exact(i / n, i % n)).abs()).fold(0.0, f64::max)
        };
        let (eight, sixteen) = (error(ActivationBits::Eight), error(ActivationBits::Sixteen));
        eprintln!("8-bit error {eight}, 16-bit {sixteen}");
        assert!(eight > 0.0 && sixteen < eight / 50.0, "8-bit error {eight}, 16-bit {sixteen}");
    }

    #[test]
    fn sizes_are_checked() {
        let (codes, scales, mins) = weights(64, 3, 1);
        let ok = Q4Weights { k: 64, n: 3, codes: &codes, scales: &scales, mins: Some(&mins) };
        assert!(ok.check().is_ok());
        assert!(Q4Weights { k: 48, ..ok }.check().is_err());
        let ok = Q4Weights { k: 64, n: 3, codes: &codes, scales: &scales, mins: Some(&mins) };
        assert!(Q4Weights { n: 4, ..ok }.check().is_err());
        assert!(Q4Weights { k: 64, n: 3, codes: &codes[1..], scales: &scales, mins: None }.check().is_err());
        assert!(
            Q4Weights { k: 64, n: 3, codes: &codes, scales: &scales, mins: Some(&mins[1..]) }
                .check()
                .is_err()
        );
    }
}
