//! Reading a SentencePiece `tokenizer.model` and turning it into a `tokenizers` BPE pipeline
//! that encodes exactly as the SentencePiece library does (SPEC 3).
//!
//! - The protobuf is decoded with prost from the handful of fields we need (field numbers of
//!   `sentencepiece_model.proto`); no generated code, no Python.
//! - SentencePiece BPE merges two adjacent symbols when their concatenation is a piece, the
//!   piece with the highest score first, the leftmost on ties. A `tokenizers` BPE whose merges
//!   are every split `(left, right)` of every normal piece, ranked by the merged piece's score,
//!   makes the same choices.
//! - User-defined pieces (InternLM2's chat tokens among them) are matched atomically before
//!   BPE runs, as SentencePiece's prefix matcher does: they become non-normalised added tokens.
//! - Whitespace becomes `▁` (escape_whitespaces); unknown characters fall back to `<0xXX>`
//!   byte pieces. Pieces SentencePiece never emits (type UNUSED, and a literal NUL piece when
//!   byte fallback is on, such as InternLM2's piece 354) are kept for their id but cannot match.

use std::collections::HashMap;

use prost::Message;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip as StripDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Precompiled, Prepend, Replace, Sequence, Strip};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer as HfTokenizer};

use crate::error::TokenizerError;

/// `ModelProto` of `sentencepiece_model.proto` (fields we read).
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<PieceProto>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct PieceProto {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    #[prost(int32, optional, tag = "3", default = "1")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    #[prost(int32, optional, tag = "3", default = "1")]
    model_type: Option<i32>,
    #[prost(bool, optional, tag = "24", default = "false")]
    treat_whitespace_as_suffix: Option<bool>,
    #[prost(bool, optional, tag = "35", default = "false")]
    byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40", default = "0")]
    unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41", default = "1")]
    bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42", default = "2")]
    eos_id: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3", default = "true")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4", default = "true")]
    remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5", default = "true")]
    escape_whitespaces: Option<bool>,
}

/// The kind of a piece (`SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// An ordinary piece produced by merges.
    Normal,
    /// `<unk>`.
    Unknown,
    /// `<s>`, `</s>`: never matched in text, decoded as nothing.
    Control,
    /// Matched atomically in text (InternLM2's chat tokens).
    UserDefined,
    /// Never produced by encoding.
    Unused,
    /// `<0xXX>` byte-fallback piece.
    Byte(u8),
}

/// One vocabulary entry.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The piece text (`▁` for spaces; chat tokens already renamed).
    pub text: String,
    /// SentencePiece score (`-rank` for InternLM2).
    pub score: f32,
    /// Kind.
    pub kind: PieceKind,
}

/// A parsed SentencePiece BPE model.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    /// Every piece, indexed by id.
    pub pieces: Vec<Piece>,
    /// `<unk>` id.
    pub unk_id: u32,
    /// `<s>` id, if any.
    pub bos_id: Option<u32>,
    /// `</s>` id, if any.
    pub eos_id: Option<u32>,
    byte_fallback: bool,
    normalizer: NormalizerSpec,
}

/// Largest `tokenizer.model` parsed, in bytes (InternLM2's is 1.5 MB).
pub const MAX_MODEL_BYTES: usize = 64 << 20;
/// Most pieces a model may have (the vocabulary bound of [`crate::config::limits`]).
pub const MAX_PIECES: usize = crate::config::limits::MAX_VOCAB_SIZE;
/// Longest piece, in bytes (InternLM2's longest is 384 bytes, 128 `▁`). Building the merges
/// costs the square of a piece's length, so a longer piece is refused.
pub const MAX_PIECE_BYTES: usize = 1024;

/// InternLM2 chat models rename six unused pieces (SPEC 3).
const CHAT_RENAMES: [(&str, &str); 6] = [
    ("[UNUSED_TOKEN_141]", "<|plugin|>"),
    ("[UNUSED_TOKEN_142]", "<|interpreter|>"),
    ("[UNUSED_TOKEN_143]", "<|action_end|>"),
    ("[UNUSED_TOKEN_144]", "<|action_start|>"),
    ("[UNUSED_TOKEN_145]", "<|im_end|>"),
    ("[UNUSED_TOKEN_146]", "<|im_start|>"),
];

fn byte_of_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl SentencePieceModel {
    /// Parses the bytes of a `tokenizer.model`. `origin` names the file in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, TokenizerError> {
        let invalid = |reason: String| TokenizerError::InvalidModel {
            origin: origin.to_string(),
            reason,
        };
        if bytes.len() > MAX_MODEL_BYTES {
            return Err(invalid(format!(
                "{} bytes, more than the {MAX_MODEL_BYTES} a tokenizer.model may have",
                bytes.len()
            )));
        }
        let proto = ModelProto::decode(bytes)
            .map_err(|e| invalid(format!("not a protobuf ModelProto: {e}")))?;
        if proto.pieces.is_empty() {
            return Err(invalid("the model has no pieces".into()));
        }
        if proto.pieces.len() > MAX_PIECES {
            return Err(invalid(format!(
                "{} pieces, more than {MAX_PIECES}",
                proto.pieces.len()
            )));
        }
        if let Some(map) = proto
            .normalizer_spec
            .as_ref()
            .and_then(|n| n.precompiled_charsmap.as_deref())
            .filter(|m| !m.is_empty())
        {
            super::charsmap::check(map)
                .map_err(|e| invalid(format!("precompiled_charsmap: {e}")))?;
        }
        let trainer = proto.trainer_spec.clone().unwrap_or_default();
        let model_type = trainer.model_type.unwrap_or(1);
        if model_type != 2 {
            let name = match model_type {
                1 => "UNIGRAM",
                3 => "WORD",
                4 => "CHAR",
                _ => "unknown",
            };
            return Err(invalid(format!(
                "model type {name} ({model_type}) is not supported; InternLM2 uses BPE"
            )));
        }
        if trainer.treat_whitespace_as_suffix.unwrap_or(false) {
            return Err(invalid(
                "treat_whitespace_as_suffix is not supported".into(),
            ));
        }
        let byte_fallback = trainer.byte_fallback.unwrap_or(false);
        let mut pieces = Vec::with_capacity(proto.pieces.len());
        for (id, p) in proto.pieces.iter().enumerate() {
            let text = p.piece.clone().unwrap_or_default();
            let kind = match p.kind.unwrap_or(1) {
                1 if byte_fallback && text == "\0" => PieceKind::Unused,
                1 => PieceKind::Normal,
                2 => PieceKind::Unknown,
                3 => PieceKind::Control,
                4 => PieceKind::UserDefined,
                5 => PieceKind::Unused,
                6 => PieceKind::Byte(
                    byte_of_piece(&text)
                        .ok_or_else(|| invalid(format!("byte piece {id} is {text:?}")))?,
                ),
                other => return Err(invalid(format!("piece {id} has unknown type {other}"))),
            };
            if text.is_empty() {
                return Err(invalid(format!("piece {id} is empty")));
            }
            if text.len() > MAX_PIECE_BYTES {
                return Err(invalid(format!(
                    "piece {id} has {} bytes, more than {MAX_PIECE_BYTES}",
                    text.len()
                )));
            }
            let text = CHAT_RENAMES
                .iter()
                .find(|(unused, _)| *unused == text)
                .map_or(text, |(_, chat)| chat.to_string());
            pieces.push(Piece {
                text,
                score: p.score.unwrap_or(0.0),
                kind,
            });
        }
        let id = |v: Option<i32>| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < pieces.len())
        };
        let unk_id = id(trainer.unk_id.or(Some(0)))
            .ok_or_else(|| invalid("unk_id outside the vocabulary".into()))?;
        Ok(Self {
            bos_id: id(trainer.bos_id.or(Some(1))),
            eos_id: id(trainer.eos_id.or(Some(2))),
            unk_id,
            byte_fallback,
            normalizer: proto.normalizer_spec.unwrap_or_default(),
            pieces,
        })
    }

    /// The encoding pipeline: normaliser, added tokens and a BPE model.
    pub fn to_hf_tokenizer(&self, origin: &str) -> Result<HfTokenizer, TokenizerError> {
        let backend = |e: tokenizers::Error| TokenizerError::Backend(format!("{origin}: {e}"));
        // Vocabulary: every piece by its text; pieces that must never match get a key no
        // input can produce, so ids stay aligned.
        let mut vocab = Vocab::with_capacity(self.pieces.len());
        for (id, piece) in self.pieces.iter().enumerate() {
            let key = match piece.kind {
                PieceKind::Unused => format!("<unused-piece-{id}>"),
                _ => piece.text.clone(),
            };
            vocab.entry(key).or_insert(id as u32);
        }
        // Merges: every split of every normal piece into two mergeable pieces, ranked by the
        // merged piece's score (then id).
        let mergeable: HashMap<&str, u32> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == PieceKind::Normal)
            .map(|(id, p)| (p.text.as_str(), id as u32))
            .collect();
        let mut order: Vec<u32> = mergeable.values().copied().collect();
        order.sort_by(|&a, &b| {
            let (pa, pb) = (&self.pieces[a as usize], &self.pieces[b as usize]);
            pb.score.total_cmp(&pa.score).then(a.cmp(&b))
        });
        let mut merges = Vec::new();
        for id in order {
            let text = &self.pieces[id as usize].text;
            let mut splits: Vec<(u32, u32, usize)> = Vec::new();
            for (at, _) in text.char_indices().skip(1) {
                let (left, right) = text.split_at(at);
                if let (Some(&l), Some(&r)) = (mergeable.get(left), mergeable.get(right)) {
                    splits.push((l, r, at));
                }
            }
            splits.sort();
            for (_, _, at) in splits {
                let (left, right) = text.split_at(at);
                merges.push((left.to_string(), right.to_string()));
            }
        }
        let unk = self.pieces[self.unk_id as usize].text.clone();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(unk)
            .byte_fallback(self.byte_fallback)
            .ignore_merges(false)
            .build()
            .map_err(backend)?;
        let mut tokenizer = HfTokenizer::new(bpe);

        let spec = &self.normalizer;
        let mut steps: Vec<NormalizerWrapper> = Vec::new();
        if let Some(map) = spec.precompiled_charsmap.as_ref().filter(|m| !m.is_empty()) {
            let precompiled = Precompiled::from(map).map_err(|e| TokenizerError::InvalidModel {
                origin: origin.to_string(),
                reason: format!("precompiled_charsmap: {e}"),
            })?;
            steps.push(precompiled.into());
        }
        if spec.remove_extra_whitespaces.unwrap_or(true) {
            steps.push(Strip::new(true, true).into());
            steps.push(
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
                    " ",
                )
                .map_err(backend)?
                .into(),
            );
        }
        if spec.escape_whitespaces.unwrap_or(true) {
            steps.push(Replace::new(" ", "▁").map_err(backend)?.into());
        }
        if spec.add_dummy_prefix.unwrap_or(true) {
            steps.push(Prepend::new("▁".into()).into());
        }
        tokenizer.with_normalizer(Some(Sequence::new(steps)));

        // A decoder too, so that the pipeline saved as tokenizer.json decodes on its own.
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new("▁", " ").map_err(backend)?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if spec.add_dummy_prefix.unwrap_or(true) {
            decoders.push(StripDecoder::new(' ', 1, 0).into());
        }
        tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

        let added: Vec<AddedToken> = self
            .pieces
            .iter()
            .filter(|p| p.kind == PieceKind::UserDefined)
            .map(|p| AddedToken::from(p.text.clone(), false).normalized(false))
            .collect();
        tokenizer.add_tokens(&added);
        Ok(tokenizer)
    }

    /// The bytes each id decodes to (`▁` as a space, byte pieces as their byte, control and
    /// unused pieces as nothing, `<unk>` as SentencePiece's ` ⁇ `).
    pub fn decode_table(&self) -> Vec<Vec<u8>> {
        self.pieces
            .iter()
            .map(|p| match p.kind {
                PieceKind::Normal | PieceKind::UserDefined => p.text.replace('▁', " ").into_bytes(),
                PieceKind::Byte(b) => vec![b],
                PieceKind::Unknown => " \u{2047} ".as_bytes().to_vec(),
                PieceKind::Control | PieceKind::Unused => Vec::new(),
            })
            .collect()
    }

    /// Whether the pieces of the model should be decoded with a leading space removed (when
    /// SentencePiece adds a dummy prefix it strips it again on decode).
    pub fn strips_dummy_prefix(&self) -> bool {
        self.normalizer.add_dummy_prefix.unwrap_or(true)
    }
}
