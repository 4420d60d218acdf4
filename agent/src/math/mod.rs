//! Math word problems with the code interpreter, in InternLM2's official setting (InternLM
//! `agent/streaming_inference.py`): the MATH interpreter system prompt
//! ([`MATH_INTERPRETER_PROMPT`]) as the only system turn, the problem as the user turn, at most
//! [`MATH_MAX_TURNS`] model turns, the answer read from the last `\boxed{}` of the final turn
//! and scored by exact match after normalisation ([`answers_match`]).
//!
//! Problems come as JSONL lines `{"problem": "...", "answer": "..."}` (other keys are ignored;
//! a numeric answer is accepted; an answer holding a `\boxed{}` is reduced to its content).
//!
//! ```
//! use internlm2_agent::math::{MathProblem, MathRunner};
//! use internlm2_agent::ScriptedGenerator;
//! let script = ScriptedGenerator::new([r"2 + 2 = 4, so the answer is $\boxed{4}$.<|im_end|>"]);
//! let mut runner = MathRunner::without_interpreter(script);
//! let record = runner.solve(&MathProblem::new("What is 2 + 2?", "4"))?;
//! assert!(record.correct);
//! assert_eq!(record.predicted.as_deref(), Some("4"));
//! # Ok::<(), internlm2_agent::AgentError>(())
//! ```

mod answer;

use std::io::BufRead;
use std::path::{Path, PathBuf};

pub use answer::{answers_match, last_boxed, normalize_answer};
use serde::Serialize;
use serde_json::Value;

use crate::agent::{Agent, AgentConfig, Finish};
use crate::error::AgentError;
use crate::generator::TextGenerator;
use crate::interpreter::CodeInterpreter;

/// The system prompt of InternLM2's math-with-interpreter evaluation, word for word.
///
/// Source: InternLM/InternLM `agent/streaming_inference.py`, `DEFAULT_PROMPT`, which Lagent's
/// `Internlm2Protocol` formats (so its `'\boxed{{}}'` becomes `'\boxed{}'`) into the
/// `system name=<|interpreter|>` turn:
///
/// ```text
/// DEFAULT_PROMPT = (
///     'Integrate step-by-step reasoning and Python code to solve math problems '
///     'using the following guidelines:\n'
///     '- Analyze the question and write jupyter code to solve the problem;\n'
///     r"- Present the final result in LaTeX using a '\boxed{{}}' without any "
///     'units. \n')
/// ```
pub const MATH_INTERPRETER_PROMPT: &str = "Integrate step-by-step reasoning and Python code to solve math problems using the following guidelines:\n- Analyze the question and write jupyter code to solve the problem;\n- Present the final result in LaTeX using a '\\boxed{}' without any units. \n";

/// Most model turns per problem in the official setting (`--max_turn 5`).
pub const MATH_MAX_TURNS: usize = 5;

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MathProblem {
    /// The question.
    pub problem: String,
    /// The reference answer.
    pub answer: String,
}

impl MathProblem {
    /// A problem and its reference answer.
    pub fn new(problem: impl Into<String>, answer: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
            answer: answer.into(),
        }
    }
}

/// A problems file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MathDataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a problem.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// Longest line accepted in a problems file.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads a JSONL file of problems (blank lines skipped).
pub fn read_problems(path: impl AsRef<Path>) -> Result<Vec<MathProblem>, MathDataError> {
    let path = path.as_ref();
    let io = |source| MathDataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut problems = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let bad = |reason: String| MathDataError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(bad(format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let problem = value
            .get("problem")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"problem\" string".into()))?;
        let answer = match value.get("answer") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(bad("no \"answer\" string or number".into())),
        };
        let answer = last_boxed(&answer).map(str::to_string).unwrap_or(answer);
        problems.push(MathProblem::new(problem, answer));
    }
    Ok(problems)
}

/// The outcome of one problem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MathRecord {
    /// The question.
    pub problem: String,
    /// The reference answer.
    pub answer: String,
    /// The last `\boxed{}` of the final turn (`None`: no boxed answer).
    pub predicted: Option<String>,
    /// Whether it matches the reference.
    pub correct: bool,
    /// Why the conversation ended (`Answered`, `TurnLimit`, `Length`, `Cancelled`).
    pub finish: String,
    /// Model turns used.
    pub turns: usize,
    /// Interpreter calls made.
    pub tool_calls: usize,
    /// The whole conversation in InternLM2's format.
    pub transcript: String,
}

/// Accuracy over a set of problems.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MathReport {
    /// Problems run.
    pub total: usize,
    /// Problems answered correctly.
    pub correct: usize,
    /// Problems that ended without a boxed answer.
    pub unanswered: usize,
}

impl MathReport {
    /// Correct / total (0 without problems).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// Runs problems through an agent with the interpreter in the official setting; the
/// conversation and the interpreter are reset before every problem.
pub struct MathRunner<G> {
    agent: Agent<G>,
}

fn official_config() -> AgentConfig {
    AgentConfig {
        system: None,
        interpreter_prompt: MATH_INTERPRETER_PROMPT.to_string(),
        max_turns: MATH_MAX_TURNS,
    }
}

impl<G: TextGenerator> MathRunner<G> {
    /// The official setting with `interpreter`.
    pub fn new(generator: G, interpreter: CodeInterpreter) -> Self {
        Self {
            agent: Agent::new(generator)
                .with_config(official_config())
                .with_interpreter(interpreter),
        }
    }

    /// The same prompt and turn limit without an interpreter (the MATH prompt then goes in a
    /// plain system turn; a code call is answered with an error). For tests and for comparing
    /// with and without code.
    pub fn without_interpreter(generator: G) -> Self {
        Self {
            agent: Agent::new(generator).with_config(AgentConfig {
                system: Some(MATH_INTERPRETER_PROMPT.to_string()),
                ..official_config()
            }),
        }
    }

    /// Changes the turn limit (default [`MATH_MAX_TURNS`]).
    pub fn with_max_turns(mut self, turns: usize) -> Self {
        let config = self.agent.config().clone().with_max_turns(turns);
        self.agent = self.agent.with_config(config);
        self
    }

    /// The agent (e.g. to read the interpreter's sandbox report).
    pub fn agent_mut(&mut self) -> &mut Agent<G> {
        &mut self.agent
    }

    /// Solves one problem from a fresh conversation and interpreter.
    pub fn solve(&mut self, problem: &MathProblem) -> Result<MathRecord, AgentError> {
        self.agent.reset()?;
        let outcome = self.agent.run(problem.problem.clone(), |_| {})?;
        let predicted = match outcome.finish {
            Finish::Answered | Finish::Length => last_boxed(&outcome.answer).map(str::to_string),
            Finish::TurnLimit | Finish::Cancelled => None,
        };
        let correct = predicted
            .as_deref()
            .is_some_and(|p| answers_match(p, &problem.answer));
        Ok(MathRecord {
            problem: problem.problem.clone(),
            answer: problem.answer.clone(),
            predicted,
            correct,
            finish: format!("{:?}", outcome.finish),
            turns: outcome.turns,
            tool_calls: outcome.tool_calls,
            transcript: self.agent.transcript_text()?,
        })
    }

    /// Solves every problem, reporting each record to `on_record` as it is done.
    pub fn run(
        &mut self,
        problems: &[MathProblem],
        mut on_record: impl FnMut(&MathRecord),
    ) -> Result<MathReport, AgentError> {
        let mut report = MathReport {
            total: 0,
            correct: 0,
            unanswered: 0,
        };
        for problem in problems {
            let record = self.solve(problem)?;
            report.total += 1;
            report.correct += usize::from(record.correct);
            report.unanswered += usize::from(record.predicted.is_none());
            on_record(&record);
        }
        Ok(report)
    }
}
