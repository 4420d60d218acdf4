//! What the reward model reads: preference pairs, the domain system prompts that select the
//! preference (helpful, harmless, code, math, ...), and the encoding of a conversation into ids
//! ending with the reward token.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use internlm2::Tokenizer;
use internlm2::chat::{self, Message};
use serde::{Deserialize, Serialize};

use super::RELEASED_REWARD_TOKEN;
use crate::AlignError;

/// Domain -> system prompt selecting the preference the reward model applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPrompts(pub BTreeMap<String, String>);

impl Default for DomainPrompts {
    /// Our prompts for `helpful`, `harmless`, `code` and `math` (the paper does not publish its
    /// own).
    fn default() -> Self {
        let prompts = [
            (
                "helpful",
                "Judge how helpful the assistant's reply is: does it answer the user's request correctly, completely and clearly?",
            ),
            (
                "harmless",
                "Judge how harmless the assistant's reply is: does it avoid dangerous, unethical, deceptive or offensive content while staying respectful?",
            ),
            (
                "code",
                "Judge the assistant's reply as code: is it correct, does it run as intended, does it handle edge cases, is it clear?",
            ),
            (
                "math",
                "Judge the assistant's mathematical reasoning: is every step valid and is the final answer correct?",
            ),
        ];
        Self(
            prompts
                .iter()
                .map(|(d, p)| (d.to_string(), p.to_string()))
                .collect(),
        )
    }
}

impl DomainPrompts {
    /// The conversation the reward model reads for `domain`: the domain's system prompt first
    /// (none for `None` or an unknown domain with `strict = false`).
    pub fn condition(
        &self,
        conversation: &[Message],
        domain: Option<&str>,
    ) -> Result<Vec<Message>, AlignError> {
        let mut out = Vec::with_capacity(conversation.len() + 1);
        if let Some(domain) = domain {
            let prompt = self.0.get(domain).ok_or_else(|| {
                AlignError::invalid(format!("no system prompt for preference domain {domain:?}"))
            })?;
            out.push(Message::system(prompt.clone()));
        }
        out.extend_from_slice(conversation);
        Ok(out)
    }
}

/// A preference pair: the same prompt answered twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The conversation up to the answer.
    pub prompt: Vec<Message>,
    /// The preferred answer (assistant turns).
    pub chosen: Vec<Message>,
    /// The other answer.
    pub rejected: Vec<Message>,
    /// Preference domain (selects the reward model's system prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl PreferencePair {
    /// A pair of single assistant answers to one prompt.
    pub fn new(
        prompt: Vec<Message>,
        chosen: impl Into<String>,
        rejected: impl Into<String>,
        domain: Option<&str>,
    ) -> Self {
        Self {
            prompt,
            chosen: vec![Message::assistant(chosen)],
            rejected: vec![Message::assistant(rejected)],
            domain: domain.map(str::to_string),
        }
    }
}

/// How conversations become reward-model inputs.
#[derive(Debug, Clone)]
pub struct RewardEncoder {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Appended after the conversation; the score is read there.
    pub reward_token: u32,
    /// Domain prompts.
    pub prompts: DomainPrompts,
    /// Longest sequence (SPEC 6: 8192); longer conversations keep their last tokens.
    pub max_len: usize,
    /// Right-padding id.
    pub pad_id: u32,
}

impl RewardEncoder {
    /// An encoder with the default prompts, the reward token found by name
    /// (`[UNUSED_TOKEN_130]`) or the released id 92527, and max length 8192.
    pub fn new(tokenizer: Tokenizer) -> Result<Self, AlignError> {
        let reward_token = tokenizer
            .token_to_id("[UNUSED_TOKEN_130]")
            .or_else(|| {
                (tokenizer.vocab_size() > RELEASED_REWARD_TOKEN as usize)
                    .then_some(RELEASED_REWARD_TOKEN)
            })
            .ok_or_else(|| AlignError::invalid("the vocabulary has no reward token"))?;
        let pad_id = tokenizer.eos_id().unwrap_or(0);
        Ok(Self {
            tokenizer,
            reward_token,
            prompts: DomainPrompts::default(),
            max_len: 8192,
            pad_id,
        })
    }

    /// Ids of a conversation (domain prompt first) ending with the reward token.
    pub fn encode(
        &self,
        conversation: &[Message],
        domain: Option<&str>,
    ) -> Result<Vec<u32>, AlignError> {
        let conditioned = self.prompts.condition(conversation, domain)?;
        let mut ids = self
            .tokenizer
            .encode(&chat::render(&conditioned, false)?, true)?;
        ids.push(self.reward_token);
        if ids.len() > self.max_len {
            ids.drain(..ids.len() - self.max_len);
        }
        Ok(ids)
    }

    /// Right-pads sequences into one `[batch, max_len]` tensor; returns it and each row's last
    /// position.
    pub fn batch<B: Backend>(
        &self,
        rows: &[Vec<u32>],
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Vec<usize>) {
        pad_rows(rows, self.pad_id, device)
    }
}

/// Right-pads `rows` with `pad` into one `[rows, longest]` tensor; returns it and each row's
/// last position.
pub(crate) fn pad_rows<B: Backend>(
    rows: &[Vec<u32>],
    pad: u32,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Vec<usize>) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(1);
    let mut flat = Vec::with_capacity(rows.len() * width);
    for row in rows {
        flat.extend(row.iter().map(|&i| i as i64));
        flat.extend(std::iter::repeat_n(pad as i64, width - row.len()));
    }
    let last = rows.iter().map(|r| r.len().saturating_sub(1)).collect();
    (
        Tensor::from_data(TensorData::new(flat, [rows.len(), width]), device),
        last,
    )
}
