//! `GET /metrics`: the engine's [`EngineMetrics`] in the Prometheus text format (version
//! 0.0.4), names prefixed `internlm2_`.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::engine::{EngineMetrics, LatencySummary};

/// The handler.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus_text(&state.engine().metrics()),
    )
        .into_response()
}

fn gauge(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP internlm2_{name} {help}");
    let _ = writeln!(out, "# TYPE internlm2_{name} {kind}");
    let _ = writeln!(out, "internlm2_{name} {value}");
}

fn summary(out: &mut String, name: &str, help: &str, s: &LatencySummary) {
    let _ = writeln!(out, "# HELP internlm2_{name} {help}");
    let _ = writeln!(out, "# TYPE internlm2_{name} summary");
    let _ = writeln!(
        out,
        "internlm2_{name}{{quantile=\"0.5\"}} {}",
        s.p50_seconds
    );
    let _ = writeln!(
        out,
        "internlm2_{name}{{quantile=\"0.99\"}} {}",
        s.p99_seconds
    );
    let _ = writeln!(out, "internlm2_{name}_sum {}", s.sum_seconds);
    let _ = writeln!(out, "internlm2_{name}_count {}", s.count);
}

/// Renders a metrics snapshot as Prometheus text.
///
/// ```
/// use internlm2_serve::engine::EngineMetrics;
/// let text = internlm2_serve::server::prometheus_text(&EngineMetrics::default());
/// assert!(text.contains("internlm2_kv_blocks_used 0\n"));
/// ```
pub fn prometheus_text(m: &EngineMetrics) -> String {
    let mut out = String::new();
    gauge(
        &mut out,
        "requests_running",
        "Sequences in the running batch.",
        "gauge",
        m.running,
    );
    gauge(
        &mut out,
        "requests_waiting",
        "Requests waiting to start or resume.",
        "gauge",
        m.waiting,
    );
    gauge(
        &mut out,
        "kv_blocks_used",
        "KV cache blocks held by sequences.",
        "gauge",
        m.kv_blocks_used,
    );
    gauge(
        &mut out,
        "kv_blocks_total",
        "KV cache blocks in the pool.",
        "gauge",
        m.kv_blocks_total,
    );
    gauge(
        &mut out,
        "kv_block_size_tokens",
        "Tokens per KV cache block.",
        "gauge",
        m.kv_block_size,
    );
    let usage = if m.kv_blocks_total == 0 {
        0.0
    } else {
        m.kv_blocks_used as f64 / m.kv_blocks_total as f64
    };
    gauge(
        &mut out,
        "kv_usage_ratio",
        "Fraction of the KV pool in use.",
        "gauge",
        usage,
    );
    gauge(
        &mut out,
        "prefix_cache_hit_tokens_total",
        "Prompt tokens served from the prefix cache.",
        "counter",
        m.prefix_cache_hit_tokens,
    );
    gauge(
        &mut out,
        "prefix_cache_query_tokens_total",
        "Prompt tokens looked up in the prefix cache.",
        "counter",
        m.prefix_cache_query_tokens,
    );
    gauge(
        &mut out,
        "prompt_tokens_total",
        "Prompt tokens of admitted requests.",
        "counter",
        m.prompt_tokens_total,
    );
    gauge(
        &mut out,
        "generation_tokens_total",
        "Tokens generated.",
        "counter",
        m.generation_tokens_total,
    );
    gauge(
        &mut out,
        "tokens_per_second",
        "Tokens generated per second over the last ten seconds.",
        "gauge",
        m.tokens_per_second,
    );
    summary(
        &mut out,
        "time_to_first_token_seconds",
        "Time from submit to the first token.",
        &m.ttft,
    );
    summary(
        &mut out,
        "inter_token_latency_seconds",
        "Time between consecutive tokens of a request.",
        &m.inter_token_latency,
    );
    let _ = writeln!(
        out,
        "# HELP internlm2_requests_finished_total Requests finished, by reason."
    );
    let _ = writeln!(out, "# TYPE internlm2_requests_finished_total counter");
    let f = &m.requests_finished;
    for (reason, count) in [
        ("stop", f.stop),
        ("length", f.length),
        ("tool_calls", f.tool_calls),
        ("cancelled", f.cancelled),
        ("error", f.error),
    ] {
        let _ = writeln!(
            out,
            "internlm2_requests_finished_total{{reason=\"{reason}\"}} {count}"
        );
    }
    gauge(
        &mut out,
        "preemptions_total",
        "Sequences preempted (KV freed, recomputed later).",
        "counter",
        m.preemptions,
    );
    gauge(
        &mut out,
        "engine_steps_total",
        "Forward passes run.",
        "counter",
        m.steps,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_a_comment_or_a_sample() {
        let mut m = EngineMetrics {
            running: 3,
            kv_blocks_used: 5,
            kv_blocks_total: 20,
            ..Default::default()
        };
        m.requests_finished.length = 7;
        m.ttft.count = 2;
        m.ttft.p99_seconds = 0.25;
        let text = prometheus_text(&m);
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP internlm2_")
                    || line.starts_with("# TYPE internlm2_")
                    || (line.starts_with("internlm2_")
                        && line.rsplit(' ').next().unwrap().parse::<f64>().is_ok()),
                "{line}"
            );
        }
        assert!(text.contains("internlm2_requests_running 3\n"));
        assert!(text.contains("internlm2_kv_usage_ratio 0.25\n"));
        assert!(text.contains("internlm2_requests_finished_total{reason=\"length\"} 7\n"));
        assert!(text.contains("internlm2_time_to_first_token_seconds{quantile=\"0.99\"} 0.25\n"));
        assert!(text.contains("internlm2_time_to_first_token_seconds_count 2\n"));
    }
}
