//! One request inside the worker: its tokens, how many of them have keys and values in the
//! pool, its block table, and its output side (sampler, text stream, stop conditions,
//! constraint, events).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use internlm2::chat::{Parsed, ToolCallParser};
use internlm2::generate::{GenerationConfig, TextStream};
use internlm2::sampling::Sampler;
use tokio::sync::mpsc::UnboundedSender;

use super::handle::Submission;
use super::request::{Event, FinishReason, StopKind, TokenConstraint, TokenLogprob, Usage};

/// A request being served.
pub(crate) struct Sequence<'t> {
    pub id: u64,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose keys and values are in the pool.
    pub computed: usize,
    /// Block table.
    pub blocks: Vec<u32>,
    /// Chain hash of each full block of `blocks` that is registered or was looked up.
    pub block_hashes: Vec<u64>,
    /// Prompt tokens served from the prefix cache at first admission.
    pub cached_tokens: usize,
    /// Whether it was ever admitted (usage and queue accounting).
    pub admitted: bool,
    /// Admission order: the largest is the youngest, preempted first.
    pub admitted_at: u64,
    pub max_new_tokens: usize,
    pub config: GenerationConfig,
    pub sampler: Sampler,
    pub text: TextStream<'t>,
    pub constraint: Option<Box<dyn TokenConstraint>>,
    pub logprobs: Option<usize>,
    /// The tool-call parser (`parse_tools`), and whether it produced a call.
    tools: Option<ToolCallParser>,
    called: bool,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    pub submitted: Instant,
    pub last_token: Option<Instant>,
}

/// What became of a sampled token.
pub(crate) enum Outcome {
    /// The sequence goes on.
    Continue,
    /// The sequence ended.
    Finished(FinishReason),
}

impl<'t> Sequence<'t> {
    /// A submitted request, not admitted yet. The sampler cannot fail: the request was
    /// validated at submit.
    pub fn new(submission: Submission, text: TextStream<'t>) -> Result<Self, (Submission, String)> {
        let sampler = match Sampler::new(submission.request.config.sampling.clone()) {
            Ok(s) => s,
            Err(e) => {
                let message = e.to_string();
                return Err((submission, message));
            }
        };
        let Submission {
            id,
            request,
            max_new_tokens,
            events,
            cancel,
            submitted,
        } = submission;
        Ok(Self {
            id,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            computed: 0,
            blocks: Vec::new(),
            block_hashes: Vec::new(),
            cached_tokens: 0,
            admitted: false,
            admitted_at: 0,
            max_new_tokens,
            config: request.config,
            sampler,
            text,
            constraint: request.constraint,
            logprobs: request.logprobs,
            tools: request.parse_tools.map(ToolCallParser::new),
            called: false,
            events,
            cancel,
            submitted,
            last_token: None,
        })
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run through the model before the next token can be sampled.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Whether the client cancelled or went away.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire) || self.events.is_closed()
    }

    /// Token counts for the finish event.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_tokens: self.cached_tokens,
        }
    }

    /// The last event and where it goes.
    pub fn into_finished(self, reason: FinishReason) -> (UnboundedSender<Event>, Event) {
        let usage = self.usage();
        (self.events, Event::Finished { reason, usage })
    }

    /// Masks `logits` with the constraint (if any) and samples the next token.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<(u32, Option<TokenLogprob>), String> {
        let logprob_top = self.logprobs;
        let log_probs = logprob_top.map(|_| log_softmax(logits));
        if let Some(constraint) = self.constraint.as_mut() {
            constraint.mask(logits).map_err(|e| e.to_string())?;
            if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
                return Err("the token constraint allows no token".into());
            }
        }
        let token = self.sampler.sample(logits, &self.tokens);
        if let Some(constraint) = self.constraint.as_mut() {
            constraint.commit(token).map_err(|e| e.to_string())?;
        }
        let logprob = match (logprob_top, log_probs) {
            (Some(top), Some(lp)) => Some(TokenLogprob {
                token,
                logprob: lp[token as usize],
                top: top_k(&lp, top),
            }),
            _ => None,
        };
        Ok((token, logprob))
    }

    /// Appends a sampled token, streams its event and applies the stop conditions in the order
    /// `generate` does: stop token, stop string, length; then a complete constraint.
    pub fn accept(
        &mut self,
        token: u32,
        logprob: Option<TokenLogprob>,
        now: Instant,
    ) -> Result<Outcome, String> {
        self.tokens.push(token);
        let stops = &self.config.stop_strings;
        let mut finished = None;
        let delta = if self.config.stop_token_ids.contains(&token) {
            finished = Some(FinishReason::Stop(StopKind::Token(token)));
            self.text.finish(stops)
        } else {
            let (mut delta, stop) = self.text.push(token, stops).map_err(|e| e.to_string())?;
            if let Some(stop) = stop {
                finished = Some(FinishReason::Stop(StopKind::String(stop)));
            } else if self.generated() >= self.max_new_tokens {
                finished = Some(FinishReason::Length);
                delta.push_str(&self.text.finish(stops));
            } else if self.constraint.as_ref().is_some_and(|c| c.is_complete()) {
                finished = Some(FinishReason::Stop(StopKind::Constraint));
                delta.push_str(&self.text.finish(stops));
            }
            delta
        };
        self.last_token = Some(now);
        let Some(parser) = self.tools.as_mut() else {
            let _ = self.events.send(Event::Token {
                token,
                delta,
                logprob,
            });
            return Ok(finished.map_or(Outcome::Continue, Outcome::Finished));
        };
        // Content stays in this token's delta; complete calls follow it as their own events.
        let mut items = parser.push(&delta);
        if finished.is_some() {
            items.extend(parser.finish());
        }
        let content: String = items.iter().filter_map(Parsed::text).collect();
        let _ = self.events.send(Event::Token {
            token,
            delta: content,
            logprob,
        });
        for item in items {
            if let Parsed::Call(call) = item {
                self.called = true;
                let _ = self.events.send(Event::ToolCall(call));
            }
        }
        Ok(match finished {
            Some(FinishReason::Stop(_)) if self.called => {
                Outcome::Finished(FinishReason::ToolCalls)
            }
            Some(reason) => Outcome::Finished(reason),
            None => Outcome::Continue,
        })
    }
}

/// `log(softmax(logits))`, in f64 sums for the normaliser.
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_sum = sum.ln() as f32;
    logits.iter().map(|&x| x - max - log_sum).collect()
}

/// The `k` largest entries, largest first (ties: lower id first).
pub(crate) fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let mut ids: Vec<u32> = (0..values.len() as u32).collect();
    let order = |a: &u32, b: &u32| {
        values[*b as usize]
            .total_cmp(&values[*a as usize])
            .then(a.cmp(b))
    };
    ids.select_nth_unstable_by(k - 1, order);
    ids.truncate(k);
    ids.sort_unstable_by(order);
    ids.into_iter().map(|i| (i, values[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_by_hand() {
        // ln(1/4), ln(3/4) for logits 0, ln 3.
        let lp = log_softmax(&[0.0, 3f32.ln()]);
        assert!((lp[0] - 0.25f32.ln()).abs() < 1e-6);
        assert!((lp[1] - 0.75f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn top_k_is_sorted_and_bounded() {
        let v = [0.1, 0.9, 0.5, 0.9, -1.0];
        assert_eq!(top_k(&v, 3), vec![(1, 0.9), (3, 0.9), (2, 0.5)]);
        assert_eq!(top_k(&v, 0), vec![]);
        assert_eq!(top_k(&v, 10).len(), 5);
    }
}
