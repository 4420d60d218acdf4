//! Trains a conditional reward model on preference pairs, or scores conversations with one.
//!
//! ```text
//! # train from an SFT checkpoint
//! cargo run --release --example reward -- train --model-dir sft --data pairs.jsonl --out rm \
//!     [--eval held_out.jsonl --token-budget 16384 --epochs 1 --lr 1e-5 --final-lr 5e-6]
//! # score {"messages": [...], "domain"?: ...} lines with a reward model
//! cargo run --release --example reward -- score --reward-dir rm --data conversations.jsonl
//! # any example: --device cpu|cuda[:N]|wgpu|tch:cpu|tch:cuda[:N] (with its cargo feature)
//! ```
//!
//! Pairs are `{"prompt": [...], "chosen": [...], "rejected": [...], "domain": "helpful"}`
//! (messages); the domain selects the reward model's system prompt (helpful, harmless, code,
//! math).

use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::DType;
use clap::{Parser, Subcommand};
use internlm2::backends::Kernels;
use internlm2::backends::device::DeviceSpec;
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::checkpoint::SaveOptions;
use internlm2::{InternLM2, Tokenizer};
use internlm2_align::reward::{
    PreferencePair, RewardEncoder, RewardModel, RewardScorer, RewardTrainConfig, pair_accuracy,
    train_reward_model,
};
use internlm2_align::{DomainConversation, read_jsonl};

fn main() -> ExitCode {
    run_program(Args::parse())
}

#[derive(Parser)]
#[command(about = "Train or apply an InternLM2 conditional reward model")]
struct Args {
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu", global = true)]
    device: DeviceSpec,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a reward model from a (SFT) language model checkpoint.
    Train {
        /// HuggingFace language model directory (with its tokenizer).
        #[arg(long)]
        model_dir: PathBuf,
        /// JSONL of preference pairs.
        #[arg(long)]
        data: PathBuf,
        /// Output directory (InternLM2-Reward layout).
        #[arg(long)]
        out: PathBuf,
        /// Held-out pairs for the accuracy before and after.
        #[arg(long)]
        eval: Option<PathBuf>,
        /// Padded tokens per batch (SPEC 6: 16384).
        #[arg(long, default_value_t = 16_384)]
        token_budget: usize,
        /// Epochs (SPEC 6: 1).
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// Peak learning rate (SPEC 6: 1e-5).
        #[arg(long, default_value_t = 1e-5)]
        lr: f64,
        /// Final learning rate (SPEC 6: 5e-6).
        #[arg(long, default_value_t = 5e-6)]
        final_lr: f64,
    },
    /// Score conversations.
    Score {
        /// Reward model directory (with the tokenizer).
        #[arg(long)]
        reward_dir: PathBuf,
        /// JSONL of {"messages": [...], "domain"?: ...}.
        #[arg(long)]
        data: PathBuf,
    },
}

impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        match self.command {
            Command::Train {
                model_dir,
                data,
                out,
                eval,
                token_budget,
                epochs,
                lr,
                final_lr,
            } => {
                let tokenizer = Tokenizer::from_dir(&model_dir)?;
                let encoder = RewardEncoder::new(tokenizer.clone())?;
                let pairs: Vec<PreferencePair> = read_jsonl(&data)?;
                let held_out: Vec<PreferencePair> = match &eval {
                    Some(path) => read_jsonl(path)?,
                    None => Vec::new(),
                };
                let lm = InternLM2::<Autodiff<B>>::load(&model_dir, DType::F32, &device)?;
                let model = RewardModel::from_language_model(lm);
                let accuracy =
                    |m: &RewardModel<Autodiff<B>>| -> Result<Option<f64>, Box<dyn std::error::Error>> {
                        if held_out.is_empty() {
                            return Ok(None);
                        }
                        Ok(Some(pair_accuracy(
                            &RewardScorer {
                                model: m.valid(),
                                encoder: encoder.clone(),
                            },
                            &held_out,
                        )?))
                    };
                let before = accuracy(&model)?;
                let config = RewardTrainConfig {
                    token_budget,
                    epochs,
                    lr,
                    final_lr,
                    ..RewardTrainConfig::default()
                };
                let (model, _) =
                    train_reward_model(model, &encoder, &pairs, &config, |step, s| {
                        eprintln!(
                            "step {step:>5} loss {:.4} accuracy {:.2} margin {:+.3} ({} pairs)",
                            s.loss, s.accuracy, s.margin, s.pairs
                        )
                    })?;
                if let (Some(b), Some(a)) = (before, accuracy(&model)?) {
                    eprintln!(
                        "held-out pair accuracy {:.1}% -> {:.1}%",
                        100.0 * b,
                        100.0 * a
                    );
                }
                model.valid().save(&out, &SaveOptions::default())?;
                tokenizer.save_json(out.join("tokenizer.json"))?;
                eprintln!("saved to {}", out.display());
            }
            Command::Score { reward_dir, data } => {
                let scorer = RewardScorer {
                    model: RewardModel::<B>::load(&reward_dir, DType::F32, &device)?,
                    encoder: RewardEncoder::new(Tokenizer::from_dir(&reward_dir)?)?,
                };
                let items: Vec<DomainConversation> = read_jsonl(&data)?;
                for (i, item) in items.iter().enumerate() {
                    let score = scorer.score(&item.messages, item.domain.as_deref())?;
                    println!(
                        "{}",
                        serde_json::json!({"index": i, "domain": item.domain, "score": score})
                    );
                }
            }
        }
        Ok(())
    }
}
