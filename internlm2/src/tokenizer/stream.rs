//! Streaming detokenisation: text deltas as ids arrive, never a broken UTF-8 character.
//!
//! A Chinese character or an emoji often arrives as two to four `<0xXX>` byte pieces. The
//! decoder holds back an incomplete UTF-8 sequence until it is complete, and replaces a
//! sequence that can never become valid by U+FFFD exactly as [`Tokenizer::decode`] does, so
//! the concatenated deltas always equal the full decode.

use super::{Decoding, Tokenizer};
use crate::error::TokenizerError;

/// Emits the text of each new id as soon as it is complete.
///
/// ```no_run
/// # let tokenizer = internlm2::Tokenizer::from_file("tokenizer.model")?;
/// let ids = tokenizer.encode("你好 😀", false)?;
/// let mut stream = tokenizer.incremental_decoder();
/// let mut text = String::new();
/// for id in ids {
///     text += &stream.push(id)?; // never half a character
/// }
/// text += &stream.finish();
/// assert_eq!(text, "你好 😀");
/// # Ok::<(), internlm2::TokenizerError>(())
/// ```
#[derive(Debug)]
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Table mode: bytes received but not yet emitted.
    pending: Vec<u8>,
    /// Table mode: nothing emitted yet (for the dummy-prefix space).
    at_start: bool,
    /// Pipeline mode: every id so far and the window being decoded.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'a> IncrementalDecoder<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
            at_start: true,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one id and returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        match &self.tokenizer.decoding {
            Decoding::Table {
                bytes,
                strip_leading_space,
            } => {
                let piece = self.tokenizer.piece_bytes(bytes, id)?;
                self.pending.extend_from_slice(piece);
                if self.at_start && *strip_leading_space && self.pending.first() == Some(&b' ') {
                    self.pending.remove(0);
                }
                if !self.pending.is_empty() {
                    self.at_start = false;
                }
                Ok(self.drain_complete())
            }
            Decoding::Pipeline => {
                self.tokenizer.check_id(id)?;
                self.ids.push(id);
                let prefix = self
                    .tokenizer
                    .decode(&self.ids[self.prefix_offset..self.read_offset])?;
                let text = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
                // A `tokenizer.json` decoder may rewrite across the prefix's end (a `Replace`
                // of two tokens' text, say), so the prefix's length need not be a character
                // boundary of the longer text: then wait for more ids.
                match text.get(prefix.len()..) {
                    Some(delta) if !delta.is_empty() && !text.ends_with('\u{FFFD}') => {
                        let delta = delta.to_string();
                        self.prefix_offset = self.read_offset;
                        self.read_offset = self.ids.len();
                        Ok(delta)
                    }
                    _ => Ok(String::new()),
                }
            }
        }
    }

    /// Flushes what is left; an incomplete trailing sequence becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        match &self.tokenizer.decoding {
            Decoding::Table { .. } => {
                let out = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                out
            }
            Decoding::Pipeline => {
                let prefix = self
                    .tokenizer
                    .decode(&self.ids[self.prefix_offset..self.read_offset])
                    .unwrap_or_default();
                let text = self
                    .tokenizer
                    .decode(&self.ids[self.prefix_offset..])
                    .unwrap_or_default();
                self.prefix_offset = self.ids.len();
                self.read_offset = self.ids.len();
                // From the first character boundary at or after the prefix's length.
                let at = (prefix.len()..=text.len())
                    .find(|&at| text.is_char_boundary(at))
                    .unwrap_or(text.len());
                text[at..].to_string()
            }
        }
    }

    /// Emits the longest prefix of `pending` whose fate is decided.
    fn drain_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    out.push_str(valid);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .expect("checked by from_utf8"),
                    );
                    start += valid;
                    match e.error_len() {
                        // Can never become valid: replace it, as from_utf8_lossy does.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += bad;
                        }
                        // Incomplete at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
