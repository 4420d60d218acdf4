//! What the engine reports about itself: queue sizes, KV-pool use, prefix-cache hits, token
//! throughput, time to first token and inter-token latency.
//!
//! The worker records into a [`Recorder`] and publishes an [`EngineMetrics`] snapshot after
//! every step; [`EngineHandle::metrics`](super::EngineHandle::metrics) returns the latest one.
//! Latency percentiles are computed over the most recent [`WINDOW`] samples.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::request::FinishReason;

/// Latency samples kept for the percentiles.
pub const WINDOW: usize = 4096;

/// Seconds over which `tokens_per_second` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A latency distribution: count and sum over all time, percentiles over the recent window.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct LatencySummary {
    /// Samples since the start.
    pub count: u64,
    /// Sum of all samples, in seconds.
    pub sum_seconds: f64,
    /// Median of the recent samples, in seconds (0 without samples).
    pub p50_seconds: f64,
    /// 99th percentile of the recent samples, in seconds (0 without samples).
    pub p99_seconds: f64,
}

/// Requests finished, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct FinishCounts {
    /// Stop token, stop string or complete constraint.
    pub stop: u64,
    /// `max_new_tokens` reached.
    pub length: u64,
    /// Ended with tool calls.
    pub tool_calls: u64,
    /// Cancelled by the client or by shutdown.
    pub cancelled: u64,
    /// Failed inside the engine.
    pub error: u64,
}

/// A snapshot of the engine's state and counters.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct EngineMetrics {
    /// Sequences in the running batch (prefilling or decoding).
    pub running: usize,
    /// Requests waiting to start (or to resume after preemption).
    pub waiting: usize,
    /// KV blocks held by sequences.
    pub kv_blocks_used: usize,
    /// KV blocks in the pool.
    pub kv_blocks_total: usize,
    /// Tokens per KV block.
    pub kv_block_size: usize,
    /// Prompt tokens served from the prefix cache.
    pub prefix_cache_hit_tokens: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_query_tokens: u64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens_total: u64,
    /// Tokens generated.
    pub generation_tokens_total: u64,
    /// Tokens generated per second over the last ten seconds.
    pub tokens_per_second: f64,
    /// Time from submit to the first token.
    pub ttft: LatencySummary,
    /// Time between consecutive tokens of a request.
    pub inter_token_latency: LatencySummary,
    /// Requests finished, by reason.
    pub requests_finished: FinishCounts,
    /// Sequences preempted (their KV freed, to be recomputed later).
    pub preemptions: u64,
    /// Forward passes run.
    pub steps: u64,
}

/// Fixed-size window of recent samples plus all-time count and sum.
#[derive(Debug, Default)]
struct Samples {
    recent: VecDeque<f64>,
    count: u64,
    sum: f64,
}

impl Samples {
    fn push(&mut self, seconds: f64) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(seconds);
        self.count += 1;
        self.sum += seconds;
    }

    fn summary(&self) -> LatencySummary {
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        LatencySummary {
            count: self.count,
            sum_seconds: self.sum,
            p50_seconds: percentile(&sorted, 0.50),
            p99_seconds: percentile(&sorted, 0.99),
        }
    }
}

/// The `q` quantile of sorted samples (nearest rank), 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The worker's counters (not shared; snapshots are).
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub prefix_cache_hit_tokens: u64,
    pub prefix_cache_query_tokens: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub preemptions: u64,
    pub steps: u64,
    pub finished: FinishCounts,
    ttft: Samples,
    itl: Samples,
    /// (time, tokens generated in that step) over the rate window.
    rate: VecDeque<(Instant, usize)>,
}

impl Recorder {
    pub fn first_token(&mut self, since_submit: Duration) {
        self.ttft.push(since_submit.as_secs_f64());
    }

    pub fn next_token(&mut self, since_previous: Duration) {
        self.itl.push(since_previous.as_secs_f64());
    }

    pub fn generated(&mut self, now: Instant, tokens: usize) {
        self.generation_tokens_total += tokens as u64;
        self.rate.push_back((now, tokens));
        while self
            .rate
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.rate.pop_front();
        }
    }

    pub fn finish(&mut self, reason: &FinishReason) {
        let f = &mut self.finished;
        match reason {
            FinishReason::Stop(_) => f.stop += 1,
            FinishReason::Length => f.length += 1,
            FinishReason::ToolCalls => f.tool_calls += 1,
            FinishReason::Cancelled => f.cancelled += 1,
            FinishReason::Error(_) => f.error += 1,
        }
    }

    fn tokens_per_second(&self, now: Instant) -> f64 {
        let Some((first, _)) = self.rate.front() else {
            return 0.0;
        };
        let tokens: usize = self.rate.iter().map(|(_, n)| n).sum();
        let span = now.duration_since(*first).as_secs_f64();
        if span <= 0.0 {
            0.0
        } else {
            tokens as f64 / span
        }
    }

    /// A snapshot, with the gauges the worker knows.
    pub fn snapshot(
        &self,
        running: usize,
        waiting: usize,
        blocks: (usize, usize, usize),
    ) -> EngineMetrics {
        let (kv_blocks_used, kv_blocks_total, kv_block_size) = blocks;
        EngineMetrics {
            running,
            waiting,
            kv_blocks_used,
            kv_blocks_total,
            kv_block_size,
            prefix_cache_hit_tokens: self.prefix_cache_hit_tokens,
            prefix_cache_query_tokens: self.prefix_cache_query_tokens,
            prompt_tokens_total: self.prompt_tokens_total,
            generation_tokens_total: self.generation_tokens_total,
            tokens_per_second: self.tokens_per_second(Instant::now()),
            ttft: self.ttft.summary(),
            inter_token_latency: self.itl.summary(),
            requests_finished: self.finished,
            preemptions: self.preemptions,
            steps: self.steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn summaries_count_everything_and_window_the_percentiles() {
        let mut s = Samples::default();
        for i in 0..(WINDOW + 10) {
            s.push(i as f64);
        }
        let summary = s.summary();
        assert_eq!(summary.count, (WINDOW + 10) as u64);
        // The ten oldest samples left the window.
        assert_eq!(summary.p50_seconds, (10 + WINDOW / 2 - 1) as f64);
    }
}
