//! GSM8K, 4-shot multi-turn, as OpenCompass's `configs/datasets/gsm8k/gsm8k_gen_1d7fe4.py`
//! (the InternLM2-chat keyset config) runs it:
//!
//! ```text
//! dict(role='HUMAN', prompt="Question: {question}\nLet's think step by step\nAnswer:")
//! ... four (HUMAN, BOT) example rounds before it, each BOT answer ending "The answer is N\n"
//! inferencer=dict(type=GenInferencer, max_out_len=512)
//! pred_postprocessor=gsm8k_postprocess, dataset_postprocessor=gsm8k_dataset_postprocess
//! ```
//!
//! Data: the Hugging Face `gsm8k` layout, `{"question": ..., "answer": "...\n#### 72"}`. The
//! four examples are the first four records of a file the user gives (usually the train
//! split), their answers rewritten as OpenCompass's are ([`gsm8k_shot_answer`]). To reproduce
//! OpenCompass's prompt exactly, put its four examples (from the config above) in that file.

use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;

use super::{Item, Judgement, Task, read_jsonl};
use crate::error::{EvalError, Result};
use crate::extract::{gsm8k_equal, gsm8k_gold, gsm8k_prediction};
use crate::prompt::Turn;

/// Examples in the prompt.
pub const GSM8K_SHOTS: usize = 4;

/// The user turn of a question.
fn question_turn(question: &str) -> String {
    format!("Question: {question}\nLet's think step by step\nAnswer:")
}

/// An answer of the Hugging Face layout as an example answer: the calculator annotations
/// (`<<3*4=12>>`) dropped, `#### N` turned into `The answer is N`, ending in a newline. An
/// answer without `####` is taken as written.
///
/// ```
/// use internlm2_eval::bench::gsm8k_shot_answer;
/// assert_eq!(
///     gsm8k_shot_answer("He has 3*4=<<3*4=12>>12 eggs.\n#### 12"),
///     "He has 3*4=12 eggs.\nThe answer is 12\n"
/// );
/// ```
pub fn gsm8k_shot_answer(answer: &str) -> String {
    static CALC: OnceLock<Regex> = OnceLock::new();
    let calc = CALC.get_or_init(|| Regex::new(r"<<[^<>]*>>").expect("valid regex"));
    match answer.split_once("#### ") {
        Some((reasoning, gold)) => {
            let reasoning = calc.replace_all(reasoning.trim_end(), "");
            format!(
                "{reasoning}\nThe answer is {}\n",
                gold.trim().replace(',', "")
            )
        }
        None => answer.to_string(),
    }
}

/// The GSM8K task.
#[derive(Debug, Clone)]
pub struct Gsm8k {
    items: Vec<Item>,
    questions: Vec<String>,
    shots: Vec<(String, String)>,
}

impl Gsm8k {
    /// Test items from `data`, the examples from the first records of `shots`.
    pub fn load(data: &Path, shots: &Path) -> Result<Self> {
        let mut items = Vec::new();
        let mut questions = Vec::new();
        for (i, record) in read_jsonl(data)?.into_iter().enumerate() {
            let answer = record.str("answer")?;
            let gold = gsm8k_gold(answer)
                .ok_or_else(|| record.error("the answer has no `#### ` final answer"))?;
            questions.push(record.str("question")?.to_string());
            items.push(Item {
                id: i.to_string(),
                subject: None,
                gold,
            });
        }
        if items.is_empty() {
            return Err(EvalError::Empty {
                what: data.display().to_string(),
            });
        }
        let shot_records = read_jsonl(shots)?;
        if shot_records.len() < GSM8K_SHOTS {
            return Err(EvalError::InvalidSetting {
                name: "shots",
                reason: format!(
                    "{} holds {} examples, GSM8K needs {GSM8K_SHOTS}",
                    shots.display(),
                    shot_records.len()
                ),
            });
        }
        let shots = shot_records[..GSM8K_SHOTS]
            .iter()
            .map(|r| {
                Ok((
                    r.str("question")?.to_string(),
                    gsm8k_shot_answer(r.str("answer")?),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            items,
            questions,
            shots,
        })
    }
}

impl Task for Gsm8k {
    fn name(&self) -> &'static str {
        "gsm8k"
    }

    fn items(&self) -> &[Item] {
        &self.items
    }

    fn prompt(&self, index: usize) -> Vec<Turn> {
        let mut turns = Vec::with_capacity(2 * GSM8K_SHOTS + 1);
        for (q, a) in &self.shots {
            turns.push(Turn::User(question_turn(q)));
            turns.push(Turn::Assistant(a.clone()));
        }
        turns.push(Turn::User(question_turn(&self.questions[index])));
        turns
    }

    fn max_new_tokens(&self) -> usize {
        512
    }

    fn judge(&self, index: usize, answer: &str) -> Result<Judgement> {
        let extracted = gsm8k_prediction(answer);
        let correct = extracted
            .as_deref()
            .is_some_and(|p| gsm8k_equal(p, &self.items[index].gold));
        Ok(Judgement {
            extracted,
            correct,
            detail: String::new(),
        })
    }
}
