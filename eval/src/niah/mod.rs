//! Needle in a haystack, as OpenCompass ran it for InternLM2: a grid of context lengths x
//! depth percents, each cell a haystack of the user's text cut to the length (measured with
//! the model's tokenizer), a needle inserted at the depth, the question asked at the end, the
//! answer scored; repeats with seeds; several needles at once; the passkey variant. Results go
//! to a JSON-lines file one cell at a time (a rerun skips the cells already there), then to a
//! summary and a heatmap PNG in OpenCompass's style.
//!
//! ```no_run
//! use internlm2_eval::niah::{Haystack, NeedleConfig, NeedleTask, default_needles, run_grid};
//! use internlm2_eval::{Generator, ModelGenerator, text::read_texts};
//! # fn demo(mut generator: impl Generator) -> Result<(), internlm2_eval::EvalError> {
//! let texts = read_texts("haystack/")?;
//! let haystack = Haystack::new(generator.tokenizer(), &texts)?;
//! let config = NeedleConfig {
//!     lengths: vec![1000, 2000, 4000],
//!     depths: vec![0.0, 25.0, 50.0, 75.0, 100.0],
//!     ..NeedleConfig::default()
//! };
//! let needles = default_needles(config.language);
//! let summary = run_grid(&mut generator, &haystack, &needles, &config, "out/niah".as_ref())?;
//! println!("overall {:.1}", summary.heatmap.overall.unwrap_or(0.0));
//! # Ok(()) }
//! ```

mod haystack;
mod heatmap;
mod prompt;
mod run;
mod score;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use haystack::{Context, Haystack, Positions, SentenceEnds, insert_needles};
pub use heatmap::{Heatmap, plot_heatmap};
pub use prompt::{
    Language, Needle, default_needles, multi_prompt, passkey_filler, passkey_needle,
    passkey_prompt, single_prompt,
};
pub use run::{NeedleRecord, NeedleSummary, run_grid};
pub use score::{Scoring, levenshtein_score, score_answer};

use crate::error::{EvalError, Result};
use crate::prompt::PromptFormat;

/// Which test a grid runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum NeedleTask {
    /// One needle per cell, chosen from the needle set by the repeat's seed.
    Single,
    /// `count` distinct needles per cell, the first at the cell's depth and the others spread
    /// evenly from there to the end; the score is the share of keywords found.
    Multi {
        /// Needles per cell.
        count: usize,
    },
    /// A random pass key per repeat, LMDeploy's prompt around the haystack.
    Passkey,
}

impl std::str::FromStr for NeedleTask {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "single" => Ok(Self::Single),
            "passkey" => Ok(Self::Passkey),
            multi if multi.starts_with("multi") => {
                let count = multi
                    .strip_prefix("multi")
                    .and_then(|n| n.strip_prefix(':'))
                    .map_or(Ok(3), str::parse)
                    .map_err(|e| format!("bad needle count in {multi:?}: {e}"))?;
                Ok(Self::Multi { count })
            }
            other => Err(format!(
                "unknown needle task {other:?} (single, multi[:N], passkey)"
            )),
        }
    }
}

/// The grid and how it is run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeedleConfig {
    /// Context lengths in tokens (the haystack is cut to `length - length_buffer` minus the
    /// needles; the template and the answer fill the rest).
    pub lengths: Vec<usize>,
    /// Depth percents, 0-100.
    pub depths: Vec<f64>,
    /// Repeats per cell; repeat `r` uses seed `seed + r`.
    pub repeats: usize,
    /// The first seed.
    pub seed: u64,
    /// Tokens kept free for the template and the answer (OpenCompass: 200-600).
    pub length_buffer: usize,
    /// Which test.
    pub task: NeedleTask,
    /// The template's language.
    pub language: Language,
    /// How answers are scored.
    pub scoring: Scoring,
    /// Tokens generated per answer.
    pub max_new_tokens: usize,
    /// Snap insertion points back to a sentence end (Kamradt); OpenCompass's own tool does not.
    pub sentence_snap: bool,
    /// Chat or raw prompts.
    pub format: PromptFormat,
    /// Draw a progress bar.
    pub progress: bool,
    /// The title of the heatmap.
    pub title: String,
}

impl Default for NeedleConfig {
    /// OpenCompass's depth grid (0, 10, 21, ..., 100), lengths 1K-8K, 1 repeat.
    fn default() -> Self {
        Self {
            lengths: vec![1000, 2000, 4000, 8000],
            depths: opencompass_depths(),
            repeats: 1,
            seed: 0,
            length_buffer: 200,
            task: NeedleTask::Single,
            language: Language::English,
            scoring: Scoring::Keyword,
            max_new_tokens: 64,
            sentence_snap: true,
            format: PromptFormat::Chat,
            progress: false,
            title: "Needle In A Haystack".into(),
        }
    }
}

/// The depth percents of OpenCompass's 200K needlebench grid (`depths_list` in its configs).
pub fn opencompass_depths() -> Vec<f64> {
    vec![
        0.0, 10.0, 21.0, 31.0, 42.0, 52.0, 63.0, 73.0, 84.0, 94.0, 100.0,
    ]
}

/// The context lengths of OpenCompass's 200K grid.
pub fn opencompass_200k_lengths() -> Vec<usize> {
    vec![
        16_000, 48_000, 80_000, 112_000, 128_000, 144_000, 176_000, 200_000,
    ]
}

impl NeedleConfig {
    /// Checks the grid before anything runs.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(EvalError::InvalidSetting { name, reason });
        if self.lengths.is_empty() || self.depths.is_empty() {
            return bad("lengths", "the grid needs lengths and depths".into());
        }
        if let Some(&l) = self.lengths.iter().find(|&&l| l <= self.length_buffer) {
            return bad(
                "lengths",
                format!(
                    "length {l} leaves no haystack after the buffer of {}",
                    self.length_buffer
                ),
            );
        }
        if let Some(d) = self.depths.iter().find(|d| !(0.0..=100.0).contains(*d)) {
            return bad("depths", format!("{d} is not a percent in 0..=100"));
        }
        if self.repeats == 0 {
            return bad("repeats", "at least one repeat".into());
        }
        if let NeedleTask::Multi { count } = self.task
            && count == 0
        {
            return bad("task", "multi-needle needs at least one needle".into());
        }
        Ok(())
    }
}

/// Reads needles from JSONL: OpenCompass's `needles.jsonl` layout (`needle`,
/// `retrieval_question`, `arg2` as the keyword, `language` = `English`/`Chinese`) or ours
/// (`needle`, `question`, `keyword`). Lines of another language are skipped.
pub fn load_needles(path: &Path, language: Language) -> Result<Vec<Needle>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut needles = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| EvalError::BadRecord {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| value.get(*n).and_then(|v| v.as_str()))
                .map(str::to_string)
        };
        if let Some(lang) = field(&["language"]) {
            let lang: Language = lang.parse().map_err(bad)?;
            if lang != language {
                continue;
            }
        }
        let (Some(needle), Some(question), Some(keyword)) = (
            field(&["needle"]),
            field(&["retrieval_question", "question"]),
            field(&["arg2", "keyword"]),
        ) else {
            return Err(bad(
                "needs `needle`, `retrieval_question` (or `question`) and `arg2` (or `keyword`)"
                    .into(),
            ));
        };
        needles.push(Needle::new(needle, question, keyword));
    }
    if needles.is_empty() {
        return Err(EvalError::Empty {
            what: format!("{} ({language:?} needles)", path.display()),
        });
    }
    Ok(needles)
}
