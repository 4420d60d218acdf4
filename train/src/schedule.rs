//! The learning-rate schedule of SPEC 5: linear warmup, then cosine decay to a floor
//! (10% of the peak by default). A pure function of the step, as in nanoGPT's `get_lr`.

use serde::{Deserialize, Serialize};

/// Warmup + cosine decay.
///
/// ```
/// use internlm2_train::LrSchedule;
/// let s = LrSchedule::new(3e-4, 100, 1000);
/// assert!((s.lr(0) - 3e-6).abs() < 1e-12); // warmup starts at peak / warmup
/// assert_eq!(s.lr(99), 3e-4);              // peak at the end of warmup
/// assert!((s.lr(999) - 3e-5).abs() < 1e-9); // 10% of peak at the last step
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate (SPEC 5: 3e-4).
    pub peak_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Steps of the whole schedule (warmup included).
    pub total_steps: usize,
    /// Floor as a fraction of the peak (SPEC 5: 0.1).
    pub min_ratio: f64,
}

impl LrSchedule {
    /// Warmup then cosine to 10% of `peak_lr` at `total_steps`.
    pub fn new(peak_lr: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self {
            peak_lr,
            warmup_steps,
            total_steps,
            min_ratio: 0.1,
        }
    }

    /// Sets the floor ratio.
    pub fn with_min_ratio(mut self, ratio: f64) -> Self {
        self.min_ratio = ratio;
        self
    }

    /// The learning rate of `step` (0-based). Never exactly 0: warmup starts at
    /// `peak / warmup_steps`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let floor = self.peak_lr * self.min_ratio;
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress =
            ((step - self.warmup_steps) as f64 / (decay_steps - 1).max(1) as f64).min(1.0);
        floor + 0.5 * (self.peak_lr - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_and_cosine_ends_at_the_floor() {
        let s = LrSchedule::new(1.0, 4, 14);
        assert_eq!(
            (0..4).map(|i| s.lr(i)).collect::<Vec<_>>(),
            vec![0.25, 0.5, 0.75, 1.0]
        );
        // Halfway through the decay the cosine is at the midpoint of peak and floor.
        let mid = s.lr(8); // progress 4/9
        assert!(mid < 1.0 && mid > 0.1);
        assert!((s.lr(13) - 0.1).abs() < 1e-12);
        assert!(
            (s.lr(500) - 0.1).abs() < 1e-12,
            "stays at the floor past the end"
        );
        // Monotone decay after warmup.
        for i in 4..13 {
            assert!(s.lr(i + 1) <= s.lr(i));
        }
    }

    #[test]
    fn cosine_midpoint_by_hand() {
        // total 12, warmup 1: decay over steps 1..=11, progress 0.5 at step 6.
        let s = LrSchedule::new(2.0, 1, 12).with_min_ratio(0.0);
        assert!((s.lr(6) - 1.0).abs() < 1e-12);
    }
}
