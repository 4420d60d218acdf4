//! The needle-in-a-haystack harness: builds each cell's prompt, asks the [`Generator`] in
//! batches, scores, and appends one JSON line per cell to `niah.jsonl` (flushed per batch, so
//! an interrupted run loses at most one batch and a rerun skips every cell already written).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};

use super::haystack::{Haystack, SentenceEnds, insert_needles};
use super::heatmap::{Heatmap, plot_heatmap};
use super::prompt::{Needle, multi_prompt, passkey_needle, passkey_prompt, single_prompt};
use super::score::score_answer;
use super::{NeedleConfig, NeedleTask};
use crate::error::{EvalError, IoContext, Result};
use crate::generator::Generator;
use crate::prompt::{Turn, encode};
use crate::records::{append_lines, read_records};

/// The result of one cell of the grid (one line of `niah.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeedleRecord {
    /// Context length of the cell.
    pub length: usize,
    /// Depth percent of the cell.
    pub depth: f64,
    /// Which repeat.
    pub repeat: usize,
    /// The seed of the repeat (haystack order, needle choice, pass key).
    pub seed: u64,
    /// Tokens of the whole prompt (template and BOS included).
    pub prompt_tokens: usize,
    /// Haystack tokens around the needles.
    pub haystack_tokens: usize,
    /// Whether the haystack documents were repeated to fill the length.
    pub haystack_cycled: bool,
    /// Token position of each needle in the haystack.
    pub needle_positions: Vec<usize>,
    /// The keyword of each needle.
    pub keywords: Vec<String>,
    /// Whether the answer contains each keyword.
    pub found: Vec<bool>,
    /// The cell's score, 0-100.
    pub score: f64,
    /// The model's answer.
    pub answer: String,
}

impl NeedleRecord {
    fn key(&self) -> (usize, u64, usize) {
        (self.length, self.depth.to_bits(), self.repeat)
    }
}

/// What a grid run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleSummary {
    /// Cells of the grid (lengths x depths x repeats).
    pub cells: usize,
    /// Cells run now.
    pub ran: usize,
    /// Cells found done in the results file.
    pub skipped: usize,
    /// Mean scores per cell, per length and overall.
    pub heatmap: Heatmap,
    /// `niah.jsonl`.
    pub results: PathBuf,
    /// `niah_summary.json`.
    pub summary: PathBuf,
    /// `niah_heatmap.png`.
    pub plot: PathBuf,
}

/// What must not change between a run and its resumption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    task: NeedleTask,
    language: super::Language,
    scoring: super::Scoring,
    max_new_tokens: usize,
    sentence_snap: bool,
    format: crate::prompt::PromptFormat,
    length_buffer: usize,
    seed: u64,
    needles: Vec<Needle>,
}

/// Runs (or resumes) the grid of `config` with `generator`, writing `niah.jsonl`,
/// `niah_summary.json` and `niah_heatmap.png` into `out_dir`.
pub fn run_grid<G: Generator + ?Sized>(
    generator: &mut G,
    haystack: &Haystack,
    needles: &[Needle],
    config: &NeedleConfig,
    out_dir: &Path,
) -> Result<NeedleSummary> {
    config.validate()?;
    let needed = match config.task {
        NeedleTask::Single => 1,
        NeedleTask::Multi { count } => count,
        NeedleTask::Passkey => 0,
    };
    if needles.len() < needed {
        return Err(EvalError::InvalidSetting {
            name: "needles",
            reason: format!("the task needs {needed} needles, {} given", needles.len()),
        });
    }
    std::fs::create_dir_all(out_dir).at(out_dir)?;
    check_fingerprint(out_dir, config, needles)?;
    let results = out_dir.join("niah.jsonl");
    let mut records: Vec<NeedleRecord> = read_records(&results)?;
    let done: HashSet<_> = records.iter().map(NeedleRecord::key).collect();

    let mut lengths = config.lengths.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let cells = lengths.len() * config.depths.len() * config.repeats;
    let pending: Vec<(usize, f64, usize)> = lengths
        .iter()
        .flat_map(|&l| {
            config
                .depths
                .iter()
                .flat_map(move |&d| (0..config.repeats).map(move |r| (l, d, r)))
        })
        .filter(|&(l, d, r)| !done.contains(&(l, d.to_bits(), r)))
        .collect();
    let skipped = cells - pending.len();
    log::info!(
        "needle grid: {cells} cells, {skipped} already in {}",
        results.display()
    );

    let bar = if config.progress {
        let bar = ProgressBar::new(pending.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "needles {bar:40} {pos}/{len} cells [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let batch = generator.batch_size().max(1);
    for group in pending.chunks(batch) {
        let mut prompts = Vec::with_capacity(group.len());
        let mut cells_now = Vec::with_capacity(group.len());
        for &(length, depth, repeat) in group {
            let cell = build_cell(
                &*generator,
                haystack,
                needles,
                config,
                length,
                depth,
                repeat,
            )?;
            if cell.prompt.len() + config.max_new_tokens > generator.context_limit() {
                return Err(EvalError::ContextOverflow {
                    prompt_len: cell.prompt.len(),
                    max_new_tokens: config.max_new_tokens,
                    limit: generator.context_limit(),
                });
            }
            prompts.push(cell.prompt.clone());
            cells_now.push(cell);
        }
        let answers = generator.complete(prompts, config.max_new_tokens)?;
        let mut lines = Vec::with_capacity(answers.len());
        for (cell, answer) in cells_now.into_iter().zip(answers) {
            let record = cell.score(config, answer.text);
            bar.set_message(format!(
                "{} @ {}%: {:.0}",
                record.length, record.depth, record.score
            ));
            lines.push(record);
        }
        append_lines(&results, &lines)?;
        records.extend(lines);
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();

    let heatmap = Heatmap::from_records(&lengths, &config.depths, &records);
    let summary_path = out_dir.join("niah_summary.json");
    let summary_json = serde_json::json!({
        "task": config.task,
        "language": config.language,
        "scoring": config.scoring,
        "repeats": config.repeats,
        "cells": cells,
        "heatmap": heatmap,
    });
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&summary_json).expect("serialisable"),
    )
    .at(&summary_path)?;
    let plot = out_dir.join("niah_heatmap.png");
    plot_heatmap(&heatmap, &plot, &config.title)?;
    Ok(NeedleSummary {
        cells,
        ran: pending.len(),
        skipped,
        heatmap,
        results,
        summary: summary_path,
        plot,
    })
}

/// Refuses to resume into results made with other settings.
fn check_fingerprint(out_dir: &Path, config: &NeedleConfig, needles: &[Needle]) -> Result<()> {
    let fingerprint = Fingerprint {
        task: config.task,
        language: config.language,
        scoring: config.scoring,
        max_new_tokens: config.max_new_tokens,
        sentence_snap: config.sentence_snap,
        format: config.format,
        length_buffer: config.length_buffer,
        seed: config.seed,
        needles: if config.task == NeedleTask::Passkey {
            Vec::new()
        } else {
            needles.to_vec()
        },
    };
    let path = out_dir.join("niah_config.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path).at(&path)?;
        let old: Fingerprint = serde_json::from_str(&text).map_err(|source| EvalError::Json {
            path: path.clone(),
            source,
        })?;
        if old != fingerprint {
            return Err(EvalError::InvalidSetting {
                name: "out",
                reason: format!(
                    "{} holds results made with other settings (see niah_config.json); use another output directory",
                    out_dir.display()
                ),
            });
        }
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&fingerprint).expect("serialisable");
    std::fs::write(&path, text).at(&path)
}

/// One cell's prompt and what scoring it needs.
struct Cell {
    length: usize,
    depth: f64,
    repeat: usize,
    seed: u64,
    prompt: Vec<u32>,
    haystack_tokens: usize,
    cycled: bool,
    positions: Vec<usize>,
    needles: Vec<Needle>,
}

impl Cell {
    fn score(self, config: &NeedleConfig, answer: String) -> NeedleRecord {
        let found: Vec<bool> = self
            .needles
            .iter()
            .map(|n| answer.contains(&n.keyword))
            .collect();
        let score = self
            .needles
            .iter()
            .map(|n| score_answer(config.scoring, &answer, &n.needle, &n.keyword))
            .sum::<f64>()
            / self.needles.len() as f64;
        NeedleRecord {
            length: self.length,
            depth: self.depth,
            repeat: self.repeat,
            seed: self.seed,
            prompt_tokens: self.prompt.len(),
            haystack_tokens: self.haystack_tokens,
            haystack_cycled: self.cycled,
            needle_positions: self.positions,
            keywords: self.needles.iter().map(|n| n.keyword.clone()).collect(),
            found,
            score,
            answer,
        }
    }
}

/// The needles of one repeat.
fn choose_needles(task: NeedleTask, needles: &[Needle], seed: u64) -> Vec<Needle> {
    let mut rng = StdRng::seed_from_u64(seed);
    match task {
        NeedleTask::Single => needles.choose(&mut rng).into_iter().cloned().collect(),
        NeedleTask::Multi { count } => {
            let mut order: Vec<usize> = (0..needles.len()).collect();
            order.shuffle(&mut rng);
            order[..count].iter().map(|&i| needles[i].clone()).collect()
        }
        NeedleTask::Passkey => vec![passkey_needle(seed)],
    }
}

fn build_cell<G: Generator + ?Sized>(
    generator: &G,
    haystack: &Haystack,
    needles: &[Needle],
    config: &NeedleConfig,
    length: usize,
    depth: f64,
    repeat: usize,
) -> Result<Cell> {
    let tokenizer = generator.tokenizer();
    let seed = config.seed.wrapping_add(repeat as u64);
    let chosen = choose_needles(config.task, needles, seed);
    let needle_tokens: Vec<Vec<u32>> = chosen
        .iter()
        .map(|n| tokenizer.encode(&n.inserted_text(), false))
        .collect::<std::result::Result<_, _>>()?;
    let needle_len: usize = needle_tokens.iter().map(Vec::len).sum();
    let budget = length
        .checked_sub(config.length_buffer + needle_len)
        .filter(|&b| b > 0)
        .ok_or_else(|| EvalError::InvalidSetting {
            name: "lengths",
            reason: format!(
                "length {length} has no room for a haystack after the buffer of {} and {needle_len} needle tokens",
                config.length_buffer
            ),
        })?;
    let context = haystack.context(seed, budget);
    let ends = SentenceEnds::new(tokenizer);
    let snap = |prefix: &[u32]| ends.ends_sentence(prefix);
    let (tokens, positions) = insert_needles(
        context.tokens,
        &needle_tokens,
        depth,
        config
            .sentence_snap
            .then_some(&snap as &dyn Fn(&[u32]) -> bool),
    );
    let text = tokenizer.decode(&tokens)?;
    let user = match config.task {
        NeedleTask::Single => single_prompt(config.language, &text, &chosen[0].question),
        NeedleTask::Multi { .. } => {
            let questions: Vec<&str> = chosen.iter().map(|n| n.question.as_str()).collect();
            multi_prompt(config.language, &text, &questions)
        }
        NeedleTask::Passkey => passkey_prompt(&text),
    };
    let prompt = encode(tokenizer, config.format, &[Turn::User(user)])?;
    Ok(Cell {
        length,
        depth,
        repeat,
        seed,
        prompt,
        haystack_tokens: budget,
        cycled: context.cycled,
        positions,
        needles: chosen,
    })
}
