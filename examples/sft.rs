//! Supervised fine-tuning of an InternLM2 checkpoint on ChatML conversations.
//!
//! ```text
//! cargo run --release --example sft -- --model-dir base --data conversations.jsonl --out sft \
//!     [--seq-len 2048 --batch 8 --epochs 1 --lr 4e-5]
//! # any example: --device cpu|cuda[:N]|wgpu|tch:cpu|tch:cuda[:N] (with its cargo feature)
//! ```
//!
//! Each line of `--data` is `{"messages": [{"role": "user", "content": ...}, {"role":
//! "assistant", "content": ...}, ...]}` (tool turns included). The loss covers the assistant
//! tokens only, closing `<|im_end|>` included; conversations are packed into rows with their
//! own positions and attention. The result is written in HuggingFace layout with the
//! tokenizer. With `--lora-rank R` only low-rank adapters train; they are saved alone in
//! `OUT/adapter` (PEFT layout) and merged into the saved model.

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
use internlm2::model::lora::LoraConfig;
use internlm2::{InternLM2, Tokenizer};
use internlm2_align::sft::{
    PackedSft, SftConfig, SftPacking, read_conversations, tokenize_conversation, train_sft,
};
use internlm2_train::{OptimizerConfig, Trainer};

fn main() -> ExitCode {
    run_program(Args::parse())
}

#[derive(Parser)]
#[command(about = "Supervised fine-tuning on ChatML conversations")]
struct Args {
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// HuggingFace model directory to start from (with its tokenizer).
    #[arg(long)]
    model_dir: PathBuf,
    /// JSONL of {"messages": [...]}.
    #[arg(long)]
    data: PathBuf,
    /// Output directory (HuggingFace layout).
    #[arg(long)]
    out: PathBuf,
    /// Tokens per packed row.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Rows per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Epochs (SPEC 6: 1).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate (SPEC 6: 4e-5).
    #[arg(long, default_value_t = 4e-5)]
    lr: f64,
    /// Seed of the row order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train LoRA adapters of this rank on every linear layer instead of all weights; the
    /// adapters are saved alone in OUT/adapter and merged into the model saved in OUT.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
}

impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        let tokenizer = Tokenizer::from_dir(&self.model_dir)?;
        let conversations = read_conversations(&self.data)?;
        let examples = conversations
            .iter()
            .map(|c| tokenize_conversation(&tokenizer, &c.messages))
            .collect::<Result<Vec<_>, _>>()?;
        let pad = tokenizer.eos_id().unwrap_or(2);
        let packed = PackedSft::new(
            &examples,
            SftPacking {
                seq_len: self.seq_len,
                pad_id: pad,
            },
        );
        eprintln!(
            "{} conversations -> {} rows of {} tokens ({} cut to fit)",
            examples.len(),
            packed.len(),
            self.seq_len,
            packed.truncated
        );
        let mut model = InternLM2::<Autodiff<B>>::load(&self.model_dir, DType::F32, &device)?;
        let lora = self
            .lora_rank
            .map(|rank| LoraConfig::new(rank, self.lora_alpha));
        if let Some(lora) = &lora {
            model = lora.attach(model, &device);
            let (adapter, base) = lora.parameter_counts(&model);
            eprintln!(
                "LoRA rank {}: {adapter} trainable parameters, {base} frozen",
                lora.rank
            );
        }
        let mut trainer = Trainer::new(model, OptimizerConfig::new());
        let config = SftConfig {
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.batch,
            seed: self.seed,
            ..SftConfig::default()
        };
        let losses = train_sft(&mut trainer, &packed, &config, |r| {
            eprintln!(
                "step {:>5} loss {:.4} lr {:.2e} |g| {:.2} {:.0} tok/s",
                r.step, r.loss, r.lr, r.grad_norm, r.tokens_per_s
            )
        })?;
        let mut trained = trainer.model.valid();
        if let Some(lora) = &lora {
            lora.save_adapters(&trained, &self.out.join("adapter"), SaveDtype::F32)?;
            trained = lora.merge(trained);
        }
        trained.save(
            &self.out,
            &SaveOptions::default().with_dtype(SaveDtype::F32),
        )?;
        tokenizer.save_json(self.out.join("tokenizer.json"))?;
        eprintln!(
            "{} steps, loss {:.4} -> {:.4}; saved to {}",
            losses.len(),
            losses.first().copied().unwrap_or(f64::NAN),
            losses.last().copied().unwrap_or(f64::NAN),
            self.out.display()
        );
        Ok(())
    }
}
