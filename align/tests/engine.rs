//! Every alignment stage runs on the one training engine of `internlm2-train`, so each gets what
//! the engine gives: the reward model, DPO and PPO each resume from a checkpoint taken mid-run
//! to the numbers of a straight run, accumulate two micro-batches to the same step as one
//! batch, and run on two data-parallel CPU replicas as one replica does over all the rows.

mod common;

use std::path::Path;

use burn::module::AutodiffModule;
use common::{CountSevens, WORDS, preference_pairs, seeded};
use internlm2::backends::CpuAutodiff;
use internlm2::{InternLM2, InternLM2Config, Tokenizer};
use internlm2_align::dpo::{DpoConfig, prepare};
use internlm2_align::ppo::{ActorCritic, CriticModel, Ppo, PpoConfig, PpoStats, Prompt};
use internlm2_align::reward::{PreferencePair, RewardEncoder, RewardModel, RewardTrainConfig};
use internlm2_train::{
    Batch, DataParallel, Objective, OptimizerConfig, Phase, RunOptions, StepEngine, StepList,
    TrainModel, TrainState, Trainer, latest_checkpoint, run,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

type B = CpuAutodiff;

fn tokenizer() -> Tokenizer {
    let mut rng = StdRng::seed_from_u64(0);
    let texts: Vec<String> = (0..200)
        .map(|_| {
            let words: Vec<&str> = (0..5).map(|_| *WORDS.choose(&mut rng).unwrap()).collect();
            format!(
                "<|im_start|>user\nDescribe {}<|im_end|>\n<|im_start|>assistant\n{} good bad<|im_end|>\n",
                words[0],
                words.join(" ")
            )
        })
        .collect();
    Tokenizer::train_bpe(texts.iter(), 160).unwrap()
}

fn config(vocab: usize) -> InternLM2Config {
    InternLM2Config::new(vocab, 32, 64, 2, 4, 2)
        .with_max_position_embeddings(128)
        .with_pad_token_id(2)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
}

// ---------------------------------------------------------------- the three properties

/// Interrupted after `stop` steps (everything dropped), resumed from the checkpoint: the
/// same losses as the straight run.
fn resumed_equals_straight<O: Objective<B>>(
    model: O::Model,
    objective: O,
    optimizer: OptimizerConfig,
    steps: StepList<O::Batch>,
    phase: Phase,
    stop: usize,
) {
    let options = |dir: &Path, stop_at_step| RunOptions {
        phases: vec![phase.clone()],
        checkpoint_dir: Some(dir.to_path_buf()),
        checkpoint_every: stop,
        keep_last: 2,
        stop_at_step,
        ..RunOptions::default()
    };
    let straight_dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::with_objective(model.clone(), objective.clone(), optimizer.clone());
    let mut straight = TrainState::new(0);
    run(
        &mut trainer,
        &mut steps.clone(),
        &mut straight,
        &options(straight_dir.path(), None),
        |_, _| {},
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    {
        let mut trainer = Trainer::with_objective(model, objective.clone(), optimizer.clone());
        let mut state = TrainState::new(0);
        run(
            &mut trainer,
            &mut steps.clone(),
            &mut state,
            &options(dir.path(), Some(stop)),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(state.step, stop);
    }
    let latest = latest_checkpoint(dir.path()).unwrap().unwrap();
    let (mut trainer, mut state) =
        Trainer::load_checkpoint_with(&latest, objective, optimizer, &Default::default()).unwrap();
    assert_eq!(state.step, stop);
    run(
        &mut trainer,
        &mut steps.clone(),
        &mut state,
        &options(dir.path(), None),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(state.losses.len(), straight.losses.len());
    assert!(
        straight.losses.len() > stop,
        "the run continues past the checkpoint"
    );
    for (i, (a, b)) in straight.losses.iter().zip(&state.losses).enumerate() {
        assert!(close(*a, *b), "step {}: straight {a}, resumed {b}", i + 1);
    }
}

/// Two micro-batches of half the rows make the same step as the whole batch: the same loss
/// and gradient norm, and the same loss on the next batch afterwards.
fn accumulation_equals_one_batch<O: Objective<B>>(
    model: O::Model,
    objective: O,
    batch: O::Batch,
    next: O::Batch,
) {
    assert!(batch.rows() >= 2);
    let mut one = Trainer::with_objective(model.clone(), objective.clone(), OptimizerConfig::new());
    let mut two = Trainer::with_objective(model, objective, OptimizerConfig::new());
    let a = one.step(std::slice::from_ref(&batch), 1e-3).unwrap();
    let b = two.step(&batch.split(2), 1e-3).unwrap();
    assert!(close(a.loss, b.loss), "loss {} vs {}", a.loss, b.loss);
    assert!(
        close(a.grad_norm, b.grad_norm),
        "|g| {} vs {}",
        a.grad_norm,
        b.grad_norm
    );
    let (x, y) = (
        one.evaluate(std::slice::from_ref(&next)).unwrap(),
        two.evaluate(&[next]).unwrap(),
    );
    assert!(close(x, y), "next loss {x} vs {y}");
}

/// Two data-parallel CPU replicas over a batch make the same steps as one replica over it.
fn data_parallel_equals_one_replica<O: Objective<B>>(
    model: O::Model,
    objective: O,
    batches: &[O::Batch],
    next: O::Batch,
) {
    let device = Default::default();
    let config = model.config().clone();
    let mut single =
        Trainer::with_objective(model.clone(), objective.clone(), OptimizerConfig::new());
    let replica = Trainer::with_objective(model, objective.clone(), OptimizerConfig::new());
    let mut group = DataParallel::from_replica(replica, config, &[device, device], None).unwrap();
    assert_eq!(group.world_size(), 2);
    for batch in batches {
        assert_eq!(batch.rows() % 2, 0);
        let a = single.step(std::slice::from_ref(batch), 1e-3).unwrap();
        let b = StepEngine::step(&mut group, std::slice::from_ref(batch), 1e-3).unwrap();
        assert!(close(a.loss, b.loss), "loss {} vs {}", a.loss, b.loss);
        assert!(
            close(a.grad_norm, b.grad_norm),
            "|g| {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
        assert_eq!(a.tokens, b.tokens);
    }
    let replica =
        Trainer::with_objective(group.model().unwrap(), objective, OptimizerConfig::new());
    let (x, y) = (
        single.evaluate(std::slice::from_ref(&next)).unwrap(),
        replica.evaluate(&[next]).unwrap(),
    );
    assert!(close(x, y), "held-out loss {x} vs {y}");
}

// ---------------------------------------------------------------- reward model

fn reward_setup() -> (
    RewardModel<B>,
    RewardTrainConfig,
    RewardEncoder,
    Vec<PreferencePair>,
) {
    let tok = tokenizer();
    let model = seeded(1, || {
        RewardModel::<B>::init(&config(tok.vocab_size()), &Default::default())
    });
    let training = RewardTrainConfig {
        token_budget: 400,
        lr: 1e-3,
        final_lr: 5e-4,
        ..RewardTrainConfig::default()
    };
    (
        model,
        training,
        RewardEncoder::new(tok).unwrap(),
        preference_pairs(24, 3, None),
    )
}

#[test]
fn reward_model_resumes_accumulates_and_runs_data_parallel() {
    let (model, training, encoder, pairs) = reward_setup();
    let (steps, phase) = training.plan(&encoder, &pairs).unwrap();
    assert!(steps.len() >= 4, "{} steps", steps.len());
    let objective = training.objective(&encoder);
    resumed_equals_straight(
        model.clone(),
        objective,
        training.optimizer(),
        steps.clone(),
        phase,
        2,
    );
    let even = |b: &internlm2_align::reward::PairBatch| b.slice_rows(0, b.rows() / 2 * 2);
    let (first, next) = (even(&steps.steps()[0]), steps.steps()[1].clone());
    accumulation_equals_one_batch(model.clone(), objective, first.clone(), next.clone());
    data_parallel_equals_one_replica(model, objective, &[first, even(&steps.steps()[2])], next);
}

// ---------------------------------------------------------------- DPO

#[test]
fn dpo_resumes_accumulates_and_runs_data_parallel() {
    let tok = tokenizer();
    let pad = tok.eos_id().unwrap();
    let policy = seeded(2, || {
        InternLM2::<B>::init(&config(tok.vocab_size()), &Default::default())
    });
    let examples = prepare(&policy.valid(), &tok, &preference_pairs(24, 4, None), 8).unwrap();
    let dpo = DpoConfig {
        lr: 1e-3,
        batch_pairs: 4,
        ..DpoConfig::default()
    };
    let (steps, phase) = dpo.plan(&examples).unwrap();
    assert_eq!(steps.len(), 6);
    let objective = dpo.objective(pad);
    resumed_equals_straight(
        policy.clone(),
        objective,
        dpo.optimizer(),
        steps.clone(),
        phase,
        3,
    );
    let s = steps.steps();
    accumulation_equals_one_batch(policy.clone(), objective, s[0].clone(), s[1].clone());
    data_parallel_equals_one_replica(policy, objective, &s[..2], s[2].clone());
}

// ---------------------------------------------------------------- PPO

fn ppo_prompts() -> Vec<Prompt> {
    (0..8)
        .map(|i| Prompt {
            ids: vec![1, 3 + i % 5, 4 + i % 3],
            messages: None,
            domain: None,
        })
        .collect()
}

fn ppo_config(micro_batches: usize) -> PpoConfig {
    PpoConfig {
        actor_lr: 3e-3,
        critic_lr: 3e-3,
        critic_warmup_iterations: 1,
        max_new_tokens: 5,
        stop_token_ids: vec![],
        micro_batches,
        ..PpoConfig::default()
    }
}

fn ppo_models() -> (InternLM2<B>, CriticModel<B>) {
    let config = config(24);
    (
        seeded(5, || InternLM2::<B>::init(&config, &Default::default())),
        seeded(6, || CriticModel::<B>::init(&config, &Default::default())),
    )
}

/// PPO on fresh (seeded, so always the same) actor and critic trainers.
fn fresh_ppo(micro_batches: usize) -> Ppo<B> {
    let (actor, critic) = ppo_models();
    Ppo::new(
        actor.clone(),
        actor.valid(),
        critic,
        ppo_config(micro_batches),
    )
}

fn assert_same(a: &PpoStats, b: &PpoStats) {
    assert_eq!(a.iteration, b.iteration);
    assert_eq!(a.actor_updated, b.actor_updated);
    for (name, x, y) in [
        ("reward", a.reward, b.reward),
        ("kl", a.kl, b.kl),
        ("entropy", a.entropy, b.entropy),
        ("value loss", a.value_loss, b.value_loss),
        ("policy loss", a.policy_loss, b.policy_loss),
        ("clip fraction", a.clip_fraction, b.clip_fraction),
        ("length", a.response_length, b.response_length),
    ] {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "iteration {}: {name} {x} vs {y}",
            a.iteration
        );
    }
}

#[test]
fn ppo_resumes_from_a_checkpoint_to_the_straight_run() {
    let prompts = ppo_prompts();
    let iterate = |ppo: &mut Ppo<B>| ppo.iterate(&prompts, None, &CountSevens, None).unwrap().0;
    let mut straight = fresh_ppo(1);
    let expected: Vec<PpoStats> = (0..3).map(|_| iterate(&mut straight)).collect();
    assert!(expected[1].actor_updated && !expected[0].actor_updated);

    let dir = tempfile::tempdir().unwrap();
    {
        let mut ppo = fresh_ppo(1);
        for want in &expected[..2] {
            assert_same(want, &iterate(&mut ppo));
        }
        let path = ppo.save_checkpoint(dir.path(), 1).unwrap();
        assert!(path.ends_with("step-00000002"));
    }
    let latest = latest_checkpoint(dir.path()).unwrap().unwrap();
    let reference = ppo_models().0.valid();
    let mut resumed =
        Ppo::<B>::load_checkpoint(&latest, reference, ppo_config(1), &Default::default()).unwrap();
    assert_eq!(resumed.iterations(), 2);
    assert_same(&expected[2], &iterate(&mut resumed));
}

#[test]
fn ppo_accumulates_micro_batches_and_runs_data_parallel() {
    let prompts = ppo_prompts();
    let (mut one, mut two) = (fresh_ppo(1), fresh_ppo(2));
    let (actor, critic) = ppo_models();
    let (reference, config) = (actor.valid(), actor.config().clone());
    let pair = ActorCritic::new(
        actor,
        critic,
        ppo_config(1).policy_objective(),
        ppo_config(1).value_objective(),
    );
    let device = Default::default();
    let group = DataParallel::from_replica(pair, config, &[device, device], None).unwrap();
    let mut parallel = Ppo::with_engine(group, reference, ppo_config(1));
    for _ in 0..2 {
        let (a, _) = one.iterate(&prompts, None, &CountSevens, None).unwrap();
        let (b, _) = two.iterate(&prompts, None, &CountSevens, None).unwrap();
        let (c, _) = parallel
            .iterate(&prompts, None, &CountSevens, None)
            .unwrap();
        assert_same(&a, &b);
        assert_same(&a, &c);
    }
}
