//! Chunked prefill on the tiny fixtures: whatever the chunk size, the last position's logits
//! are the official full forward pass's (`reference.json`), including past
//! `max_position_embeddings` where dynamic NTK grows the RoPE base (tiny-internlm2: 64
//! positions, factor 2, a 100-token case), with left padding, and generation with a prefill
//! chunk reproduces the reference greedy tokens.

use std::path::PathBuf;

use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Cpu;
use internlm2::generate::{GenerationConfig, generate};
use internlm2::prefill::prefill;
use internlm2::sampling::SamplingConfig;
use internlm2::{ForwardInput, InternLM2, KvCache};
use serde_json::Value;

/// `$INTERNLM2_FIXTURES`, or `../shared/fixtures` beside the workspace.
fn fixtures() -> PathBuf {
    let dir = std::env::var_os("INTERNLM2_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    assert!(
        dir.is_dir(),
        "reference fixtures not found at {}",
        dir.display()
    );
    dir
}

fn case(name: &str, case: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name).join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap()
        .clone()
}

fn ints(value: &Value) -> Vec<Vec<i64>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect()
}

/// The reference logits of the last position of each row.
fn last_logits(case: &Value) -> Vec<Vec<f32>> {
    case["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let positions = row.as_array().unwrap();
            positions
                .last()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn model(name: &str) -> InternLM2<Cpu> {
    InternLM2::load(fixtures().join(name), DType::F32, &Default::default()).unwrap()
}

/// Prefills `ids` (with optional positions/padding) in chunks; returns `[batch][vocab]`.
fn chunked(
    model: &InternLM2<Cpu>,
    ids: &[Vec<i64>],
    positions: Option<Vec<usize>>,
    padding: Option<Vec<bool>>,
    chunk: usize,
) -> Vec<Vec<f32>> {
    let (b, s) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.concat();
    let tensor =
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(flat, [b, s]), &Default::default());
    let mut input = ForwardInput::new(tensor);
    if let Some(p) = positions {
        input = input.with_positions(p);
    }
    if let Some(p) = padding {
        input = input.with_padding(p);
    }
    let mut cache = KvCache::new(model.config(), b, s + 4);
    let logits = prefill(model, input, &mut cache, chunk);
    assert_eq!(cache.len(), s);
    let vocab = model.config().vocab_size;
    let flat = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap();
    flat.chunks(vocab).map(<[f32]>::to_vec).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn chunked_prefill_matches_the_reference_past_max_positions() {
    // 100 tokens on a model with 64 positions and dynamic NTK: every chunk must rotate with
    // the base of the whole prompt (L = 100), as the official full forward does.
    let model = model("tiny-internlm2");
    assert_eq!(model.config().max_position_embeddings, 64);
    let case = case("tiny-internlm2", "prefill_past_max_positions");
    let ids = ints(&case["input_ids"]);
    let expected = last_logits(&case);
    for chunk in [1, 7, 16, 33, 64, 99, 100, 512] {
        let got = chunked(&model, &ids, None, None, chunk);
        let diff = max_diff(&got[0], &expected[0]);
        assert!(diff < 2e-5, "chunk {chunk}: max |diff| {diff}");
    }
    // The same chunks without the prompt's RoPE length (each chunk rotating with its own
    // largest position, the per-call default) are measurably off: the test can tell.
    let flat: Vec<i64> = ids.concat();
    let device = Default::default();
    let mut cache = KvCache::new(model.config(), 1, 100);
    let mut last = None;
    for start in (0..100).step_by(33) {
        let end = (start + 33).min(100);
        let part = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(flat[start..end].to_vec(), [1, end - start]),
            &device,
        );
        let input = ForwardInput::new(part)
            .with_positions((start..end).collect())
            .with_last_logits_only(true);
        last = Some(model.forward_cache(input, &mut cache));
    }
    let naive = last
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap();
    let diff = max_diff(&naive, &expected[0]);
    assert!(diff > 1e-3, "per-chunk NTK bases should differ, got {diff}");
}

#[test]
fn chunked_prefill_matches_the_reference_in_batches() {
    for name in ["tiny-internlm2", "tiny-internlm2-sharded"] {
        let model = model(name);
        let case = case(name, "prefill_batch");
        let ids = ints(&case["input_ids"]);
        let expected = last_logits(&case);
        for chunk in [5, 8, 24] {
            let got = chunked(&model, &ids, None, None, chunk);
            for (row, (g, e)) in got.iter().zip(&expected).enumerate() {
                let diff = max_diff(g, e);
                assert!(diff < 2e-5, "{name} chunk {chunk} row {row}: {diff}");
            }
        }
        // Left padding: the second row has 7 pads and positions that restart at its first
        // real token; the pads fall into whole chunks of their own at chunk size 3.
        let case = self::case(name, "left_padded_batch");
        let ids = ints(&case["input_ids"]);
        let mask = ints(&case["attention_mask"]);
        let positions: Vec<usize> = ints(&case["position_ids"])
            .concat()
            .into_iter()
            .map(|p| p.max(0) as usize)
            .collect();
        let padding: Vec<bool> = mask.concat().into_iter().map(|m| m == 0).collect();
        let expected = last_logits(&case);
        for chunk in [3, 6, 20] {
            let got = chunked(
                &model,
                &ids,
                Some(positions.clone()),
                Some(padding.clone()),
                chunk,
            );
            for (row, (g, e)) in got.iter().zip(&expected).enumerate() {
                let diff = max_diff(g, e);
                assert!(
                    diff < 2e-5,
                    "{name} padded, chunk {chunk} row {row}: {diff}"
                );
            }
        }
    }
}

#[test]
fn generation_with_a_prefill_chunk_reproduces_the_reference_tokens() {
    for name in ["tiny-internlm2", "tiny-internlm2-sharded"] {
        let model = model(name);
        let case = case(name, "greedy_with_cache");
        let prompt: Vec<u32> = ints(&case["input_ids"])[0]
            .iter()
            .map(|&i| i as u32)
            .collect();
        let expected: Vec<u32> = case["new_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        for chunk in [1, 5, 12] {
            let config = GenerationConfig::default()
                .with_sampling(SamplingConfig::greedy())
                .with_max_new_tokens(expected.len())
                .with_prefill_chunk(Some(chunk));
            let out = generate(&model, None, vec![prompt.clone()], &config, |_| true).unwrap();
            assert_eq!(out[0].tokens, expected, "{name}, chunk {chunk}");
        }
    }
    // A chunk of zero tokens is refused.
    let model = model("tiny-internlm2");
    let config = GenerationConfig::default().with_prefill_chunk(Some(0));
    assert!(generate(&model, None, vec![vec![1, 2, 3]], &config, |_| true).is_err());
}
