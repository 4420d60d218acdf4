//! Text normalisation, tokenisation and word n-gram shingles.
//!
//! **Plain text** (the default): a word is a maximal run of alphanumeric characters, compared
//! after NFKD decomposition with combining marks removed and lower-casing (so `Café`, `CAFE`
//! and `café` are one word, fullwidth `ＡＢＣ` is `abc`); everything else (punctuation,
//! whitespace, symbols) only separates words. Each CJK character (Han, Hiragana, Katakana,
//! Bopomofo) is a word of its own, since these scripts do not separate words by spaces.
//!
//! **Code-aware** ([`DedupConfig::code_aware`]): a token is a maximal run of alphanumeric
//! characters or `_` (an identifier or number, case kept), or one punctuation/operator
//! character; whitespace produces no token at all. Indentation by 2 spaces, 4 spaces or a tab,
//! blank lines and trailing spaces therefore give the same token stream, and so the same
//! shingles and the same exact hash.
//!
//! A shingle is `ngram` consecutive words; a document with `0 < words < ngram` has one shingle
//! made of all its words. Words are hashed once (xxh3), shingles combine the `ngram` word
//! hashes with an order-sensitive 64-bit mix, so nothing is allocated per word or shingle.
//!
//! ```
//! use internlm2_datasets::dedup::{shingles, DedupConfig};
//! let cfg = DedupConfig::default();
//! // 7 words -> 7 - 5 + 1 = 3 shingles; case and punctuation do not matter.
//! assert_eq!(shingles("a b c d e f g", &cfg).len(), 3);
//! assert_eq!(shingles("A, b; C d e F g!", &cfg), shingles("a b c d e f g", &cfg));
//! ```

use unicode_normalization::char::{decompose_compatible, is_combining_mark};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use super::DedupConfig;

/// Version of the normalisation rules; part of the signature-file fingerprint so that files
/// written under older rules are not merged with newer ones.
pub(crate) const NORMALISATION_VERSION: u32 = 1;

/// Reusable buffers of the tokeniser (one per thread), so that hashing a document allocates
/// nothing once they have grown.
#[derive(Debug, Default)]
pub(crate) struct Tokenizer {
    word: Vec<u8>,
    /// Word (token) hashes of the last document.
    pub(crate) tokens: Vec<u64>,
}

impl Tokenizer {
    /// Fill `self.tokens` with the word (or code token) hashes of `text`.
    pub(crate) fn tokenize(&mut self, text: &str, code_aware: bool) {
        self.tokens.clear();
        self.word.clear();
        if code_aware {
            self.code_tokens(text);
        } else {
            self.words(text);
        }
    }

    fn flush(&mut self) {
        if !self.word.is_empty() {
            self.tokens.push(xxh3_64(&self.word));
            self.word.clear();
        }
    }

    fn push_char_token(&mut self, c: char) {
        let mut utf8 = [0u8; 4];
        self.tokens
            .push(xxh3_64(c.encode_utf8(&mut utf8).as_bytes()));
    }

    fn words(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                if b.is_ascii_alphanumeric() {
                    self.word.push(b.to_ascii_lowercase());
                } else {
                    self.flush();
                }
                i += 1;
                continue;
            }
            // `i` is always on a char boundary: ASCII bytes advance by 1, others by their length.
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            i += c.len_utf8();
            if is_cjk(c) {
                self.flush();
                self.push_char_token(c);
            } else if c.is_alphanumeric() || is_combining_mark(c) {
                let word = &mut self.word;
                decompose_compatible(c, |d| {
                    if !is_combining_mark(d) {
                        for l in d.to_lowercase() {
                            let mut utf8 = [0u8; 4];
                            word.extend_from_slice(l.encode_utf8(&mut utf8).as_bytes());
                        }
                    }
                });
            } else {
                self.flush();
            }
        }
        self.flush();
    }

    fn code_tokens(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                i += 1;
                if b.is_ascii_alphanumeric() || b == b'_' {
                    self.word.push(b);
                } else {
                    self.flush();
                    if !b.is_ascii_whitespace() && !b.is_ascii_control() {
                        self.tokens.push(xxh3_64(&[b]));
                    }
                }
                continue;
            }
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            let len = c.len_utf8();
            if c.is_alphanumeric() || is_combining_mark(c) {
                self.word.extend_from_slice(&bytes[i..i + len]);
            } else {
                self.flush();
                if !c.is_whitespace() && !c.is_control() {
                    self.push_char_token(c);
                }
            }
            i += len;
        }
        self.flush();
    }
}

/// Whether `c` is a CJK character that counts as a word on its own.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3100..=0x312F    // Bopomofo
        | 0x31A0..=0x31FF    // Bopomofo extended, Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // halfwidth Katakana
        | 0x20000..=0x3134F // CJK extensions B-G
    )
}

/// Order-sensitive hash of `n` consecutive word hashes.
#[inline(always)]
fn combine(words: &[u64]) -> u64 {
    let mut h = 0x243F_6A88_85A3_08D3_u64 ^ words.len() as u64;
    for &w in words {
        h = (h.rotate_left(27) ^ w).wrapping_mul(0x9FB2_1C65_1E98_DF25);
    }
    fmix64(h)
}

/// The 64-bit finaliser of MurmurHash3 (full avalanche).
#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// Call `f` with the hash of every `n`-gram of `tokens` (one shingle of all tokens when there
/// are fewer than `n`, none when there are none).
#[inline]
pub(crate) fn for_each_shingle(tokens: &[u64], n: usize, mut f: impl FnMut(u64)) {
    if tokens.is_empty() {
        return;
    }
    if tokens.len() < n {
        f(combine(tokens));
        return;
    }
    for window in tokens.windows(n) {
        f(combine(window));
    }
}

/// The shingle hashes of `text` under `cfg` (`ngram`, `code_aware`), in text order, repeats
/// included. The shingle *set* of MinHash is the set of these values.
pub fn shingles(text: &str, cfg: &DedupConfig) -> Vec<u64> {
    let mut tok = Tokenizer::default();
    tok.tokenize(text, cfg.code_aware);
    let mut out = Vec::with_capacity(tok.tokens.len());
    for_each_shingle(&tok.tokens, cfg.ngram.max(1), |h| out.push(h));
    out
}

/// The 128-bit exact-duplicate hash of `text`: xxh3-128 of the text without leading and
/// trailing whitespace, or in code-aware mode of its token stream (so whitespace layout does
/// not count).
///
/// ```
/// use internlm2_datasets::dedup::{exact_hash, DedupConfig};
/// let (plain, code) = (DedupConfig::default(), DedupConfig::code());
/// let (two, tab) = ("if x:\n  y()\n", "if x:\n\ty()\n");
/// assert_ne!(exact_hash(two, &plain), exact_hash(tab, &plain));
/// assert_eq!(exact_hash(two, &code), exact_hash(tab, &code));
/// ```
pub fn exact_hash(text: &str, cfg: &DedupConfig) -> u128 {
    if cfg.code_aware {
        let mut tok = Tokenizer::default();
        tok.tokenize(text, true);
        exact_hash_of_tokens(&tok.tokens)
    } else {
        xxh3_128(text.trim().as_bytes())
    }
}

/// Exact hash of a code token stream.
pub(crate) fn exact_hash_of_tokens(tokens: &[u64]) -> u128 {
    xxh3_128(bytemuck::cast_slice(tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str, code: bool) -> usize {
        let mut t = Tokenizer::default();
        t.tokenize(text, code);
        t.tokens.len()
    }

    #[test]
    fn words_and_cjk() {
        // "hello", "world", "42", then 4 CJK characters, then "café".
        assert_eq!(toks("Hello, world! 42 中文测试 café", false), 8);
        assert_eq!(toks("  ...  ", false), 0);
        let cfg = DedupConfig::default().with_ngram(1);
        assert_eq!(shingles("Café", &cfg), shingles("cafe\u{301}", &cfg));
        assert_eq!(shingles("CAFE", &cfg), shingles("café", &cfg));
        assert_eq!(shingles("ＡＢＣ", &cfg), shingles("abc", &cfg));
    }

    #[test]
    fn code_tokens_ignore_whitespace() {
        // def, f, (, x, ), :, return, x, +, 1 -> 10 tokens.
        assert_eq!(toks("def f(x):\n    return x+1\n", true), 10);
        assert_eq!(toks("def f ( x ) :\n\treturn x + 1", true), 10);
        // Plain mode drops punctuation: def f x return x 1.
        assert_eq!(toks("def f(x):\n    return x+1\n", false), 6);
    }

    #[test]
    fn short_documents() {
        let cfg = DedupConfig::default();
        assert_eq!(shingles("one two", &cfg).len(), 1);
        assert!(shingles("", &cfg).is_empty());
        // Order matters.
        assert_ne!(shingles("one two", &cfg), shingles("two one", &cfg));
    }
}
