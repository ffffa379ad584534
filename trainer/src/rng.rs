//! A tiny seeded random number generator (SplitMix64) for weight initialisation and window
//! sampling. It is ours rather than a crate's so that a seed gives the same model and the same
//! batches across dependency upgrades, and so that the batch for step `s` can be derived from
//! `(seed, s)` alone — which is what makes `--resume` exact without saving generator state. It is
//! not cryptographic and not meant for anything but reproducible training.

/// SplitMix64: one `u64` of state, full period, passes BigCrush; plenty for sampling windows.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one purpose (`stream`) at one step, independent of every other pair.
    pub fn for_step(seed: u64, stream: u64, step: u64) -> Self {
        // Mixing each input through a full SplitMix round keeps nearby seeds/steps uncorrelated.
        let mut mixer = Self::new(seed ^ 0x9E37_79B9_7F4A_7C15);
        let a = mixer.next_u64() ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut mixer = Self::new(a);
        let b = mixer.next_u64() ^ step.wrapping_mul(0xAEF1_7502_108E_F2D9);
        Self::new(b)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; `n` must be non-zero. Uses Lemire's multiply-shift, whose bias is
    /// below 2^-32 for the corpus sizes we handle.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit_f64() as f32
    }

    /// Standard normal sample (Box–Muller; one of the pair is discarded for simplicity).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.unit_f64(); // (0, 1]: ln stays finite
        let u2 = self.unit_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| SplitMix64::for_step(7, 0, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(SplitMix64::for_step(7, 0, 3).next_u64(), SplitMix64::for_step(7, 0, 4).next_u64());
        assert_ne!(SplitMix64::for_step(7, 0, 3).next_u64(), SplitMix64::for_step(7, 1, 3).next_u64());
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = SplitMix64::new(1);
        let xs: Vec<f32> = (0..20_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
