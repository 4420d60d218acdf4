//! The worker thread: owns the model and the KV pool, admits requests, runs one forward pass
//! per step over every scheduled sequence, samples, and streams events back.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use internlm2::backends::Kernels;
use internlm2::cache::PagedKvCache;
use internlm2::generate::TextStream;
use internlm2::model::rope::Rope;
use internlm2::{InternLM2, Tokenizer};

use super::config::EngineConfig;
use super::error::EngineError;
use super::handle::{Command, Submission};
use super::metrics::{EngineMetrics, Recorder};
use super::request::{Event, FinishReason, Usage};
use super::scheduler::Scheduler;
use super::sequence::{Outcome, Sequence};
use super::step;

/// The KV pool's size, checked against the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Blocks in the pool.
    pub blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
}

impl Plan {
    /// Sizes the pool from the budget; refuses settings that cannot work.
    pub fn new<B: Kernels>(
        model: &InternLM2<B>,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let bad = |param, reason: &str| {
            Err(EngineError::InvalidConfig {
                param,
                reason: reason.to_string(),
            })
        };
        if config.block_size == 0 {
            return bad("block_size", "a block holds at least one token");
        }
        if config.max_running == 0 {
            return bad("max_running", "at least one sequence must run");
        }
        if config.prefill_chunk == 0 {
            return bad("prefill_chunk", "a step reads at least one prompt token");
        }
        let c = model.config();
        let per_block = [
            c.num_hidden_layers,
            2,
            c.num_key_value_heads,
            config.block_size,
            c.head_dim(),
            model.dtype().size(),
        ]
        .into_iter()
        .try_fold(1usize, usize::checked_mul);
        let Some(per_block) = per_block else {
            return bad("block_size", "one block's size overflows");
        };
        let blocks = config.kv_memory_bytes / per_block.max(1);
        if blocks == 0 {
            return Err(EngineError::InvalidConfig {
                param: "kv_memory_bytes",
                reason: format!(
                    "{} bytes hold no KV block (one block of {} tokens takes {per_block} bytes)",
                    config.kv_memory_bytes, config.block_size
                ),
            });
        }
        if blocks > u32::MAX as usize {
            return bad("kv_memory_bytes", "more than 2^32 blocks");
        }
        Ok(Self {
            blocks,
            block_size: config.block_size,
        })
    }

    /// Token slots in the pool.
    pub fn pool_tokens(&self) -> usize {
        self.blocks.saturating_mul(self.block_size)
    }
}

/// Starts the worker thread and waits until it has allocated the KV pool (a pool that cannot
/// be allocated is an error here, not a failure of the first request).
pub(crate) fn spawn<B: Kernels>(
    model: InternLM2<B>,
    tokenizer: Option<Arc<Tokenizer>>,
    config: EngineConfig,
    plan: Plan,
    commands: Receiver<Command>,
    metrics: Arc<Mutex<EngineMetrics>>,
    queued: Arc<AtomicUsize>,
) -> Result<JoinHandle<()>, EngineError> {
    let (ready, started) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("internlm2-engine".into())
        .spawn(move || {
            let mut worker =
                Worker::new(&model, tokenizer.as_deref(), &config, plan, metrics, queued);
            let allocated = worker.cache.is_some();
            let _ = ready.send(allocated);
            if allocated {
                worker.run(commands);
            }
        })
        .map_err(|e| EngineError::InvalidConfig {
            param: "worker",
            reason: format!("cannot start the worker thread: {e}"),
        })?;
    if started.recv() == Ok(true) {
        Ok(worker)
    } else {
        let _ = worker.join();
        Err(EngineError::InvalidConfig {
            param: "kv_memory_bytes",
            reason: format!(
                "allocating a KV pool of {} blocks of {} tokens failed",
                plan.blocks, plan.block_size
            ),
        })
    }
}

/// The worker's state; `'a` borrows the model and the tokenizer the thread owns.
struct Worker<'a, B: Kernels> {
    model: &'a InternLM2<B>,
    tokenizer: Option<&'a Tokenizer>,
    /// `None` when a failed step left no usable pool and rebuilding it failed too.
    cache: Option<PagedKvCache<B>>,
    plan: Plan,
    scheduler: Scheduler<'a>,
    recorder: Recorder,
    metrics: Arc<Mutex<EngineMetrics>>,
    queued: Arc<AtomicUsize>,
    /// Finish events held back until the metrics that count them are published.
    outbox: Vec<(UnboundedSender<Event>, Event)>,
    /// A shutdown was asked for: accept nothing, finish what runs.
    stopping: bool,
    /// Stop at once.
    abort: bool,
}

impl<'a, B: Kernels> Worker<'a, B> {
    fn new(
        model: &'a InternLM2<B>,
        tokenizer: Option<&'a Tokenizer>,
        config: &EngineConfig,
        plan: Plan,
        metrics: Arc<Mutex<EngineMetrics>>,
        queued: Arc<AtomicUsize>,
    ) -> Self {
        let cache = Self::allocate(model, plan);
        Self {
            model,
            tokenizer,
            cache,
            plan,
            scheduler: Scheduler::new(config, plan.blocks, Rope::from_config(model.config())),
            recorder: Recorder::default(),
            metrics,
            queued,
            outbox: Vec::new(),
            stopping: false,
            abort: false,
        }
    }

    /// The KV pools; `None` if allocating them failed.
    fn allocate(model: &InternLM2<B>, plan: Plan) -> Option<PagedKvCache<B>> {
        let allocated = catch_unwind(AssertUnwindSafe(|| {
            PagedKvCache::new(
                model.config(),
                plan.blocks,
                plan.block_size,
                model.dtype(),
                &model.device(),
            )
        }));
        match allocated {
            Ok(cache) => Some(cache),
            Err(panic) => {
                log::error!("allocating the KV pool failed: {}", panic_message(&*panic));
                None
            }
        }
    }

    fn run(&mut self, commands: Receiver<Command>) {
        loop {
            if self.scheduler.is_idle() && !self.abort {
                if self.stopping {
                    break;
                }
                self.settle();
                match commands.recv() {
                    Ok(command) => self.command(command),
                    Err(_) => break, // every handle is gone
                }
            }
            while let Ok(command) = commands.try_recv() {
                self.command(command);
            }
            if self.abort {
                self.cancel_all();
                break;
            }
            self.reap_cancelled();
            if self.scheduler.is_idle() {
                continue;
            }
            // On a thread of the CPU kernels' pool (see `on_cpu_threads`).
            let stepped = internlm2::backends::on_cpu_threads(|| {
                catch_unwind(AssertUnwindSafe(|| self.step())).map_err(|p| panic_message(&*p))
            });
            if let Err(message) = stepped {
                self.recover(&message);
            }
            self.settle();
        }
        // Requests that raced with the stop.
        while let Ok(command) = commands.try_recv() {
            if let Command::Submit(submission) = command {
                self.refuse(*submission, FinishReason::Cancelled);
            }
        }
        self.settle();
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit(submission) => self.admit_request(*submission),
            Command::Wake => {}
            Command::Shutdown { drain } => {
                self.stopping = true;
                self.abort |= !drain;
                // Requests that never started are cancelled; started ones finish.
                let waiting = std::mem::take(&mut self.scheduler.waiting);
                for seq in waiting {
                    if seq.admitted && !self.abort {
                        self.scheduler.waiting.push_back(seq);
                    } else {
                        self.finish(seq, FinishReason::Cancelled);
                    }
                }
            }
        }
    }

    fn admit_request(&mut self, submission: Submission) {
        if self.stopping {
            self.refuse(submission, FinishReason::Cancelled);
            return;
        }
        match Sequence::new(submission, TextStream::new(self.tokenizer)) {
            Ok(seq) if seq.max_new_tokens == 0 => self.finish(seq, FinishReason::Length),
            Ok(seq) => self.scheduler.waiting.push_back(seq),
            Err((submission, message)) => self.refuse(submission, FinishReason::Error(message)),
        }
    }

    /// Ends a request that never became a sequence.
    fn refuse(&mut self, submission: Submission, reason: FinishReason) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.recorder.finish(&reason);
        let usage = Usage {
            prompt_tokens: submission.request.prompt.len(),
            ..Usage::default()
        };
        self.outbox
            .push((submission.events, Event::Finished { reason, usage }));
    }

    /// Ends a sequence that holds no blocks.
    fn finish(&mut self, seq: Sequence<'a>, reason: FinishReason) {
        if !seq.admitted {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        self.recorder.finish(&reason);
        self.outbox.push(seq.into_finished(reason));
    }

    fn cancel_all(&mut self) {
        while !self.scheduler.running.is_empty() {
            let seq = self.scheduler.remove(self.scheduler.running.len() - 1);
            self.finish(seq, FinishReason::Cancelled);
        }
        while let Some(seq) = self.scheduler.waiting.pop_front() {
            self.finish(seq, FinishReason::Cancelled);
        }
    }

    fn reap_cancelled(&mut self) {
        let mut i = 0;
        while i < self.scheduler.running.len() {
            if self.scheduler.running[i].cancelled() {
                let seq = self.scheduler.remove(i);
                self.finish(seq, FinishReason::Cancelled);
            } else {
                i += 1;
            }
        }
        let waiting = std::mem::take(&mut self.scheduler.waiting);
        for seq in waiting {
            if seq.cancelled() {
                self.finish(seq, FinishReason::Cancelled);
            } else {
                self.scheduler.waiting.push_back(seq);
            }
        }
    }

    /// Schedules, runs one forward pass, samples, streams, retires finished sequences.
    fn step(&mut self) {
        let waiting_before = self
            .scheduler
            .waiting
            .iter()
            .filter(|s| !s.admitted)
            .count();
        let plan = self.scheduler.schedule(&mut self.recorder);
        let waiting_after = self
            .scheduler
            .waiting
            .iter()
            .filter(|s| !s.admitted)
            .count();
        self.queued
            .fetch_sub(waiting_before - waiting_after, Ordering::AcqRel);
        if plan.is_empty() {
            // Nothing fits (cannot happen with a validated pool size); do not spin.
            std::thread::yield_now();
            return;
        }
        let cache = self.cache.as_mut().expect("a worker without a pool stops");
        let mut logits = step::forward(self.model, cache, &self.scheduler.running, &plan);
        for s in &plan {
            self.scheduler.computed(s.index, s.len);
        }
        self.recorder.steps += 1;
        let now = Instant::now();
        let vocab = logits.vocab;
        let mut ended = Vec::new();
        let mut produced = 0;
        let rows = logits.samplers.len();
        if vocab == 0 || logits.values.len() < rows.saturating_mul(vocab) {
            for &p in &logits.samplers {
                let reason = FinishReason::Error("the model returned no logits".into());
                ended.push((plan[p].index, reason));
            }
        } else {
            // Every row's draw depends only on its own sequence (sampler, constraint, history)
            // and logits, so the rows are sampled on all cores at once; the tokens are the same
            // as one after the other. (Over a vocabulary of 92,544 a top-p draw is a few passes
            // and a partial sort per row: serial, it grows with the batch.)
            let mut slots: Vec<Option<&mut Sequence<'_>>> =
                self.scheduler.running.iter_mut().map(Some).collect();
            let jobs: Vec<(usize, &mut Sequence<'_>, &mut [f32])> = logits
                .samplers
                .iter()
                .zip(logits.values.chunks_mut(vocab))
                .filter_map(|(&p, values)| {
                    let index = plan[p].index;
                    let seq = slots.get_mut(index)?.take()?;
                    Some((index, seq, values))
                })
                .collect();
            let drawn: Vec<_> = jobs
                .into_par_iter()
                .map(|(index, seq, values)| {
                    let drawn = seq.sample(values);
                    (index, seq, drawn)
                })
                .collect();
            for (index, seq, drawn) in drawn {
                let outcome = drawn.and_then(|(token, logprob)| {
                    match seq.last_token {
                        None => self.recorder.first_token(now - seq.submitted),
                        Some(last) => self.recorder.next_token(now - last),
                    }
                    seq.accept(token, logprob, now)
                });
                produced += 1;
                match outcome {
                    Ok(Outcome::Continue) => {}
                    Ok(Outcome::Finished(reason)) => ended.push((index, reason)),
                    Err(message) => ended.push((index, FinishReason::Error(message))),
                }
            }
        }
        self.recorder.generated(now, produced);
        ended.sort_by_key(|(index, _)| std::cmp::Reverse(*index));
        for (index, reason) in ended {
            let seq = self.scheduler.remove(index);
            self.finish(seq, reason);
        }
    }

    /// A step panicked: the pools may hold anything. Fails the running requests, rebuilds the
    /// pool (the waiting ones restart from their tokens), or stops if that fails too.
    fn recover(&mut self, message: &str) {
        log::error!("engine step failed: {message}");
        let reason = FinishReason::Error(format!("the engine failed: {message}"));
        while !self.scheduler.running.is_empty() {
            let seq = self.scheduler.remove(self.scheduler.running.len() - 1);
            self.finish(seq, reason.clone());
        }
        self.scheduler.pool.reset();
        self.cache = None;
        self.cache = Self::allocate(self.model, self.plan);
        if self.cache.is_none() {
            self.abort = true;
        }
    }

    /// Publishes the metrics, then sends the finish events they count.
    fn settle(&mut self) {
        self.publish();
        for (events, event) in self.outbox.drain(..) {
            let _ = events.send(event);
        }
    }

    fn publish(&self) {
        let pool = &self.scheduler.pool;
        let snapshot = self.recorder.snapshot(
            self.scheduler.running.len(),
            self.scheduler.waiting.len(),
            (pool.used(), pool.total(), self.plan.block_size),
        );
        if let Ok(mut metrics) = self.metrics.lock() {
            *metrics = snapshot;
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
