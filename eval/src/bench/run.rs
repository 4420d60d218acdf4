//! The benchmark runner: prompts in batches through the [`Generator`], judges, appends one
//! record per item, and summarises.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::Task;
use crate::error::{EvalError, IoContext, Result};
use crate::generator::Generator;
use crate::prompt::{PromptFormat, encode};
use crate::records::{append_lines, read_records};

/// How a benchmark is run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BenchConfig {
    /// Only the first `limit` items (quick runs).
    pub limit: Option<usize>,
    /// Tokens per answer; `None` = OpenCompass's `max_out_len` for the task.
    pub max_new_tokens: Option<usize>,
    /// Chat or raw prompts.
    pub format: PromptFormat,
    /// Draw a progress bar.
    pub progress: bool,
}

/// One judged item (a line of `<task>.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Position in the data.
    pub index: usize,
    /// The item's id.
    pub id: String,
    /// MMLU subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Prompt tokens (BOS and template included).
    pub prompt_tokens: usize,
    /// The model's answer.
    pub answer: String,
    /// What the extractor took from it.
    pub extracted: Option<String>,
    /// The reference.
    pub gold: String,
    /// Whether it is correct.
    pub correct: bool,
    /// Details of the judgement (a failing test's last error line).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Accuracy over a set of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectScore {
    /// Items.
    pub items: usize,
    /// Correct items.
    pub correct: usize,
    /// `100 x correct / items`.
    pub accuracy: f64,
}

/// What a benchmark run measured (also written as `<task>_summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSummary {
    /// `gsm8k`, `mmlu` or `humaneval`.
    pub task: String,
    /// Items evaluated.
    pub items: usize,
    /// Correct items.
    pub correct: usize,
    /// Accuracy over all items, in percent (pass@1 for HumanEval).
    pub accuracy: f64,
    /// Per subject (MMLU).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subjects: BTreeMap<String, SubjectScore>,
    /// The plain mean of the subject accuracies (OpenCompass's MMLU figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_mean: Option<f64>,
    /// Items run now (the others were in the records file).
    pub ran: usize,
    /// The records file.
    pub records: PathBuf,
}

/// What must not change between a run and its resumption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    format: PromptFormat,
    max_new_tokens: usize,
    items: usize,
}

fn percent(correct: usize, items: usize) -> f64 {
    if items == 0 {
        0.0
    } else {
        100.0 * correct as f64 / items as f64
    }
}

/// Runs (or resumes) `task` on the first `config.limit` items, greedy, writing
/// `<task>.jsonl` and `<task>_summary.json` into `out_dir`.
pub fn run_benchmark<G: Generator + ?Sized, T: Task + ?Sized>(
    generator: &mut G,
    task: &T,
    config: &BenchConfig,
    out_dir: &Path,
) -> Result<BenchSummary> {
    let total = task.items().len();
    let n = config.limit.map_or(total, |l| l.min(total));
    if n == 0 {
        return Err(EvalError::Empty {
            what: format!("{} (limit 0)", task.name()),
        });
    }
    let max_new_tokens = config.max_new_tokens.unwrap_or(task.max_new_tokens());
    std::fs::create_dir_all(out_dir).at(out_dir)?;
    let fingerprint = Fingerprint {
        format: config.format,
        max_new_tokens,
        items: total,
    };
    let fp_path = out_dir.join(format!("{}_config.json", task.name()));
    if fp_path.exists() {
        let text = std::fs::read_to_string(&fp_path).at(&fp_path)?;
        let old: Fingerprint = serde_json::from_str(&text).map_err(|source| EvalError::Json {
            path: fp_path.clone(),
            source,
        })?;
        if old != fingerprint {
            return Err(EvalError::InvalidSetting {
                name: "out",
                reason: format!(
                    "{} holds {} results made with other settings; use another output directory",
                    out_dir.display(),
                    task.name()
                ),
            });
        }
    } else {
        std::fs::write(
            &fp_path,
            serde_json::to_string_pretty(&fingerprint).expect("serialisable"),
        )
        .at(&fp_path)?;
    }
    let path = out_dir.join(format!("{}.jsonl", task.name()));
    let mut records: Vec<ItemRecord> = read_records(&path)?;
    let done: HashSet<usize> = records.iter().map(|r| r.index).collect();
    let pending: Vec<usize> = (0..n).filter(|i| !done.contains(i)).collect();

    let bar = if config.progress {
        let bar = ProgressBar::new(pending.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{} {{bar:40}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}",
                task.name()
            ))
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let tokenizer_limit = generator.context_limit();
    let (mut run_correct, mut run_items) = (0usize, 0usize);
    for group in pending.chunks(generator.batch_size().max(1)) {
        let mut prompts = Vec::with_capacity(group.len());
        for &i in group {
            let prompt = encode(generator.tokenizer(), config.format, &task.prompt(i))?;
            if prompt.len() + max_new_tokens > tokenizer_limit {
                return Err(EvalError::ContextOverflow {
                    prompt_len: prompt.len(),
                    max_new_tokens,
                    limit: tokenizer_limit,
                });
            }
            prompts.push(prompt);
        }
        let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let answers = generator.complete(prompts, max_new_tokens)?;
        let mut lines = Vec::with_capacity(group.len());
        for ((&i, answer), prompt_tokens) in group.iter().zip(answers).zip(lens) {
            let judgement = task.judge(i, &answer.text)?;
            let item = &task.items()[i];
            run_items += 1;
            run_correct += judgement.correct as usize;
            lines.push(ItemRecord {
                index: i,
                id: item.id.clone(),
                subject: item.subject.clone(),
                prompt_tokens,
                answer: answer.text,
                extracted: judgement.extracted,
                gold: item.gold.clone(),
                correct: judgement.correct,
                detail: judgement.detail,
            });
        }
        append_lines(&path, &lines)?;
        records.extend(lines);
        bar.inc(group.len() as u64);
        bar.set_message(format!("acc {:.1}%", percent(run_correct, run_items)));
    }
    bar.finish_and_clear();

    let summary = summarise(task.name(), &records, n, pending.len(), path);
    let summary_path = out_dir.join(format!("{}_summary.json", task.name()));
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&summary).expect("serialisable"),
    )
    .at(&summary_path)?;
    Ok(summary)
}

/// The summary of the records of items `0..n`.
fn summarise(
    task: &str,
    records: &[ItemRecord],
    n: usize,
    ran: usize,
    path: PathBuf,
) -> BenchSummary {
    let mut seen = HashSet::new();
    let mut subjects: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut items, mut correct) = (0, 0);
    for r in records.iter().filter(|r| r.index < n) {
        if !seen.insert(r.index) {
            continue;
        }
        items += 1;
        correct += r.correct as usize;
        if let Some(subject) = &r.subject {
            let entry = subjects.entry(subject.clone()).or_default();
            entry.0 += 1;
            entry.1 += r.correct as usize;
        }
    }
    let subjects: BTreeMap<String, SubjectScore> = subjects
        .into_iter()
        .map(|(s, (items, correct))| {
            (
                s,
                SubjectScore {
                    items,
                    correct,
                    accuracy: percent(correct, items),
                },
            )
        })
        .collect();
    let subject_mean = (!subjects.is_empty())
        .then(|| subjects.values().map(|s| s.accuracy).sum::<f64>() / subjects.len() as f64);
    BenchSummary {
        task: task.to_string(),
        items,
        correct,
        accuracy: percent(correct, items),
        subjects,
        subject_mean,
        ran,
        records: path,
    }
}
