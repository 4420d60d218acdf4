//! The text side of one generated sequence: streaming detokenisation with stop strings held
//! back and cut. [`Generation`](super::Generation) and the serving engine share it, so both
//! stream exactly the same deltas.

use crate::error::TokenizerError;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Decodes generated ids into text deltas: never half a character, never a part of a stop
/// string that may still complete, and the text cut where a stop string starts.
///
/// ```no_run
/// use internlm2::Tokenizer;
/// use internlm2::generate::TextStream;
/// let tokenizer = Tokenizer::from_file("tokenizer.model")?;
/// let stops = vec!["\nUser:".to_string()];
/// let mut stream = TextStream::new(Some(&tokenizer));
/// for id in tokenizer.encode("Hello!\nUser: more", false)? {
///     let (delta, stop) = stream.push(id, &stops)?;
///     print!("{delta}");
///     if stop.is_some() {
///         break;
///     }
/// }
/// assert_eq!(stream.text(), "Hello!");
/// # Ok::<(), internlm2::TokenizerError>(())
/// ```
#[derive(Debug)]
pub struct TextStream<'t> {
    decoder: Option<IncrementalDecoder<'t>>,
    text: String,
    /// Bytes of `text` already streamed.
    emitted: usize,
}

impl<'t> TextStream<'t> {
    /// A stream that decodes with `tokenizer` (without one, all text stays empty).
    pub fn new(tokenizer: Option<&'t Tokenizer>) -> Self {
        Self {
            decoder: tokenizer.map(Tokenizer::incremental_decoder),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Whether the stream decodes text (it was given a tokenizer).
    pub fn decodes(&self) -> bool {
        self.decoder.is_some()
    }

    /// The text so far (stop strings cut).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Adds a generated id that is not a stop token. Returns the text that is now safe to
    /// stream and, when the text reached a stop string, that string (the text is cut where it
    /// starts, and the sequence should end).
    pub fn push(
        &mut self,
        id: u32,
        stops: &[String],
    ) -> Result<(String, Option<String>), TokenizerError> {
        if let Some(decoder) = self.decoder.as_mut() {
            let piece = decoder.push(id)?;
            self.text.push_str(&piece);
        }
        Ok(self.release(stops))
    }

    /// Ends the stream for a reason other than a stop string (a stop token, the length
    /// limit): everything not yet streamed, stop strings cut.
    pub fn finish(&mut self, stops: &[String]) -> String {
        if let Some(decoder) = self.decoder.as_mut() {
            let tail = decoder.finish();
            self.text.push_str(&tail);
        }
        if let Some(at) = stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(at);
        }
        let start = self.emitted.min(self.text.len());
        let delta = self.text[start..].to_string();
        self.emitted = self.text.len();
        delta
    }

    /// Checks stop strings and returns the text that is safe to stream.
    fn release(&mut self, stops: &[String]) -> (String, Option<String>) {
        // Text before `emitted` holds no stop string and ends in no part of one (it was
        // released), so a new match starts at or after it: each id searches only the tail.
        let from = self.emitted;
        if let Some((at, stop)) = stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| (from + at, s)))
            .min_by_key(|(at, _)| *at)
        {
            self.text.truncate(at);
            let delta = self.text[self.emitted.min(at)..].to_string();
            self.emitted = self.text.len();
            return (delta, Some(stop.clone()));
        }
        let safe = self.text.len() - held_back(&self.text, stops);
        let delta = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (delta, None)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .map(|stop| partial_stop(text.as_bytes(), stop))
        .max()
        .unwrap_or(0)
}

/// The longest proper prefix of `stop` (ending on a character boundary) that `text` ends
/// with, by Knuth-Morris-Pratt over the last `stop.len() - 1` bytes: O(|stop|) per call.
fn partial_stop(text: &[u8], stop: &str) -> usize {
    let s = stop.as_bytes();
    if s.len() < 2 {
        return 0;
    }
    // fail[i]: the longest proper prefix of s[..=i] that is also a suffix of it.
    let mut fail = vec![0usize; s.len()];
    let mut k = 0;
    for i in 1..s.len() {
        while k > 0 && s[i] != s[k] {
            k = fail[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        fail[i] = k;
    }
    // The tail is shorter than `stop`, so `k` stays a proper prefix.
    let mut k = 0;
    for &b in &text[text.len().saturating_sub(s.len() - 1)..] {
        while k > 0 && b != s[k] {
            k = fail[k - 1];
        }
        if b == s[k] {
            k += 1;
        }
    }
    while k > 0 && !stop.is_char_boundary(k) {
        k = fail[k - 1];
    }
    k
}
