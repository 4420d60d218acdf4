//! Generation on the tiny fixtures: greedy decoding reproduces the official implementation's
//! tokens, batching with left padding changes nothing per row, cached decoding equals the
//! full forward pass, and stops, streaming, sampling seeds and the context policy behave.

mod common;

use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Cpu;
use internlm2::generate::{FinishReason, Generation, GenerationConfig, OverflowPolicy, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{ForwardInput, GenerateError, InternLM2, KvCache, Tokenizer};

fn model(name: &str) -> InternLM2<Cpu> {
    InternLM2::load(
        common::fixtures().join(name),
        DType::F32,
        &Default::default(),
    )
    .unwrap()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(common::fixtures().join("tokenizer/tokenizer_internlm2.model")).unwrap()
}

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig::default()
        .with_sampling(SamplingConfig::greedy())
        .with_max_new_tokens(n)
}

fn reference_greedy(name: &str) -> (Vec<u32>, Vec<u32>) {
    let reference = common::reference(&common::fixtures().join(name));
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "greedy_with_cache")
        .unwrap()
        .clone();
    let prompt = common::ints2(&case["input_ids"])[0]
        .iter()
        .map(|&i| i as u32)
        .collect();
    let tokens = case["new_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (prompt, tokens)
}

#[test]
fn greedy_generation_matches_the_reference_tokens() {
    for name in ["tiny-internlm2", "tiny-internlm2-sharded"] {
        let model = model(name);
        let (prompt, expected) = reference_greedy(name);
        let out = generate(&model, None, vec![prompt], &greedy(expected.len()), |_| {
            true
        })
        .unwrap();
        assert_eq!(out[0].tokens, expected, "{name}");
        assert_eq!(out[0].finish_reason, FinishReason::Length);
    }
}

#[test]
fn left_padded_batch_generates_what_each_prompt_generates_alone() {
    let model = model("tiny-internlm2");
    let (prompt, _) = reference_greedy("tiny-internlm2");
    let prompts = vec![prompt.clone(), prompt[5..].to_vec(), vec![7, 8, 9]];
    let batched = generate(&model, None, prompts.clone(), &greedy(20), |_| true).unwrap();
    for (row, p) in prompts.into_iter().enumerate() {
        let alone = generate(&model, None, vec![p], &greedy(20), |_| true).unwrap();
        assert_eq!(batched[row].tokens, alone[0].tokens, "row {row}");
    }
}

#[test]
fn cached_decoding_equals_the_full_forward_pass() {
    // Through a cache that starts with room for one token, so it must grow.
    let model = model("tiny-internlm2");
    let (prompt, _) = reference_greedy("tiny-internlm2");
    let device = Default::default();
    let ids: Vec<i64> = prompt.iter().map(|&i| i as i64).collect();
    let full = model
        .forward(Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(ids.clone(), [1, ids.len()]),
            &device,
        ))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let vocab = model.config().vocab_size;
    let mut cache = KvCache::new(model.config(), 1, 1);
    // First 5 tokens at once, then one at a time.
    let mut cached = Vec::new();
    let chunks: Vec<&[i64]> = std::iter::once(&ids[..5])
        .chain(ids[5..].chunks(1))
        .collect();
    for chunk in chunks {
        let t = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(chunk.to_vec(), [1, chunk.len()]),
            &device,
        );
        cached.extend(
            model
                .forward_cache(ForwardInput::new(t), &mut cache)
                .into_data()
                .into_vec::<f32>()
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), ids.len());
    assert_eq!(cached.len(), full.len());
    let worst = full
        .iter()
        .zip(&cached)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-4,
        "cached logits differ by {worst} over {} positions",
        full.len() / vocab
    );
}

#[test]
fn stop_tokens_end_a_row_and_stay_in_its_tokens() {
    let model = model("tiny-internlm2");
    let (prompt, expected) = reference_greedy("tiny-internlm2");
    let stop = expected[4];
    let first = expected.iter().position(|&t| t == stop).unwrap();
    let config = greedy(30).with_stop_token_ids(vec![stop]);
    let out = generate(&model, None, vec![prompt], &config, |_| true).unwrap();
    assert_eq!(out[0].tokens, expected[..=first].to_vec());
    assert_eq!(out[0].finish_reason, FinishReason::StopToken(stop));
}

#[test]
fn stop_strings_cut_the_text_and_streaming_matches_it() {
    let model = model("tiny-internlm2");
    let tok = tokenizer();
    let (prompt, _) = reference_greedy("tiny-internlm2");
    let plain = generate(
        &model,
        Some(&tok),
        vec![prompt.clone()],
        &greedy(30),
        |_| true,
    )
    .unwrap();
    let text = plain[0].text.clone().unwrap();
    assert!(text.chars().count() > 10, "{text:?}");
    // A stop string from the middle of the greedy text.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let config = greedy(30).with_stop_strings(vec![stop.clone()]);
    let mut streamed = String::new();
    let out = generate(&model, Some(&tok), vec![prompt], &config, |e| {
        streamed.push_str(&e.delta);
        true
    })
    .unwrap();
    assert_eq!(out[0].text.as_deref(), Some(cut));
    assert_eq!(out[0].finish_reason, FinishReason::StopString(stop));
    assert_eq!(streamed, cut);
}

#[test]
fn streamed_deltas_add_up_to_the_text() {
    let model = model("tiny-internlm2");
    let tok = tokenizer();
    let prompts = vec![vec![1, 300, 301], vec![1, 5]];
    let config = GenerationConfig::default()
        .with_sampling(SamplingConfig::default().with_temperature(1.0).with_seed(5))
        .with_max_new_tokens(25);
    let mut generation = Generation::new(&model, Some(&tok), prompts, &config).unwrap();
    let mut streamed = vec![String::new(), String::new()];
    for step in &mut generation {
        for event in step.unwrap() {
            streamed[event.row].push_str(&event.delta);
        }
    }
    for (row, out) in generation.finish().into_iter().enumerate() {
        assert_eq!(out.tokens.len(), 25);
        assert_eq!(out.text.as_deref(), Some(streamed[row].as_str()));
        assert_eq!(out.text.unwrap(), tok.decode(&out.tokens).unwrap());
    }
}

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let model = model("tiny-internlm2");
    let run = |seed| {
        let config = GenerationConfig::default()
            .with_sampling(
                SamplingConfig::default()
                    .with_temperature(1.0)
                    .with_top_k(50)
                    .with_seed(seed),
            )
            .with_max_new_tokens(20);
        generate(&model, None, vec![vec![1, 2, 3]], &config, |_| true).unwrap()[0]
            .tokens
            .clone()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn context_overflow_is_an_error_or_clamped() {
    let model = model("tiny-internlm2-sharded"); // max_position_embeddings 64, no scaling
    let prompt: Vec<u32> = (1..=60).collect();
    let err = generate(&model, None, vec![prompt.clone()], &greedy(10), |_| true).unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::ContextOverflow {
                prompt_len: 60,
                max_new_tokens: 10,
                limit: 64
            }
        ),
        "{err}"
    );
    let clamped = greedy(10).with_overflow(OverflowPolicy::ClampNewTokens);
    let out = generate(&model, None, vec![prompt], &clamped, |_| true).unwrap();
    assert_eq!(out[0].tokens.len(), 4);
}

#[test]
fn bad_requests_are_typed_errors() {
    let model = model("tiny-internlm2");
    let g = greedy(3);
    assert!(matches!(
        generate(&model, None, vec![], &g, |_| true),
        Err(GenerateError::EmptyBatch)
    ));
    assert!(matches!(
        generate(&model, None, vec![vec![1], vec![]], &g, |_| true),
        Err(GenerateError::EmptyPrompt { index: 1 })
    ));
    assert!(matches!(
        generate(&model, None, vec![vec![1, 512]], &g, |_| true),
        Err(GenerateError::TokenOutOfVocab {
            id: 512,
            vocab_size: 512
        })
    ));
    assert!(matches!(
        generate(
            &model,
            None,
            vec![vec![1]],
            &g.clone().with_stop_strings(vec!["x".into()]),
            |_| true
        ),
        Err(GenerateError::InvalidSampling {
            name: "stop_strings",
            ..
        })
    ));
}
