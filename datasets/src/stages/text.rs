//! Text helpers the filters share: what counts as a word ([`words`]), scripts written without
//! spaces ([`is_unspaced`]), punctuation ([`is_punctuation`]), and hash-map state for keys that
//! already are hashes. The format, rules, safety and quality stages all read text through
//! these, so they agree on what a word is.

use std::hash::{BuildHasherDefault, Hasher};

/// The words of `text` as the rules count them (see the module documentation): every
/// character of an unspaced script is a word; other whitespace-separated tokens are words
/// after trimming non-alphanumeric characters from both ends.
///
/// ```
/// use internlm2_datasets::stages::text::words;
/// let w: Vec<&str> = words("Hello, world! -- 中文ok (x)").collect();
/// assert_eq!(w, ["Hello", "world", "中", "文", "ok", "x"]);
/// ```
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .flat_map(split_unspaced)
        .filter_map(|token| {
            let word = token.trim_matches(|c: char| !c.is_alphanumeric());
            (!word.is_empty()).then_some(word)
        })
}

/// Split a whitespace-free token into runs of ordinary characters and single unspaced
/// characters.
fn split_unspaced(token: &str) -> impl Iterator<Item = &str> {
    let mut rest = token;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let end = if is_unspaced(first) {
            first.len_utf8()
        } else {
            rest.find(is_unspaced).unwrap_or(rest.len())
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Whether `c` belongs to a script written without spaces between words, where one character
/// is counted as one word by the filters: Han (CJK ideographs), Hiragana, Katakana, Hangul,
/// Thai, Lao, Khmer and Myanmar.
///
/// Hangul is written with spaces, but its words carry attached particles, so it is treated the
/// same way (word blocklist entries match anywhere, counting is per syllable).
///
/// ```
/// use internlm2_datasets::stages::text::is_unspaced;
/// assert!(is_unspaced('中') && is_unspaced('の') && is_unspaced('한'));
/// assert!(!is_unspaced('a') && !is_unspaced('。'));
/// ```
pub fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF            // Thai, Lao
        | 0x1000..=0x109F          // Myanmar
        | 0x1780..=0x17FF          // Khmer
        | 0x1100..=0x11FF          // Hangul Jamo
        | 0x3040..=0x30FF          // Hiragana, Katakana
        | 0x3130..=0x318F          // Hangul compatibility Jamo
        | 0x31F0..=0x31FF          // Katakana phonetic extensions
        | 0x3400..=0x4DBF          // CJK extension A
        | 0x4E00..=0x9FFF          // CJK unified ideographs
        | 0xAC00..=0xD7AF          // Hangul syllables
        | 0xF900..=0xFAFF          // CJK compatibility ideographs
        | 0xFF66..=0xFF9F          // half-width Katakana
        | 0x20000..=0x3134F // CJK extensions B..G
    )
}

/// Whether `c` is punctuation: ASCII punctuation, Latin-1 punctuation, the General
/// Punctuation block, CJK symbols and punctuation, and full-width punctuation.
pub fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32,
            0xA1..=0xBF | 0x2010..=0x205E | 0x3001..=0x303F
            | 0xFE10..=0xFE1F | 0xFE30..=0xFE4F | 0xFE50..=0xFE6B
            | 0xFF01..=0xFF0F | 0xFF1A..=0xFF20 | 0xFF3B..=0xFF40 | 0xFF5B..=0xFF65)
}

/// A hasher for keys that already are well-mixed 64-bit hashes.
#[derive(Default)]
pub(crate) struct Passthrough(u64);

/// Hash-map state for keys that already are well-mixed 64-bit hashes.
pub(crate) type Prehashed = BuildHasherDefault<Passthrough>;

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspaced_splitting() {
        let pieces: Vec<&str> = split_unspaced("ab中文cd").collect();
        assert_eq!(pieces, ["ab", "中", "文", "cd"]);
    }
}
