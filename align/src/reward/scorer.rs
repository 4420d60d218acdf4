//! Scoring with a trained reward model: scores, comparisons, rankings, best-of-N, and the pair
//! accuracy on held-out pairs.

use std::cmp::Ordering;

use internlm2::InternLM2;
use internlm2::Tokenizer;
use internlm2::backends::Kernels;
use internlm2::chat::{self, Message};

use super::{PreferencePair, RewardEncoder, RewardModel};
use crate::AlignError;

/// Scoring with a trained reward model.
pub struct RewardScorer<B: Kernels> {
    /// The model.
    pub model: RewardModel<B>,
    /// How conversations are encoded.
    pub encoder: RewardEncoder,
}

impl<B: Kernels> RewardScorer<B> {
    /// Scores of several conversations under one domain.
    pub fn score_many(
        &self,
        conversations: &[Vec<Message>],
        domain: Option<&str>,
    ) -> Result<Vec<f32>, AlignError> {
        let rows = conversations
            .iter()
            .map(|c| self.encoder.encode(c, domain))
            .collect::<Result<Vec<_>, _>>()?;
        let (ids, last) = self.encoder.batch::<B>(&rows, &self.model.model.device());
        Ok(self
            .model
            .scores(ids, &last)
            .into_data()
            .into_vec::<f32>()
            .expect("f32 scores"))
    }

    /// The score of one conversation.
    pub fn score(&self, conversation: &[Message], domain: Option<&str>) -> Result<f32, AlignError> {
        Ok(self.score_many(&[conversation.to_vec()], domain)?[0])
    }

    /// Which of two conversations the model prefers (`Less` = `a` is worse), with both scores.
    pub fn compare(
        &self,
        a: &[Message],
        b: &[Message],
        domain: Option<&str>,
    ) -> Result<(Ordering, f32, f32), AlignError> {
        let s = self.score_many(&[a.to_vec(), b.to_vec()], domain)?;
        Ok((s[0].total_cmp(&s[1]), s[0], s[1]))
    }

    /// Indices of `conversations`, best first, with their scores.
    pub fn rank(
        &self,
        conversations: &[Vec<Message>],
        domain: Option<&str>,
    ) -> Result<Vec<(usize, f32)>, AlignError> {
        let scores = self.score_many(conversations, domain)?;
        let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ranked)
    }

    /// Best-of-N: samples `n` answers to `prompt` with `policy` and returns the one the reward
    /// model scores highest, with every answer's score.
    pub fn best_of_n<P: Kernels>(
        &self,
        policy: &InternLM2<P>,
        tokenizer: &Tokenizer,
        prompt: &[Message],
        n: usize,
        config: &internlm2::generate::GenerationConfig,
        domain: Option<&str>,
    ) -> Result<(String, Vec<(String, f32)>), AlignError> {
        if n == 0 {
            return Err(AlignError::invalid("best-of-N needs n >= 1"));
        }
        let ids = chat::encode(tokenizer, prompt, true)?;
        let prompts = vec![ids; n];
        let outputs =
            internlm2::generate::generate(policy, Some(tokenizer), prompts, config, |_| true)?;
        let answers: Vec<String> = outputs
            .into_iter()
            .map(|o| o.text.unwrap_or_default())
            .collect();
        let conversations: Vec<Vec<Message>> = answers
            .iter()
            .map(|a| {
                let mut c = prompt.to_vec();
                c.push(Message::assistant(a.clone()));
                c
            })
            .collect();
        let scores = self.score_many(&conversations, domain)?;
        let scored: Vec<(String, f32)> = answers.into_iter().zip(scores).collect();
        let best = scored
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(a, _)| a.clone())
            .expect("n >= 1");
        Ok((best, scored))
    }
}

/// Pair accuracy of a reward model on held-out pairs.
pub fn pair_accuracy<B: Kernels>(
    scorer: &RewardScorer<B>,
    pairs: &[PreferencePair],
) -> Result<f64, AlignError> {
    if pairs.is_empty() {
        return Err(AlignError::empty("no pairs to evaluate"));
    }
    let mut right = 0;
    for pair in pairs {
        let mut chosen = pair.prompt.clone();
        chosen.extend_from_slice(&pair.chosen);
        let mut rejected = pair.prompt.clone();
        rejected.extend_from_slice(&pair.rejected);
        let (order, _, _) = scorer.compare(&chosen, &rejected, pair.domain.as_deref())?;
        if order == Ordering::Greater {
            right += 1;
        }
    }
    Ok(right as f64 / pairs.len() as f64)
}
