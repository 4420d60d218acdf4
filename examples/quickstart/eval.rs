//! The quickstart's last step: evaluate the pre-trained tiny model with `internlm2-eval`, a
//! perplexity on held-out stories and a small needle-in-a-haystack grid (a tiny model trained
//! for minutes scores what it scores; the point is the measurement).

use std::path::Path;
use std::time::Instant;

use burn::tensor::DType;
use internlm2::backends::Cpu;
use internlm2::{InternLM2, Tokenizer};
use internlm2_eval::niah::{Haystack, Needle, NeedleConfig, NeedleTask, run_grid};
use internlm2_eval::perplexity::{PerplexityConfig, perplexity};
use internlm2_eval::{ModelGenerator, PromptFormat};

use internlm2_datasets::synthetic as corpus;

/// Perplexity on 64 stories the model never saw, then a 3 x 3 needle grid.
pub fn run(export: &Path, out: &Path, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    println!("== 11. evaluation (internlm2-eval)");
    let started = Instant::now();
    let model = InternLM2::<Cpu>::load(export, DType::F32, &Default::default())?;
    let tokenizer = Tokenizer::from_dir(export)?;

    // Held out: another seed of the same generator.
    let held_out = corpus::generate(64, seed.wrapping_add(1_000));
    let documents: Vec<Vec<u32>> = held_out
        .iter()
        .map(|t| tokenizer.encode(t, true))
        .collect::<Result<_, _>>()?;
    let config = PerplexityConfig {
        max_length: 128,
        stride: 64,
        batch_size: 16,
        progress: false,
    };
    let report = perplexity(&model, &documents, &config)?;
    println!(
        "   perplexity on {} held-out stories: {:.3} (mean NLL {:.3} over {} tokens, windows of {} / stride {})",
        report.documents,
        report.perplexity,
        report.mean_nll,
        report.tokens,
        config.max_length,
        config.stride
    );

    // A needle in a haystack of stories, inside the model's 256 positions. OpenCompass's
    // template takes about 150 of this tokenizer's tokens: the buffer of 160 holds it and the
    // answer, leaving 20-80 haystack tokens around the needle.
    let haystack = Haystack::new(&tokenizer, &corpus::generate(200, seed.wrapping_add(2_000)))?;
    let needles = [Needle::new(
        "The magic number of the farm is 42.",
        "What is the magic number of the farm?",
        "42",
    )];
    let config = NeedleConfig {
        lengths: vec![200, 232, 256],
        depths: vec![0.0, 50.0, 100.0],
        repeats: 1,
        length_buffer: 160,
        task: NeedleTask::Single,
        max_new_tokens: 12,
        format: PromptFormat::Raw,
        title: "quickstart tiny model".into(),
        ..NeedleConfig::default()
    };
    let dir = out.join("niah");
    let _ = std::fs::remove_dir_all(&dir);
    let mut generator = ModelGenerator::new(&model, &tokenizer).with_batch_size(3);
    let summary = run_grid(&mut generator, &haystack, &needles, &config, &dir)?;
    let h = &summary.heatmap;
    println!("   needle in a haystack (keyword score, 0-100), depth x length in tokens:");
    println!(
        "   {:>6} {}",
        "depth",
        h.lengths
            .iter()
            .map(|l| format!("{l:>6}"))
            .collect::<String>()
    );
    for (depth, row) in h.depths.iter().zip(&h.scores) {
        let cells: String = row
            .iter()
            .map(|v| format!("{:>6}", v.map_or("-".into(), |v| format!("{v:.0}"))))
            .collect();
        println!("   {:>5}% {cells}", depth);
    }
    println!(
        "   overall {:.1}; heatmap {}, per-cell answers {} ({:.1}s)",
        h.overall.unwrap_or(0.0),
        summary.plot.display(),
        summary.results.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
