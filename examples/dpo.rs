//! Direct preference optimisation on the reward model's preference pairs.
//!
//! ```text
//! cargo run --release --example dpo -- --model-dir sft --data pairs.jsonl --out dpo \
//!     [--beta 0.1 --lr 5e-7 --batch-pairs 8 --epochs 1]
//! # any example: --device cpu|cuda[:N]|wgpu|tch:cpu|tch:cuda[:N] (with its cargo feature)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::DType;
use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::DeviceSpec;
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2::{InternLM2, Tokenizer};
use internlm2_align::dpo::{DpoConfig, prepare, train_dpo};
use internlm2_align::read_jsonl;
use internlm2_align::reward::PreferencePair;

fn main() -> ExitCode {
    run_program(Args::parse())
}

#[derive(Parser)]
#[command(about = "DPO of an InternLM2 checkpoint on preference pairs")]
struct Args {
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Starting model (policy and frozen reference), with its tokenizer.
    #[arg(long)]
    model_dir: PathBuf,
    /// JSONL of {"prompt", "chosen", "rejected", "domain"?}.
    #[arg(long)]
    data: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// DPO beta.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 5e-7)]
    lr: f64,
    /// Pairs per step.
    #[arg(long, default_value_t = 8)]
    batch_pairs: usize,
    /// Epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
}

impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        let tokenizer = Tokenizer::from_dir(&self.model_dir)?;
        let pairs: Vec<PreferencePair> = read_jsonl(&self.data)?;
        let reference = InternLM2::<B>::load(&self.model_dir, DType::F32, &device)?;
        let examples = prepare(&reference, &tokenizer, &pairs, self.batch_pairs)?;
        let policy = InternLM2::<Autodiff<B>>::load(&self.model_dir, DType::F32, &device)?;
        let config = DpoConfig {
            beta: self.beta,
            lr: self.lr,
            batch_pairs: self.batch_pairs,
            epochs: self.epochs,
            ..DpoConfig::default()
        };
        let pad = tokenizer.eos_id().unwrap_or(2);
        let (policy, _) = train_dpo(policy, &examples, pad, &config, |step, s| {
            eprintln!(
                "step {step:>5} loss {:.4} margin {:+.4} accuracy {:.2}",
                s.loss, s.margin, s.accuracy
            )
        })?;
        policy.valid().save(
            &self.out,
            &SaveOptions::default().with_dtype(SaveDtype::F32),
        )?;
        tokenizer.save_json(self.out.join("tokenizer.json"))?;
        eprintln!("saved to {}", self.out.display());
        Ok(())
    }
}
