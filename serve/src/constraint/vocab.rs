//! Our tokenizer as llguidance sees it: every id's bytes in a token trie (`toktrie`), chat and
//! control tokens marked special (a leading `0xFF` byte, so grammars name them as
//! `<|im_end|>` and plain text never matches them), and `<|im_end|>` as the end of a turn.

use std::sync::Arc;

use internlm2::Tokenizer;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use super::ConstraintBuildError;

/// SentencePiece byte-fallback pieces `<0x00>`..`<0xFF>` are ids 3..=258 (SPEC 3).
const FIRST_BYTE_PIECE: u32 = 3;

/// A [`TokenizerEnv`] over our [`Tokenizer`].
pub(crate) struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
    /// Whether ids 3..=258 are the 256 byte pieces (used for bytes that are not UTF-8).
    byte_pieces: bool,
}

impl Vocabulary {
    /// Builds the trie from [`Tokenizer::token_bytes`]; needs the SentencePiece byte table and
    /// the six chat tokens.
    pub(crate) fn env(tokenizer: Arc<Tokenizer>) -> Result<TokEnv, ConstraintBuildError> {
        let chat = tokenizer
            .chat_tokens()
            .ok_or(ConstraintBuildError::NoChatTokens)?;
        let specials = [
            chat.im_start,
            chat.im_end,
            chat.action_start,
            chat.action_end,
            chat.interpreter,
            chat.plugin,
        ];
        let vocab_size = tokenizer.vocab_size();
        let mut words = Vec::with_capacity(vocab_size);
        for id in 0..vocab_size as u32 {
            let bytes = tokenizer
                .token_bytes(id)
                .map_err(|e| ConstraintBuildError::Vocabulary {
                    reason: e.to_string(),
                })?
                .ok_or(ConstraintBuildError::NoByteTable)?;
            let word = if specials.contains(&id) {
                marked(bytes)
            } else if bytes.is_empty() {
                // Control pieces (<unk>, <s>, </s>) decode to nothing: give them a special
                // name so that no grammar can produce them by accident.
                marked(format!("<[{id}]>").as_bytes())
            } else {
                bytes.to_vec()
            };
            words.push(word);
        }
        let byte_pieces = (0..256u32).all(|b| {
            tokenizer
                .token_bytes(FIRST_BYTE_PIECE + b)
                .ok()
                .flatten()
                .is_some_and(|w| w == [b as u8])
        });
        let info = TokRxInfo {
            vocab_size: vocab_size as u32,
            tok_eos: chat.im_end,
            tok_bos: tokenizer.bos_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: Some(chat.im_end),
        };
        let trie = TokTrie::from(&info, &words);
        Ok(Arc::new(Self {
            trie,
            tokenizer,
            byte_pieces,
        }))
    }
}

fn marked(bytes: &[u8]) -> Vec<u8> {
    let mut word = Vec::with_capacity(bytes.len() + 1);
    word.push(TokTrie::SPECIAL_TOKEN_MARKER);
    word.extend_from_slice(bytes);
    word
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Tokenises like the model's prompts are tokenised; bytes that are not UTF-8 become byte
    /// pieces (or, without them, the trie's greedy match).
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (valid, invalid) = match std::str::from_utf8(rest) {
                Ok(text) => (text, &[][..]),
                Err(e) => {
                    let (head, tail) = rest.split_at(e.valid_up_to());
                    let bad = e.error_len().unwrap_or(tail.len()).min(tail.len());
                    (std::str::from_utf8(head).unwrap_or_default(), &tail[..bad])
                }
            };
            if !valid.is_empty() {
                match self.tokenizer.encode(valid, false) {
                    Ok(ids) => out.extend(ids),
                    Err(_) => out.extend(self.trie.greedy_tokenize(valid.as_bytes())),
                }
            }
            if self.byte_pieces {
                out.extend(invalid.iter().map(|&b| FIRST_BYTE_PIECE + u32::from(b)));
            } else {
                out.extend(self.trie.greedy_tokenize(invalid));
            }
            rest = &rest[valid.len() + invalid.len()..];
        }
        out
    }
}
