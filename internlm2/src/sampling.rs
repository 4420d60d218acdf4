//! Choosing the next token from a row of logits: greedy, or temperature sampling filtered by
//! top-k, top-p (nucleus) and min-p, after a repetition penalty. Seeded, so runs repeat.
//!
//! The order follows HuggingFace's logits processors: repetition penalty, temperature, top-k,
//! top-p, min-p, then a draw from the renormalised distribution.

use burn::config::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::GenerateError;

/// Sampling parameters.
///
/// ```
/// use internlm2::sampling::SamplingConfig;
/// let greedy = SamplingConfig::greedy();
/// let creative = SamplingConfig::default().with_temperature(0.8).with_top_p(0.9).with_seed(7);
/// creative.validate().unwrap();
/// assert!(greedy.is_greedy());
/// ```
///
/// The builders (`with_temperature`, ...) and the serde form come from burn's
/// `#[derive(Config)]`; the defaults are InternLM2's chat settings (temperature 0.8, top-p 0.8,
/// repetition penalty 1.0).
#[derive(Config, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; `0` means greedy.
    #[config(default = 0.8)]
    pub temperature: f32,
    /// Keep the `k` most likely tokens (`0` = off).
    #[config(default = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability mass reaches `p` (`1` = off).
    #[config(default = 0.8)]
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (`0` = off).
    #[config(default = 0.0)]
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of already-seen tokens by this (`1` = off).
    #[config(default = 1.0)]
    pub repetition_penalty: f32,
    /// Seed of the random generator.
    #[config(default = 0)]
    pub seed: u64,
}

impl Default for SamplingConfig {
    /// The InternLM2 chat defaults: temperature 0.8, top-p 0.8, repetition penalty 1.0.
    fn default() -> Self {
        Self::new()
    }
}

impl SamplingConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self::new().with_temperature(0.0).with_top_p(1.0)
    }

    /// Whether sampling reduces to argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |name, reason: &str| {
            Err(GenerateError::InvalidSampling {
                name,
                reason: reason.to_string(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        Ok(())
    }
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler with its own RNG seeded from `config.seed`.
    pub fn new(config: SamplingConfig) -> Result<Self, GenerateError> {
        config.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(config.seed),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Picks a token from `logits` (one row, `[vocab]`), `history` being the ids already in
    /// the sequence (for the repetition penalty). `logits` is used as scratch space.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.config;
        if c.repetition_penalty != 1.0 {
            apply_repetition_penalty(logits, history, c.repetition_penalty);
        }
        if c.is_greedy() {
            return argmax(logits);
        }
        // Candidates sorted by logit, highest first.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        if c.top_k > 0 && c.top_k < order.len() {
            order.select_nth_unstable_by(c.top_k - 1, |&a, &b| {
                logits[b as usize].total_cmp(&logits[a as usize])
            });
            order.truncate(c.top_k);
        }
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let max = logits[order[0] as usize] / c.temperature;
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&i| (logits[i as usize] / c.temperature - max).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);

        let mut keep = probs.len();
        if c.top_p < 1.0 {
            // Smallest prefix whose mass reaches top_p (at least one token).
            let mut mass = 0.0;
            for (i, p) in probs.iter().enumerate() {
                mass += p;
                if mass >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = c.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        let kept = &probs[..keep];
        let mass: f32 = kept.iter().sum();
        let mut draw = self.rng.random::<f32>() * mass;
        for (i, p) in kept.iter().enumerate() {
            draw -= p;
            if draw <= 0.0 {
                return order[i];
            }
        }
        order[keep - 1]
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// HuggingFace's repetition penalty: for every distinct id already seen, a positive logit is
/// divided by `penalty` and a negative one multiplied by it.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &id in history {
        let i = id as usize;
        if i < logits.len() && !seen[i] {
            seen[i] = true;
            let l = logits[i];
            logits[i] = if l > 0.0 { l / penalty } else { l * penalty };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingConfig::greedy()).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_by_hand() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
        // Penalised greedy choice moves to the unseen token.
        let mut s = Sampler::new(SamplingConfig::greedy().with_repetition_penalty(3.0)).unwrap();
        assert_eq!(s.sample(&mut [2.0, 1.0], &[0]), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for config in [
            SamplingConfig::default().with_top_k(1),
            SamplingConfig::default()
                .with_temperature(1.0)
                .with_top_p(1e-6),
            SamplingConfig::default()
                .with_temperature(1.0)
                .with_top_p(1.0)
                .with_min_p(1.0),
        ] {
            let mut s = Sampler::new(config).unwrap();
            for _ in 0..50 {
                assert_eq!(s.sample(&mut [0.5, 2.0, 1.9, -3.0], &[]), 1);
            }
        }
    }

    #[test]
    fn top_k_restricts_the_support() {
        let mut s = Sampler::new(
            SamplingConfig::default()
                .with_temperature(5.0)
                .with_top_k(2)
                .with_top_p(1.0),
        )
        .unwrap();
        for _ in 0..200 {
            let t = s.sample(&mut [0.0, 2.0, 1.9, -3.0, 1.0], &[]);
            assert!(t == 1 || t == 2, "{t}");
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // logits ln(1), ln(3): probabilities 1/4, 3/4.
        let mut s = Sampler::new(
            SamplingConfig::default()
                .with_temperature(1.0)
                .with_top_p(1.0)
                .with_seed(3),
        )
        .unwrap();
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| s.sample(&mut [0.0, 3f32.ln()], &[]) == 1)
            .count();
        let f = ones as f64 / n as f64;
        assert!((f - 0.75).abs() < 0.02, "{f}");
    }

    #[test]
    fn same_seed_same_draws() {
        let draw = |seed| {
            let mut s = Sampler::new(
                SamplingConfig::default()
                    .with_temperature(1.0)
                    .with_seed(seed),
            )
            .unwrap();
            (0..20)
                .map(|_| s.sample(&mut [0.1, 0.2, 0.3, 0.4], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(11), draw(11));
        assert_ne!(draw(11), draw(12));
    }

    #[test]
    fn invalid_parameters_are_typed_errors() {
        for config in [
            SamplingConfig::default().with_temperature(-1.0),
            SamplingConfig::default().with_top_p(0.0),
            SamplingConfig::default().with_min_p(1.5),
            SamplingConfig::default().with_repetition_penalty(0.0),
        ] {
            assert!(matches!(
                Sampler::new(config),
                Err(GenerateError::InvalidSampling { .. })
            ));
        }
    }
}
