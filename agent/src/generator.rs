//! How the agent gets text: the [`TextGenerator`] trait, and [`ScriptedGenerator`], a policy
//! that replays known turns (for tests and demos).
//!
//! A generator continues a rendered conversation (it ends with `<|im_start|>assistant\n`) and
//! stops after `<|action_end|>` (a tool call is complete), `<|im_end|>` or `</s>` (the turn is
//! over). The stop marker is *not* part of the returned text; [`StopReason`] says which one it
//! was. [`crate::ModelGenerator`] implements it over `internlm2::generate`; any other engine
//! (a server, a remote API, a test script) can implement it too.

use std::collections::VecDeque;

use internlm2::chat::{ACTION_END, IM_END};

use crate::error::ScriptExhausted;

/// Why a completion stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model closed a tool call with `<|action_end|>`.
    ActionEnd,
    /// The model ended its turn (`<|im_end|>` or `</s>`).
    EndOfTurn,
    /// The token budget ran out first.
    Length,
    /// The caller or the engine stopped it.
    Cancelled,
}

/// One assistant turn's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Generated text, special tokens kept as their text, the stop marker excluded.
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
    /// Tokens generated (0 when the generator does not count).
    pub tokens: usize,
}

/// Generates one assistant turn from a rendered prompt.
pub trait TextGenerator {
    /// The generator's own error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Continues `prompt` (the rendered conversation ending with `<|im_start|>assistant\n`)
    /// until `<|action_end|>`, `<|im_end|>`, `</s>` or the budget; calls `on_delta` with each
    /// piece of newly final text.
    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, Self::Error>;
}

impl<G: TextGenerator + ?Sized> TextGenerator for &mut G {
    type Error = G::Error;

    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, Self::Error> {
        (**self).complete(prompt, on_delta)
    }
}

impl<G: TextGenerator + ?Sized> TextGenerator for Box<G> {
    type Error = G::Error;

    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, Self::Error> {
        (**self).complete(prompt, on_delta)
    }
}

/// Replays scripted assistant turns, as a model would produce them, and records every prompt
/// it was given.
///
/// Each scripted turn is cut at its first `<|action_end|>` ([`StopReason::ActionEnd`]) or
/// `<|im_end|>` ([`StopReason::EndOfTurn`]); a turn with neither ends as
/// [`StopReason::Length`]. The text is streamed in small pieces, as a model streams it.
///
/// ```
/// use internlm2_agent::{ScriptedGenerator, StopReason, TextGenerator};
/// let mut script = ScriptedGenerator::new(["Hello!<|im_end|>"]);
/// let mut streamed = String::new();
/// let done = script.complete("<|im_start|>assistant\n", &mut |d| streamed.push_str(d)).unwrap();
/// assert_eq!((done.text.as_str(), done.stop), ("Hello!", StopReason::EndOfTurn));
/// assert_eq!(streamed, "Hello!");
/// assert_eq!(script.prompts(), ["<|im_start|>assistant\n"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ScriptedGenerator {
    turns: VecDeque<String>,
    total: usize,
    prompts: Vec<String>,
    chunk_chars: usize,
}

impl ScriptedGenerator {
    /// A script of assistant turns, played in order.
    pub fn new<S: Into<String>>(turns: impl IntoIterator<Item = S>) -> Self {
        let turns: VecDeque<String> = turns.into_iter().map(Into::into).collect();
        Self {
            total: turns.len(),
            turns,
            prompts: Vec::new(),
            chunk_chars: 3,
        }
    }

    /// Streams in pieces of `n` characters (default 3; at least 1).
    pub fn with_chunk_chars(mut self, n: usize) -> Self {
        self.chunk_chars = n.max(1);
        self
    }

    /// Every prompt received so far, in order.
    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    /// Turns not yet played.
    pub fn remaining(&self) -> usize {
        self.turns.len()
    }
}

impl TextGenerator for ScriptedGenerator {
    type Error = ScriptExhausted;

    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, ScriptExhausted> {
        self.prompts.push(prompt.to_string());
        let turn = self.turns.pop_front().ok_or(ScriptExhausted(self.total))?;
        let (text, stop) = cut_at_stop(&turn);
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(self.chunk_chars) {
            on_delta(&piece.iter().collect::<String>());
        }
        Ok(Completion {
            tokens: 0,
            text: text.to_string(),
            stop,
        })
    }
}

/// Cuts raw model text at its first stop marker.
pub(crate) fn cut_at_stop(text: &str) -> (&str, StopReason) {
    let action = text.find(ACTION_END);
    let end = text.find(IM_END);
    match (action, end) {
        (Some(a), Some(e)) if e < a => (&text[..e], StopReason::EndOfTurn),
        (Some(a), _) => (&text[..a], StopReason::ActionEnd),
        (None, Some(e)) => (&text[..e], StopReason::EndOfTurn),
        (None, None) => (text, StopReason::Length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_cut_at_the_first_stop_marker() {
        assert_eq!(
            cut_at_stop("a<|action_start|><|plugin|>\n{}<|action_end|><|im_end|>"),
            ("a<|action_start|><|plugin|>\n{}", StopReason::ActionEnd)
        );
        assert_eq!(
            cut_at_stop("done<|im_end|>x"),
            ("done", StopReason::EndOfTurn)
        );
        assert_eq!(cut_at_stop("no stop"), ("no stop", StopReason::Length));
    }

    #[test]
    fn an_exhausted_script_is_an_error() {
        let mut script = ScriptedGenerator::new(["one<|im_end|>"]);
        script.complete("p", &mut |_| {}).unwrap();
        let err = script.complete("p", &mut |_| {}).unwrap_err();
        assert_eq!(err.0, 1);
        assert_eq!(script.prompts().len(), 2);
    }
}
