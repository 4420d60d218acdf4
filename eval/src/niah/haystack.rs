//! The haystack: the user's documents tokenized once with the model's tokenizer, cut to a
//! token budget in a seeded order, and the needles inserted at token positions.
//!
//! Insertion follows the two anchors:
//! - OpenCompass (`opencompass/datasets/needlebench/origin.py`):
//!   `insertion_point = int(len(tokens_context) * (depth_percent / 100))`, the haystack cut to
//!   `length - length_buffer - len(needle tokens)` tokens first;
//! - the Kamradt tester that OpenCompass's plots follow snaps back to a sentence end and
//!   appends at depth 100:
//!   ```text
//!   if depth_percent == 100: tokens_new_context = tokens_context + tokens_needle
//!   else:
//!       insertion_point = int(len(tokens_context) * (depth_percent / 100))
//!       tokens_new_context = tokens_context[:insertion_point]
//!       period_tokens = self.tokenizer.encode('.') + self.tokenizer.encode('。')
//!       while tokens_new_context and tokens_new_context[-1] not in period_tokens:
//!           insertion_point -= 1
//!           tokens_new_context = tokens_context[:insertion_point]
//!   ```
//!   and, for several needles, puts the next one `(100 - depth) / needles` percent deeper in
//!   the grown context.
//!
//! Two deliberate differences: a token "ends a sentence" when its text ends with `.` or `。`
//! (SentencePiece has no stand-alone `.` id to compare with, and byte-fallback pieces spell
//! `。` over three ids), and when no sentence end precedes the point the needle stays at the
//! point instead of moving to the very start.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use internlm2::Tokenizer;

use crate::error::{EvalError, Result};

/// The documents of a haystack, tokenized (no BOS).
#[derive(Debug, Clone)]
pub struct Haystack {
    documents: Vec<Vec<u32>>,
    total: usize,
}

/// A haystack cut to a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The tokens.
    pub tokens: Vec<u32>,
    /// Whether the documents had to be repeated to fill the budget.
    pub cycled: bool,
}

impl Haystack {
    /// Tokenizes `texts` (empty ones are dropped).
    pub fn new(tokenizer: &Tokenizer, texts: &[String]) -> Result<Self> {
        let mut documents = Vec::with_capacity(texts.len());
        for text in texts.iter().filter(|t| !t.trim().is_empty()) {
            documents.push(tokenizer.encode(text, false)?);
        }
        let total = documents.iter().map(Vec::len).sum();
        if total == 0 {
            return Err(EvalError::Empty {
                what: "haystack".into(),
            });
        }
        Ok(Self { documents, total })
    }

    /// Tokens in all documents together.
    pub fn total_tokens(&self) -> usize {
        self.total
    }

    /// Exactly `budget` tokens: the documents in the order `seed` shuffles them to, joined and
    /// cut (as OpenCompass accumulates shuffled lines); repeated when they are too short.
    pub fn context(&self, seed: u64, budget: usize) -> Context {
        let mut order: Vec<usize> = (0..self.documents.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut tokens = Vec::with_capacity(budget);
        let mut cycled = false;
        'fill: loop {
            for &d in &order {
                if tokens.len() >= budget {
                    break 'fill;
                }
                tokens.extend_from_slice(&self.documents[d]);
            }
            if tokens.len() >= budget {
                break;
            }
            cycled = true;
        }
        tokens.truncate(budget);
        Context { tokens, cycled }
    }
}

/// Whether the text of a token sequence's last tokens ends a sentence (`.` or `。`).
pub struct SentenceEnds<'t> {
    tokenizer: &'t Tokenizer,
}

impl<'t> SentenceEnds<'t> {
    /// Sentence ends as `tokenizer` spells them.
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        Self { tokenizer }
    }

    fn bytes(&self, id: u32) -> Vec<u8> {
        match self.tokenizer.token_bytes(id) {
            Ok(Some(bytes)) => bytes.to_vec(),
            _ => self
                .tokenizer
                .decode(&[id])
                .map(String::into_bytes)
                .unwrap_or_default(),
        }
    }

    /// Whether `prefix` (the tokens before a candidate point) ends with a sentence end.
    pub fn ends_sentence(&self, prefix: &[u32]) -> bool {
        // `。` is three bytes: look at up to three pieces (byte-fallback spells one per id).
        let mut tail = Vec::new();
        for &id in prefix.iter().rev().take(3) {
            let mut bytes = self.bytes(id);
            bytes.extend_from_slice(&tail);
            tail = bytes;
            if tail.len() >= 3 {
                break;
            }
        }
        tail.ends_with(b".") || tail.ends_with("。".as_bytes())
    }
}

/// Where needles went: their first token in the final context.
pub type Positions = Vec<usize>;

/// Inserts `needles` into `context` from `depth` percent on, the way the module docs describe;
/// `ends_sentence(prefix)` says whether a point is a sentence end (`None`: no snapping).
///
/// ```
/// use internlm2_eval::niah::insert_needles;
/// // A sentence ends after ids 12 and 15; 50% of 8 tokens is position 4, snapped back to 3.
/// let context = vec![10, 11, 12, 13, 14, 15, 16, 17];
/// let ends = |prefix: &[u32]| matches!(prefix.last(), Some(12 | 15));
/// let (tokens, at) = insert_needles(context, &[vec![99]], 50.0, Some(&ends));
/// assert_eq!(at, [3]);
/// assert_eq!(tokens, [10, 11, 12, 99, 13, 14, 15, 16, 17]);
/// ```
pub fn insert_needles(
    mut context: Vec<u32>,
    needles: &[Vec<u32>],
    depth: f64,
    ends_sentence: Option<&dyn Fn(&[u32]) -> bool>,
) -> (Vec<u32>, Positions) {
    let interval = (100.0 - depth) / needles.len().max(1) as f64;
    let mut depth = depth;
    let mut positions: Positions = Vec::with_capacity(needles.len());
    for needle in needles {
        let point = if depth >= 100.0 {
            context.len()
        } else {
            let point = (context.len() as f64 * (depth / 100.0)).floor() as usize;
            match ends_sentence {
                Some(ends) => {
                    let mut p = point;
                    while p > 0 && !ends(&context[..p]) {
                        p -= 1;
                    }
                    if p == 0 { point } else { p }
                }
                None => point,
            }
        };
        for at in &mut positions {
            if *at >= point {
                *at += needle.len();
            }
        }
        context.splice(point..point, needle.iter().copied());
        positions.push(point);
        depth += interval;
    }
    (context, positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_by_hand() {
        let ctx: Vec<u32> = (0..20).collect();
        // No snapping: int(20 * 0.25) = 5; int(20 * 0.33) = 6 (floor); depth 0 -> front.
        assert_eq!(insert_needles(ctx.clone(), &[vec![99]], 25.0, None).1, [5]);
        assert_eq!(insert_needles(ctx.clone(), &[vec![99]], 33.0, None).1, [6]);
        assert_eq!(insert_needles(ctx.clone(), &[vec![99]], 0.0, None).1, [0]);
        // Depth 100 appends.
        let (t, at) = insert_needles(ctx.clone(), &[vec![98, 99]], 100.0, None);
        assert_eq!(at, [20]);
        assert_eq!(&t[20..], [98, 99]);
        // Snapping back: sentence ends after ids 3 and 11; 50% of 20 = 10 -> 4.
        let ends = |p: &[u32]| matches!(p.last(), Some(3 | 11));
        assert_eq!(
            insert_needles(ctx.clone(), &[vec![99]], 50.0, Some(&ends)).1,
            [4]
        );
        // 60% = 12: the token before (11) ends a sentence, so the point stays.
        assert_eq!(
            insert_needles(ctx.clone(), &[vec![99]], 60.0, Some(&ends)).1,
            [12]
        );
        // No sentence end before the point: it stays where it was.
        let never = |_: &[u32]| false;
        assert_eq!(
            insert_needles(ctx.clone(), &[vec![99]], 50.0, Some(&never)).1,
            [10]
        );
    }

    #[test]
    fn several_needles_spread_to_the_end() {
        // 3 needles from depth 40: 40, 60, 80 percent of the growing context.
        let ctx: Vec<u32> = (0..20).collect();
        let (t, at) = insert_needles(ctx, &[vec![100], vec![101], vec![102]], 40.0, None);
        // int(20 * .4) = 8; then 21 tokens: int(21 * .6) = 12; then 22: int(22 * .8) = 17.
        assert_eq!(at, [8, 12, 17]);
        assert_eq!((t[8], t[12], t[17]), (100, 101, 102));
        assert_eq!(t.len(), 23);
        // A later needle inserted before an earlier one shifts its recorded position.
        let (t, at) = insert_needles(vec![1, 2, 3, 4], &[vec![7], vec![8]], 100.0, None);
        assert_eq!(at, [4, 5]);
        assert_eq!(t, [1, 2, 3, 4, 7, 8]);
    }
}
