//! Online RLHF (SPEC 6), three rounds by default. Each round: run PPO; answer a fixed set of
//! probe prompts with the policy before (early) and after (late) the round; detectors find
//! reward-hacking patterns in the late answers; each established pattern (at least
//! `min_pairs` instances) becomes 20-100 "fast path" preference pairs (early answer chosen,
//! late answer rejected); the "slow path" human-labelled pairs accumulated in a file are
//! merged in; the reward model is retrained on everything; the next round starts with it.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use internlm2::Tokenizer;
use internlm2::chat::Message;
use internlm2_train::{TokenBatch, TrainBackend};
use serde::{Deserialize, Serialize};

use crate::AlignError;
use crate::ppo::{ConditionalReward, Ppo, PpoEngine, PpoStats, Prompt, RewardFn, Rollout};
use crate::reward::{
    PreferencePair, RewardEncoder, RewardModel, RewardScorer, RewardTrainConfig, train_reward_model,
};

/// An answer to a probe prompt with its scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The rollout.
    pub rollout: Rollout,
    /// The reward model's score.
    pub reward: f32,
    /// A held-out judge's score, when one is configured.
    pub judge: Option<f32>,
}

impl Sample {
    fn text(&self) -> String {
        self.rollout.text.clone().unwrap_or_default()
    }
}

/// Finds a reward-hacking pattern: for probe `i`, whether the late answer hacks where the
/// early one did not.
pub trait HackDetector {
    /// The pattern's name.
    fn name(&self) -> &str;
    /// Whether `late` shows the pattern compared with `early` (same prompt).
    fn hacked(&self, early: &Sample, late: &Sample) -> bool;
}

/// The late answer is much longer than the early one.
#[derive(Debug, Clone)]
pub struct LengthBlowUp {
    /// Late / early length ratio that counts as a blow-up.
    pub ratio: f64,
    /// Ignore answers shorter than this (tokens).
    pub min_tokens: usize,
}

impl Default for LengthBlowUp {
    fn default() -> Self {
        Self {
            ratio: 2.0,
            min_tokens: 16,
        }
    }
}

impl HackDetector for LengthBlowUp {
    fn name(&self) -> &str {
        "length-blow-up"
    }
    fn hacked(&self, early: &Sample, late: &Sample) -> bool {
        let (e, l) = (early.rollout.response.len(), late.rollout.response.len());
        l >= self.min_tokens && l as f64 > self.ratio * e.max(1) as f64
    }
}

/// The late answer repeats itself: a large share of its token n-grams occur more than once.
#[derive(Debug, Clone)]
pub struct Repetition {
    /// n-gram length in tokens.
    pub n: usize,
    /// Share of repeated n-grams above which an answer is repetitive.
    pub threshold: f64,
}

impl Default for Repetition {
    fn default() -> Self {
        Self {
            n: 3,
            threshold: 0.5,
        }
    }
}

impl Repetition {
    /// Share of the n-grams of `ids` that occur more than once.
    pub fn repeated_share(&self, ids: &[u32]) -> f64 {
        if ids.len() < self.n + 1 {
            return 0.0;
        }
        let grams: Vec<&[u32]> = ids.windows(self.n).collect();
        let mut counts = std::collections::HashMap::new();
        for g in &grams {
            *counts.entry(*g).or_insert(0usize) += 1;
        }
        grams.iter().filter(|g| counts[*g] > 1).count() as f64 / grams.len() as f64
    }
}

impl HackDetector for Repetition {
    fn name(&self) -> &str {
        "repetition"
    }
    fn hacked(&self, early: &Sample, late: &Sample) -> bool {
        self.repeated_share(&late.rollout.response) > self.threshold
            && self.repeated_share(&early.rollout.response) <= self.threshold
    }
}

/// The reward rose while a held-out judge's score did not.
#[derive(Debug, Clone)]
pub struct RewardWithoutJudge {
    /// Reward gain that counts as "rose".
    pub min_reward_gain: f32,
}

impl Default for RewardWithoutJudge {
    fn default() -> Self {
        Self {
            min_reward_gain: 0.5,
        }
    }
}

impl HackDetector for RewardWithoutJudge {
    fn name(&self) -> &str {
        "reward-without-judge"
    }
    fn hacked(&self, early: &Sample, late: &Sample) -> bool {
        match (early.judge, late.judge) {
            (Some(je), Some(jl)) => late.reward - early.reward >= self.min_reward_gain && jl <= je,
            _ => false,
        }
    }
}

/// Online RLHF settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnlineConfig {
    /// Rounds (SPEC 6: 3).
    pub rounds: usize,
    /// PPO iterations per round.
    pub iterations_per_round: usize,
    /// A pattern needs at least this many instances to be patched (SPEC 6: 20).
    pub min_pairs: usize,
    /// At most this many patch pairs per pattern (SPEC 6: 100).
    pub max_pairs: usize,
    /// JSONL of human-labelled [`PreferencePair`]s accumulated across rounds (slow path).
    pub slow_path: Option<PathBuf>,
    /// Reward-model retraining.
    pub reward_training: RewardTrainConfig,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            iterations_per_round: 100,
            min_pairs: 20,
            max_pairs: 100,
            slow_path: None,
            reward_training: RewardTrainConfig::default(),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// 1-based round.
    pub round: usize,
    /// PPO metrics of the round.
    pub ppo: Vec<PpoStats>,
    /// Instances found per pattern.
    pub detected: Vec<(String, usize)>,
    /// Patch pairs built per established pattern.
    pub patch_pairs: Vec<(String, usize)>,
    /// Slow-path pairs merged.
    pub slow_path_pairs: usize,
    /// Mean reward on the probe prompts before and after the round.
    pub probe_reward: (f64, f64),
}

/// Builds the fast-path pairs of a round: per detector, the probes where the late answer
/// hacks become `(prompt, early answer chosen, late answer rejected)`; a pattern with fewer
/// than `min_pairs` instances is not established and yields none; at most `max_pairs`.
pub fn patch_pairs(
    detectors: &[Box<dyn HackDetector>],
    early: &[Sample],
    late: &[Sample],
    min_pairs: usize,
    max_pairs: usize,
) -> (Vec<(String, usize)>, Vec<(String, Vec<PreferencePair>)>) {
    let mut detected = Vec::new();
    let mut patches = Vec::new();
    for detector in detectors {
        let hits: Vec<usize> = (0..early.len().min(late.len()))
            .filter(|&i| detector.hacked(&early[i], &late[i]))
            .collect();
        detected.push((detector.name().to_string(), hits.len()));
        if hits.len() < min_pairs {
            continue;
        }
        let pairs = hits
            .into_iter()
            .take(max_pairs)
            .filter_map(|i| {
                let prompt = early[i].rollout.prompt.messages.clone()?;
                Some(PreferencePair::new(
                    prompt,
                    early[i].text(),
                    late[i].text(),
                    early[i].rollout.prompt.domain.as_deref(),
                ))
            })
            .collect();
        patches.push((detector.name().to_string(), pairs));
    }
    (detected, patches)
}

/// Answers the probe prompts with the current actor and scores them.
fn probe<B: TrainBackend, E: PpoEngine<B>>(
    ppo: &Ppo<B, E>,
    probes: &[Prompt],
    tokenizer: &Tokenizer,
    reward: &dyn RewardFn,
    judge: Option<&dyn RewardFn>,
    seed: u64,
) -> Result<Vec<Sample>, AlignError> {
    let rollouts = ppo.rollout(probes, Some(tokenizer), seed)?;
    let rewards = reward.rewards(&rollouts)?;
    let judged = match judge {
        Some(j) => Some(j.rewards(&rollouts)?),
        None => None,
    };
    Ok(rollouts
        .into_iter()
        .enumerate()
        .map(|(i, rollout)| Sample {
            rollout,
            reward: rewards[i],
            judge: judged.as_ref().map(|j| j[i]),
        })
        .collect())
}

/// Runs the online RLHF loop. `prompts` feeds PPO (cycled in batches of `batch`), `probes`
/// are answered before and after every round, `judge` is an optional held-out scorer for the
/// [`RewardWithoutJudge`] detector, `ptx` an optional pre-training batch source. Returns the
/// retrained reward model and one report per round.
#[allow(clippy::too_many_arguments)]
pub fn run_online_rlhf<B: TrainBackend, E: PpoEngine<B>>(
    ppo: &mut Ppo<B, E>,
    reward_model: RewardModel<B>,
    encoder: &RewardEncoder,
    tokenizer: &Tokenizer,
    prompts: &[Prompt],
    batch: usize,
    probes: &[Prompt],
    detectors: &[Box<dyn HackDetector>],
    judge: Option<&dyn RewardFn>,
    mut ptx: Option<&mut dyn FnMut() -> TokenBatch>,
    config: &OnlineConfig,
    mut on_round: impl FnMut(&RoundReport),
) -> Result<(RewardModel<B>, Vec<RoundReport>), AlignError> {
    if prompts.is_empty() || probes.is_empty() || batch == 0 {
        return Err(AlignError::empty(
            "online RLHF needs prompts, probes and a batch size",
        ));
    }
    let mut reward_model = reward_model;
    let mut accumulated: Vec<PreferencePair> = Vec::new();
    let mut reports = Vec::new();
    let mut cursor = 0;
    for round in 1..=config.rounds.max(1) {
        let scorer = ConditionalReward {
            scorer: RewardScorer {
                model: reward_model.valid(),
                encoder: encoder.clone(),
            },
        };
        let early = probe(ppo, probes, tokenizer, &scorer, judge, round as u64 * 1000)?;
        let mut ppo_stats = Vec::new();
        for _ in 0..config.iterations_per_round {
            let chunk: Vec<Prompt> = (0..batch)
                .map(|k| prompts[(cursor + k) % prompts.len()].clone())
                .collect();
            cursor = (cursor + batch) % prompts.len();
            let ptx_batch = ptx.as_mut().map(|next| next());
            let (stats, _) = ppo.iterate(&chunk, Some(tokenizer), &scorer, ptx_batch.as_ref())?;
            ppo_stats.push(stats);
        }
        let late = probe(
            ppo,
            probes,
            tokenizer,
            &scorer,
            judge,
            round as u64 * 1000 + 1,
        )?;
        let (detected, patches) =
            patch_pairs(detectors, &early, &late, config.min_pairs, config.max_pairs);
        let mut training: Vec<PreferencePair> = patches
            .iter()
            .flat_map(|(_, p)| p.iter().cloned())
            .collect();
        accumulated.extend(training.iter().cloned());
        let slow: Vec<PreferencePair> = match &config.slow_path {
            Some(path) if path.exists() => crate::read_jsonl(path)?,
            _ => Vec::new(),
        };
        training = accumulated.clone();
        training.extend(slow.iter().cloned());
        if !training.is_empty() {
            let (model, _) = train_reward_model(
                reward_model,
                encoder,
                &training,
                &config.reward_training,
                |_, _| {},
            )?;
            reward_model = model;
        }
        let mean = |s: &[Sample]| s.iter().map(|x| x.reward as f64).sum::<f64>() / s.len() as f64;
        let report = RoundReport {
            round,
            ppo: ppo_stats,
            detected,
            patch_pairs: patches.iter().map(|(n, p)| (n.clone(), p.len())).collect(),
            slow_path_pairs: slow.len(),
            probe_reward: (mean(&early), mean(&late)),
        };
        on_round(&report);
        reports.push(report);
    }
    Ok((reward_model, reports))
}

/// A probe set from plain user questions.
pub fn user_prompts(
    tokenizer: &Tokenizer,
    questions: &[&str],
    domain: Option<&str>,
) -> Result<Vec<Prompt>, AlignError> {
    questions
        .iter()
        .map(|q| Prompt::chat(tokenizer, vec![Message::user(*q)], domain))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(response: Vec<u32>, text: &str, reward: f32, judge: Option<f32>) -> Sample {
        Sample {
            rollout: Rollout {
                prompt: Prompt {
                    ids: vec![1],
                    messages: Some(vec![Message::user("q")]),
                    domain: Some("helpful".into()),
                },
                response,
                text: Some(text.into()),
            },
            reward,
            judge,
        }
    }

    #[test]
    fn detectors_find_their_patterns() {
        let short = sample((0..10).collect(), "short", 0.0, Some(1.0));
        let long = sample((0..40).collect(), "long", 1.0, Some(2.0));
        let repetitive = sample([5, 6, 7].repeat(10), "rep", 2.0, Some(0.5));
        assert!(LengthBlowUp::default().hacked(&short, &long));
        assert!(!LengthBlowUp::default().hacked(&long, &short));
        assert!(Repetition::default().hacked(&short, &repetitive));
        assert!(!Repetition::default().hacked(&short, &long));
        assert!(RewardWithoutJudge::default().hacked(&short, &repetitive));
        assert!(
            !RewardWithoutJudge::default().hacked(&short, &long),
            "the judge rose with the reward"
        );
    }

    #[test]
    fn patches_need_an_established_pattern_and_are_capped() {
        let detectors: Vec<Box<dyn HackDetector>> = vec![
            Box::new(LengthBlowUp::default()),
            Box::new(Repetition::default()),
        ];
        let early: Vec<Sample> = (0..150)
            .map(|_| sample((0..10).collect(), "ok", 0.0, None))
            .collect();
        // 120 blow-ups, 5 repetitions.
        let late: Vec<Sample> = (0..150)
            .map(|i| match i {
                0..120 => sample((0..40).collect(), "long", 1.0, None),
                120..125 => sample([5, 6, 7].repeat(4), "rep", 1.0, None),
                _ => sample((0..10).collect(), "ok", 0.0, None),
            })
            .collect();
        let (detected, patches) = patch_pairs(&detectors, &early, &late, 20, 100);
        assert_eq!(
            detected,
            vec![
                ("length-blow-up".to_string(), 120),
                ("repetition".to_string(), 5)
            ]
        );
        assert_eq!(patches.len(), 1, "repetition is not established (5 < 20)");
        assert_eq!(patches[0].1.len(), 100);
        let pair = &patches[0].1[0];
        assert_eq!(pair.chosen[0].content, "ok");
        assert_eq!(pair.rejected[0].content, "long");
    }
}
