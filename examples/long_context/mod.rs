//! `bench --long-context 4096,8192,...`: prefill time and peak memory of long prompts.
//!
//! Each length runs in a fresh process (this executable with the hidden `--long-context-one`),
//! which builds the model with random weights, reads its resident set (weights and runtime),
//! resets the high-water mark (`/proc/self/clear_refs`), prefills the prompt into a KV cache
//! sized to it with [`internlm2::prefill::prefill`], and reports the new high-water mark. The
//! parent prints, per length, the peak minus the pre-prefill resident set beside the KV-cache
//! bytes the config implies (`2 x layers x kv_heads x head_dim x tokens x dtype bytes`): with
//! chunked prefill the difference is the KV cache plus O(chunk x context) work space, so it
//! grows linearly; time grows quadratically (attention).

use std::process::Command;
use std::time::Instant;

use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Kernels;
use internlm2::backends::device::BackendTask;
use internlm2::prefill::prefill;
use internlm2::{ForwardInput, InternLM2, InternLM2Config, KvCache};
use serde::{Deserialize, Serialize};

/// What one process measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct LongContextPoint {
    /// Prompt tokens.
    pub tokens: usize,
    /// Prefill chunk (0 = the whole prompt in one forward pass).
    pub chunk: usize,
    /// Seconds of the prefill.
    pub prefill_s: f64,
    /// Resident set before the prefill (weights and runtime), bytes.
    pub rss_before: u64,
    /// High-water mark during the prefill, bytes.
    pub peak: u64,
    /// Whether the high-water mark was reset before the prefill.
    pub reset: bool,
}

/// `VmRSS` or `VmHWM` of this process in bytes (Linux).
fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the resident-set high-water mark (Linux 4.0+: write 5 to clear_refs).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The measurement inside the child process.
pub struct One {
    /// Model shape.
    pub config: InternLM2Config,
    /// Compute dtype.
    pub dtype: DType,
    /// Prompt tokens.
    pub tokens: usize,
    /// Prefill chunk (0 = whole prompt).
    pub chunk: usize,
}

impl BackendTask for One {
    type Output = LongContextPoint;

    fn run<B: Kernels>(self, device: B::Device) -> LongContextPoint {
        let model = InternLM2::<B>::init_with_dtype(&self.config, self.dtype, &device);
        let vocab = self.config.vocab_size as i64;
        let ids: Vec<i64> = (0..self.tokens as i64)
            .map(|i| 3 + (i * 7919) % (vocab - 3))
            .collect();
        // Warm-up (thread pool, allocator) on a short prompt.
        let warm =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids[..8].to_vec(), [1, 8]), &device);
        let _ = model
            .forward_input(ForwardInput::new(warm).with_last_logits_only(true))
            .into_data();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, self.tokens]), &device);
        let mut cache = KvCache::new(&self.config, 1, self.tokens);
        let rss_before = status_bytes("VmRSS:").unwrap_or(0);
        let reset = reset_peak();
        let started = Instant::now();
        let input = ForwardInput::new(ids);
        let logits = if self.chunk == 0 {
            model
                .forward_cache(input.with_last_logits_only(true), &mut cache)
                .reshape([1, self.config.vocab_size])
        } else {
            prefill(&model, input, &mut cache, self.chunk)
        };
        let _ = logits.argmax(1).into_data(); // wait for the device
        let prefill_s = started.elapsed().as_secs_f64();
        LongContextPoint {
            tokens: self.tokens,
            chunk: self.chunk,
            prefill_s,
            rss_before,
            peak: status_bytes("VmHWM:").unwrap_or(0),
            reset,
        }
    }
}

/// KV-cache bytes of `tokens` tokens.
pub fn kv_bytes(config: &InternLM2Config, tokens: usize, dtype: DType) -> u64 {
    (2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim() * tokens) as u64
        * dtype.size() as u64
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / (1u64 << 20) as f64)
}

/// Runs every length (and chunk) in a fresh process and prints the table. `forward` holds the
/// arguments the children need (`--config`, `--device`, `--dtype`).
pub fn run_all(
    config: &InternLM2Config,
    config_name: &str,
    dtype: DType,
    lengths: &[usize],
    chunks: &[usize],
    forward: &[String],
    device_name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut points = Vec::new();
    for &tokens in lengths {
        for &chunk in chunks {
            eprintln!("long context: {tokens} tokens, chunk {chunk} ...");
            let output = Command::new(&exe)
                .args(forward)
                .arg("--long-context-one")
                .arg(tokens.to_string())
                .arg("--prefill-chunk")
                .arg(chunk.to_string())
                .output()?;
            if !output.status.success() {
                return Err(format!(
                    "the {tokens}-token run failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            }
            let line = String::from_utf8(output.stdout)?;
            let point: LongContextPoint = serde_json::from_str(line.trim())?;
            points.push(point);
        }
    }
    println!(
        "long-context prefill, {config_name} ({:.1}M parameters), {device_name}, {dtype:?}; one fresh process per row",
        config.num_parameters() as f64 / 1e6
    );
    println!(
        "| tokens | chunk | prefill s | tok/s | RSS before (weights) | peak RSS | peak - before | KV cache (expected) | (peak - before) / KV |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for p in &points {
        let kv = kv_bytes(config, p.tokens, dtype) as f64;
        let extra = p.peak.saturating_sub(p.rss_before) as f64;
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {:.2} |",
            p.tokens,
            if p.chunk == 0 {
                "whole".to_string()
            } else {
                p.chunk.to_string()
            },
            p.prefill_s,
            p.tokens as f64 / p.prefill_s,
            mib(p.rss_before as f64),
            mib(p.peak as f64),
            mib(extra),
            mib(kv),
            extra / kv
        );
    }
    if points.iter().any(|p| !p.reset) {
        println!("(the high-water mark could not be reset: peaks include model initialisation)");
    }
    Ok(())
}
