//! Recomputes a reference file with the SDK, so anyone can diff it against another
//! implementation.
//!
//! ```text
//! cargo run --release --example forward -- MODEL_DIR REFERENCE_JSON OUT_JSON [--device cpu]
//! ```
//!
//! `REFERENCE_JSON` has the schema of the fixtures' `reference.json`: cases with `input_ids`
//! (`[batch][seq]`) and either `logits` (optionally with `attention_mask` and `position_ids`)
//! or `new_tokens` (greedy decoding with the KV cache). `OUT_JSON` is the same document with
//! the SDK's own `logits` / `new_tokens`; the max abs difference per case is printed.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::{DType, Int, Tensor, TensorData};
use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::DeviceSpec;
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::generate::{GenerationConfig, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{ForwardInput, InternLM2};
use serde_json::Value;

fn main() -> ExitCode {
    run_program(Args::parse())
}

#[derive(Parser)]
#[command(about = "Recompute the cases of a reference.json with the SDK")]
struct Args {
    /// HuggingFace model directory.
    model_dir: PathBuf,
    /// Input reference.json.
    reference: PathBuf,
    /// Output JSON with the SDK's logits and tokens.
    output: PathBuf,
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    /// The model runs in f32 everywhere, as the reference does.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

fn ints(value: &Value) -> Result<Vec<Vec<i64>>, String> {
    value
        .as_array()
        .ok_or("expected [batch][seq] integers")?
        .iter()
        .map(|row| {
            row.as_array()
                .ok_or_else(|| "expected a row".to_string())?
                .iter()
                .map(|v| v.as_i64().ok_or_else(|| format!("not an integer: {v}")))
                .collect()
        })
        .collect()
}

impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        let model = InternLM2::<B>::load(&self.model_dir, DType::F32, &device)?;
        let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&self.reference)?)?;
        let cases = doc["cases"]
            .as_array_mut()
            .ok_or("reference has no \"cases\" list")?;
        for case in cases {
            let name = case["name"].as_str().unwrap_or("?").to_string();
            let ids = ints(&case["input_ids"])?;
            let (b, s) = (ids.len(), ids.first().map_or(0, Vec::len));
            if case.get("new_tokens").is_some() {
                let n = case["new_tokens"].as_array().map_or(30, Vec::len);
                let prompts = ids
                    .iter()
                    .map(|r| r.iter().map(|&i| i as u32).collect())
                    .collect();
                let config = GenerationConfig::default()
                    .with_sampling(SamplingConfig::greedy())
                    .with_max_new_tokens(n);
                let out = generate(&model, None, prompts, &config, |_| true)?;
                let ours: Vec<Vec<u32>> = out.into_iter().map(|o| o.tokens).collect();
                let same = serde_json::to_value(if b == 1 {
                    serde_json::json!(ours[0])
                } else {
                    serde_json::json!(ours)
                })?;
                println!(
                    "{name}: tokens {}",
                    if same == case["new_tokens"] {
                        "identical"
                    } else {
                        "DIFFER"
                    }
                );
                case["new_tokens"] = same;
                continue;
            }
            let flat: Vec<i64> = ids.iter().flatten().copied().collect();
            let mut input = ForwardInput::new(Tensor::<B, 2, Int>::from_data(
                TensorData::new(flat, [b, s]),
                &device,
            ));
            if case.get("position_ids").is_some() {
                input = input.with_positions(
                    ints(&case["position_ids"])?
                        .into_iter()
                        .flatten()
                        .map(|p| p as usize)
                        .collect(),
                );
            }
            let mask = match case.get("attention_mask") {
                Some(m) => Some(
                    ints(m)?
                        .into_iter()
                        .flatten()
                        .map(|m| m == 1)
                        .collect::<Vec<bool>>(),
                ),
                None => None,
            };
            if let Some(mask) = &mask {
                input = input.with_padding(mask.iter().map(|real| !real).collect());
            }
            let logits = model.forward_input(input);
            let [_, _, v] = logits.dims();
            let values = logits.into_data().into_vec::<f32>()?;
            // Max abs difference against the reference, at real tokens only.
            if let Some(reference) = case["logits"].as_array() {
                let expected: Vec<f32> = reference
                    .iter()
                    .flat_map(|r| r.as_array().into_iter().flatten())
                    .flat_map(|p| p.as_array().into_iter().flatten())
                    .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect();
                if expected.len() == values.len() {
                    let worst = values
                        .iter()
                        .zip(&expected)
                        .enumerate()
                        .filter(|(i, _)| mask.as_ref().is_none_or(|m| m[i / v]))
                        .map(|(_, (a, b))| (a - b).abs())
                        .fold(0f32, f32::max);
                    println!("{name}: max abs diff {worst:.3e}");
                }
            }
            let nested: Vec<Vec<Vec<f32>>> = values
                .chunks(s * v)
                .map(|row| row.chunks(v).map(<[f32]>::to_vec).collect())
                .collect();
            case["logits"] = serde_json::to_value(nested)?;
        }
        std::fs::write(&self.output, serde_json::to_string(&doc)?)?;
        println!("wrote {}", self.output.display());
        Ok(())
    }
}
