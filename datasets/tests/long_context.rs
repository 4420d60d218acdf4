//! The perplexity scorer of the long-context filter against the official implementation's
//! logits of the tiny fixture checkpoint.

use std::path::PathBuf;

use internlm2::backends::Cpu;
use internlm2::{InternLM2, Tokenizer};
use internlm2_datasets::stages::long_context::ModelScorer;

fn fixtures() -> PathBuf {
    std::env::var_os("INTERNLM2_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn log_softmax_at(logits: &[f64], id: usize) -> f64 {
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    logits[id] - lse
}

#[test]
fn long_context_model_scorer_matches_reference_logits() {
    let dir = fixtures().join("tiny-internlm2");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let case = &reference["cases"][0];
    assert_eq!(case["name"], "prefill_batch");
    let ids: Vec<u32> = case["input_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let logits = &case["logits"][0];
    let model =
        InternLM2::<Cpu>::load(&dir, burn::tensor::DType::F32, &Default::default()).unwrap();
    // Any tokenizer: only the id-level method is used here.
    let tokenizer =
        Tokenizer::from_file(fixtures().join("tokenizer/tokenizer_internlm2.model")).unwrap();
    let scorer = ModelScorer::new(model, tokenizer, 64);
    for split in [1, 10, 23] {
        let expected: f64 = (split..ids.len())
            .map(|t| {
                let row: Vec<f64> = logits[t - 1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                -log_softmax_at(&row, ids[t] as usize)
            })
            .sum::<f64>()
            / (ids.len() - split) as f64;
        let got = scorer.mean_nll_ids(&ids[..split], &ids[split..]).unwrap();
        assert!(
            (got - expected).abs() < 1e-4,
            "split {split}: {got} vs {expected}"
        );
    }
    assert!(scorer.mean_nll_ids(&[], &ids).is_err());
    assert!(
        scorer.mean_nll_ids(&[1], &[600]).is_err(),
        "id outside the 512-id vocabulary"
    );
}
