//! Continuous batching does not change what a request gets: on both tiny fixtures, greedy and
//! seeded sampled requests yield the tokens they yield alone through
//! `internlm2::generate::generate`, among 16 concurrent requests of different lengths that
//! join and leave at random (seeded) steps, some cancelled midway; their logprobs equal those
//! of `generate`'s own cached decoding path within 1e-5; and a request's logits are
//! bit-identical alone in the engine or batched.

mod support;

use std::time::Duration;

use burn::tensor::{Int, Tensor, TensorData};
use internlm2::backends::Cpu;
use internlm2::generate::{GenerationConfig, default_context_limit, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{ForwardInput, InternLM2, KvCache};
use internlm2_serve::engine::{
    Engine, EngineConfig, EngineHandle, FinishReason, Request, RequestHandle,
};
use support::{Collected, Rng};

/// One request of a scenario.
#[derive(Debug, Clone)]
struct Case {
    prompt: Vec<u32>,
    config: GenerationConfig,
    /// Engine step at which it is submitted.
    join_at: u64,
    /// Cancel after this many tokens.
    cancel_after: Option<usize>,
}

/// 16 requests with prompts of 1 to ~limit/2 tokens, 1 to 30 new tokens, random join steps,
/// every fifth cancelled after a few tokens.
fn scenario(
    model: &InternLM2<Cpu>,
    seed: u64,
    sampling: impl Fn(&mut Rng) -> SamplingConfig,
) -> Vec<Case> {
    let limit = default_context_limit(model);
    let vocab = model.config().vocab_size;
    let mut rng = Rng(seed);
    let mut join = 0;
    (0..16)
        .map(|i| {
            let len = rng.range(1, limit / 2 + 8);
            let new = rng.range(1, 30.min(limit - len) + 1);
            join += rng.range(0, 4) as u64;
            Case {
                prompt: rng.prompt(len, vocab),
                config: GenerationConfig::default()
                    .with_max_new_tokens(new)
                    .with_sampling(sampling(&mut rng)),
                join_at: join,
                cancel_after: (i % 5 == 4).then(|| rng.range(1, new + 1)),
            }
        })
        .collect()
}

/// Submits every case when the engine reaches its step (or at once when nothing runs),
/// reads all streams concurrently, cancels where asked. Returns what each request got.
fn drive(engine: &EngineHandle, cases: &[Case]) -> Vec<Collected> {
    let mut out = vec![Collected::default(); cases.len()];
    let mut active: Vec<(usize, RequestHandle)> = Vec::new();
    let mut cancelled = vec![false; cases.len()];
    let mut next = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while next < cases.len() || !active.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the engine stalled");
        let steps = engine.metrics().steps;
        while next < cases.len() && (cases[next].join_at <= steps || active.is_empty()) {
            let case = &cases[next];
            let request = Request::new(case.prompt.clone(), case.config.clone()).with_logprobs(3);
            active.push((next, engine.submit(request).expect("valid request")));
            next += 1;
        }
        active.retain_mut(|(i, handle)| {
            while let Some(event) = handle.try_next() {
                out[*i].push(event);
            }
            if let Some(after) = cases[*i].cancel_after
                && out[*i].tokens.len() >= after
                && !cancelled[*i]
            {
                cancelled[*i] = true;
                handle.cancel();
            }
            out[*i].finish.is_none()
        });
        std::thread::sleep(Duration::from_micros(200));
    }
    out
}

/// `generate`'s own path for one prompt (prefill, then one cached step per token): the
/// log-probability of each of `tokens`.
fn reference_logprobs(model: &InternLM2<Cpu>, prompt: &[u32], tokens: &[u32]) -> Vec<f32> {
    let device = Default::default();
    let vocab = model.config().vocab_size;
    let mut cache = KvCache::new(model.config(), 1, prompt.len() + tokens.len());
    let ids = |t: &[u32]| {
        let ids: Vec<i64> = t.iter().map(|&x| i64::from(x)).collect();
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [1, t.len()]), &device)
    };
    let mut logits = model.forward_cache(
        ForwardInput::new(ids(prompt)).with_last_logits_only(true),
        &mut cache,
    );
    let mut out = Vec::new();
    for (i, &token) in tokens.iter().enumerate() {
        let row = logits.clone().into_data().into_vec::<f32>().unwrap();
        assert_eq!(row.len(), vocab);
        out.push(log_softmax(&row)[token as usize]);
        if i + 1 < tokens.len() {
            logits = model.forward_cache(
                ForwardInput::new(ids(&[token]))
                    .with_positions(vec![prompt.len() + i])
                    .with_last_logits_only(true),
                &mut cache,
            );
        }
    }
    out
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    logits.iter().map(|&x| x - max - sum.ln() as f32).collect()
}

fn engine(model: &InternLM2<Cpu>) -> EngineHandle {
    let config = EngineConfig::new()
        .with_kv_memory_bytes(4 << 20)
        .with_max_running(8)
        .with_prefill_chunk(24);
    Engine::start(model.clone(), None, config).unwrap()
}

/// Every request that was not cancelled gets `generate`'s tokens and logprobs; a cancelled
/// one a prefix of them.
fn check_against_generate(model: &InternLM2<Cpu>, cases: &[Case], got: &[Collected]) {
    let mut compared = 0;
    for (i, (case, got)) in cases.iter().zip(got).enumerate() {
        let alone = generate(model, None, vec![case.prompt.clone()], &case.config, |_| {
            true
        })
        .unwrap()
        .remove(0);
        match got.reason() {
            FinishReason::Cancelled => {
                assert!(
                    case.cancel_after.is_some(),
                    "request {i} cancelled on its own"
                );
                assert_eq!(
                    got.tokens[..],
                    alone.tokens[..got.tokens.len()],
                    "request {i}"
                );
            }
            FinishReason::Length => {
                assert_eq!(got.tokens, alone.tokens, "request {i}: tokens");
                let usage = got.usage();
                assert_eq!(usage.prompt_tokens, case.prompt.len());
                assert_eq!(usage.completion_tokens, got.tokens.len());
                let reference = reference_logprobs(model, &case.prompt, &alone.tokens);
                for (t, (ours, theirs)) in got.logprobs.iter().zip(&reference).enumerate() {
                    assert_eq!(ours.token, got.tokens[t]);
                    assert!(
                        (ours.logprob - theirs).abs() < 1e-5,
                        "request {i} token {t}: logprob {} vs generate's {theirs}",
                        ours.logprob
                    );
                    assert!(ours.top.len() == 3 && ours.top[0].1 >= ours.top[2].1);
                }
                compared += 1;
            }
            other => panic!("request {i} finished with {other:?}"),
        }
    }
    assert!(compared >= 10, "only {compared} requests ran to the end");
}

#[test]
fn greedy_requests_match_generate_among_16_concurrent() {
    for name in support::MODELS {
        let model = support::model(name);
        let cases = scenario(&model, 11, |_| SamplingConfig::greedy());
        let engine = engine(&model);
        let got = drive(&engine, &cases);
        check_against_generate(&model, &cases, &got);
        let metrics = engine.metrics();
        assert!(metrics.steps > 0);
        assert_eq!(metrics.kv_blocks_used, 0, "{name}: blocks leaked");
        assert_eq!(metrics.running + metrics.waiting, 0);
        engine.shutdown();
    }
}

#[test]
fn seeded_sampled_requests_match_generate_among_16_concurrent() {
    for name in support::MODELS {
        let model = support::model(name);
        let cases = scenario(&model, 23, |rng| {
            SamplingConfig::default()
                .with_temperature(0.6 + rng.range(0, 8) as f32 / 10.0)
                .with_top_k(rng.range(0, 3) * 20)
                .with_top_p(0.8 + rng.range(0, 3) as f32 / 10.0)
                .with_min_p([0.0, 0.05][rng.range(0, 2)])
                .with_repetition_penalty([1.0, 1.2][rng.range(0, 2)])
                .with_seed(rng.next())
        });
        let engine = engine(&model);
        let got = drive(&engine, &cases);
        check_against_generate(&model, &cases, &got);
        assert_eq!(engine.metrics().kv_blocks_used, 0);
    }
}

#[test]
fn logits_are_bit_identical_alone_or_batched() {
    let model = support::model("tiny-internlm2");
    let cases = scenario(&model, 5, |_| SamplingConfig::greedy());
    let without_cancel: Vec<Case> = cases
        .into_iter()
        .map(|c| Case {
            cancel_after: None,
            ..c
        })
        .collect();
    let engine = engine(&model);
    let batched = drive(&engine, &without_cancel);
    for (i, case) in without_cancel.iter().enumerate().step_by(3) {
        let alone = drive(&engine, std::slice::from_ref(case)).remove(0);
        assert_eq!(alone.tokens, batched[i].tokens, "request {i}");
        assert_eq!(
            alone.logprobs, batched[i].logprobs,
            "request {i}: logprobs differ in bits"
        );
    }
}
