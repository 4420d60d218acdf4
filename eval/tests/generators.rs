//! The real generators on the tiny fixture model (dynamic NTK past 64 positions) with a small
//! BPE tokenizer trained here: `ModelGenerator` alone, batched (prompts within 64 positions)
//! or with chunked prefill, and (feature `engine`) `EngineGenerator` on every prompt give the
//! same greedy completions; prompts past the context limit are refused.

mod common;

use burn::tensor::DType;
use internlm2::backends::Cpu;
use internlm2::{InternLM2, Tokenizer};
use internlm2_eval::{EvalError, Generator, ModelGenerator};

fn model() -> InternLM2<Cpu> {
    InternLM2::load(
        common::fixtures().join("tiny-internlm2"),
        DType::F32,
        &Default::default(),
    )
    .unwrap()
}

/// A byte-level BPE with exactly the fixture's 512 ids (every id the model can emit decodes).
fn tokenizer() -> Tokenizer {
    // Pseudo-words from a fixed LCG: plenty of distinct pairs to merge.
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let texts: Vec<String> = (0..400)
        .map(|_| {
            (0..12)
                .map(|_| {
                    let len = 2 + next() % 6;
                    (0..len)
                        .map(|_| letters[next() % 26] as char)
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(" ")
                + " The river runs past the hills."
        })
        .collect();
    let tokenizer = Tokenizer::train_bpe(texts.iter(), 512).unwrap();
    assert_eq!(tokenizer.vocab_size(), 512);
    tokenizer
}

fn prompts(tokenizer: &Tokenizer) -> Vec<Vec<u32>> {
    let texts = [
        "The river",
        "the quiet town of Elm runs past",
        // Past the model's 64 positions: dynamic NTK.
        &"The river runs past the hills. ".repeat(12),
        "hills and",
    ];
    texts
        .iter()
        .map(|t| tokenizer.encode(t, true).unwrap())
        .collect()
}

#[test]
fn batched_chunked_and_single_completions_agree() {
    let model = model();
    let tokenizer = tokenizer();
    let prompts = prompts(&tokenizer);
    assert!(prompts[2].len() > 64, "{}", prompts[2].len());
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut g = ModelGenerator::new(&model, &tokenizer);
            g.complete(vec![p.clone()], 10).unwrap().remove(0)
        })
        .collect();
    assert!(alone.iter().all(|c| c.tokens > 0));
    // Batched with left padding: the same completions while every prompt stays within the
    // model's 64 positions. (Past them, `generate` rotates every row of a batch with the
    // dynamic-NTK base of the batch's longest prompt, as Hugging Face's batched forward does,
    // so short rows batched with a long one can differ; the engine keeps each request's own.)
    let short: Vec<usize> = vec![0, 1, 3];
    let mut batched = ModelGenerator::new(&model, &tokenizer).with_batch_size(3);
    let got = batched
        .complete(short.iter().map(|&i| prompts[i].clone()).collect(), 10)
        .unwrap();
    let want: Vec<_> = short.iter().map(|&i| alone[i].clone()).collect();
    assert_eq!(got, want);
    let mut chunked = ModelGenerator::new(&model, &tokenizer).with_prefill_chunk(Some(7));
    for (p, expected) in prompts.iter().zip(&alone) {
        assert_eq!(&chunked.complete(vec![p.clone()], 10).unwrap()[0], expected);
    }
    // The context limit (64 x factor 2) is enforced with a typed error.
    let long = vec![1u32; 125];
    assert!(matches!(
        batched.complete(vec![long], 10),
        Err(EvalError::ContextOverflow { limit: 128, .. })
    ));
}

#[cfg(feature = "engine")]
#[test]
fn the_engine_gives_the_same_completions() {
    use std::sync::Arc;

    use internlm2_eval::EngineGenerator;
    use internlm2_serve::engine::{Engine, EngineConfig};

    let model = model();
    let tokenizer = tokenizer();
    let prompts = prompts(&tokenizer);
    let expected: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut g = ModelGenerator::new(&model, &tokenizer);
            g.complete(vec![p.clone()], 10).unwrap().remove(0)
        })
        .collect();
    let tokenizer = Arc::new(tokenizer);
    let engine = Engine::start(
        model,
        Some(tokenizer.clone()),
        EngineConfig::new()
            .with_kv_memory_bytes(1 << 22)
            .with_prefill_chunk(16),
    )
    .unwrap();
    let mut generator = EngineGenerator::new(engine.clone(), tokenizer);
    assert_eq!(generator.context_limit(), 128);
    let got = generator.complete(prompts, 10).unwrap();
    let text =
        |c: &[internlm2_eval::Completion]| c.iter().map(|c| c.text.clone()).collect::<Vec<_>>();
    assert_eq!(text(&got), text(&expected));
    engine.shutdown();
}
