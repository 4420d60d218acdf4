//! Training a byte-level BPE tokenizer with the `tokenizers` crate, for models trained from
//! scratch (the quickstart's tiny InternLM2). The vocabulary starts with InternLM2's special
//! tokens, so the result works with the chat protocol.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use super::Tokenizer;
use crate::error::TokenizerError;

/// The special tokens every trained vocabulary starts with, in id order: `<unk>` 0, `<s>` 1,
/// `</s>` 2, the six chat tokens, and the reward models' reward token
/// (`[UNUSED_TOKEN_130]`, id 92527 in the released vocabulary).
pub const SPECIAL_TOKENS: [&str; 10] = [
    "<unk>",
    "<s>",
    "</s>",
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
    "[UNUSED_TOKEN_130]",
];

impl Tokenizer {
    /// Trains a byte-level BPE tokenizer of (at most) `vocab_size` ids on `texts`. Every byte
    /// is in the vocabulary, so any text encodes and decodes exactly.
    ///
    /// ```
    /// use internlm2::Tokenizer;
    /// let texts = ["the cat sat on the mat", "the dog sat on the log"];
    /// let tok = Tokenizer::train_bpe(texts.iter(), 300).unwrap();
    /// let ids = tok.encode("the cat sat", true).unwrap();
    /// assert_eq!(ids[0], 1); // <s>
    /// assert_eq!(tok.decode(&ids).unwrap(), "the cat sat");
    /// assert!(tok.chat_tokens().is_some());
    /// ```
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let err = |e: tokenizers::Error| TokenizerError::Backend(format!("BPE training: {e}"));
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tokenizer = HfTokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer.train(&mut trainer, texts).map_err(err)?;
        let json = tokenizer.to_string(false).map_err(err)?;
        Self::from_json_bytes(json.as_bytes(), "<trained BPE>")
    }
}
