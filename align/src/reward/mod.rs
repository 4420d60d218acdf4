//! The conditional reward model (SPEC 6): the InternLM2 body with a 1-dimensional head
//! `v_head` read at a reward token appended after the conversation, a domain system prompt
//! selecting the preference (helpful, harmless, code, math, ...), and the focal ranking loss
//! with a log-barrier penalty keeping scores inside (-5, 5).
//!
//! Checkpoints follow the official InternLM2-Reward layout: `model.*` plus `v_head.weight`
//! `[1, H]`.

mod encode;
mod model;
mod scorer;
mod train;

pub use encode::{DomainPrompts, PreferencePair, RewardEncoder};
pub use model::{RELEASED_REWARD_TOKEN, RewardModel};
pub use scorer::{RewardScorer, pair_accuracy};
pub use train::{
    PairBatch, RankingLoss, RankingObjective, RewardStepStats, RewardTrainConfig, budget_batches,
    inference_copy, train_reward_model,
};
