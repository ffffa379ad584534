//! The arithmetic of ferrite's fused attention, shared by tract's ops
//! (backend/tract/attention.rs, backend/tract/kv_cache.rs) and ONNX Runtime's custom operator
//! (backend/ort/ops.rs): a vectorisable dot product, `e^x` and softmax, and [`cached_attention`],
//! a decoder step over an in-place cache of fixed capacity. Plain slices in and out, no tract or
//! ONNX Runtime types.
//!
//! The order of the arithmetic is the exported graph's (scaled dot products, then the additive
//! bias, then a max-subtracted softmax), with sums in a different order than a matrix kernel's,
//! so results agree with the graph to rounding, not bit for bit.

#[cfg(feature = "ort")]
use super::ShapeMismatch;
use super::row_quant::MAGIC;

#[cfg(feature = "tract")]
/// Dot product with eight independent partial sums, so the compiler emits packed multiplies.
/// Always inlined, so a caller compiled for AVX2 gets it in AVX2 too.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` to ~1 ulp, branch-free so loops over it vectorise (libm's `expf` is a call per element,
/// and its underflow path for masked scores is slower still). `x` is clamped to [−86, 88]: below,
/// the result is e^−86 ≈ 4e−38 instead of a denormal or 0 — nothing a softmax can tell apart.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that k·LN2_HI is exact for the k used here.
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: 9 significant bits
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-86.0, 88.0);
    // k = round(x / ln 2) with the 1.5·2²³ trick: its integer sits in the low mantissa bits.
    let shifted = x * LOG2E + MAGIC;
    let k = shifted - MAGIC;
    let k_int = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // e^r on |r| ≤ ln2/2 by its Taylor series to r⁶ (error < 2e−7 relative).
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k_int + 127) as u32) << 23)
}

/// In-place softmax of one row of scores; eight lanes for the max and the sum so that both
/// passes vectorise.
#[inline(always)]
pub(crate) fn softmax(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let max =
        chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp(c[i] - max);
            sums[i] += c[i];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(feature = "ort")]
/// Positions per block of a key cache in [`cached_attention`]'s layout.
pub(crate) const KEY_BLOCK: usize = 8;

#[cfg(feature = "ort")]
/// Where element `j` of key `t` sits within one head's keys in [`cached_attention`]'s layout:
/// blocks of [`KEY_BLOCK`] positions, each `[D][KEY_BLOCK]` (position-minor), so the scores of
/// eight keys are eight lanes of plain vector multiply-adds, with no sum across lanes per key.
#[inline(always)]
pub(crate) fn key_offset(t: usize, j: usize, d: usize) -> usize {
    (t / KEY_BLOCK) * KEY_BLOCK * d + j * KEY_BLOCK + t % KEY_BLOCK
}

#[cfg(feature = "ort")]
/// `a · b + c`, fused where `FUSED` (the caller was compiled for a CPU with FMA).
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

#[cfg(feature = "ort")]
/// One query row against the first `t` keys and values of one head, every key visible: the
/// context row goes to `out[..d]`. `keys` is the head's blocked keys ([`key_offset`]), `values`
/// its rows (`t · d` floats from the start), `probs` scratch of at least `t` rounded up to a block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row<const FUSED: bool>(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    (t, d): (usize, usize),
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let blocks = t.div_ceil(KEY_BLOCK);
    let q = &q[..d];
    for (block, scores) in
        keys.chunks_exact(KEY_BLOCK * d).zip(probs.chunks_exact_mut(KEY_BLOCK)).take(blocks)
    {
        // Four accumulators over j mod 4, so consecutive multiply-adds do not wait on each other.
        let mut acc = [[0f32; KEY_BLOCK]; 4];
        let mut columns = block.chunks_exact(4 * KEY_BLOCK);
        let mut qs = q.chunks_exact(4);
        for (cols, q4) in (&mut columns).zip(&mut qs) {
            for (u, (acc, col)) in acc.iter_mut().zip(cols.chunks_exact(KEY_BLOCK)).enumerate() {
                for l in 0..KEY_BLOCK {
                    acc[l] = madd::<FUSED>(q4[u], col[l], acc[l]);
                }
            }
        }
        for (&qj, col) in qs.remainder().iter().zip(columns.remainder().chunks_exact(KEY_BLOCK)) {
            for l in 0..KEY_BLOCK {
                acc[0][l] = madd::<FUSED>(qj, col[l], acc[0][l]);
            }
        }
        for l in 0..KEY_BLOCK {
            scores[l] = ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])) * scale;
        }
    }
    let probs = &mut probs[..t];
    softmax(probs);
    match d {
        16 => context_fixed::<2, FUSED>(probs, values, out),
        32 => context_fixed::<4, FUSED>(probs, values, out),
        64 => context_fixed::<8, FUSED>(probs, values, out),
        128 => context_fixed::<16, FUSED>(probs, values, out),
        _ => {
            let row = &mut out[..d];
            row.iter_mut().for_each(|o| *o = 0.0);
            for (&p, v) in probs.iter().zip(values.chunks_exact(d)) {
                row.iter_mut().zip(v).for_each(|(o, &x)| *o = madd::<FUSED>(p, x, *o));
            }
        }
    }
}

#[cfg(feature = "ort")]
/// `out[..8·C] = Σ_t probs[t] · values[t]` for rows of `8·C` floats, the sum held in registers.
#[inline(always)]
fn context_fixed<const C: usize, const FUSED: bool>(probs: &[f32], values: &[f32], out: &mut [f32]) {
    let d = 8 * C;
    let lanes = |t: usize| -> &[[f32; 8]; C] {
        values[t * d..][..d].as_chunks::<8>().0.try_into().expect("a row of 8·C floats")
    };
    // Two accumulators, even and odd positions, so consecutive adds do not wait on each other.
    let (mut even, mut odd) = ([[0f32; 8]; C], [[0f32; 8]; C]);
    let mut pairs = probs.chunks_exact(2);
    for (i, pair) in (&mut pairs).enumerate() {
        let (v0, v1) = (lanes(2 * i), lanes(2 * i + 1));
        for c in 0..C {
            for j in 0..8 {
                even[c][j] = madd::<FUSED>(pair[0], v0[c][j], even[c][j]);
                odd[c][j] = madd::<FUSED>(pair[1], v1[c][j], odd[c][j]);
            }
        }
    }
    if let &[p] = pairs.remainder() {
        let v = lanes(probs.len() - 1);
        for c in 0..C {
            for j in 0..8 {
                even[c][j] = madd::<FUSED>(p, v[c][j], even[c][j]);
            }
        }
    }
    for (o, (e, odd)) in out[..d].chunks_exact_mut(8).zip(even.iter().zip(&odd)) {
        for j in 0..8 {
            o[j] = e[j] + odd[j];
        }
    }
}

#[cfg(feature = "ort")]
/// The shapes of one [`cached_attention`] call: `batch` sequences of `steps` new positions,
/// `heads` heads of `head_dim`, caches of `capacity` positions holding `past` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheDims {
    pub batch: usize,
    pub steps: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    pub past: usize,
}

#[cfg(feature = "ort")]
impl CacheDims {
    /// Floats in one cache buffer, `[B, H, capacity, D]`.
    pub(crate) fn cache_len(&self) -> usize {
        self.batch * self.heads * self.capacity * self.head_dim
    }

    /// Floats in one `[B, S, H·D]` tensor (the step's queries, keys, values, and the context).
    pub(crate) fn step_len(&self) -> usize {
        self.batch * self.steps * self.heads * self.head_dim
    }
}

#[cfg(feature = "ort")]
/// A decoder layer's attention step on an in-place cache of fixed capacity (a multiple of
/// [`KEY_BLOCK`]), as ONNX Runtime runs it (`backend/ort/ops.rs`). Per (batch, head) the cache holds
/// `capacity · D` floats: the keys in blocks ([`key_offset`]), the values as rows. Writes the
/// step's keys and values (`k`, `v`, `[B, S, H·D]` as the projections give them) at positions
/// `past..past + S`, then lets each query row (`q`, `[B, S, H·D]`) at position `past + i` attend
/// to positions `0..=past + i` (causal: the masked keys are not visited at all). Writes the
/// context, `[B, S, H·D]`, to `out`. Positions before `past` are only read, so a failed step
/// loses nothing; a prefill computes each row as a decode step would, so both agree exactly.
/// Compiled for AVX2 with FMA where the CPU has them; on aarch64 FMA is always there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cached_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keys: &mut [f32],
    values: &mut [f32],
    dims: CacheDims,
    scale: f32,
    out: &mut [f32],
) -> Result<(), ShapeMismatch> {
    let CacheDims { steps, capacity, past, .. } = dims;
    let fits = [q.len(), k.len(), v.len(), out.len()] == [dims.step_len(); 4]
        && keys.len() == dims.cache_len()
        && values.len() == dims.cache_len()
        && past + steps <= capacity
        && capacity % KEY_BLOCK == 0;
    if !fits {
        return Err(ShapeMismatch(format!(
            "cached attention: {dims:?} does not fit Q {}, K {}, V {}, caches {} and {}, output {}",
            q.len(),
            k.len(),
            v.len(),
            keys.len(),
            values.len(),
            out.len()
        )));
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: `cached_attention_avx2` only requires AVX2 and FMA, which the line above found
        // on this CPU.
        unsafe { cached_attention_avx2(q, k, v, keys, values, dims, scale, out) };
        return Ok(());
    }
    cached_attention_portable::<{ cfg!(target_arch = "aarch64") }>(q, k, v, keys, values, dims, scale, out);
    Ok(())
}

// The buffers go to the AVX2 copy and the kernel as separate arguments, not as one struct: as
// function arguments the `&mut` slices tell LLVM they alias nothing, and it keeps the context
// accumulators in registers. Bundled into a struct the context loop falls
// back to scalar multiply-adds through the stack: 14 → 38 µs for 4 layers at position 199
// (docs/pitfalls.md).
#[cfg(feature = "ort")]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn cached_attention_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keys: &mut [f32],
    values: &mut [f32],
    dims: CacheDims,
    scale: f32,
    out: &mut [f32],
) {
    cached_attention_portable::<true>(q, k, v, keys, values, dims, scale, out)
}

#[cfg(feature = "ort")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cached_attention_portable<const FUSED: bool>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keys: &mut [f32],
    values: &mut [f32],
    CacheDims { batch, steps, heads, head_dim: d, capacity, past }: CacheDims,
    scale: f32,
    out: &mut [f32],
) {
    let width = heads * d;
    let head_len = capacity * d;
    for b in 0..batch {
        for s in 0..steps {
            for h in 0..heads {
                let from = (b * steps + s) * width + h * d;
                let head = (b * heads + h) * head_len;
                let (keys, values) = (&mut keys[head..][..head_len], &mut values[head..][..head_len]);
                for (j, &x) in k[from..from + d].iter().enumerate() {
                    keys[key_offset(past + s, j, d)] = x;
                }
                values[(past + s) * d..][..d].copy_from_slice(&v[from..from + d]);
            }
        }
    }
    let (keys, values) = (&*keys, &*values);
    let mut probs = vec![0f32; (past + steps).next_multiple_of(KEY_BLOCK)];
    for b in 0..batch {
        for h in 0..heads {
            let head = (b * heads + h) * head_len;
            let (keys, values) = (&keys[head..][..head_len], &values[head..][..head_len]);
            for s in 0..steps {
                let row = (b * steps + s) * width + h * d;
                let t = past + s + 1;
                attend_row::<FUSED>(&q[row..], keys, values, (t, d), scale, &mut probs, &mut out[row..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "tract")]
    #[test]
    fn dot_and_softmax() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-4);
        let mut row = [1.0, 2.0, f32::MIN, 3.0];
        softmax(&mut row);
        assert!(row[2] < 1e-37);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[3] > row[1] && row[1] > row[0]);
        // Rows longer than a lane block, against the textbook formula.
        let scores: Vec<f32> = (0..37).map(|i| ((i * 7919) % 61) as f32 * 0.37 - 11.0).collect();
        let mut row = scores.clone();
        softmax(&mut row);
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = scores.iter().map(|&v| ((v - max) as f64).exp()).sum();
        for (&p, &v) in row.iter().zip(&scores) {
            let want = ((v - max) as f64).exp() / sum;
            assert!((p as f64 - want).abs() <= 1e-6 * want.max(1e-30), "{p} vs {want}");
        }
    }

    #[test]
    fn exp_is_accurate_and_never_denormal() {
        let mut worst = 0f64;
        for i in -85_900..=87_900 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        for x in [-87.0, -1e3, f32::MIN, f32::NEG_INFINITY] {
            let y = exp(x);
            assert!(y.is_normal() && y < 1e-37, "exp({x}) = {y}");
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[cfg(feature = "ort")]
    /// The textbook formula in f64: causal softmax attention of every query row, reading the
    /// cache through `key_offset`.
    fn reference(q: &[f32], keys: &[f32], values: &[f32], dims: CacheDims, scale: f32) -> Vec<f32> {
        let CacheDims { batch, steps, heads, head_dim: d, capacity, past } = dims;
        let mut out = vec![0f32; dims.step_len()];
        for b in 0..batch {
            for s in 0..steps {
                for h in 0..heads {
                    let head = (b * heads + h) * capacity * d;
                    let qr = &q[((b * steps + s) * heads + h) * d..][..d];
                    let scores: Vec<f64> = (0..=past + s)
                        .map(|t| {
                            let key = (0..d).map(|j| keys[head + key_offset(t, j, d)] as f64);
                            key.zip(qr).map(|(x, &y)| x * y as f64).sum::<f64>() * scale as f64
                        })
                        .collect();
                    let max = scores.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    let sum: f64 = scores.iter().map(|v| (v - max).exp()).sum();
                    let row = &mut out[((b * steps + s) * heads + h) * d..][..d];
                    for (t, score) in scores.iter().enumerate() {
                        let p = (score - max).exp() / sum;
                        for (o, &x) in row.iter_mut().zip(&values[head + t * d..][..d]) {
                            *o += (p * x as f64) as f32;
                        }
                    }
                }
            }
        }
        out
    }

    #[cfg(feature = "ort")]
    fn value(i: usize, salt: usize) -> f32 {
        (((i * 7919 + salt) % 97) as f32 - 48.0) / 24.0
    }

    #[cfg(feature = "ort")]
    /// Caches of `dims` filled with arbitrary values, and a step's Q, K, V.
    fn filled(dims: CacheDims) -> ([Vec<f32>; 2], [Vec<f32>; 3]) {
        let cache = |salt| (0..dims.cache_len()).map(|i| value(i, salt)).collect();
        let step = |salt| (0..dims.step_len()).map(|i| value(i, salt)).collect();
        ([cache(1), cache(2)], [step(3), step(4), step(5)])
    }

    #[cfg(feature = "ort")]
    #[test]
    fn cached_attention_appends_and_attends_causally() {
        // Batch 2; a prefill, a 3-token step on 4 cached positions, a 1-token step; a head size
        // with a kernel of its own (32) and one without (5).
        for d in [5, 32] {
            let (heads, capacity) = (2, 16);
            for (past, steps) in [(0, 4), (4, 3), (9, 1)] {
                let dims = CacheDims { batch: 2, steps, heads, head_dim: d, capacity, past };
                let ([mut keys, mut values], [q, k, v]) = filled(dims);
                let (keys_before, values_before) = (keys.clone(), values.clone());
                let mut out = vec![f32::NAN; dims.step_len()];
                cached_attention(&q, &k, &v, &mut keys, &mut values, dims, 0.3, &mut out).unwrap();
                // The step's rows were written at past..past + S, and nothing else changed.
                for b in 0..2 {
                    for h in 0..heads {
                        let head = (b * heads + h) * capacity * d;
                        for t in 0..capacity {
                            for j in 0..d {
                                let (key, val) = (head + key_offset(t, j, d), head + t * d + j);
                                let (want_k, want_v) = if (past..past + steps).contains(&t) {
                                    let at = ((b * steps + t - past) * heads + h) * d + j;
                                    (k[at], v[at])
                                } else {
                                    (keys_before[key], values_before[val])
                                };
                                assert_eq!((keys[key], values[val]), (want_k, want_v), "d {d}, t {t}");
                            }
                        }
                    }
                }
                let want = reference(&q, &keys, &values, dims, 0.3);
                for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                    let ok = (got - want).abs() < 1e-5;
                    assert!(ok, "d {d}, past {past}, steps {steps}, [{i}]: {got} vs {want}");
                }
            }
        }
    }

    #[cfg(feature = "ort")]
    #[test]
    fn a_prefill_equals_its_steps_exactly() {
        let (heads, d, capacity) = (3, 32, 24);
        let dims = CacheDims { batch: 1, steps: 5, heads, head_dim: d, capacity, past: 2 };
        let ([keys, values], [q, k, v]) = filled(dims);
        let (mut k1, mut v1) = (keys.clone(), values.clone());
        let mut prefill = vec![0f32; dims.step_len()];
        cached_attention(&q, &k, &v, &mut k1, &mut v1, dims, 0.2, &mut prefill).unwrap();
        let (mut k2, mut v2) = (keys, values);
        let w = heads * d;
        for s in 0..5 {
            let one = CacheDims { steps: 1, past: 2 + s, ..dims };
            let row = |x: &[f32]| x[s * w..][..w].to_vec();
            let mut out = vec![0f32; w];
            cached_attention(&row(&q), &row(&k), &row(&v), &mut k2, &mut v2, one, 0.2, &mut out).unwrap();
            assert_eq!(out, row(&prefill), "position {}", 2 + s);
        }
        assert_eq!((k1, v1), (k2, v2));
    }

    #[cfg(feature = "ort")]
    #[test]
    fn cached_attention_refuses_what_does_not_fit() {
        let step = vec![1f32; 2 * 2 * 5];
        let mut out = step.clone();
        // Two positions on seven of a capacity of 8; a capacity that is not a whole block.
        for (capacity, past) in [(8, 7), (12, 0)] {
            let dims = CacheDims { batch: 1, steps: 2, heads: 2, head_dim: 5, capacity, past };
            let mut keys = vec![0f32; dims.cache_len()];
            let mut values = keys.clone();
            let r = cached_attention(&step, &step, &step, &mut keys, &mut values, dims, 1.0, &mut out);
            assert!(r.is_err(), "capacity {capacity}, past {past}");
            assert!(keys.iter().chain(&values).all(|&x| x == 0.0), "nothing written");
        }
    }
}
