//! The quickstart's alignment stages: SFT, a reward model, a few PPO iterations, a chat turn.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::DType;
use internlm2::backends::{Cpu, CpuAutodiff};
use internlm2::chat::{self, Message};
use internlm2::generate::{GenerationConfig, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, Tokenizer};
use internlm2_align::ppo::{ConditionalReward, CriticModel, Ppo, PpoConfig, Prompt, RewardFn};
use internlm2_align::reward::{
    PreferencePair, RewardEncoder, RewardModel, RewardScorer, RewardTrainConfig, pair_accuracy,
    train_reward_model,
};
use internlm2_align::sft::{PackedSft, SftConfig, SftPacking, tokenize_conversation, train_sft};
use internlm2_train::{OptimizerConfig, Trainer};

use internlm2_datasets::synthetic as corpus;

/// Runs SFT -> reward model -> PPO -> chat on the pre-trained model in `model_dir`.
pub fn run(
    model_dir: &std::path::Path,
    out: &std::path::Path,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let device = Default::default();
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let eos = tokenizer.eos_id().unwrap_or(2);
    let im_end = tokenizer
        .chat_tokens()
        .map(|c| c.im_end)
        .ok_or("the tokenizer has no chat tokens")?;

    println!("== 7. supervised fine-tuning");
    let t = Instant::now();
    let pairs = corpus::instructions(600, seed + 1);
    let examples = pairs
        .iter()
        .map(|(q, a)| {
            tokenize_conversation(
                &tokenizer,
                &[Message::user(q.clone()), Message::assistant(a.clone())],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let packed = PackedSft::new(
        &examples,
        SftPacking {
            seq_len: 128,
            pad_id: eos,
        },
    );
    let model = InternLM2::<CpuAutodiff>::load(model_dir, DType::F32, &device)?;
    let mut trainer = Trainer::new(model, OptimizerConfig::new());
    // A tiny model fine-tunes at a larger LR than SPEC 6's 4e-5 for 7B models.
    let config = SftConfig {
        epochs: 2,
        lr: 1e-3,
        batch_size: 8,
        seed,
        ..SftConfig::default()
    };
    let losses = train_sft(&mut trainer, &packed, &config, |_| {})?;
    println!(
        "   {} conversations packed into {} rows of 128; {} steps, assistant-token loss {:.3} -> {:.3} ({:.0}s)",
        examples.len(),
        packed.len(),
        losses.len(),
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN),
        t.elapsed().as_secs_f64()
    );
    let sft = trainer.model.valid();
    let chat_config = GenerationConfig::default()
        .with_sampling(SamplingConfig::greedy())
        .with_stop_token_ids(vec![eos, im_end])
        .with_max_new_tokens(64);
    let question = "Tell me a story about Tom and a dog.";
    let reply = ask(&sft, &tokenizer, question, &chat_config)?;
    println!("   user> {question}\n   assistant> {reply}");

    println!("== 8. reward model");
    let t = Instant::now();
    let preference = |n: usize, s: u64| -> Vec<PreferencePair> {
        corpus::instructions(n, s)
            .into_iter()
            .map(|(q, a)| {
                let worse = corpus::degrade(&a);
                PreferencePair::new(vec![Message::user(q)], a, worse, Some("helpful"))
            })
            .collect()
    };
    let (train, held_out) = (preference(240, seed + 2), preference(60, seed + 3));
    let encoder = RewardEncoder::new(tokenizer.clone())?;
    let reward_model = RewardModel::from_language_model(trainer.model.clone());
    let scorer = |m: &RewardModel<CpuAutodiff>| RewardScorer {
        model: m.valid(),
        encoder: encoder.clone(),
    };
    let before = pair_accuracy(&scorer(&reward_model), &held_out)?;
    let rm_config = RewardTrainConfig {
        token_budget: 4096,
        epochs: 2,
        lr: 5e-4,
        final_lr: 2.5e-4,
        seed,
        ..RewardTrainConfig::default()
    };
    let (reward_model, stats) =
        train_reward_model(reward_model, &encoder, &train, &rm_config, |_, _| {})?;
    let after = pair_accuracy(&scorer(&reward_model), &held_out)?;
    println!(
        "   {} pairs (complete answer vs cut-short repetition), {} steps, focal ranking loss {:.3} -> {:.3}",
        train.len(),
        stats.len(),
        stats.first().map_or(f64::NAN, |s| s.loss),
        stats.last().map_or(f64::NAN, |s| s.loss)
    );
    println!(
        "   held-out pair accuracy {:.0}% -> {:.0}% ({:.0}s)",
        100.0 * before,
        100.0 * after,
        t.elapsed().as_secs_f64()
    );
    reward_model.valid().save(
        out.join("reward"),
        &internlm2::checkpoint::SaveOptions::default(),
    )?;

    println!("== 9. PPO");
    let t = Instant::now();
    let reward = ConditionalReward {
        scorer: scorer(&reward_model),
    };
    let critic = CriticModel::from_reward_model(reward_model.clone());
    let ppo_config = PpoConfig {
        actor_lr: 2e-5,
        critic_lr: 1e-4,
        critic_warmup_iterations: 3,
        max_new_tokens: 48,
        stop_token_ids: vec![eos, im_end],
        ..PpoConfig::default()
    };
    let mut ppo = Ppo::new(trainer.model.clone(), sft.clone(), critic, ppo_config);
    let prompts: Vec<Prompt> = corpus::instructions(64, seed + 4)
        .into_iter()
        .map(|(q, _)| Prompt::chat(&tokenizer, vec![Message::user(q)], Some("helpful")))
        .collect::<Result<_, _>>()?;
    let held: Vec<Prompt> = corpus::instructions(16, seed + 5)
        .into_iter()
        .map(|(q, _)| Prompt::chat(&tokenizer, vec![Message::user(q)], Some("helpful")))
        .collect::<Result<_, _>>()?;
    let mean_reward = |ppo: &Ppo<CpuAutodiff>| -> Result<f64, Box<dyn std::error::Error>> {
        let rollouts = ppo.rollout(&held, Some(&tokenizer), 7)?;
        let r = reward.rewards(&rollouts)?;
        Ok(r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64)
    };
    let before = mean_reward(&ppo)?;
    for (i, chunk) in prompts.chunks(8).enumerate() {
        let (s, _) = ppo.iterate(chunk, Some(&tokenizer), &reward, None)?;
        println!(
            "   iteration {:>2}: reward {:+.3} KL {:.3} entropy {:.2} value loss {:.4} length {:.1} clip {:.2}{}",
            i + 1,
            s.reward,
            s.kl,
            s.entropy,
            s.value_loss,
            s.response_length,
            s.clip_fraction,
            if s.actor_updated {
                ""
            } else {
                " (critic warm-up)"
            }
        );
    }
    let after = mean_reward(&ppo)?;
    println!(
        "   held-out mean reward {before:+.3} -> {after:+.3} ({:.0}s)",
        t.elapsed().as_secs_f64()
    );

    println!("== 10. chat with the aligned model");
    let aligned: InternLM2<Cpu> = ppo.actor()?.valid();
    for question in ["Tell me a story about Mia and a fox.", "What is 6 plus 3?"] {
        let reply = ask(&aligned, &tokenizer, question, &chat_config)?;
        println!("   user> {question}\n   assistant> {reply}");
    }
    Ok(())
}

fn ask(
    model: &InternLM2<Cpu>,
    tokenizer: &Tokenizer,
    question: &str,
    config: &GenerationConfig,
) -> Result<String, Box<dyn std::error::Error>> {
    let prompt = chat::encode(tokenizer, &[Message::user(question)], true)?;
    let out = generate(model, Some(tokenizer), vec![prompt], config, |_| true)?;
    Ok(out[0].text.clone().unwrap_or_default())
}
