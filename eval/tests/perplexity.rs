//! Perplexity against the official implementation: the fixtures' `reference.json` holds the
//! full-forward logits of the official InternLM2 code for known input ids; the NLL of every
//! token is computed here by hand from those logits (log-sum-exp in f64) and compared with
//! `perplexity`'s, for single windows, batches of windows of different lengths, and the first
//! window of a strided run.

mod common;

use burn::tensor::DType;
use internlm2::InternLM2;
use internlm2::backends::Cpu;
use internlm2_eval::perplexity::{PerplexityConfig, perplexity};
use serde_json::Value;

fn model(name: &str) -> InternLM2<Cpu> {
    InternLM2::load(
        common::fixtures().join(name),
        DType::F32,
        &Default::default(),
    )
    .unwrap()
}

/// `(ids, logits [seq][vocab])` per row of the cases with full-forward logits and no padding.
fn cases(name: &str) -> Vec<(String, Vec<u32>, Vec<Vec<f64>>)> {
    let text =
        std::fs::read_to_string(common::fixtures().join(name).join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        if case.get("logits").is_none() || case.get("attention_mask").is_some() {
            continue;
        }
        for (row, (ids, logits)) in case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["logits"].as_array().unwrap())
            .enumerate()
        {
            let ids = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let logits = logits
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    p.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                })
                .collect();
            out.push((
                format!("{}[{row}]", case["name"].as_str().unwrap()),
                ids,
                logits,
            ));
        }
    }
    assert!(out.len() >= 3, "expected the prefill cases");
    out
}

/// By hand: `sum over p in from..to of -(logit[p-1][id p] - logsumexp(logit[p-1]))`.
fn reference_nll(ids: &[u32], logits: &[Vec<f64>], from: usize, to: usize) -> f64 {
    (from..to)
        .map(|p| {
            let row = &logits[p - 1];
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            lse - row[ids[p] as usize]
        })
        .sum()
}

fn close(a: f64, b: f64, what: &str) {
    let rel = (a - b).abs() / b.abs().max(1e-12);
    assert!(
        rel < 1e-5,
        "{what}: {a} vs reference {b} (relative {rel:e})"
    );
}

#[test]
fn single_windows_equal_the_reference_loss() {
    for name in ["tiny-internlm2", "tiny-internlm2-sharded"] {
        let model = model(name);
        let cases = cases(name);
        // Each document alone, one window covering it.
        for (case, ids, logits) in &cases {
            let config = PerplexityConfig {
                max_length: ids.len(),
                stride: ids.len(),
                batch_size: 1,
                progress: false,
            };
            let report = perplexity(&model, std::slice::from_ref(ids), &config).unwrap();
            let expected = reference_nll(ids, logits, 1, ids.len());
            assert_eq!(report.tokens, ids.len() - 1, "{name} {case}");
            assert_eq!(report.windows, 1);
            close(report.nll_sum, expected, &format!("{name} {case}"));
            close(
                report.perplexity,
                (expected / (ids.len() - 1) as f64).exp(),
                case,
            );
        }
        // All documents together, batched: the token-weighted mean over every scored token.
        let documents: Vec<Vec<u32>> = cases.iter().map(|(_, ids, _)| ids.clone()).collect();
        let longest = documents.iter().map(Vec::len).max().unwrap();
        let config = PerplexityConfig {
            max_length: longest,
            stride: longest,
            batch_size: 4,
            progress: false,
        };
        let report = perplexity(&model, &documents, &config).unwrap();
        let (sum, tokens) = cases.iter().fold((0.0, 0), |(s, n), (_, ids, logits)| {
            (
                s + reference_nll(ids, logits, 1, ids.len()),
                n + ids.len() - 1,
            )
        });
        assert_eq!(report.tokens, tokens);
        close(
            report.mean_nll,
            sum / tokens as f64,
            &format!("{name} batched"),
        );
    }
}

#[test]
fn prefixes_and_the_first_strided_window_equal_the_reference() {
    // Without RoPE scaling a prefix's logits are the full forward's first rows (causal), so a
    // document that is a prefix of a reference case, and the first window of a strided run,
    // have reference losses too.
    let name = "tiny-internlm2-sharded";
    let model = model(name);
    let (_, ids, logits) = cases(name)
        .into_iter()
        .find(|(case, _, _)| case.starts_with("prefill_past_max_positions"))
        .unwrap();
    assert_eq!(ids.len(), 100);
    // Prefixes of 17 and 40 tokens batched with the whole sequence (three window lengths).
    let documents = vec![ids[..17].to_vec(), ids.clone(), ids[..40].to_vec()];
    let config = PerplexityConfig {
        max_length: 100,
        stride: 100,
        batch_size: 2,
        progress: false,
    };
    let report = perplexity(&model, &documents, &config).unwrap();
    let expected = reference_nll(&ids, &logits, 1, 17)
        + reference_nll(&ids, &logits, 1, 100)
        + reference_nll(&ids, &logits, 1, 40);
    assert_eq!(report.tokens, 16 + 99 + 39);
    close(report.nll_sum, expected, "prefixes");
    // 33 tokens, windows of 32: the first window scores 1..32; the second ([32, 33)) scores
    // nothing (its only token is the label shift's), so the total is the prefix loss.
    let config = PerplexityConfig {
        max_length: 32,
        stride: 32,
        batch_size: 1,
        progress: false,
    };
    let report = perplexity(&model, &[ids[..33].to_vec()], &config).unwrap();
    assert_eq!((report.windows, report.tokens), (1, 31));
    close(
        report.nll_sum,
        reference_nll(&ids, &logits, 1, 32),
        "first window",
    );
    // Out-of-vocabulary ids are a typed error.
    let vocab = model.config().vocab_size as u32;
    assert!(perplexity(&model, &[vec![1, vocab]], &config).is_err());
}
