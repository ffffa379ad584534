//! The learning-rate schedule: linear warmup to the peak rate, then cosine decay to a tenth of
//! it at the last step. A pure function of the step, so a resumed run needs no scheduler state.
//! It does not support restarts or a schedule that changes mid-run (changing `--steps` on
//! resume stretches the remaining decay, which the trainer warns about).

/// Warmup + cosine schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate, reached at the end of warmup.
    pub peak: f64,
    /// Steps of linear warmup.
    pub warmup: u64,
    /// Total steps of the run.
    pub total: u64,
}

impl LrSchedule {
    /// The schedule ferrite uses: warmup over 5 % of the run, at most 200 steps.
    pub fn new(peak: f64, total: u64) -> Self {
        Self { peak, warmup: (total / 20).min(200), total }
    }

    /// Learning rate for the optimizer step with 0-based index `step`.
    pub fn lr(&self, step: u64) -> f64 {
        let floor = self.peak * 0.1;
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        floor + 0.5 * (self.peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays() {
        let s = LrSchedule::new(1e-3, 1000);
        assert_eq!(s.warmup, 50);
        assert!(s.lr(0) < s.lr(10));
        assert!((s.lr(49) - 1e-3).abs() < 1e-12);
        assert!(s.lr(500) < s.lr(100));
        assert!((s.lr(1000) - 1e-4).abs() < 1e-9);
        let tiny = LrSchedule::new(1e-3, 5);
        assert_eq!(tiny.warmup, 0);
        assert!((tiny.lr(0) - 1e-3).abs() < 1e-12);
    }
}
