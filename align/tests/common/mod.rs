//! Helpers of the alignment tests: seeded models, synthetic preference pairs, a reward whose
//! optimum is known.

#![allow(dead_code)]

use internlm2::backends::CpuAutodiff;
use internlm2::chat::Message;
use internlm2_align::AlignError;
use internlm2_align::ppo::{RewardFn, Rollout};
use internlm2_align::reward::PreferencePair;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The words of the synthetic texts.
pub const WORDS: [&str; 12] = [
    "red", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird", "lake", "hill",
];

/// Builds something random with the backend seeded: the backend RNG is global and tests run in
/// parallel threads, so seeding and drawing happen under one lock.
pub fn seeded<T>(seed: u64, build: impl FnOnce() -> T) -> T {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = RNG.lock().unwrap();
    <CpuAutodiff as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    build()
}

/// Preferences: answers ending in "good" beat the same filler ending in "bad".
pub fn preference_pairs(n: usize, seed: u64, domain: Option<&str>) -> Vec<PreferencePair> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let filler: Vec<&str> = (0..rng.random_range(2..6))
                .map(|_| *WORDS.choose(&mut rng).unwrap())
                .collect();
            let body = filler.join(" ");
            PreferencePair::new(
                vec![Message::user(format!("Describe {}", filler[0]))],
                format!("{body} good"),
                format!("{body} bad"),
                domain,
            )
        })
        .collect()
}

/// Reward = share of the answer's tokens equal to 7: the optimum (all 7s) is known.
pub struct CountSevens;

impl RewardFn for CountSevens {
    fn rewards(&self, rollouts: &[Rollout]) -> Result<Vec<f32>, AlignError> {
        Ok(rollouts
            .iter()
            .map(|r| {
                r.response.iter().filter(|&&t| t == 7).count() as f32
                    / r.response.len().max(1) as f32
            })
            .collect())
    }
}
