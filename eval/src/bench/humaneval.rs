//! HumanEval, 0-shot pass@1, as OpenCompass's `configs/datasets/humaneval/humaneval_gen_8e312c.py`
//! runs it for InternLM2-chat:
//!
//! ```text
//! dict(role='HUMAN', prompt='Complete the following python code:\n{prompt}')
//! inferencer=dict(type=GenInferencer, max_out_len=512)
//! pred_postprocessor=dict(type=humaneval_postprocess_v2)
//! ```
//!
//! and `HumanEvaluator` checks each completion with OpenAI's `human-eval`
//! (`evaluate_functional_correctness(..., timeout=3.0)`), whose program is
//! `problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({entry_point})"`.
//!
//! Data: the `openai_humaneval` layout, `{"task_id", "prompt", "test", "entry_point", ...}`.

use std::cell::RefCell;
use std::path::Path;

use super::{Item, Judgement, Task, read_jsonl};
use crate::error::{EvalError, Result};
use crate::exec::{CodeRunner, Outcome};
use crate::extract::first_code_block;
use crate::prompt::Turn;

/// One problem.
#[derive(Debug, Clone)]
struct Problem {
    prompt: String,
    test: String,
    entry_point: String,
}

/// The HumanEval task; answers run through a [`CodeRunner`] (the sandboxed interpreter or a
/// plain subprocess, see [`crate::exec`]).
pub struct HumanEval {
    items: Vec<Item>,
    problems: Vec<Problem>,
    runner: RefCell<Box<dyn CodeRunner>>,
}

impl HumanEval {
    /// Problems from `data`, checked with `runner` (OpenCompass: 3 s per problem).
    pub fn load(data: &Path, runner: impl CodeRunner + 'static) -> Result<Self> {
        let mut items = Vec::new();
        let mut problems = Vec::new();
        for record in read_jsonl(data)? {
            let entry_point = record.str("entry_point")?.to_string();
            if !entry_point.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(record.error("`entry_point` must be a Python identifier"));
            }
            items.push(Item {
                id: record.str("task_id")?.to_string(),
                subject: None,
                gold: String::new(),
            });
            problems.push(Problem {
                prompt: record.str("prompt")?.to_string(),
                test: record.str("test")?.to_string(),
                entry_point,
            });
        }
        if items.is_empty() {
            return Err(EvalError::Empty {
                what: data.display().to_string(),
            });
        }
        Ok(Self {
            items,
            problems,
            runner: RefCell::new(Box::new(runner)),
        })
    }

    /// The program that tests a completion of problem `index`.
    pub fn program(&self, index: usize, completion: &str) -> String {
        let p = &self.problems[index];
        format!(
            "{}{completion}\n{}\ncheck({})",
            p.prompt, p.test, p.entry_point
        )
    }
}

impl Task for HumanEval {
    fn name(&self) -> &'static str {
        "humaneval"
    }

    fn items(&self) -> &[Item] {
        &self.items
    }

    fn prompt(&self, index: usize) -> Vec<Turn> {
        vec![Turn::User(format!(
            "Complete the following python code:\n{}",
            self.problems[index].prompt
        ))]
    }

    fn max_new_tokens(&self) -> usize {
        512
    }

    fn judge(&self, index: usize, answer: &str) -> Result<Judgement> {
        let completion = first_code_block(answer);
        let mut runner = self.runner.borrow_mut();
        let outcome = runner.run(&self.program(index, completion))?;
        let detail = match &outcome {
            Outcome::Passed => String::new(),
            Outcome::TimedOut => format!("timed out after {:?}", runner.timeout()),
            Outcome::Failed { stderr, .. } => stderr.lines().last().unwrap_or("failed").to_string(),
        };
        Ok(Judgement {
            extracted: Some(completion.to_string()),
            correct: outcome.passed(),
            detail,
        })
    }
}
