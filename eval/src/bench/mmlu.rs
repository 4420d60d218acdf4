//! MMLU, 5-shot, as OpenCompass's `configs/datasets/mmlu/mmlu_gen_4d595a.py` (b03d5dc5, March
//! 2024) runs it for chat models:
//!
//! ```text
//! _hint = f'There is a single choice question about {_name.replace("_", " ")}. '
//!         'Answer the question by replying A, B, C or D.'
//! ice_template: HUMAN f"{_hint}\nQuestion: {{input}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer: "
//!               BOT "{target}\n"
//! prompt_template: the five examples as rounds, then the same HUMAN turn
//! retriever=dict(type=FixKRetriever, fix_id_list=[0, 1, 2, 3, 4])      # dev split
//! pred_postprocessor=dict(type=first_option_postprocess, options='ABCD')
//! ```
//!
//! The model config's `max_out_len=100` bounds the answer. The summary is the accuracy per
//! subject and their plain mean (OpenCompass's `mmlu` average), beside the accuracy over all
//! items.
//!
//! Data: Hugging Face `cais/mmlu` records (`question`, `choices` [4], `answer` 0-3 or a
//! letter, `subject`) or `lukaemon/mmlu` records (`input`, `A`-`D`, `target`). A record
//! without `subject` takes its file's name (`anatomy_test.jsonl` -> `anatomy`). Examples come
//! from the dev split the user gives, the first five of each subject.

use std::collections::HashMap;
use std::path::Path;

use super::data::JsonRecord;
use super::{Item, Judgement, Task, read_jsonl_dir};
use crate::error::{EvalError, Result};
use crate::extract::first_option;
use crate::prompt::Turn;

/// Examples per subject.
pub const MMLU_SHOTS: usize = 5;
const LETTERS: [char; 4] = ['A', 'B', 'C', 'D'];

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Question {
    subject: String,
    question: String,
    choices: [String; 4],
    answer: char,
}

impl Question {
    fn parse(record: &JsonRecord) -> Result<Self> {
        let subject = record
            .opt_str("subject")
            .map_or_else(|| record.file_subject(), str::to_string);
        if let Some(choices) = record.value.get("choices") {
            let choices: Vec<&str> = choices
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
                .unwrap_or_default();
            let choices: [&str; 4] = choices
                .try_into()
                .map_err(|_| record.error("`choices` must be 4 strings"))?;
            let answer = match record.value.get("answer") {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().filter(|&n| n < 4).map(|n| LETTERS[n as usize])
                }
                Some(serde_json::Value::String(s)) => letter(s),
                _ => None,
            }
            .ok_or_else(|| record.error("`answer` must be 0-3 or A-D"))?;
            return Ok(Self {
                subject,
                question: record.str("question")?.to_string(),
                choices: choices.map(str::to_string),
                answer,
            });
        }
        let choices = [
            record.str("A")?.to_string(),
            record.str("B")?.to_string(),
            record.str("C")?.to_string(),
            record.str("D")?.to_string(),
        ];
        let answer =
            letter(record.str("target")?).ok_or_else(|| record.error("`target` must be A-D"))?;
        Ok(Self {
            subject,
            question: record.str("input")?.to_string(),
            choices,
            answer,
        })
    }

    /// The HUMAN turn of the template.
    fn turn(&self) -> String {
        let hint = format!(
            "There is a single choice question about {}. Answer the question by replying A, B, C or D.",
            self.subject.replace('_', " ")
        );
        let [a, b, c, d] = &self.choices;
        format!(
            "{hint}\nQuestion: {}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: ",
            self.question
        )
    }
}

fn letter(s: &str) -> Option<char> {
    let s = s.trim();
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if LETTERS.contains(&c) => Some(c),
        _ => None,
    }
}

/// The MMLU task.
#[derive(Debug, Clone)]
pub struct Mmlu {
    items: Vec<Item>,
    questions: Vec<Question>,
    shots: HashMap<String, Vec<Question>>,
}

impl Mmlu {
    /// Test questions from `data` (a file or a directory of JSONL files), examples from `dev`.
    pub fn load(data: &Path, dev: &Path) -> Result<Self> {
        let questions: Vec<Question> = read_jsonl_dir(data)?
            .iter()
            .map(Question::parse)
            .collect::<Result<_>>()?;
        let mut shots: HashMap<String, Vec<Question>> = HashMap::new();
        for record in read_jsonl_dir(dev)? {
            let q = Question::parse(&record)?;
            let list = shots.entry(q.subject.clone()).or_default();
            if list.len() < MMLU_SHOTS {
                list.push(q);
            }
        }
        let mut missing: Vec<&str> = questions
            .iter()
            .map(|q| q.subject.as_str())
            .filter(|s| shots.get(*s).is_none_or(|l| l.len() < MMLU_SHOTS))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            return Err(EvalError::InvalidSetting {
                name: "shots",
                reason: format!(
                    "the dev split lacks {MMLU_SHOTS} examples for: {}",
                    missing.join(", ")
                ),
            });
        }
        let items = questions
            .iter()
            .enumerate()
            .map(|(i, q)| Item {
                id: i.to_string(),
                subject: Some(q.subject.clone()),
                gold: q.answer.to_string(),
            })
            .collect();
        Ok(Self {
            items,
            questions,
            shots,
        })
    }
}

impl Task for Mmlu {
    fn name(&self) -> &'static str {
        "mmlu"
    }

    fn items(&self) -> &[Item] {
        &self.items
    }

    fn prompt(&self, index: usize) -> Vec<Turn> {
        let q = &self.questions[index];
        let mut turns = Vec::with_capacity(2 * MMLU_SHOTS + 1);
        for shot in &self.shots[&q.subject] {
            turns.push(Turn::User(shot.turn()));
            turns.push(Turn::Assistant(format!("{}\n", shot.answer)));
        }
        turns.push(Turn::User(q.turn()));
        turns
    }

    fn max_new_tokens(&self) -> usize {
        100
    }

    fn judge(&self, index: usize, answer: &str) -> Result<Judgement> {
        let extracted = first_option(answer, "ABCD");
        Ok(Judgement {
            extracted: extracted.map(String::from),
            correct: extracted == Some(self.questions[index].answer),
            detail: String::new(),
        })
    }
}
