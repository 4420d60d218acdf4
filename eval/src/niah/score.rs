//! Scoring a needle-in-a-haystack answer, as OpenCompass's needlebench evaluators do
//! (`opencompass/datasets/needlebench/origin.py`, `NeedleBenchOriginEvaluator.score`):
//!
//! ```text
//! prediction = re.sub(r'\s+', '', prediction); reference = re.sub(r'\s+', '', reference)
//! edit_distance = levenshtein_distance(prediction, reference)
//! max_len = max(len(prediction), len(reference))
//! score = 100 * (1 - edit_distance / max_len) if max_len != 0 else 100
//! if keyword in raw_prediction: score = 100
//! else: score = 0.2 * score
//! ```
//!
//! The distance is counted in characters (Unicode scalar values, as Python's `str`), with the
//! `strsim` crate.

use serde::{Deserialize, Serialize};

/// How an answer is scored (0-100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// 100 when the answer contains the keyword, else 0 (needlebench v2).
    #[default]
    Keyword,
    /// 100 when the answer contains the keyword, else 0.2 x the Levenshtein score of the
    /// answer against the needle (needlebench v1, `NeedleBenchOriginEvaluator`).
    KeywordOrLevenshtein,
    /// The Levenshtein score against the needle alone (the CDME evaluator).
    Levenshtein,
}

impl std::str::FromStr for Scoring {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keyword" => Ok(Self::Keyword),
            "keyword-or-levenshtein" | "v1" => Ok(Self::KeywordOrLevenshtein),
            "levenshtein" | "cdme" => Ok(Self::Levenshtein),
            other => Err(format!(
                "unknown scoring {other:?} (keyword, keyword-or-levenshtein, levenshtein)"
            )),
        }
    }
}

/// `text` without any whitespace (`re.sub(r'\s+', '', text)`).
fn strip_whitespace(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

/// `100 * (1 - distance / max_len)` on the whitespace-stripped strings; 100 when both are empty.
///
/// ```
/// use internlm2_eval::niah::levenshtein_score;
/// assert_eq!(levenshtein_score("abcd", "abce"), 75.0);
/// ```
pub fn levenshtein_score(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (strip_whitespace(prediction), strip_whitespace(reference));
    let max_len = p.chars().count().max(r.chars().count());
    if max_len == 0 {
        return 100.0;
    }
    let distance = strsim::levenshtein(&p, &r);
    100.0 * (1.0 - distance as f64 / max_len as f64)
}

/// The score of one answer for one needle.
pub fn score_answer(scoring: Scoring, prediction: &str, needle: &str, keyword: &str) -> f64 {
    match scoring {
        Scoring::Keyword => {
            if prediction.contains(keyword) {
                100.0
            } else {
                0.0
            }
        }
        Scoring::KeywordOrLevenshtein => {
            if prediction.contains(keyword) {
                100.0
            } else {
                0.2 * levenshtein_score(prediction, needle)
            }
        }
        Scoring::Levenshtein => levenshtein_score(prediction, needle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_by_hand() {
        // kitten -> sitting: 3 edits over 7 characters.
        assert!((levenshtein_score("kitten", "sitting") - 100.0 * (1.0 - 3.0 / 7.0)).abs() < 1e-12);
        // Whitespace is ignored on both sides.
        assert_eq!(levenshtein_score(" a b\nc ", "abc"), 100.0);
        assert_eq!(levenshtein_score("", "  "), 100.0);
        assert_eq!(levenshtein_score("", "abcd"), 0.0);
        // Characters, not bytes: one substituted CJK character of four.
        assert_eq!(levenshtein_score("上海人工", "上海人士"), 75.0);
    }

    #[test]
    fn scoring_variants() {
        let needle = "The secret code is 4721.";
        assert_eq!(
            score_answer(Scoring::Keyword, "It is 4721", needle, "4721"),
            100.0
        );
        assert_eq!(
            score_answer(Scoring::Keyword, "It is 4712", needle, "4721"),
            0.0
        );
        assert_eq!(
            score_answer(Scoring::KeywordOrLevenshtein, "x 4721", needle, "4721"),
            100.0
        );
        // Wrong keyword: a fifth of the edit-distance score. "Thesecretcodeis4712." vs
        // "Thesecretcodeis4721.": 2 substitutions over 20 characters -> 90 -> 18.
        let s = score_answer(
            Scoring::KeywordOrLevenshtein,
            "The secret code is 4712.",
            needle,
            "4721",
        );
        assert!((s - 18.0).abs() < 1e-9, "{s}");
        assert!(
            (score_answer(
                Scoring::Levenshtein,
                "The secret code is 4712.",
                needle,
                "4721"
            ) - 90.0)
                .abs()
                < 1e-9
        );
        // The keyword is matched in the raw answer (case and spacing as written).
        assert_eq!(score_answer(Scoring::Keyword, "47 21", needle, "4721"), 0.0);
        assert_eq!(
            "keyword-or-levenshtein".parse::<Scoring>(),
            Ok(Scoring::KeywordOrLevenshtein)
        );
        assert!("bogus".parse::<Scoring>().is_err());
    }
}
