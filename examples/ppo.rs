//! PPO against a frozen conditional reward model (COOL RLHF, SPEC 6).
//!
//! ```text
//! cargo run --release --example ppo -- --policy sft --reward rm --prompts prompts.jsonl \
//!     --out ppo [--iterations 400 --batch 8 --max-new-tokens 256 --critic-warmup 50 \
//!     --actor-lr 1e-6 --critic-lr 5e-6 --kl 0.01 --log ppo/metrics.jsonl]
//! # any example: --device cpu|cuda[:N]|wgpu|tch:cpu|tch:cuda[:N] (with its cargo feature)
//! ```
//!
//! The actor and the reference start from `--policy`, the critic from the reward model's body;
//! each prompt line is `{"messages": [...], "domain": "helpful"}` and the domain's system prompt
//! is shown to the reward model only. Every iteration prints and logs reward, KL, entropy,
//! value loss, response length and clip fraction.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::DType;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use internlm2::backends::Kernels;
use internlm2::backends::device::DeviceSpec;
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2::{InternLM2, Tokenizer};
use internlm2_align::ppo::{ConditionalReward, CriticModel, Ppo, PpoConfig, Prompt};
use internlm2_align::reward::{RewardEncoder, RewardModel, RewardScorer};
use internlm2_align::{DomainConversation, read_jsonl};
use internlm2_train::{InMemoryDocuments, Packer, PackingConfig};

fn main() -> ExitCode {
    run_program(Args::parse())
}

#[derive(Parser)]
#[command(about = "PPO of an InternLM2 policy against a conditional reward model")]
struct Args {
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// SFT model directory (actor and reference), with its tokenizer.
    #[arg(long)]
    policy: PathBuf,
    /// Reward model directory (InternLM2-Reward layout).
    #[arg(long)]
    reward: PathBuf,
    /// JSONL of {"messages": [...], "domain"?: ...}.
    #[arg(long)]
    prompts: PathBuf,
    /// Output directory for the trained actor (HuggingFace layout).
    #[arg(long)]
    out: PathBuf,
    /// PPO iterations.
    #[arg(long, default_value_t = 400)]
    iterations: usize,
    /// Prompts per iteration.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Longest answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Critic-only iterations first (SPEC 6: 50).
    #[arg(long, default_value_t = 50)]
    critic_warmup: usize,
    /// Actor learning rate (SPEC 6: 1e-6).
    #[arg(long, default_value_t = 1e-6)]
    actor_lr: f64,
    /// Critic learning rate (SPEC 6: 5e-6).
    #[arg(long, default_value_t = 5e-6)]
    critic_lr: f64,
    /// KL coefficient (SPEC 6: 0.01).
    #[arg(long, default_value_t = 0.01)]
    kl: f64,
    /// Per-iteration JSONL log.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Pre-training text for the PTX loss (JSONL with "text"); one packed batch per iteration.
    #[arg(long)]
    ptx: Option<PathBuf>,
    /// PTX loss weight (SPEC 6: 0.5).
    #[arg(long, default_value_t = 0.5)]
    ptx_coef: f64,
    /// Tokens per PTX row.
    #[arg(long, default_value_t = 512)]
    ptx_seq_len: usize,
}

#[derive(serde::Deserialize)]
struct TextLine {
    text: String,
}

impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        let tokenizer = Tokenizer::from_dir(&self.policy)?;
        let lines: Vec<DomainConversation> = read_jsonl(&self.prompts)?;
        if lines.is_empty() {
            return Err("no prompts".into());
        }
        let prompts = lines
            .into_iter()
            .map(|l| Prompt::chat(&tokenizer, l.messages, l.domain.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let actor = InternLM2::<Autodiff<B>>::load(&self.policy, DType::F32, &device)?;
        let reference = InternLM2::<B>::load(&self.policy, DType::F32, &device)?;
        let reward_model = RewardModel::<Autodiff<B>>::load(&self.reward, DType::F32, &device)?;
        let critic = CriticModel::from_reward_model(reward_model.clone());
        let reward = ConditionalReward {
            scorer: RewardScorer {
                model: reward_model.valid(),
                encoder: RewardEncoder::new(
                    Tokenizer::from_dir(&self.reward)
                        .or_else(|_| Tokenizer::from_dir(&self.policy))?,
                )?,
            },
        };
        let mut stop = vec![];
        stop.extend(tokenizer.eos_id());
        stop.extend(tokenizer.chat_tokens().map(|c| c.im_end));
        let mut ptx = match &self.ptx {
            Some(path) => {
                let lines: Vec<TextLine> = read_jsonl(path)?;
                let docs = lines
                    .iter()
                    .map(|l| tokenizer.encode(&l.text, false))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Packer::new(
                    InMemoryDocuments::new(docs).shuffled(0),
                    PackingConfig {
                        seq_len: self.ptx_seq_len,
                        eos_id: tokenizer.eos_id().unwrap_or(2),
                        cross_document_attention: false,
                    },
                ))
            }
            None => None,
        };
        let config = PpoConfig {
            ptx_coef: self.ptx_coef,
            kl_coef: self.kl,
            actor_lr: self.actor_lr,
            critic_lr: self.critic_lr,
            critic_warmup_iterations: self.critic_warmup,
            max_new_tokens: self.max_new_tokens,
            stop_token_ids: stop,
            ..PpoConfig::default()
        };
        let mut ppo = Ppo::new(actor, reference, critic, config);
        let mut log = match &self.log {
            Some(path) => Some(std::fs::File::create(path)?),
            None => None,
        };
        let bar = ProgressBar::new(self.iterations as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")?
                .progress_chars("=> "),
        );
        for i in 0..self.iterations {
            let batch: Vec<Prompt> = (0..self.batch)
                .map(|k| prompts[(i * self.batch + k) % prompts.len()].clone())
                .collect();
            let ptx_batch = ptx.as_mut().map(|p| p.next_batch(self.batch));
            let (stats, _) = ppo.iterate(&batch, Some(&tokenizer), &reward, ptx_batch.as_ref())?;
            bar.set_position((i + 1) as u64);
            bar.set_message(format!(
                "reward {:+.3} KL {:.3} entropy {:.2} value loss {:.4} length {:.0} clip {:.2}",
                stats.reward,
                stats.kl,
                stats.entropy,
                stats.value_loss,
                stats.response_length,
                stats.clip_fraction
            ));
            if let Some(file) = log.as_mut() {
                writeln!(file, "{}", serde_json::to_string(&stats)?)?;
            }
        }
        bar.finish();
        ppo.actor()?.valid().save(
            &self.out,
            &SaveOptions::default().with_dtype(SaveDtype::F32),
        )?;
        tokenizer.save_json(self.out.join("tokenizer.json"))?;
        eprintln!("saved the actor to {}", self.out.display());
        Ok(())
    }
}
