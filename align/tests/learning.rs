//! Tests that show real learning on tiny models: SFT learns the assistant turns only, the
//! reward model's pair accuracy on held-out pairs rises well above chance, DPO raises the
//! chosen-over-rejected margin, PPO raises the mean reward of a task whose optimum is known
//! while the KL to the reference stays bounded.

mod common;

use burn::module::AutodiffModule;
use common::{CountSevens, WORDS, preference_pairs, seeded};
use internlm2::backends::{Cpu, CpuAutodiff};
use internlm2::chat::Message;
use internlm2::{InternLM2, InternLM2Config, Tokenizer};
use internlm2_align::AlignError;
use internlm2_align::dpo::{DpoConfig, mean_margin, prepare, train_dpo};
use internlm2_align::ppo::{CriticModel, Ppo, PpoConfig, Prompt};
use internlm2_align::reward::{
    RankingLoss, RewardEncoder, RewardModel, RewardScorer, RewardTrainConfig, pair_accuracy,
    train_reward_model,
};
use internlm2_align::sft::{PackedSft, SftConfig, SftPacking, tokenize_conversation, train_sft};
use internlm2_train::{OptimizerConfig, Trainer};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// A tokenizer trained on the kind of text the tests use.
fn tokenizer() -> Tokenizer {
    let mut texts = Vec::new();
    let mut rng = StdRng::seed_from_u64(0);
    for _ in 0..300 {
        let filler: Vec<&str> = (0..6).map(|_| *WORDS.choose(&mut rng).unwrap()).collect();
        let verdict = if rng.random_bool(0.5) { "good" } else { "bad" };
        texts.push(format!(
            "<|im_start|>user\nDescribe {}<|im_end|>\n<|im_start|>assistant\n{} {}<|im_end|>\n",
            filler[0],
            filler.join(" "),
            verdict
        ));
    }
    Tokenizer::train_bpe(texts.iter(), 200).unwrap()
}

fn config(vocab: usize) -> InternLM2Config {
    InternLM2Config::new(vocab, 48, 96, 2, 4, 2)
        .with_max_position_embeddings(128)
        .with_rope_theta(10_000.0)
        .with_pad_token_id(2)
}

#[test]
fn sft_masks_only_the_assistant_turn_and_learns_it() {
    let tok = tokenizer();
    let conversation = vec![
        Message::system("Be brief."),
        Message::user("Describe cat"),
        Message::assistant("red cat good"),
    ];
    let example = tokenize_conversation(&tok, &conversation).unwrap();
    let trained: Vec<u32> = example
        .ids
        .iter()
        .zip(&example.trained)
        .filter(|(_, t)| **t)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(tok.decode(&trained).unwrap(), "red cat good<|im_end|>");

    // Two conversations per row: own segments, positions from 0, padding out of the loss.
    let n = example.ids.len() - 1;
    let packed = PackedSft::new(
        &[example.clone(), example.clone()],
        SftPacking {
            seq_len: 2 * n + 4,
            pad_id: 2,
        },
    );
    assert_eq!(packed.len(), 1);
    let row = &packed.batches(1, 0)[0];
    assert_eq!(row.positions[n], 0);
    let segments = row.segments.as_ref().unwrap();
    assert_ne!(segments[0], segments[n]);
    assert!(!row.loss_mask[2 * n..].iter().any(|&m| m));

    // Training lowers the loss on the assistant tokens.
    let examples: Vec<_> = (0..40)
        .map(|i| {
            let c = vec![
                Message::user(format!("Describe {}", WORDS[i % 12])),
                Message::assistant(format!("{} good", WORDS[i % 12])),
            ];
            tokenize_conversation(&tok, &c).unwrap()
        })
        .collect();
    let data = PackedSft::new(
        &examples,
        SftPacking {
            seq_len: 96,
            pad_id: 2,
        },
    );
    let model = seeded(1, || {
        InternLM2::<CpuAutodiff>::init(&config(tok.vocab_size()), &Default::default())
    });
    let mut trainer = Trainer::new(model, OptimizerConfig::new());
    let before = trainer.evaluate(&data.batches(64, 0)).unwrap();
    let sft = SftConfig {
        epochs: 30,
        lr: 3e-3,
        batch_size: 4,
        ..SftConfig::default()
    };
    train_sft(&mut trainer, &data, &sft, |_| {}).unwrap();
    let after = trainer.evaluate(&data.batches(64, 0)).unwrap();
    assert!(after < before * 0.5, "assistant loss {before} -> {after}");
}

#[test]
fn reward_model_pair_accuracy_rises_well_above_chance() {
    let tok = tokenizer();
    let encoder = RewardEncoder::new(tok.clone()).unwrap();
    let (train, held_out) = (
        preference_pairs(160, 1, Some("helpful")),
        preference_pairs(60, 2, Some("helpful")),
    );
    let model = seeded(2, || {
        RewardModel::<CpuAutodiff>::init(&config(tok.vocab_size()), &Default::default())
    });
    let scorer = |m: &RewardModel<CpuAutodiff>| RewardScorer {
        model: m.valid(),
        encoder: encoder.clone(),
    };
    let before = pair_accuracy(&scorer(&model), &held_out).unwrap();
    let training = RewardTrainConfig {
        token_budget: 1024,
        epochs: 3,
        lr: 2e-3,
        final_lr: 1e-3,
        ..RewardTrainConfig::default()
    };
    let (model, stats) = train_reward_model(model, &encoder, &train, &training, |_, _| {}).unwrap();
    let after = pair_accuracy(&scorer(&model), &held_out).unwrap();
    assert!(after >= 0.9, "held-out pair accuracy {before} -> {after}");
    assert!(stats.iter().all(|s| s.loss.is_finite()));
    // Scores stay inside the barrier's interval.
    let s = scorer(&model)
        .score(
            &[
                Message::user("Describe sun"),
                Message::assistant("sun good"),
            ],
            Some("helpful"),
        )
        .unwrap();
    assert!(s.abs() < RankingLoss::default().bound as f32);
}

#[test]
fn reward_model_round_trips_the_official_layout() {
    let tok = tokenizer();
    let model = seeded(3, || {
        RewardModel::<Cpu>::init(&config(tok.vocab_size()), &Default::default())
    });
    let dir = tempfile::tempdir().unwrap();
    model
        .save(
            dir.path(),
            &internlm2::checkpoint::SaveOptions::default()
                .with_dtype(internlm2::checkpoint::SaveDtype::F32),
        )
        .unwrap();
    let loaded =
        RewardModel::<Cpu>::load(dir.path(), burn::tensor::DType::F32, &Default::default())
            .unwrap();
    let encoder = RewardEncoder::new(tok).unwrap();
    let conv = vec![
        Message::user("Describe sun"),
        Message::assistant("sun good"),
    ];
    let a = RewardScorer {
        model,
        encoder: encoder.clone(),
    }
    .score(&conv, None)
    .unwrap();
    let b = RewardScorer {
        model: loaded,
        encoder,
    }
    .score(&conv, None)
    .unwrap();
    assert_eq!(a, b);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "InternLM2ForRewardModel");
    // An unknown domain is a typed error.
    let scorer = RewardScorer {
        model: RewardModel::<Cpu>::load(dir.path(), burn::tensor::DType::F32, &Default::default())
            .unwrap(),
        encoder: RewardEncoder::new(tokenizer()).unwrap(),
    };
    assert!(matches!(
        scorer.score(&conv, Some("poetry")),
        Err(AlignError::InvalidConfig { .. })
    ));
}

#[test]
fn dpo_raises_the_chosen_over_rejected_margin() {
    let tok = tokenizer();
    let pad = tok.eos_id().unwrap();
    let policy = seeded(4, || {
        InternLM2::<CpuAutodiff>::init(&config(tok.vocab_size()), &Default::default())
    });
    let reference = policy.valid();
    let (train, held_out) = (
        preference_pairs(64, 3, Some("helpful")),
        preference_pairs(32, 4, Some("helpful")),
    );
    let config = DpoConfig {
        beta: 0.1,
        lr: 2e-3,
        batch_pairs: 8,
        epochs: 3,
        ..DpoConfig::default()
    };
    let train_examples = prepare(&reference, &tok, &train, 8).unwrap();
    let held_examples = prepare(&reference, &tok, &held_out, 8).unwrap();
    let before = mean_margin(&reference, &held_examples, pad, config.beta);
    assert!(
        before.abs() < 1e-3,
        "policy = reference starts at margin 0: {before}"
    );
    let (policy, stats) = train_dpo(policy, &train_examples, pad, &config, |_, _| {}).unwrap();
    let after = mean_margin(&policy.valid(), &held_examples, pad, config.beta);
    assert!(after > 0.5, "held-out margin {before} -> {after}");
    assert!(stats.last().unwrap().accuracy > 0.9);
}

#[test]
fn ppo_raises_the_reward_of_a_known_optimum_with_bounded_kl() {
    let config = config(24);
    let actor = seeded(5, || {
        InternLM2::<CpuAutodiff>::init(&config, &Default::default())
    });
    let reference = actor.valid();
    let critic = seeded(6, || {
        CriticModel::<CpuAutodiff>::init(&config, &Default::default())
    });
    let ppo_config = PpoConfig {
        actor_lr: 3e-3,
        critic_lr: 3e-3,
        critic_warmup_iterations: 2,
        ppo_epochs: 2,
        max_new_tokens: 6,
        stop_token_ids: vec![],
        ..PpoConfig::default()
    };
    let mut ppo = Ppo::new(actor, reference, critic, ppo_config);
    let prompts: Vec<Prompt> = (0..16)
        .map(|i| Prompt {
            ids: vec![1, 3 + i % 5],
            messages: None,
            domain: None,
        })
        .collect();
    let mut history = Vec::new();
    for _ in 0..40 {
        let (stats, _) = ppo.iterate(&prompts, None, &CountSevens, None).unwrap();
        assert!(stats.kl.is_finite() && stats.value_loss.is_finite());
        history.push(stats);
    }
    let first: f64 = history[..3].iter().map(|s| s.reward).sum::<f64>() / 3.0;
    let last: f64 = history[37..].iter().map(|s| s.reward).sum::<f64>() / 3.0;
    assert!(!history[0].actor_updated && history[2].actor_updated);
    assert!(last > first + 0.3, "mean reward {first:.3} -> {last:.3}");
    // The per-sequence KL (6 tokens) stays bounded throughout: about 3 nats per token at most,
    // the cost of making the 7s (probability ~1/24 under the reference) near certain.
    let worst = history.iter().map(|s| s.kl).fold(0.0, f64::max);
    assert!(worst < 25.0, "KL reached {worst}");
}

/// A detector that flags every probe, to exercise the loop's plumbing.
struct Everything;

impl internlm2_align::online::HackDetector for Everything {
    fn name(&self) -> &str {
        "everything"
    }
    fn hacked(
        &self,
        _: &internlm2_align::online::Sample,
        _: &internlm2_align::online::Sample,
    ) -> bool {
        true
    }
}

#[test]
fn online_rlhf_round_patches_and_retrains_the_reward_model() {
    use internlm2_align::online::{
        HackDetector, LengthBlowUp, OnlineConfig, run_online_rlhf, user_prompts,
    };
    let tok = tokenizer();
    let cfg = config(tok.vocab_size());
    let actor = seeded(7, || {
        InternLM2::<CpuAutodiff>::init(&cfg, &Default::default())
    });
    let reward_model = seeded(8, || {
        RewardModel::<CpuAutodiff>::init(&cfg, &Default::default())
    });
    let critic = CriticModel::from_reward_model(reward_model.clone());
    let ppo_config = PpoConfig {
        max_new_tokens: 8,
        critic_warmup_iterations: 0,
        stop_token_ids: vec![],
        ..PpoConfig::default()
    };
    let mut ppo = Ppo::new(actor.clone(), actor.valid(), critic, ppo_config);
    let encoder = RewardEncoder::new(tok.clone()).unwrap();
    let prompts = user_prompts(&tok, &["Describe cat", "Describe dog"], Some("helpful")).unwrap();
    let probes = user_prompts(
        &tok,
        &["Describe sun", "Describe moon", "Describe tree"],
        Some("helpful"),
    )
    .unwrap();
    let slow = tempfile::NamedTempFile::new().unwrap();
    internlm2_align::write_jsonl(slow.path(), &preference_pairs(3, 9, Some("helpful"))).unwrap();
    let config = OnlineConfig {
        rounds: 1,
        iterations_per_round: 2,
        min_pairs: 3,
        max_pairs: 2,
        slow_path: Some(slow.path().to_path_buf()),
        reward_training: RewardTrainConfig {
            token_budget: 512,
            lr: 1e-3,
            final_lr: 5e-4,
            ..RewardTrainConfig::default()
        },
    };
    let detectors: Vec<Box<dyn HackDetector>> =
        vec![Box::new(Everything), Box::new(LengthBlowUp::default())];
    let before = RewardScorer {
        model: reward_model.valid(),
        encoder: encoder.clone(),
    }
    .score(
        &[
            Message::user("Describe sun"),
            Message::assistant("sun good"),
        ],
        Some("helpful"),
    )
    .unwrap();
    let (retrained, reports) = run_online_rlhf(
        &mut ppo,
        reward_model,
        &encoder,
        &tok,
        &prompts,
        2,
        &probes,
        &detectors,
        None,
        None,
        &config,
        |_| {},
    )
    .unwrap();
    let report = &reports[0];
    assert_eq!(report.ppo.len(), 2);
    assert_eq!(report.detected[0], ("everything".to_string(), 3));
    assert_eq!(
        report.patch_pairs,
        vec![("everything".to_string(), 2)],
        "3 instances, capped at 2"
    );
    assert_eq!(report.slow_path_pairs, 3);
    let after = RewardScorer {
        model: retrained.valid(),
        encoder,
    }
    .score(
        &[
            Message::user("Describe sun"),
            Message::assistant("sun good"),
        ],
        Some("helpful"),
    )
    .unwrap();
    assert_ne!(before, after, "the reward model was retrained");
}

#[test]
fn lora_sft_trains_only_the_adapters_and_merges_exactly() {
    use internlm2::checkpoint::SaveDtype;
    use internlm2::model::lora::LoraConfig;
    let tok = tokenizer();
    let device = Default::default();
    // A random head of std 0.02 cannot produce confident logits through a frozen final norm:
    // scale it, as training would have, so the adapters have something to steer.
    let scaled = |mut m: InternLM2<CpuAutodiff>| {
        let head = m.output.as_mut().unwrap();
        head.weight = burn::module::Param::from_tensor(head.weight.val().mul_scalar(50.0).detach());
        m
    };
    let base = scaled(seeded(10, || {
        InternLM2::<CpuAutodiff>::init(&config(tok.vocab_size()), &device)
    }));
    let base_weight = base.model.layers[0].attention.wqkv.weight.val().into_data();
    let lora = LoraConfig::new(8, 16.0);
    let model = lora.attach(base, &device);
    let examples: Vec<_> = (0..24)
        .map(|i| {
            let c = vec![
                Message::user(format!("Describe {}", WORDS[i % 12])),
                Message::assistant(format!("{} good", WORDS[i % 12])),
            ];
            tokenize_conversation(&tok, &c).unwrap()
        })
        .collect();
    let data = PackedSft::new(
        &examples,
        SftPacking {
            seq_len: 96,
            pad_id: 2,
        },
    );
    let mut trainer = Trainer::new(model, OptimizerConfig::new());
    let before = trainer.evaluate(&data.batches(64, 0)).unwrap();
    train_sft(
        &mut trainer,
        &data,
        &SftConfig {
            epochs: 40,
            lr: 2e-2,
            batch_size: 4,
            ..SftConfig::default()
        },
        |_| {},
    )
    .unwrap();
    let after = trainer.evaluate(&data.batches(64, 0)).unwrap();
    assert!(after < before - 2.0, "LoRA SFT loss {before} -> {after}");
    // The base weight did not move; the adapters did.
    let trained = trainer.model.valid();
    assert_eq!(
        trained.model.layers[0]
            .attention
            .wqkv
            .weight
            .val()
            .into_data(),
        base_weight.clone()
    );
    let (adapter_params, base_params) = lora.parameter_counts(&trained);
    assert!(
        adapter_params < base_params / 2,
        "{adapter_params} adapter vs {base_params} base parameters"
    );
    // Saved alone, reloaded onto the base, merged: all compute the same logits.
    let dir = tempfile::tempdir().unwrap();
    lora.save_adapters(&trained, dir.path(), SaveDtype::F32)
        .unwrap();
    assert!(
        dir.path().join("adapter_model.safetensors").is_file()
            && dir.path().join("adapter_config.json").is_file()
    );
    let fresh_base = scaled(seeded(10, || {
        InternLM2::<CpuAutodiff>::init(&config(tok.vocab_size()), &device)
    }))
    .valid();
    let reloaded = lora.load_adapters(fresh_base, dir.path(), &device).unwrap();
    let merged = lora.merge(trained.clone());
    assert!(merged.model.layers[1].feed_forward.w2.lora.is_none());
    let ids = burn::tensor::Tensor::<Cpu, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(vec![1i64, 40, 41, 42], [1, 4]),
        &device,
    );
    let logits = |m: &InternLM2<Cpu>| {
        m.forward(ids.clone())
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    };
    let (a, b, c) = (logits(&trained), logits(&reloaded), logits(&merged));
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(&a, &b) < 1e-5,
        "reloaded adapters differ by {}",
        diff(&a, &b)
    );
    assert!(
        diff(&a, &c) < 1e-4,
        "merged weights differ by {}",
        diff(&a, &c)
    );
}

#[test]
fn scoring_api_ranks_and_picks_the_best_of_n() {
    let tok = tokenizer();
    let encoder = RewardEncoder::new(tok.clone()).unwrap();
    let model = seeded(11, || {
        RewardModel::<CpuAutodiff>::init(&config(tok.vocab_size()), &Default::default())
    });
    let training = RewardTrainConfig {
        token_budget: 1024,
        epochs: 2,
        lr: 2e-3,
        final_lr: 1e-3,
        ..RewardTrainConfig::default()
    };
    let (model, _) = train_reward_model(
        model,
        &encoder,
        &preference_pairs(120, 5, Some("helpful")),
        &training,
        |_, _| {},
    )
    .unwrap();
    let scorer = RewardScorer {
        model: model.valid(),
        encoder,
    };
    let question = vec![Message::user("Describe fish")];
    let with = |answer: &str| {
        let mut c = question.clone();
        c.push(Message::assistant(answer));
        c
    };
    let candidates = vec![
        with("fish lake bad"),
        with("fish lake good"),
        with("fish bad"),
    ];
    let ranked = scorer.rank(&candidates, Some("helpful")).unwrap();
    assert_eq!(ranked[0].0, 1, "{ranked:?}");
    let (order, a, b) = scorer
        .compare(&candidates[1], &candidates[0], Some("helpful"))
        .unwrap();
    assert_eq!(order, std::cmp::Ordering::Greater);
    assert!(a > b);
    // Best-of-N returns the highest-scoring of the N sampled answers.
    let policy: InternLM2<Cpu> = seeded(12, || {
        InternLM2::<CpuAutodiff>::init(&config(tok.vocab_size()), &Default::default())
    })
    .valid();
    let generation = internlm2::generate::GenerationConfig::default()
        .with_sampling(
            internlm2::sampling::SamplingConfig::default()
                .with_temperature(1.0)
                .with_seed(3),
        )
        .with_max_new_tokens(6);
    let (best, all) = scorer
        .best_of_n(&policy, &tok, &question, 4, &generation, Some("helpful"))
        .unwrap();
    assert_eq!(all.len(), 4);
    let top = all.iter().map(|(_, s)| *s).fold(f32::MIN, f32::max);
    assert_eq!(all.iter().find(|(_, s)| *s == top).unwrap().0, best);
}
