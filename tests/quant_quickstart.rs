//! The accuracy gate on a trained model: the quickstart's model (`cargo run --release --example
//! quickstart` writes `target/quickstart/model`), held-out stories from the quickstart's corpus
//! generator with a seed training did not use. Perplexity change against f32 must stay within
//! 0.5% for Q8_0, 5% for Q4_K and 8% for Q4_0 (the default `QuantConfig::new(format)`: 4-bit
//! bodies keep Q8_0 embeddings and head; the quickstart's 192-wide rows are not whole Q4_K
//! super-blocks, so its Q4_K model holds Q4_K only in `w2` and Q4_0 elsewhere).
//!
//! Ignored by default (it needs the trained model):
//! `cargo nextest run -p internlm2-rs --test quant_quickstart --run-ignored all`
//! (`QUICKSTART_MODEL=dir` to point elsewhere). `examples/quant_eval.rs` prints the full table.

use std::path::PathBuf;

use burn::tensor::DType;
use internlm2::backends::Cpu;
use internlm2::quant::{LoadOptions, QuantConfig};
use internlm2::{InternLM2, Tokenizer};
use internlm2_datasets::synthetic;
use internlm2_eval::perplexity::PerplexityConfig;

fn model_dir() -> PathBuf {
    std::env::var_os("QUICKSTART_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/quickstart/model")
        })
}

/// Perplexity over whole documents (one window each, every token but the first scored), by
/// the evaluation crate's sliding-window recipe.
fn perplexity(model: &InternLM2<Cpu>, docs: &[Vec<u32>]) -> f64 {
    let longest = docs.iter().map(Vec::len).max().unwrap_or(2);
    let config = PerplexityConfig {
        max_length: longest,
        stride: longest,
        batch_size: 16,
        progress: false,
    };
    internlm2_eval::perplexity::perplexity(model, docs, &config)
        .unwrap()
        .perplexity
}

#[test]
#[ignore = "needs target/quickstart/model (cargo run --release --example quickstart)"]
fn quickstart_model_perplexity_stays_within_each_formats_budget() {
    let dir = model_dir();
    assert!(
        dir.join("config.json").is_file(),
        "{} missing: run the quickstart first",
        dir.display()
    );
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let docs: Vec<Vec<u32>> = synthetic::generate(200, 9001)
        .iter()
        .map(|t| {
            let mut ids = tokenizer.encode(t, true).unwrap();
            ids.truncate(128);
            ids
        })
        .filter(|ids| ids.len() >= 2)
        .collect();
    let reference = InternLM2::<Cpu>::load(&dir, DType::F32, &Default::default()).unwrap();
    let base = perplexity(&reference, &docs);
    for (format, budget) in [("q8_0", 0.5), ("q4_k", 5.0), ("q4_0", 8.0)] {
        let quant: QuantConfig = format.parse().unwrap();
        let model = InternLM2::<Cpu>::load_with(
            &dir,
            &LoadOptions::default().with_quant(quant),
            &Default::default(),
        )
        .unwrap();
        let ppl = perplexity(&model, &docs);
        let change = 100.0 * (ppl / base - 1.0);
        eprintln!("{format}: perplexity {ppl:.4} vs f32 {base:.4} ({change:+.3}%)");
        assert!(
            change.abs() <= budget,
            "{format}: {change:+.3}% (budget {budget}%)"
        );
    }
}
