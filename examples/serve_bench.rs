//! Serving benchmark: the continuous-batching engine against the same requests run one at a
//! time through `internlm2::generate::generate`, on random weights on the CPU.
//!
//! ```text
//! cargo run --release --example serve_bench                 # the full run (minutes)
//! cargo run --release --example serve_bench -- --quick      # a smoke run (seconds)
//! cargo run --release --example serve_bench -- --concurrency 1,8,32 --requests-per-client 2
//! ```
//!
//! Workload (seeded): prompts of 256-1024 random tokens, 64-256 new tokens each, greedy (or,
//! with `--sampling chat`, InternLM2's chat sampling, temperature 0.8 and top-p 0.8, seeded per
//! request), no stop token (every request generates exactly its new tokens). Each concurrency level `c`
//! runs `c` clients that each submit a request, read its stream to the end and submit the
//! next; output tokens/s is all generated tokens over the wall time. The baseline runs the
//! same requests one after the other through `generate`; each level is compared with the
//! baseline over exactly its requests, and the engine's tokens are checked against
//! `generate`'s. Time to first token (TTFT) is from submit to the first token; inter-token
//! latency (ITL) is between consecutive tokens of a request. Prefix caching: a request with a
//! 1,000-token system prompt, then a second request with the same system prompt and another
//! question, on an idle engine (three system prompts, the medians); the ratio of their TTFTs.
//!
//! The `bound` column is the most speed-up the workload allows on this machine: a client's
//! requests run one after the other, so the engine needs at least as many steps as the client
//! that received the most tokens, each step costs at least a batch-1 decoding step (every
//! weight is read once either way), and the prompts cost the engine the same prefill as
//! `generate`. With prompts of 256-1024 tokens and 64-256 new ones, 8 clients and 2 requests
//! each, that is about 3.5x on a 2-core machine: a target above the bound needs longer
//! outputs, shorter prompts or more requests per client, not a faster engine.
//!
//! The table also gives the machine's measured limits (as `bench --limits` measures them):
//! the read bandwidth, which bounds one sequence's decoding (every weight read once per
//! token), and the matmul peak, which bounds prefill and batched decoding.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Tensor;
use clap::Parser;
use internlm2::backends::limits::{best_of_5, measure_matmul_flops};
use internlm2::backends::program::{ProgramResult, exit_code};
use internlm2::backends::{Cpu, Kernels};
use internlm2::generate::{GenerationConfig, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, InternLM2Config};
use internlm2_serve::engine::{Engine, EngineConfig, EngineHandle, Event, Request};

#[derive(Parser)]
#[command(about = "Continuous batching vs one request at a time (random weights, CPU)")]
struct Args {
    /// HuggingFace config.json of the model shape.
    #[arg(long, default_value = "benches/internlm2-140m.json")]
    config: PathBuf,
    /// A small, fast run (short prompts, few tokens) to check that everything works.
    #[arg(long)]
    quick: bool,
    /// Concurrency levels (clients submitting at the same time).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Requests per client at each level (at least 4 requests per level).
    #[arg(long, default_value_t = 2)]
    requests_per_client: usize,
    /// Run only the first N requests of the workload through the one-at-a-time baseline
    /// (default: every request the engine runs, so each level compares the same requests).
    #[arg(long)]
    baseline_requests: Option<usize>,
    /// KV pool of the engine, MiB.
    #[arg(long, default_value_t = 768)]
    kv_memory_mib: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip measuring the machine's limits.
    #[arg(long)]
    no_limits: bool,
    /// How tokens are chosen: `greedy`, or `chat` (temperature 0.8, top-p 0.8, a seed per
    /// request: what a chat client gets by default).
    #[arg(long, default_value = "greedy")]
    sampling: Sampling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Sampling {
    Greedy,
    Chat,
}

/// One request of the workload.
#[derive(Debug, Clone)]
struct Job {
    prompt: Vec<u32>,
    new_tokens: usize,
    sampling: SamplingConfig,
}

/// What a set of requests measured.
#[derive(Debug, Default)]
struct Run {
    requests: usize,
    tokens: usize,
    wall: Duration,
    ttft: Vec<f64>,
    itl: Vec<f64>,
}

impl Run {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.wall.as_secs_f64()
    }

    /// Runs one after the other: their tokens over the sum of their times.
    fn sequential(runs: &[Run]) -> Run {
        let mut all = Run::default();
        for run in runs {
            all.requests += run.requests;
            all.tokens += run.tokens;
            all.wall += run.wall;
            all.ttft.extend(&run.ttft);
            all.itl.extend(&run.itl);
        }
        all
    }
}

/// SplitMix64: the workload needs no RNG crate state.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.range(3, vocab - 1) as u32).collect()
    }
}

fn workload(n: usize, quick: bool, vocab: usize, sampling: Sampling, rng: &mut Rng) -> Vec<Job> {
    let (prompt, new) = if quick {
        ((32, 96), (8, 24))
    } else {
        ((256, 1024), (64, 256))
    };
    (0..n)
        .map(|_| {
            let len = rng.range(prompt.0, prompt.1);
            let seed = rng.next();
            Job {
                prompt: rng.tokens(len, vocab),
                new_tokens: rng.range(new.0, new.1),
                sampling: match sampling {
                    Sampling::Greedy => SamplingConfig::greedy(),
                    Sampling::Chat => SamplingConfig::new().with_seed(seed),
                },
            }
        })
        .collect()
}

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig::default()
        .with_max_new_tokens(n)
        .with_sampling(SamplingConfig::greedy())
}

/// A job's generation settings.
fn job_config(job: &Job) -> GenerationConfig {
    GenerationConfig::default()
        .with_max_new_tokens(job.new_tokens)
        .with_sampling(job.sampling.clone())
}

/// The jobs one after the other through `generate`: each one's measurements and tokens.
fn baseline(model: &InternLM2<Cpu>, jobs: &[Job]) -> Vec<(Run, Vec<u32>)> {
    let mut runs = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        eprint!("\r  {}/{}", i + 1, jobs.len());
        let mut run = Run::default();
        let submitted = Instant::now();
        let mut last: Option<Instant> = None;
        let out = generate(
            model,
            None,
            vec![job.prompt.clone()],
            &job_config(job),
            |_| {
                let now = Instant::now();
                match last {
                    None => run.ttft.push((now - submitted).as_secs_f64()),
                    Some(t) => run.itl.push((now - t).as_secs_f64()),
                }
                last = Some(now);
                true
            },
        )
        .expect("valid request");
        run.wall = submitted.elapsed();
        run.tokens += out[0].tokens.len();
        run.requests += 1;
        runs.push((run, out[0].tokens.clone()));
    }
    eprintln!();
    runs
}

/// `clients` threads, each submitting the next job and reading it to the end; also each
/// job's tokens and the most tokens one client received (its requests ran one after the
/// other, so the engine took at least that many steps).
fn engine_run(engine: &EngineHandle, jobs: &[Job], clients: usize) -> (Run, Vec<Vec<u32>>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let per_client: Vec<(Run, Vec<(usize, Vec<u32>)>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let next = next.clone();
                scope.spawn(move || {
                    let mut run = Run::default();
                    let mut outputs = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let submitted = Instant::now();
                        let request = Request::new(job.prompt.clone(), job_config(job));
                        let mut handle = engine.submit(request).expect("valid request");
                        let mut last: Option<Instant> = None;
                        let mut tokens = Vec::new();
                        while let Some(event) = handle.next_blocking() {
                            match event {
                                Event::Token { token, .. } => {
                                    let now = Instant::now();
                                    match last {
                                        None => run.ttft.push((now - submitted).as_secs_f64()),
                                        Some(t) => run.itl.push((now - t).as_secs_f64()),
                                    }
                                    last = Some(now);
                                    tokens.push(token);
                                }
                                Event::Finished { reason, .. } => {
                                    assert_eq!(reason.openai_name(), "length", "{reason:?}");
                                }
                                Event::ToolCall(_) => {}
                            }
                        }
                        run.tokens += tokens.len();
                        run.requests += 1;
                        outputs.push((i, tokens));
                    }
                    (run, outputs)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("client"))
            .collect()
    });
    let wall = start.elapsed();
    let mut outputs = vec![Vec::new(); jobs.len()];
    let mut runs = Vec::new();
    let longest = per_client
        .iter()
        .map(|(run, _)| run.tokens)
        .max()
        .unwrap_or(0);
    for (run, out) in per_client {
        runs.push(run);
        for (i, tokens) in out {
            outputs[i] = tokens;
        }
    }
    let run = Run {
        wall,
        ..Run::sequential(&runs)
    };
    (run, outputs, longest)
}

/// The most speed-up the engine can reach over `base` (the same requests through `generate`)
/// when one client received `longest` tokens: the engine needs at least `longest` steps, each
/// reading every weight at least once like a batch-1 decoding step (generate's mean
/// inter-token latency), plus the same prefill work as `generate` (the sum of its times to
/// first token). Decoding rows and prompt chunks of a step do not share weight reads (they run
/// in different numeric regimes, which keeps each request's tokens equal to `generate`'s).
fn speedup_bound(base: &Run, longest: usize) -> f64 {
    let prefill: f64 = base.ttft.iter().sum();
    let step = base.itl.iter().sum::<f64>() / base.itl.len().max(1) as f64;
    base.wall.as_secs_f64() / (prefill + longest as f64 * step)
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    internlm2_serve::engine::percentile(&sorted, q)
}

/// Read bandwidth (bytes/s, a sum over 256 MiB) and f32 matmul peak (FLOP/s, the better of
/// burn's matmul and the kernel layer's dense on 1024 and 2048 squares): what
/// `bench --limits` measures on the CPU.
fn limits() -> (f64, f64) {
    let device = Default::default();
    let elements = 1 << 26;
    let x = Tensor::<Cpu, 1>::ones([elements], &device);
    let read = best_of_5::<Cpu>(&device, || {
        let _ = x.clone().sum().into_scalar();
    });
    let mut flops = 0f64;
    for n in [1024, 2048] {
        let x = Tensor::<Cpu, 3>::ones([1, n, n], &device);
        let w = Tensor::<Cpu, 2>::ones([n, n], &device);
        let dense = best_of_5::<Cpu>(&device, || {
            let _ = Cpu::dense(x.clone(), w.clone(), None).into_data();
        });
        flops = flops
            .max(measure_matmul_flops::<Cpu>(&device, n))
            .max(2.0 * (n as f64).powi(3) / dense);
    }
    (elements as f64 * 4.0 / read, flops)
}

/// TTFT of a request with a 1,000-token system prompt on an idle engine, then of a second one
/// with the same system prompt and another question; three system prompts, the medians:
/// (cold, warm) seconds.
fn prefix_ttft(engine: &EngineHandle, vocab: usize, rng: &mut Rng, quick: bool) -> (f64, f64) {
    let ttft = |prompt: Vec<u32>| {
        let submitted = Instant::now();
        let mut handle = engine
            .submit(Request::new(prompt, greedy(4)))
            .expect("valid request");
        let mut first = None;
        while let Some(event) = handle.next_blocking() {
            if matches!(event, Event::Token { .. }) && first.is_none() {
                first = Some(submitted.elapsed().as_secs_f64());
            }
        }
        first.expect("a token")
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let system = rng.tokens(if quick { 200 } else { 1000 }, vocab);
        cold.push(ttft([system.clone(), rng.tokens(24, vocab)].concat()));
        warm.push(ttft([system, rng.tokens(24, vocab)].concat()));
    }
    (percentile(&cold, 0.5), percentile(&warm, 0.5))
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

fn run(args: Args) -> ProgramResult {
    let config = InternLM2Config::from_hf_file(&args.config)?;
    let device = Default::default();
    let model: InternLM2<Cpu> = InternLM2::init(&config, &device);
    let vocab = config.vocab_size;
    let mut rng = Rng(args.seed);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "model: {} ({:.0}M parameters, random weights, f32), {cores} CPU threads",
        args.config.display(),
        config.num_parameters() as f64 / 1e6
    );
    let limits = (!args.no_limits).then(limits);
    if let Some((bandwidth, flops)) = limits {
        let weight_bytes = (config.num_parameters() - vocab * config.hidden_size) * 4;
        println!(
            "limits (measured here): read bandwidth {:.1} GB/s, f32 matmul {:.1} GFLOP/s; one \
             sequence decodes at most {:.1} tokens/s (weights read once per token)",
            bandwidth / 1e9,
            flops / 1e9,
            bandwidth / weight_bytes as f64
        );
    }

    let levels: Vec<usize> = args
        .concurrency
        .iter()
        .copied()
        .filter(|&c| c > 0)
        .collect();
    let most = levels
        .iter()
        .map(|&c| (c * args.requests_per_client).max(4))
        .max()
        .unwrap_or(4);
    let jobs = workload(most, args.quick, vocab, args.sampling, &mut rng);
    println!(
        "workload: prompts {}, new tokens {}, {}, no stop token",
        if args.quick { "32-96" } else { "256-1024" },
        if args.quick { "8-24" } else { "64-256" },
        match args.sampling {
            Sampling::Greedy => "greedy",
            Sampling::Chat => "chat sampling (temperature 0.8, top-p 0.8, seeded per request)",
        },
    );

    let base_n = args
        .baseline_requests
        .unwrap_or(jobs.len())
        .clamp(1, jobs.len());
    eprintln!("baseline: {base_n} requests one at a time through generate...");
    let base = baseline(&model, &jobs[..base_n]);

    let engine_config = EngineConfig::new()
        .with_kv_memory_bytes(args.kv_memory_mib << 20)
        .with_max_running(levels.iter().copied().max().unwrap_or(1).max(1));
    let engine = Engine::start(model.clone(), None, engine_config)?;
    let mut runs = Vec::new();
    let mut compared = 0;
    let mut differ = Vec::new();
    for &c in &levels {
        let n = (c * args.requests_per_client).max(4);
        eprintln!("engine: {n} requests from {c} concurrent clients...");
        let (run, outputs, longest) = engine_run(&engine, &jobs[..n], c);
        for (i, tokens) in outputs.iter().enumerate().take(base_n) {
            compared += 1;
            if *tokens != base[i].1 {
                differ.push((c, i));
            }
        }
        runs.push((c, n, run, longest));
    }
    let (cold, warm) = prefix_ttft(&engine, vocab, &mut rng, args.quick);
    let metrics = engine.metrics();
    engine.shutdown();

    // The baseline over the first `n` requests (the same requests as the engine's, unless
    // --baseline-requests cut the baseline short).
    let base_over = |n: usize| {
        let runs: Vec<Run> = base[..n.min(base_n)]
            .iter()
            .map(|(r, _)| Run {
                ttft: r.ttft.clone(),
                itl: r.itl.clone(),
                ..*r
            })
            .collect();
        Run::sequential(&runs)
    };
    println!();
    println!(
        "| mode | requests | output tok/s | generate, same requests | speed-up | bound | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let row = |name: String, run: &Run, base: &Run, bound: f64| {
        println!(
            "| {name} | {} | {:.1} | {:.1} tok/s ({} req) | {:.2}x | {:.2}x | {:.3} s | {:.3} s | {:.1} ms | {:.1} ms |",
            run.requests,
            run.tokens_per_s(),
            base.tokens_per_s(),
            base.requests,
            run.tokens_per_s() / base.tokens_per_s(),
            bound,
            percentile(&run.ttft, 0.5),
            percentile(&run.ttft, 0.99),
            percentile(&run.itl, 0.5) * 1e3,
            percentile(&run.itl, 0.99) * 1e3,
        );
    };
    let all = base_over(base_n);
    row("generate, one at a time".into(), &all, &all, 1.0);
    for (c, n, run, longest) in &runs {
        let base = base_over(*n);
        let bound = speedup_bound(&base, *longest);
        row(format!("engine, concurrency {c}"), run, &base, bound);
    }
    println!(
        "bound: the most speed-up this workload allows here (see `speedup_bound`): the longest \
         client's tokens, each at least a batch-1 decoding step, plus generate's prefill"
    );
    println!();
    println!(
        "prefix caching: {}-token system prompt, TTFT {:.3} s cold, {:.3} s with the prefix \
         cached (medians of 3): {:.1}x sooner",
        if args.quick { 200 } else { 1000 },
        cold,
        warm,
        cold / warm
    );
    println!(
        "engine: {} steps, {} preemptions, {} of {} KV blocks used at the end; tokens \
         equal generate's for {} of {compared} requests",
        metrics.steps,
        metrics.preemptions,
        metrics.kv_blocks_used,
        metrics.kv_blocks_total,
        compared - differ.len()
    );
    if !differ.is_empty() {
        println!("  differ (concurrency, request): {differ:?}");
    }
    for (c, target) in [(8, 4.0), (32, 6.0)] {
        if let Some((_, n, run, _)) = runs.iter().find(|(level, _, _, _)| *level == c) {
            let ratio = run.tokens_per_s() / base_over(*n).tokens_per_s();
            println!(
                "target >= {target}x output tokens/s at concurrency {c}: {ratio:.2}x ({})",
                if ratio >= target { "met" } else { "NOT met" }
            );
        }
    }
    let ratio = cold / warm;
    println!(
        "target >= 5x sooner first token with a cached 1,000-token prefix: {ratio:.1}x ({})",
        if ratio >= 5.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
