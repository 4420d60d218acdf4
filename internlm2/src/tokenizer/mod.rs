//! The InternLM2 tokenizer (SPEC 3): SentencePiece BPE with byte fallback, loaded straight from
//! `tokenizer.model` (or from a `tokenizer.json` when a directory has one), with the chat
//! special tokens matched atomically.
//!
//! ```no_run
//! use internlm2::Tokenizer;
//! let tokenizer = Tokenizer::from_file("tokenizer.model")?;
//! let ids = tokenizer.encode("<|im_start|>user\nHello<|im_end|>\n", true)?;
//! assert_eq!(ids[0], 1); // BOS
//! assert_eq!(tokenizer.decode(&ids)?, "<|im_start|>user\nHello<|im_end|>\n");
//! # Ok::<(), internlm2::TokenizerError>(())
//! ```

mod charsmap;
mod sentencepiece;
mod stream;
mod train;

use std::path::Path;

pub use sentencepiece::{
    MAX_MODEL_BYTES, MAX_PIECE_BYTES, MAX_PIECES, Piece, PieceKind, SentencePieceModel,
};
pub use stream::IncrementalDecoder;
pub use train::SPECIAL_TOKENS;

use crate::error::TokenizerError;

/// Largest `tokenizer.json` read, in bytes (InternLM2's is about 2 MB).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// The ids of the chat protocol's special tokens (SPEC 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTokens {
    /// `<|im_start|>` (92543 in the releases).
    pub im_start: u32,
    /// `<|im_end|>` (92542).
    pub im_end: u32,
    /// `<|action_start|>` (92541).
    pub action_start: u32,
    /// `<|action_end|>` (92540).
    pub action_end: u32,
    /// `<|interpreter|>` (92539).
    pub interpreter: u32,
    /// `<|plugin|>` (92538).
    pub plugin: u32,
}

/// How ids become text.
#[derive(Debug, Clone)]
enum Decoding {
    /// Bytes per id (SentencePiece models): exact, streamable byte by byte.
    Table {
        bytes: Vec<Vec<u8>>,
        strip_leading_space: bool,
    },
    /// The `tokenizer.json`'s own decoder.
    Pipeline,
}

/// Text <-> token ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    decoding: Decoding,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    chat: Option<ChatTokens>,
}

fn tok_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Backend(e.to_string())
}

impl Tokenizer {
    /// Loads `tokenizer.json` or `tokenizer.model` from a model directory, preferring the JSON.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        for name in ["tokenizer.json", "tokenizer.model"] {
            let path = dir.join(name);
            if path.is_file() {
                return Self::from_file(path);
            }
        }
        Err(TokenizerError::NotFound(dir.to_path_buf()))
    }

    /// Loads a `tokenizer.json` (by extension) or a SentencePiece model (anything else).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let io = |source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        };
        let origin = path.display().to_string();
        let json = path.extension().is_some_and(|e| e == "json");
        let max = if json {
            MAX_JSON_BYTES
        } else {
            sentencepiece::MAX_MODEL_BYTES as u64
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > max {
            return Err(TokenizerError::InvalidModel {
                origin,
                reason: format!("{len} bytes, more than the {max} a tokenizer file may have"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        if json {
            Self::from_json_bytes(&bytes, &origin)
        } else {
            Self::from_sentencepiece_bytes(&bytes, &origin)
        }
    }

    /// Builds the tokenizer from the bytes of a SentencePiece `tokenizer.model`.
    pub fn from_sentencepiece_bytes(bytes: &[u8], origin: &str) -> Result<Self, TokenizerError> {
        let model = SentencePieceModel::parse(bytes, origin)?;
        let inner = model.to_hf_tokenizer(origin)?;
        let find = |text: &str| {
            model
                .pieces
                .iter()
                .position(|p| p.text == text && p.kind == PieceKind::UserDefined)
                .map(|i| i as u32)
        };
        Ok(Self {
            chat: chat_tokens(find),
            decoding: Decoding::Table {
                bytes: model.decode_table(),
                strip_leading_space: model.strips_dummy_prefix(),
            },
            vocab_size: model.pieces.len(),
            bos: model.bos_id,
            eos: model.eos_id,
            inner,
        })
    }

    /// Builds the tokenizer from the bytes of a HuggingFace `tokenizer.json`.
    pub fn from_json_bytes(bytes: &[u8], origin: &str) -> Result<Self, TokenizerError> {
        let invalid = |reason: String| TokenizerError::InvalidModel {
            origin: origin.to_string(),
            reason,
        };
        // What the `tokenizers` library would panic on is refused first.
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a tokenizer.json: {e}")))?;
        charsmap::check_json(&value).map_err(invalid)?;
        // Its deserialiser still `expect`s in places; a panic there is a refusal, not a crash.
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| invalid("the tokenizers library cannot read it".into()))?
            .map_err(|e| TokenizerError::Backend(format!("{origin}: {e}")))?;
        let find = |text: &str| inner.token_to_id(text);
        Ok(Self {
            chat: chat_tokens(find),
            bos: find("<s>"),
            eos: find("</s>"),
            vocab_size: inner.get_vocab_size(true),
            decoding: Decoding::Pipeline,
            inner,
        })
    }

    /// Encodes `text`, chat special tokens matched atomically, with BOS first when `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode_fast(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos && let Some(bos) = self.bos {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Encodes like [`Tokenizer::encode`] and also returns each id's byte range in `text`
    /// (BOS gets `(0, 0)`), e.g. to find which tokens belong to an assistant turn.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_bos: bool,
    ) -> Result<(Vec<u32>, Vec<(usize, usize)>), TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        let mut offsets = Vec::with_capacity(encoding.len() + 1);
        if add_bos && let Some(bos) = self.bos {
            ids.push(bos);
            offsets.push((0, 0));
        }
        ids.extend_from_slice(encoding.get_ids());
        offsets.extend_from_slice(encoding.get_offsets());
        Ok((ids, offsets))
    }

    /// Decodes ids to text: byte pieces are reassembled into UTF-8 (invalid sequences become
    /// U+FFFD), BOS/EOS and other control pieces produce nothing, chat tokens their own text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        match &self.decoding {
            Decoding::Table {
                bytes,
                strip_leading_space,
            } => {
                let mut out = Vec::new();
                for &id in ids {
                    out.extend_from_slice(self.piece_bytes(bytes, id)?);
                }
                if *strip_leading_space && out.first() == Some(&b' ') {
                    out.remove(0);
                }
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
            Decoding::Pipeline => {
                for &id in ids {
                    self.check_id(id)?;
                }
                // BOS/EOS decode to nothing, as in SentencePiece.
                let kept: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|&id| Some(id) != self.bos && Some(id) != self.eos)
                    .collect();
                // The library's decoders index without checks in places (a `Strip` decoder
                // whose `stop` exceeds a token's length underflows): a panic there is a typed
                // error, not a crash.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.inner.decode(&kept, false)
                }))
                .map_err(|_| {
                    TokenizerError::Backend(
                        "the tokenizer's decoder failed on these ids (the tokenizers library \
                         panicked)"
                            .into(),
                    )
                })?
                .map_err(tok_err)
            }
        }
    }

    fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        if (id as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size,
            })
        }
    }

    fn piece_bytes<'a>(&self, table: &'a [Vec<u8>], id: u32) -> Result<&'a [u8], TokenizerError> {
        self.check_id(id)?;
        Ok(&table[id as usize])
    }

    /// The raw bytes one id stands for, when the tokenizer knows them (SentencePiece models).
    pub fn token_bytes(&self, id: u32) -> Result<Option<&[u8]>, TokenizerError> {
        match &self.decoding {
            Decoding::Table { bytes, .. } => self.piece_bytes(bytes, id).map(Some),
            Decoding::Pipeline => self.check_id(id).map(|_| None),
        }
    }

    /// A streaming decoder that emits text as ids arrive and never splits a UTF-8 character.
    pub fn incremental_decoder(&self) -> IncrementalDecoder<'_> {
        IncrementalDecoder::new(self)
    }

    /// Number of ids.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `<s>`.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// `</s>`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The chat tokens, when the vocabulary has all six.
    pub fn chat_tokens(&self) -> Option<ChatTokens> {
        self.chat
    }

    /// The id of a piece or added token given by its text.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The underlying `tokenizers` pipeline (for offsets, batch encoding, saving as JSON).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes the pipeline as a HuggingFace `tokenizer.json` (loadable by
    /// [`Tokenizer::from_file`] and by the `tokenizers` libraries).
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        self.inner
            .save(path.as_ref(), false)
            .map_err(|e| TokenizerError::Backend(format!("{}: {e}", path.as_ref().display())))
    }
}

fn chat_tokens(find: impl Fn(&str) -> Option<u32>) -> Option<ChatTokens> {
    Some(ChatTokens {
        im_start: find("<|im_start|>")?,
        im_end: find("<|im_end|>")?,
        action_start: find("<|action_start|>")?,
        action_end: find("<|action_end|>")?,
        interpreter: find("<|interpreter|>")?,
        plugin: find("<|plugin|>")?,
    })
}
