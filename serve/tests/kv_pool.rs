//! The paged KV pool: prefix caching serves shared prompt blocks without changing a single
//! logit (and counts the hits), and an exhausted pool makes requests wait or preempts the
//! youngest running sequence, recomputed later with the same result — never a failure.

mod support;

use internlm2::generate::{GenerationConfig, generate};
use internlm2::sampling::SamplingConfig;
use internlm2_serve::engine::{Engine, EngineConfig, FinishReason, Request};
use support::{Collected, Rng, collect};

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig::default()
        .with_max_new_tokens(n)
        .with_sampling(SamplingConfig::greedy())
}

#[test]
fn a_shared_prefix_gives_the_logits_of_no_sharing() {
    for name in support::MODELS {
        let model = support::model(name);
        let vocab = model.config().vocab_size;
        let mut rng = Rng(3);
        // A 37-token "system prompt" shared by two requests with different questions.
        let system = rng.prompt(37, vocab);
        let ask = |rng: &mut Rng| [system.clone(), rng.prompt(6, vocab)].concat();
        let (first, second) = (ask(&mut rng), ask(&mut rng));
        let run = |caching: bool| -> (Collected, Collected, u64) {
            let config = EngineConfig::new()
                .with_kv_memory_bytes(2 << 20)
                .with_prefix_caching(caching);
            let engine = Engine::start(model.clone(), None, config).unwrap();
            let submit = |prompt: &Vec<u32>| {
                let request = Request::new(prompt.clone(), greedy(12)).with_logprobs(5);
                collect(engine.submit(request).unwrap())
            };
            let a = submit(&first);
            let b = submit(&second);
            let hits = engine.metrics().prefix_cache_hit_tokens;
            (a, b, hits)
        };
        let (a_shared, b_shared, hits) = run(true);
        let (a_alone, b_alone, no_hits) = run(false);
        // 37 shared tokens = 2 full blocks of 16.
        assert_eq!(hits, 32, "{name}");
        assert_eq!(no_hits, 0);
        assert_eq!(b_shared.usage().cached_tokens, 32);
        assert_eq!(b_alone.usage().cached_tokens, 0);
        assert_eq!(a_shared.usage().cached_tokens, 0);
        assert_eq!(b_shared.tokens, b_alone.tokens, "{name}");
        assert_eq!(a_shared.tokens, a_alone.tokens);
        for (s, u) in b_shared.logprobs.iter().zip(&b_alone.logprobs) {
            assert_eq!(s.token, u.token);
            assert!(
                (s.logprob - u.logprob).abs() < 1e-5,
                "{name}: {s:?} vs {u:?}"
            );
            for ((ts, ls), (tu, lu)) in s.top.iter().zip(&u.top) {
                assert_eq!(ts, tu);
                assert!((ls - lu).abs() < 1e-5);
            }
        }
        // And both equal `generate` alone.
        let alone = generate(&model, None, vec![second.clone()], &greedy(12), |_| true).unwrap();
        assert_eq!(b_shared.tokens, alone[0].tokens);
    }
}

#[test]
fn a_finished_conversation_is_reused_by_its_next_turn() {
    let model = support::model("tiny-internlm2");
    let vocab = model.config().vocab_size;
    let mut rng = Rng(9);
    let engine = Engine::start(
        model.clone(),
        None,
        EngineConfig::new().with_kv_memory_bytes(1 << 20),
    )
    .unwrap();
    let turn1 = rng.prompt(20, vocab);
    let answer = collect(
        engine
            .submit(Request::new(turn1.clone(), greedy(20)))
            .unwrap(),
    );
    // Next turn: the whole first exchange plus a new question.
    let turn2 = [turn1.clone(), answer.tokens.clone(), rng.prompt(5, vocab)].concat();
    let reply = collect(
        engine
            .submit(Request::new(turn2.clone(), greedy(8)))
            .unwrap(),
    );
    // 20 + 20 tokens were cached, as two full blocks (the 40th token's block is not full).
    assert_eq!(reply.usage().cached_tokens, 32);
    let alone = generate(&model, None, vec![turn2], &greedy(8), |_| true).unwrap();
    assert_eq!(reply.tokens, alone[0].tokens);
}

#[test]
fn an_exhausted_pool_preempts_and_every_request_completes() {
    for name in support::MODELS {
        let model = support::model(name);
        let vocab = model.config().vocab_size;
        let limit = internlm2::generate::default_context_limit(&model);
        let per_block =
            internlm2::cache::PagedKvCache::<internlm2::backends::Cpu>::bytes_per_block(
                model.config(),
                4,
                burn::tensor::DType::F32,
            )
            .unwrap();
        // 16 blocks of 4 tokens = 64 slots, for 12 requests of up to ~60 slots each.
        let config = EngineConfig::new()
            .with_kv_memory_bytes(16 * per_block)
            .with_block_size(4)
            .with_max_running(6)
            .with_prefill_chunk(16);
        let engine = Engine::start(model.clone(), None, config).unwrap();
        let mut rng = Rng(77);
        let cases: Vec<(Vec<u32>, usize)> = (0..12)
            .map(|_| {
                let len = rng.range(4, 30.min(limit / 2));
                (rng.prompt(len, vocab), rng.range(10, 30.min(limit - len)))
            })
            .collect();
        let handles: Vec<_> = cases
            .iter()
            .map(|(p, n)| engine.submit(Request::new(p.clone(), greedy(*n))).unwrap())
            .collect();
        let got: Vec<Collected> = handles.into_iter().map(collect).collect();
        for (i, ((prompt, n), got)) in cases.iter().zip(&got).enumerate() {
            assert_eq!(got.reason(), &FinishReason::Length, "{name} request {i}");
            let alone =
                generate(&model, None, vec![prompt.clone()], &greedy(*n), |_| true).unwrap();
            assert_eq!(
                got.tokens, alone[0].tokens,
                "{name} request {i}: preemption changed the output"
            );
        }
        let metrics = engine.metrics();
        assert!(
            metrics.preemptions > 0,
            "{name}: the pool never ran out ({metrics:?})"
        );
        assert_eq!(metrics.kv_blocks_used, 0);
        assert_eq!(metrics.kv_blocks_total, 16);
        assert_eq!(metrics.requests_finished.length, 12);
    }
}
