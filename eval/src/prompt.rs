//! Turning the turns of an evaluation prompt into token ids, as OpenCompass does for a chat
//! model (its InternLM2-chat meta template, which equals ChatML) or for a base model (the turns
//! concatenated).
//!
//! OpenCompass `configs/models/hf_internlm/hf_internlm2_chat_7b.py` (b4afe3e7, January 2024):
//! ```text
//! dict(role='HUMAN', begin='<|im_start|>user\n', end='<|im_end|>\n'),
//! dict(role='BOT', begin='<|im_start|>assistant\n', end='<|im_end|>\n', generate=True),
//! ```
//! The tokenizer adds BOS in front, as Hugging Face's does for OpenCompass.

use internlm2::Tokenizer;
use internlm2::chat::{self, Message};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How prompts are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptFormat {
    /// ChatML turns ending with `<|im_start|>assistant\n` (chat models; the default).
    #[default]
    Chat,
    /// The turns' texts concatenated (base models, tokenizers without chat tokens).
    Raw,
}

impl std::str::FromStr for PromptFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "chat" => Ok(Self::Chat),
            "raw" => Ok(Self::Raw),
            other => Err(format!("unknown prompt format {other:?} (chat, raw)")),
        }
    }
}

impl PromptFormat {
    /// `Chat` when the tokenizer has the chat tokens, `Raw` otherwise.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Self {
        if tokenizer.chat_tokens().is_some() {
            Self::Chat
        } else {
            Self::Raw
        }
    }
}

/// One turn of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// What the user (OpenCompass's `HUMAN`) says.
    User(String),
    /// What the model (`BOT`) said, for few-shot examples.
    Assistant(String),
}

/// The text of the turns as the model sees it (BOS not included).
///
/// ```
/// use internlm2_eval::prompt::{PromptFormat, Turn, render};
/// let turns = [Turn::User("Q: 1+1?".into()), Turn::Assistant("2\n".into()), Turn::User("Q: 2+2?".into())];
/// assert_eq!(
///     render(PromptFormat::Chat, &turns)?,
///     "<|im_start|>user\nQ: 1+1?<|im_end|>\n<|im_start|>assistant\n2\n<|im_end|>\n\
///      <|im_start|>user\nQ: 2+2?<|im_end|>\n<|im_start|>assistant\n"
/// );
/// assert_eq!(render(PromptFormat::Raw, &turns)?, "Q: 1+1?2\nQ: 2+2?");
/// # Ok::<(), internlm2_eval::EvalError>(())
/// ```
pub fn render(format: PromptFormat, turns: &[Turn]) -> Result<String> {
    match format {
        PromptFormat::Chat => {
            let messages: Vec<Message> = turns
                .iter()
                .map(|t| match t {
                    Turn::User(text) => Message::user(text.clone()),
                    Turn::Assistant(text) => Message::assistant(text.clone()),
                })
                .collect();
            Ok(chat::render(&messages, true)?)
        }
        PromptFormat::Raw => Ok(turns
            .iter()
            .map(|t| match t {
                Turn::User(text) | Turn::Assistant(text) => text.as_str(),
            })
            .collect()),
    }
}

/// The token ids of the turns (BOS first; chat tokens matched atomically).
pub fn encode(tokenizer: &Tokenizer, format: PromptFormat, turns: &[Turn]) -> Result<Vec<u32>> {
    let text = render(format, turns)?;
    if format == PromptFormat::Chat && tokenizer.chat_tokens().is_none() {
        // Without the chat tokens the markers would be split into ordinary pieces.
        return Err(crate::EvalError::InvalidSetting {
            name: "format",
            reason: "the tokenizer has no chat tokens (<|im_start|>); use the raw format".into(),
        });
    }
    Ok(tokenizer.encode(&text, true)?)
}
