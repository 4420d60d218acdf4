//! The training engine on the CPU backend: the loss falls, gradient accumulation equals a big
//! batch, clipping uses the global norm, packed documents do not see each other, a run
//! resumed from a checkpoint repeats the straight run's losses, phases switch the RoPE base,
//! and the trained model exports as a HuggingFace checkpoint.

mod common;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::module::AutodiffModule;
use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::{Cpu, CpuAutodiff};
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2::{ForwardInput, InternLM2, InternLM2Config};
use internlm2_train::{
    InMemoryDocuments, LrSchedule, OptimizerConfig, Packer, PackingConfig, Phase, RunOptions,
    TrainState, Trainer, latest_checkpoint, run,
};

fn tiny_config() -> InternLM2Config {
    InternLM2Config::new(64, 32, 64, 2, 4, 2)
        .with_max_position_embeddings(64)
        .with_rope_theta(10_000.0)
}

/// Deterministic documents over a 64-token vocabulary with learnable structure.
fn documents(n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|d| {
            let start = 3 + (d % 7) as u32;
            (0..(5 + d % 11))
                .map(|i| 3 + (start + 3 * i as u32) % 61)
                .collect()
        })
        .collect()
}

fn packer(seq_len: usize) -> Packer<InMemoryDocuments> {
    Packer::new(
        InMemoryDocuments::new(documents(64)).shuffled(1),
        PackingConfig {
            seq_len,
            eos_id: 2,
            cross_document_attention: false,
        },
    )
}

/// A seeded random model. The backend RNG is global and tests run in parallel threads, so
/// seeding and drawing happen under one lock.
fn model(seed: u64) -> InternLM2<CpuAutodiff> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = RNG.lock().unwrap();
    let device = Default::default();
    <CpuAutodiff as burn::tensor::backend::Backend>::seed(&device, seed);
    InternLM2::init(&tiny_config(), &device)
}

#[test]
fn loss_falls_on_structured_data() {
    let mut trainer = Trainer::new(model(1), OptimizerConfig::new());
    let mut data = packer(32);
    let mut losses = Vec::new();
    for step in 0..40 {
        let batch = data.next_batch(4);
        let lr = LrSchedule::new(3e-3, 4, 40).lr(step);
        losses.push(trainer.step(&[batch], lr).unwrap().loss);
    }
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(first > 3.9, "starts near ln(64) = 4.16: {first}");
    assert!(last < first - 1.0, "loss fell from {first} to only {last}");
}

#[test]
fn accumulated_micro_batches_equal_one_big_batch() {
    let batch = packer(16).next_batch(4);
    let halves: Vec<_> = (0..2)
        .map(|h| {
            let rows = |v: &Vec<u32>| v[h * 32..(h + 1) * 32].to_vec();
            internlm2_train::TokenBatch {
                batch: 2,
                seq_len: 16,
                inputs: rows(&batch.inputs),
                targets: rows(&batch.targets),
                loss_mask: batch.loss_mask[h * 32..(h + 1) * 32].to_vec(),
                positions: batch.positions[h * 32..(h + 1) * 32].to_vec(),
                segments: batch.segments.as_ref().map(rows),
            }
        })
        .collect();
    let start = model(2);
    let mut big = Trainer::new(start.clone(), OptimizerConfig::new());
    let mut small = Trainer::new(start, OptimizerConfig::new());
    let a = big.step(std::slice::from_ref(&batch), 1e-3).unwrap();
    let b = small.step(&halves, 1e-3).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
    assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
    // Same update: same loss on the next batch.
    let next = packer(16).next_batch(2);
    let (la, lb) = (
        big.evaluate(std::slice::from_ref(&next)).unwrap(),
        small.evaluate(&[next]).unwrap(),
    );
    assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");
}

#[test]
fn clipping_scales_to_the_global_norm() {
    use burn::optim::GradientsParams;
    use internlm2_train::optim::{clip_global_norm, global_grad_norm};
    let model = model(3);
    let batch = packer(16).next_batch(2);
    let ids: Vec<i64> = batch.inputs.iter().map(|&i| i as i64).collect();
    let device = Default::default();
    let logits = model.forward(Tensor::<CpuAutodiff, 2, Int>::from_data(
        TensorData::new(ids, [2, 16]),
        &device,
    ));
    let loss = logits.sum();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let norm = global_grad_norm::<CpuAutodiff, _>(&model, &grads);
    assert!(norm > 1.0, "{norm}");
    let before = clip_global_norm::<CpuAutodiff, _>(&model, &mut grads, norm / 4.0);
    assert!((before - norm).abs() < 1e-9);
    let after = global_grad_norm::<CpuAutodiff, _>(&model, &grads);
    assert!(
        (after - norm / 4.0).abs() < 1e-3 * norm,
        "{after} vs {}",
        norm / 4.0
    );
}

#[test]
fn packed_documents_do_not_see_each_other() {
    let model: InternLM2<Cpu> = InternLM2::init(&tiny_config(), &Default::default());
    let device = Default::default();
    let (a, b): (Vec<i64>, Vec<i64>) = (vec![5, 6, 7, 8, 9], vec![11, 12, 13, 14, 15, 16, 17]);
    let packed: Vec<i64> = a.iter().chain(&b).copied().collect();
    let positions: Vec<usize> = (0..a.len()).chain(0..b.len()).collect();
    let segments: Vec<u32> = std::iter::repeat_n(0, a.len())
        .chain(std::iter::repeat_n(1, b.len()))
        .collect();
    let together = model
        .forward_input(
            ForwardInput::new(Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(packed, [1, 12]),
                &device,
            ))
            .with_positions(positions)
            .with_segments(segments),
        )
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let alone = model
        .forward(Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(b, [1, 7]),
            &device,
        ))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let v = 64;
    let worst = together[5 * v..]
        .iter()
        .zip(&alone)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5,
        "document B is affected by document A: {worst}"
    );
}

fn options(dir: &std::path::Path, stop_at: Option<usize>) -> RunOptions {
    RunOptions {
        phases: vec![
            Phase::new("short", 4, 16, 4, 2e-3).with_rope_theta(5_000.0),
            Phase::new("long", 4, 32, 2, 1e-3)
                .with_rope_theta(50_000.0)
                .with_micro_batches(2),
        ],
        checkpoint_dir: Some(dir.join("checkpoints")),
        checkpoint_every: 3,
        keep_last: 2,
        log_path: Some(dir.join("metrics.jsonl")),
        peak_flops: Some(1e11),
        progress: false,
        stop_at_step: stop_at,
    }
}

#[test]
fn resumed_run_repeats_the_straight_run() {
    let device = Default::default();
    // Straight: 8 steps over two phases.
    let straight_dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(model(4), OptimizerConfig::new());
    let mut state = TrainState::new(7);
    run(
        &mut trainer,
        &mut packer(16),
        &mut state,
        &options(straight_dir.path(), None),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(state.step, 8);
    assert_eq!(trainer.model.config().rope_theta, 50_000.0);
    let straight = state.losses.clone();

    // Interrupted at step 5 (inside the second phase), everything dropped, resumed from disk.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut trainer = Trainer::new(model(4), OptimizerConfig::new());
        let mut state = TrainState::new(7);
        run(
            &mut trainer,
            &mut packer(16),
            &mut state,
            &options(dir.path(), Some(5)),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(state.step, 5);
    }
    let latest = latest_checkpoint(&dir.path().join("checkpoints"))
        .unwrap()
        .unwrap();
    assert!(latest.ends_with("step-00000005"));
    let (mut trainer, mut state) =
        Trainer::<CpuAutodiff>::load_checkpoint(&latest, OptimizerConfig::new(), &device).unwrap();
    assert_eq!(state.step, 5);
    run(
        &mut trainer,
        &mut packer(16),
        &mut state,
        &options(dir.path(), None),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(state.losses.len(), 8);
    for (i, (a, b)) in straight.iter().zip(&state.losses).enumerate() {
        assert!(
            (a - b).abs() < 1e-5,
            "step {}: straight {a}, resumed {b}",
            i + 1
        );
    }
    // keep_last = 2, and the metrics log has one line per step (8 + 5 before the interruption).
    assert_eq!(
        std::fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .count(),
        2
    );
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8);
    let record: internlm2_train::StepRecord =
        serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!((record.step, record.phase.as_str()), (8, "long"));
    assert!(record.mfu > 0.0 && record.tokens_per_s > 0.0);

    // The trained model exports in HF layout and loads back with the same logits.
    let export = dir.path().join("hf");
    let inference = trainer.model.valid();
    inference
        .save(&export, &SaveOptions::default().with_dtype(SaveDtype::F32))
        .unwrap();
    let loaded = InternLM2::<Cpu>::load(&export, DType::F32, &device).unwrap();
    let ids =
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 13], [1, 4]), &device);
    let (x, y) = (
        inference.forward(ids.clone()).into_data(),
        loaded.forward(ids).into_data(),
    );
    assert_eq!(x.into_vec::<f32>().unwrap(), y.into_vec::<f32>().unwrap());
}

#[test]
fn activation_checkpointing_computes_the_same_step() {
    let device = Default::default();
    let batch = packer(16).next_batch(2);
    let mut plain = Trainer::new(model(5), OptimizerConfig::new());
    let a = plain.step(std::slice::from_ref(&batch), 1e-3).unwrap();
    // The same weights on a checkpointing autodiff backend.
    let weights = model(5).valid();
    let dir = tempfile::tempdir().unwrap();
    weights
        .save(
            dir.path(),
            &SaveOptions::default().with_dtype(SaveDtype::F32),
        )
        .unwrap();
    type Checkpointed = Autodiff<Cpu, BalancedCheckpointing>;
    let reloaded = InternLM2::<Checkpointed>::load(dir.path(), DType::F32, &device).unwrap();
    let mut checkpointed = Trainer::new(reloaded, OptimizerConfig::new());
    let b = checkpointed.step(&[batch], 1e-3).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-6 && (a.grad_norm - b.grad_norm).abs() < 1e-5);
}

#[test]
fn bad_run_options_are_typed_errors() {
    let mut trainer = Trainer::new(model(6), OptimizerConfig::new());
    let mut state = TrainState::new(0);
    let mut options = RunOptions::default();
    assert!(matches!(
        run(
            &mut trainer,
            &mut packer(8),
            &mut state,
            &options,
            |_, _| {}
        ),
        Err(internlm2_train::TrainError::InvalidConfig { .. })
    ));
    options.phases = vec![Phase::new("p", 2, 8, 3, 1e-3).with_micro_batches(2)];
    assert!(matches!(
        run(
            &mut trainer,
            &mut packer(8),
            &mut state,
            &options,
            |_, _| {}
        ),
        Err(internlm2_train::TrainError::InvalidConfig { .. })
    ));
}

#[test]
fn two_data_parallel_replicas_equal_one_replica_at_twice_the_batch() {
    use internlm2_train::{DataParallel, StepEngine};
    let device = Default::default();
    let start = model(8);
    let mut data = packer(16);
    let (first, second) = (data.next_batch(4), data.next_batch(4));
    let mut single = Trainer::new(start.clone(), OptimizerConfig::new());
    let mut group = DataParallel::new(start, OptimizerConfig::new(), &[device, device]).unwrap();
    assert_eq!(group.replicas(), 2);
    for batch in [first, second] {
        let a = single.step(std::slice::from_ref(&batch), 1e-3).unwrap();
        let b = StepEngine::step(&mut group, &[batch], 1e-3).unwrap();
        assert!(
            (a.loss - b.loss).abs() < 1e-5,
            "loss {} vs {}",
            a.loss,
            b.loss
        );
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
        assert_eq!(a.tokens, b.tokens);
    }
    // Same weights after two steps: the same loss on held-out rows.
    let held_out = data.next_batch(2);
    let replica = Trainer::new(group.model().unwrap(), OptimizerConfig::new());
    let (x, y) = (
        single.evaluate(std::slice::from_ref(&held_out)).unwrap(),
        replica.evaluate(&[held_out]).unwrap(),
    );
    assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    // Rows that do not split evenly are a typed error.
    let odd = data.next_batch(3);
    assert!(matches!(
        StepEngine::step(&mut group, &[odd], 1e-3),
        Err(internlm2_train::TrainError::InvalidConfig { .. })
    ));
    // The group checkpoints like a single trainer.
    let dir = tempfile::tempdir().unwrap();
    let path = StepEngine::save_checkpoint(&group, dir.path(), &TrainState::new(0), 1).unwrap();
    let (restored, _) =
        Trainer::<CpuAutodiff>::load_checkpoint(&path, OptimizerConfig::new(), &device).unwrap();
    let check = data.next_batch(2);
    let (p, q) = (
        single.evaluate(std::slice::from_ref(&check)).unwrap(),
        restored.evaluate(&[check]).unwrap(),
    );
    assert!((p - q).abs() < 1e-5);
}

/// bf16 mixed precision: the forward/backward runs on bf16 copies of the weights, the master
/// weights and AdamW stay f32, and the run tracks the f32 run closely without being identical.
#[test]
fn bf16_mixed_precision_tracks_f32_with_f32_master_weights() {
    let mut full = Trainer::new(model(3), OptimizerConfig::new());
    let mut mixed =
        Trainer::new(model(3), OptimizerConfig::new()).with_mixed_precision(Some(DType::BF16));
    assert_eq!(mixed.compute_dtype(), Some(DType::BF16));
    let mut data = packer(32);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for step in 0..30 {
        let batch = data.next_batch(4);
        let lr = LrSchedule::new(3e-3, 3, 30).lr(step);
        a.push(full.step(std::slice::from_ref(&batch), lr).unwrap());
        b.push(mixed.step(&[batch], lr).unwrap());
    }
    let tail = |v: &[internlm2_train::StepStats]| v[25..].iter().map(|s| s.loss).sum::<f64>() / 5.0;
    println!(
        "f32: {:.4} -> {:.4} (grad norm {:.4}); bf16 mixed: {:.4} -> {:.4} (grad norm {:.4})",
        a[0].loss,
        tail(&a),
        a[0].grad_norm,
        b[0].loss,
        tail(&b),
        b[0].grad_norm
    );
    // The first loss differs only by bf16 rounding of the same weights.
    let first = (a[0].loss - b[0].loss).abs();
    assert!(first > 0.0, "bf16 compute must change the numbers at all");
    assert!(
        first < 0.05 * a[0].loss,
        "first losses {} vs {}",
        a[0].loss,
        b[0].loss
    );
    assert!(b[0].grad_norm > 0.0 && (b[0].grad_norm - a[0].grad_norm).abs() < 0.1 * a[0].grad_norm);
    // Both learn, to about the same place.
    assert!(
        tail(&b) < b[0].loss - 1.0,
        "mixed precision did not learn: {} -> {}",
        b[0].loss,
        tail(&b)
    );
    assert!(
        (tail(&a) - tail(&b)).abs() < 0.15 * tail(&a),
        "f32 {} vs bf16 {}",
        tail(&a),
        tail(&b)
    );
    // Master weights stay f32.
    assert_eq!(mixed.model.dtype(), DType::F32);
    let w = mixed.model.model.layers[0].attention.wqkv.weight.val();
    assert_eq!(w.dtype(), DType::F32);
}

/// Steps, batches and settings shared by the two-node test and its node processes.
const CLUSTER_STEPS: usize = 3;
const CLUSTER_ROWS: usize = 4;
const CLUSTER_LOCAL_DEVICES: usize = 2;

/// The batches every node (and the single-process reference) trains on, then a held-out one.
fn cluster_batches() -> (
    Vec<internlm2_train::TokenBatch>,
    internlm2_train::TokenBatch,
) {
    let mut data = packer(16);
    let steps = (0..CLUSTER_STEPS)
        .map(|_| data.next_batch(CLUSTER_ROWS))
        .collect();
    (steps, data.next_batch(2))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two nodes (separate processes) with two CPU replicas each, joined over loopback through
/// burn-collective's global orchestrator, make the same steps as one trainer over all rows:
/// same losses and gradient norms at every step, same weights at the end.
#[test]
fn two_nodes_over_loopback_equal_one_trainer() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let orchestrator_port = free_port();
    internlm2_train::spawn_orchestrator(orchestrator_port).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut nodes: Vec<_> = (0..2)
        .map(|rank| {
            let out = dir.path().join(format!("node-{rank}.json"));
            let child = Command::new(&exe)
                .args(["cluster_node", "--exact", "--ignored", "--nocapture"])
                .env("CLUSTER_NODE_RANK", rank.to_string())
                .env(
                    "CLUSTER_ORCHESTRATOR",
                    format!("ws://127.0.0.1:{orchestrator_port}"),
                )
                .env(
                    "CLUSTER_NODE_ADDRESS",
                    format!("ws://127.0.0.1:{}", free_port()),
                )
                .env("CLUSTER_OUT", &out)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();

    // The reference: one trainer over all rows of every step.
    let (steps, held_out) = cluster_batches();
    let mut single = Trainer::new(model(8), OptimizerConfig::new());
    let reference: Vec<_> = steps
        .iter()
        .map(|batch| single.step(std::slice::from_ref(batch), 1e-3).unwrap())
        .collect();
    let reference_held_out = single.evaluate(std::slice::from_ref(&held_out)).unwrap();

    let deadline = Instant::now() + Duration::from_secs(300);
    for (child, _) in &mut nodes {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "a node process failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                for (c, _) in &mut nodes {
                    let _ = c.kill();
                }
                panic!("the two-node run did not finish within 300 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (_, out) in &nodes {
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        let losses = report["losses"].as_array().unwrap();
        let norms = report["grad_norms"].as_array().unwrap();
        assert_eq!(losses.len(), CLUSTER_STEPS);
        for (step, want) in reference.iter().enumerate() {
            let (loss, norm) = (
                losses[step].as_f64().unwrap(),
                norms[step].as_f64().unwrap(),
            );
            assert!(
                (loss - want.loss).abs() < 1e-5,
                "step {step}: loss {loss} vs {}",
                want.loss
            );
            assert!(
                (norm - want.grad_norm).abs() < 1e-4 * want.grad_norm.max(1.0),
                "step {step}: grad norm {norm} vs {}",
                want.grad_norm
            );
        }
        let held = report["held_out"].as_f64().unwrap();
        assert!(
            (held - reference_held_out).abs() < 1e-5,
            "held-out loss {held} vs {reference_held_out}"
        );
    }
}

/// One node of `two_nodes_over_loopback_equal_one_trainer`, run in its own process (the
/// collective state is per process). Not a test on its own.
#[test]
#[ignore = "a node process of two_nodes_over_loopback_equal_one_trainer"]
fn cluster_node() {
    use internlm2_train::{ClusterConfig, DataParallel, StepEngine};
    let var = |name: &str| std::env::var(name).expect("set by the two-node test");
    let cluster = ClusterConfig::new(
        2,
        var("CLUSTER_NODE_RANK").parse().unwrap(),
        &var("CLUSTER_ORCHESTRATOR"),
        &var("CLUSTER_NODE_ADDRESS"),
    )
    .unwrap();
    let device = Default::default();
    let mut group = DataParallel::join(
        cluster,
        model(8),
        OptimizerConfig::new(),
        &[device; CLUSTER_LOCAL_DEVICES],
    )
    .unwrap();
    assert_eq!(group.world_size(), 2 * CLUSTER_LOCAL_DEVICES);
    let (steps, held_out) = cluster_batches();
    let mut losses = Vec::new();
    let mut grad_norms = Vec::new();
    for batch in steps {
        let stats = StepEngine::step(&mut group, &[batch], 1e-3).unwrap();
        losses.push(stats.loss);
        grad_norms.push(stats.grad_norm);
    }
    let trained = Trainer::new(group.model().unwrap(), OptimizerConfig::new());
    let report = serde_json::json!({
        "losses": losses,
        "grad_norms": grad_norms,
        "held_out": trained.evaluate(&[held_out]).unwrap(),
    });
    std::fs::write(var("CLUSTER_OUT"), report.to_string()).unwrap();
}
