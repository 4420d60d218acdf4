//! What the rules measure: word, character and line statistics of a text, duplicated lines and
//! paragraphs, and n-gram repetition.

use std::collections::{HashMap, HashSet};

use xxhash_rust::xxh3::xxh3_64;

use crate::stages::text::{Prehashed, is_punctuation, is_unspaced, words};

/// Whether `c` is a private-use character.
fn is_private_use(c: char) -> bool {
    matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD)
}

/// Word counts of a text.
#[derive(Default)]
pub(super) struct WordStats {
    pub(super) count: usize,
    pub(super) chars: usize,
    pub(super) alphabetic: usize,
    pub(super) unspaced: usize,
}

impl WordStats {
    pub(super) fn new(text: &str) -> Self {
        let mut stats = Self {
            count: 0,
            chars: 0,
            alphabetic: 0,
            unspaced: 0,
        };
        for word in words(text) {
            stats.count += 1;
            let mut chars = word.chars();
            let first = chars.next().unwrap_or(' ');
            stats.chars += 1 + chars.clone().count();
            stats.alphabetic += usize::from(word.chars().any(char::is_alphabetic));
            stats.unspaced += usize::from(is_unspaced(first) && chars.next().is_none());
        }
        stats
    }

    /// Whether more than half of the words are single unspaced characters.
    pub(super) fn is_unspaced(&self) -> bool {
        self.unspaced * 2 > self.count
    }
}

/// Character counts of a text (non-whitespace characters only).
#[derive(Default)]
pub(super) struct CharStats {
    pub(super) non_space: usize,
    pub(super) replacement: usize,
    pub(super) control: usize,
    pub(super) digits: usize,
    pub(super) punctuation: usize,
    pub(super) most_frequent: usize,
    pub(super) longest_symbol_run: usize,
}

impl CharStats {
    pub(super) fn new(text: &str) -> Self {
        let mut s = Self {
            non_space: 0,
            replacement: 0,
            control: 0,
            digits: 0,
            punctuation: 0,
            most_frequent: 0,
            longest_symbol_run: 0,
        };
        let mut ascii = [0usize; 128];
        let mut other: HashMap<char, usize> = HashMap::new();
        let mut run: Option<(char, usize)> = None;
        for c in text.chars() {
            let symbol = !c.is_whitespace() && !c.is_alphanumeric();
            run = match run {
                Some((prev, n)) if symbol && prev == c => Some((c, n + 1)),
                _ if symbol => Some((c, 1)),
                _ => None,
            };
            if let Some((_, n)) = run {
                s.longest_symbol_run = s.longest_symbol_run.max(n);
            }
            if c.is_whitespace() {
                continue;
            }
            s.non_space += 1;
            s.replacement += usize::from(c == '\u{FFFD}');
            s.control += usize::from(c.is_control() || is_private_use(c));
            s.digits += usize::from(c.is_numeric());
            s.punctuation += usize::from(is_punctuation(c));
            let count = if c.is_ascii() {
                &mut ascii[c as usize]
            } else {
                other.entry(c).or_default()
            };
            *count += 1;
            s.most_frequent = s.most_frequent.max(*count);
        }
        s
    }
}

/// Line counts of a text.
#[derive(Default)]
pub(super) struct LineStats {
    pub(super) total: usize,
    pub(super) non_empty: usize,
    pub(super) width: usize,
    pub(super) longest: usize,
    pub(super) separators: usize,
    pub(super) terminal: usize,
    pub(super) bullets: usize,
    pub(super) ellipsis_end: usize,
}

/// Characters that start a bullet line on their own.
const BULLETS: &[char] = &[
    '•', '‣', '⁃', '◦', '▪', '▫', '■', '□', '●', '○', '►', '▸', '▹', '▶', '➢', '➤', '✓', '✔', '·',
    '∙',
];

/// Characters that start a bullet line when a space follows.
const DASH_BULLETS: &[char] = &['-', '*', '+', '–', '—'];

/// Characters that end a line in terminal punctuation.
const TERMINAL: &[char] = &[
    '.', '!', '?', '"', '\'', '”', '’', '…', '。', '！', '？', '」', '』',
];

impl LineStats {
    pub(super) fn new(text: &str, separator_min_run: usize) -> Self {
        let mut s = Self {
            total: 0,
            non_empty: 0,
            width: 0,
            longest: 0,
            separators: 0,
            terminal: 0,
            bullets: 0,
            ellipsis_end: 0,
        };
        for line in text.lines() {
            s.total += 1;
            let chars = line.chars().count();
            s.longest = s.longest.max(chars);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            s.non_empty += 1;
            s.width += line
                .chars()
                .map(|c| if is_unspaced(c) { 2 } else { 1 })
                .sum::<usize>();
            s.separators += usize::from(is_separator_line(line, separator_min_run));
            s.terminal += usize::from(line.ends_with(TERMINAL));
            s.ellipsis_end += usize::from(line.ends_with("...") || line.ends_with('…'));
            let mut chars = line.chars();
            let first = chars.next().unwrap_or(' ');
            let second = chars.next();
            s.bullets += usize::from(
                BULLETS.contains(&first)
                    || (DASH_BULLETS.contains(&first) && second.is_some_and(char::is_whitespace)),
            );
        }
        s
    }
}

/// Whether a trimmed, non-empty line is one non-alphanumeric character repeated at least
/// `min_run` times (spaces allowed between).
fn is_separator_line(line: &str, min_run: usize) -> bool {
    let mut chars = line.chars().filter(|c| !c.is_whitespace());
    let Some(first) = chars.next() else {
        return false;
    };
    if first.is_alphanumeric() {
        return false;
    }
    let mut n = 1;
    for c in chars {
        if c != first {
            return false;
        }
        n += 1;
    }
    n >= min_run
}

/// The paragraphs of a text: runs of non-empty lines, trimmed and joined with `\n`.
pub(super) fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(line);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Counts of repeated elements (lines or paragraphs).
pub(super) struct Duplicates {
    pub(super) total: usize,
    pub(super) total_chars: usize,
    pub(super) repeated: usize,
    pub(super) repeated_chars: usize,
}

/// Count the elements that repeat an earlier element, and their characters.
pub(super) fn duplicates<'a>(items: impl Iterator<Item = &'a str>) -> Duplicates {
    let mut seen = HashSet::new();
    let mut d = Duplicates {
        total: 0,
        total_chars: 0,
        repeated: 0,
        repeated_chars: 0,
    };
    for item in items {
        let chars = item.chars().count();
        d.total += 1;
        d.total_chars += chars;
        if !seen.insert(item) {
            d.repeated += 1;
            d.repeated_chars += chars;
        }
    }
    d
}

/// 64-bit hash of a word in lower case.
pub(super) fn hash_lower(word: &str) -> u64 {
    if word.chars().any(char::is_uppercase) {
        xxh3_64(word.to_lowercase().as_bytes())
    } else {
        xxh3_64(word.as_bytes())
    }
}

/// Hash of the n-gram of word hashes starting at each position (well mixed in all bits, so
/// it can key a [`HashMap`] without rehashing).
fn ngram_hashes(tokens: &[(u64, usize)], n: usize) -> impl Iterator<Item = u64> + '_ {
    tokens.windows(n).map(|gram| {
        let h = gram.iter().fold(0x243F_6A88_85A3_08D3_u64, |h, (word, _)| {
            (h.rotate_left(23) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        });
        h ^ (h >> 32)
    })
}

/// Characters covered by the most frequent n-gram occurring at least twice: its count times
/// the characters of its words (0 when no n-gram repeats).
pub(super) fn top_ngram_chars(tokens: &[(u64, usize)], n: usize) -> usize {
    if tokens.len() < n {
        return 0;
    }
    let mut counts: HashMap<u64, (usize, usize), Prehashed> =
        HashMap::with_capacity_and_hasher(tokens.len(), Prehashed::default());
    for (i, hash) in ngram_hashes(tokens, n).enumerate() {
        let entry = counts.entry(hash).or_insert((0, i));
        entry.0 += 1;
    }
    counts
        .values()
        .filter(|(count, _)| *count >= 2)
        .map(|&(count, first)| count * tokens[first..first + n].iter().map(|t| t.1).sum::<usize>())
        .max()
        .unwrap_or(0)
}

/// Characters of words covered by an occurrence of an n-gram that already occurred earlier
/// (each word counted once).
pub(super) fn dup_ngram_chars(tokens: &[(u64, usize)], n: usize) -> usize {
    if tokens.len() < n {
        return 0;
    }
    let mut seen: HashSet<u64, Prehashed> =
        HashSet::with_capacity_and_hasher(tokens.len(), Prehashed::default());
    let mut covered = vec![false; tokens.len()];
    for (i, hash) in ngram_hashes(tokens, n).enumerate() {
        if !seen.insert(hash) {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
        }
    }
    tokens
        .iter()
        .zip(&covered)
        .filter(|(_, c)| **c)
        .map(|(t, _)| t.1)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_coverage() {
        // a b c a b c: the 3-gram "a b c" repeats once (3 words); 2-grams "a b" and "b c"
        // occur twice each.
        let tokens: Vec<(u64, usize)> = [1, 2, 3, 1, 2, 3].iter().map(|&h| (h, 1)).collect();
        assert_eq!(dup_ngram_chars(&tokens, 3), 3);
        assert_eq!(top_ngram_chars(&tokens, 2), 4);
        assert_eq!(top_ngram_chars(&tokens, 4), 0);
    }
}
