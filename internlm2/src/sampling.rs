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
    ///
    /// Cost: a few passes over the vocabulary plus a sort of the tokens that can be in the
    /// top-p cut (never of the whole vocabulary unless the cut needs all of it); without
    /// top-p the draw needs no order at all. Candidates are ordered by
    /// logit, then by id, so that the outcome does not depend on how many were sorted.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.config;
        if c.repetition_penalty != 1.0 {
            apply_repetition_penalty(logits, history, c.repetition_penalty);
        }
        if c.is_greedy() || logits.len() < 2 {
            return argmax(logits);
        }
        let (kept, probs) = support(c, logits);
        let mass: f32 = probs.iter().sum();
        let mut draw = self.rng.random::<f32>() * mass;
        for (n, p) in probs.iter().enumerate() {
            draw -= p;
            if draw <= 0.0 {
                return kept[n];
            }
        }
        kept.last().copied().unwrap_or_else(|| argmax(logits))
    }
}

/// One candidate token.
#[derive(Clone, Copy)]
struct Candidate {
    logit: f32,
    id: u32,
    /// `exp(logit / temperature - max)`.
    weight: f32,
}

/// Most likely first: by logit, then by id (a total order, so every algorithm that sorts
/// candidates gives the same list).
fn by_logit(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Buckets of [`support`]'s histogram of `max - logit / temperature`, each this wide; the last
/// one holds everything past `BUCKETS * BUCKET_WIDTH` (weights below e^-25.6).
const BUCKETS: usize = 512;
const BUCKET_WIDTH: f32 = 0.05;

/// The tokens a draw chooses from and their (not renormalised) probabilities, after
/// temperature, top-k, top-p and min-p: most likely first when top-p cuts them, in no
/// particular order otherwise. Never empty for a non-empty row.
///
/// Cost: a few passes over the vocabulary and a sort of the tokens that can be in the cut.
/// For top-p, a histogram of the weights by distance from the maximum finds the first bucket
/// where the mass reaches `top_p`; only the tokens up to that bucket (a superset of the
/// nucleus) are sorted, and the cut is made on them exactly as on the fully sorted list.
fn support(c: &SamplingConfig, logits: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let temperature = c.temperature;
    let mut order: Vec<Candidate> = logits
        .iter()
        .zip(0u32..)
        .map(|(&logit, id)| Candidate {
            logit,
            id,
            weight: 0.0,
        })
        .collect();
    if c.top_k > 0 && c.top_k < order.len() {
        order.select_nth_unstable_by(c.top_k - 1, by_logit);
        order.truncate(c.top_k);
    }
    let Some(mut top) = order.iter().copied().min_by(by_logit) else {
        return (Vec::new(), Vec::new());
    };
    let max = top.logit / temperature;
    for cand in order.iter_mut().chain(std::iter::once(&mut top)) {
        cand.weight = (cand.logit / temperature - max).exp();
    }
    let total: f32 = order.iter().map(|cand| cand.weight).sum();
    let prob = |cand: &Candidate| cand.weight / total;

    // The kept candidates, most likely first (in any order when nothing filters them).
    let mut kept: Vec<Candidate> = if c.top_p < 1.0 {
        let bucket = |cand: &Candidate| {
            let x = (max - cand.logit / temperature) / BUCKET_WIDTH;
            if x < BUCKETS as f32 {
                x as usize // NaN and negative (impossible) distances land in bucket 0
            } else {
                BUCKETS - 1
            }
        };
        let mut mass = [0f32; BUCKETS];
        for cand in &order {
            mass[bucket(cand)] += cand.weight;
        }
        let (mut last, mut sum) = (BUCKETS - 1, 0.0);
        for (b, m) in mass.iter().enumerate() {
            sum += m;
            if sum >= c.top_p * total {
                last = b;
                break;
            }
        }
        let mut nucleus: Vec<Candidate> = if last + 1 < BUCKETS {
            order
                .iter()
                .copied()
                .filter(|cand| bucket(cand) <= last)
                .collect()
        } else {
            Vec::new()
        };
        let mut cut = cut_top_p(&mut nucleus, c.top_p, &prob);
        if cut.is_none() {
            // The histogram's sums round differently from the sorted sum: take everything.
            nucleus = order;
            cut = cut_top_p(&mut nucleus, c.top_p, &prob);
        }
        nucleus.truncate(cut.unwrap_or(nucleus.len()));
        if c.min_p > 0.0 {
            // The nucleus is sorted: cut where the probability falls below the floor.
            let floor = c.min_p * prob(&top);
            let keep = nucleus
                .iter()
                .take_while(|cand| prob(cand) >= floor)
                .count();
            nucleus.truncate(keep.max(1));
        }
        nucleus
    } else if c.min_p > 0.0 {
        // The tokens at least `min_p` times as likely as the most likely one, in any order.
        let floor = c.min_p * prob(&top);
        order.retain(|cand| prob(cand) >= floor);
        order
    } else {
        order
    };
    if kept.is_empty() {
        kept.push(top);
    }
    kept.iter().map(|cand| (cand.id, prob(cand))).unzip()
}

/// Sorts `candidates` and returns the length of the smallest prefix whose mass (summed in
/// order) reaches `top_p`, or `None` when all of them fall short.
fn cut_top_p(
    candidates: &mut [Candidate],
    top_p: f32,
    prob: &impl Fn(&Candidate) -> f32,
) -> Option<usize> {
    candidates.sort_unstable_by(by_logit);
    let mut mass = 0.0;
    for (n, cand) in candidates.iter().enumerate() {
        mass += prob(cand);
        if mass >= top_p {
            return Some(n + 1);
        }
    }
    None
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

    /// The support as the filters define it, by sorting every candidate first.
    fn support_by_full_sort(c: &SamplingConfig, logits: &[f32]) -> Vec<(u32, f32)> {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if c.top_k > 0 {
            order.truncate(c.top_k);
        }
        let max = logits[order[0] as usize] / c.temperature;
        let weight = |i: u32| (logits[i as usize] / c.temperature - max).exp();
        let mut by_id = order.clone();
        by_id.sort();
        let total: f32 = by_id.iter().map(|&i| weight(i)).sum();
        let probs: Vec<f32> = order.iter().map(|&i| weight(i) / total).collect();
        let mut keep = order.len();
        if c.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, p) in probs.iter().enumerate() {
                mass += p;
                if mass >= c.top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = c.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        order.into_iter().zip(probs).take(keep).collect()
    }

    #[test]
    fn the_support_equals_a_full_sort_of_the_vocabulary() {
        let mut rng = StdRng::seed_from_u64(5);
        for case in 0..300 {
            let vocab = [3, 50, 1500, 5000][case % 4];
            // Peaked rows (the nucleus is a few tokens), flat rows (it is most of the
            // vocabulary), rows with ties.
            let spread = [0.1f32, 1.0, 8.0][case % 3];
            let logits: Vec<f32> = (0..vocab)
                .map(|_| {
                    let v: f32 = rng.random::<f32>() * spread;
                    if case % 5 == 0 {
                        (v * 2.0).round()
                    } else {
                        v * v * v
                    }
                })
                .collect();
            let config = SamplingConfig::new()
                .with_temperature([0.3, 0.8, 1.5][case % 3])
                .with_top_k([0, 0, 40, 2000][case % 4])
                .with_top_p([0.8, 1.0, 0.95, 0.5, 0.999][case % 5])
                .with_min_p([0.0, 0.0, 0.05][case % 3]);
            let (kept, probs) = support(&config, &logits);
            let mut got: Vec<(u32, f32)> = kept.into_iter().zip(probs).collect();
            let mut want = support_by_full_sort(&config, &logits);
            if config.top_p >= 1.0 {
                got.sort_by_key(|&(i, _)| i);
                want.sort_by_key(|&(i, _)| i);
            }
            if got.len() != want.len() {
                // After a top-k selection the total is summed in another order: a cut may
                // move by one token, only where the mass before it is top_p up to rounding.
                let n = got.len().min(want.len());
                let mass: f32 = want[..n].iter().map(|p| p.1).sum();
                assert!(
                    config.top_k > 0
                        && got.len().abs_diff(want.len()) == 1
                        && (mass - config.top_p).abs() < 1e-5,
                    "case {case}: {} vs {} tokens, mass {mass}",
                    got.len(),
                    want.len()
                );
            }
            for ((a, pa), (b, pb)) in got.iter().zip(&want) {
                assert_eq!(a, b, "case {case}");
                // The total is summed in another order after a top-k selection.
                assert!(
                    (pa - pb).abs() <= 1e-5 * pb.max(1e-30),
                    "case {case}: {pa} {pb}"
                );
            }
        }
    }

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
