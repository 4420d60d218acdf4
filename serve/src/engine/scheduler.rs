//! Which sequences run in the next step, and with how many tokens.
//!
//! Every step, oldest first: each running sequence that decodes gets its one token; each
//! sequence still reading its prompt gets a chunk of it, at most
//! [`EngineConfig::prefill_chunk`] prompt tokens per step in all, so decoding never waits
//! for a long prompt. Then waiting requests join, oldest first, while the batch has room,
//! the prompt budget is not spent and the pool has blocks for their first chunk; a joining
//! prompt first takes the registered blocks of its longest cached prefix. When a running
//! sequence needs a block and none is free, the youngest running sequence is preempted: its
//! blocks are released (its full blocks stay in the prefix cache) and it waits at the head of
//! the queue to be recomputed, with its sampler, text and tokens kept.

use std::collections::VecDeque;

use internlm2::model::rope::Rope;

use super::blocks::{BlockPool, ROOT_HASH};
use super::config::EngineConfig;
use super::metrics::Recorder;
use super::sequence::Sequence;

/// One scheduled piece of work: `len` tokens of `running[index]`, starting at its
/// `computed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scheduled {
    pub index: usize,
    pub len: usize,
}

/// The queues and the block pool.
pub(crate) struct Scheduler<'t> {
    pub waiting: VecDeque<Sequence<'t>>,
    /// In admission order: the last one is the youngest.
    pub running: Vec<Sequence<'t>>,
    pub pool: BlockPool,
    block_size: usize,
    max_running: usize,
    prefill_chunk: usize,
    prefix_caching: bool,
    rope: Rope,
    admissions: u64,
}

impl<'t> Scheduler<'t> {
    pub fn new(config: &EngineConfig, blocks: usize, rope: Rope) -> Self {
        Self {
            waiting: VecDeque::new(),
            running: Vec::new(),
            pool: BlockPool::new(blocks),
            block_size: config.block_size,
            max_running: config.max_running,
            prefill_chunk: config.prefill_chunk,
            prefix_caching: config.prefix_caching,
            rope,
            admissions: 0,
        }
    }

    /// Whether there is nothing to do.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Plans the next step (see the module docs).
    pub fn schedule(&mut self, recorder: &mut Recorder) -> Vec<Scheduled> {
        let mut plan = Vec::new();
        let mut budget = self.prefill_chunk;
        let mut i = 0;
        while i < self.running.len() {
            let pending = self.running[i].pending();
            let len = if pending <= 1 {
                pending
            } else {
                pending.min(budget)
            };
            if len == 0 {
                i += 1;
                continue;
            }
            if self.reserve(i, len) {
                if pending > 1 {
                    budget -= len;
                }
                plan.push(Scheduled { index: i, len });
                i += 1;
            } else {
                // Free the youngest sequence's blocks; if that is this one, it waits.
                let victim = self.running.len() - 1;
                self.preempt(victim, recorder);
            }
        }
        while self.running.len() < self.max_running && budget > 0 {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            self.take_cached_prefix(&mut seq, recorder);
            let pending = seq.pending();
            let len = if pending <= 1 {
                pending
            } else {
                pending.min(budget)
            };
            let needed = self.blocks_needed(&seq, len);
            // Admit only with room to spare for the running sequences' next blocks.
            let reserve = self.running.len().div_ceil(self.block_size.max(1));
            if self.pool.available() < needed + reserve && !self.running.is_empty()
                || self.pool.available() < needed
            {
                self.pool.release_all(&seq.blocks);
                seq.blocks.clear();
                seq.block_hashes.clear();
                seq.computed = 0;
                self.waiting.push_front(seq);
                break;
            }
            if !seq.admitted {
                seq.admitted = true;
                seq.cached_tokens = seq.computed;
                recorder.prompt_tokens_total += seq.prompt_len as u64;
            }
            self.admissions += 1;
            seq.admitted_at = self.admissions;
            self.running.push(seq);
            let index = self.running.len() - 1;
            let reserved = self.reserve(index, len);
            debug_assert!(reserved, "checked above");
            if pending > 1 {
                budget -= len;
            }
            plan.push(Scheduled { index, len });
        }
        plan
    }

    fn blocks_needed(&self, seq: &Sequence<'_>, len: usize) -> usize {
        (seq.computed + len)
            .div_ceil(self.block_size)
            .saturating_sub(seq.blocks.len())
    }

    /// Gives `running[index]` the blocks for `len` more tokens; `false` if the pool is short.
    fn reserve(&mut self, index: usize, len: usize) -> bool {
        let needed = self.blocks_needed(&self.running[index], len);
        if self.pool.available() < needed {
            return false;
        }
        for _ in 0..needed {
            let block = self.pool.allocate().expect("counted above");
            self.running[index].blocks.push(block);
        }
        true
    }

    /// Releases `running[index]`'s blocks and puts it at the head of the queue.
    fn preempt(&mut self, index: usize, recorder: &mut Recorder) {
        let mut seq = self.running.remove(index);
        self.pool.release_all(&seq.blocks);
        seq.blocks.clear();
        seq.block_hashes.clear();
        seq.computed = 0;
        recorder.preemptions += 1;
        log::debug!("preempted request {} ({} tokens)", seq.id, seq.tokens.len());
        self.waiting.push_front(seq);
    }

    /// Takes the registered blocks of the longest cached prefix of a sequence that holds no
    /// blocks; the last token is always recomputed (its logits are needed), so at most
    /// `(len - 1) / block_size` blocks.
    fn take_cached_prefix(&mut self, seq: &mut Sequence<'_>, recorder: &mut Recorder) {
        if !self.prefix_caching || !seq.blocks.is_empty() {
            return;
        }
        let bs = self.block_size;
        let full = (seq.tokens.len() - 1) / bs;
        let mut parent = ROOT_HASH;
        for b in 0..full {
            let extra = rope_extra(&self.rope, bs, seq.prompt_len, b);
            let tokens = &seq.tokens[b * bs..(b + 1) * bs];
            match self.pool.lookup(parent, tokens, extra) {
                Some((block, hash)) => {
                    seq.blocks.push(block);
                    seq.block_hashes.push(hash);
                    parent = hash;
                }
                None => break,
            }
        }
        seq.computed = seq.blocks.len() * bs;
        recorder.prefix_cache_query_tokens += seq.tokens.len() as u64;
        recorder.prefix_cache_hit_tokens += seq.computed as u64;
    }

    /// After a step computed `len` more tokens of `running[index]`: registers the blocks
    /// that became full.
    pub fn computed(&mut self, index: usize, len: usize) {
        let bs = self.block_size;
        let seq = &mut self.running[index];
        seq.computed += len;
        if !self.prefix_caching {
            return;
        }
        let full = seq.computed / bs;
        while seq.block_hashes.len() < full {
            let b = seq.block_hashes.len();
            let parent = seq.block_hashes.last().copied().unwrap_or(ROOT_HASH);
            let extra = rope_extra(&self.rope, bs, seq.prompt_len, b);
            let hash = self.pool.register(
                seq.blocks[b],
                parent,
                &seq.tokens[b * bs..(b + 1) * bs],
                extra,
            );
            seq.block_hashes.push(hash);
        }
    }

    /// Removes a sequence that finished and releases its blocks.
    pub fn remove(&mut self, index: usize) -> Sequence<'t> {
        let seq = self.running.remove(index);
        self.pool.release_all(&seq.blocks);
        seq
    }
}

/// The RoPE length of a token at `pos` of a sequence with a `prompt_len`-token prompt: what
/// `generate` uses when the sequence runs alone (the prompt's length for every prompt token,
/// the sequence's length so far for each generated one).
pub(crate) fn rope_length(prompt_len: usize, pos: usize) -> usize {
    prompt_len.max(pos + 1)
}

/// What the keys of block `block` of a sequence depend on besides its tokens: the RoPE bases
/// of its tokens (0 while every one is the configured base).
fn rope_extra(rope: &Rope, block_size: usize, prompt_len: usize, block: usize) -> u64 {
    let theta = rope.theta.to_bits();
    let start = block * block_size;
    let mut differs = false;
    let mut folded = 0u64;
    for pos in start..start + block_size {
        let bits = rope.base(rope_length(prompt_len, pos)).to_bits();
        differs |= bits != theta;
        folded = folded.rotate_left(7) ^ bits;
    }
    if differs {
        BlockPool::chain_hash(theta, &[], folded)
    } else {
        0
    }
}
