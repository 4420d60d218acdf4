// The parity suite for one backend `B` (included by `tests/parity.rs` once per backend that
// the build enables).

use burn::tensor::{DType, Int, Tensor, TensorData};
use crate::common;
use internlm2::{ForwardInput, InternLM2, KvCache};

/// The bar: full logits within 1e-4 max-abs in f32.
const TOLERANCE: f32 = 1e-4;

fn ids_tensor(ids: &[Vec<i64>]) -> Tensor<B, 2, Int> {
    let (b, s) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), &Default::default())
}

fn case<'a>(reference: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("case {name} missing"))
}

/// Max |ours - reference| over the positions where `keep` is true.
fn max_abs_diff(
    ours: &[f32],
    reference: &[f32],
    vocab: usize,
    keep: impl Fn(usize) -> bool,
) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let mut worst = 0f32;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        if keep(i / vocab) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

fn load(dir: &std::path::Path) -> InternLM2<B> {
    InternLM2::load(dir, DType::F32, &Default::default()).expect("fixture loads")
}

fn check_full_logits(name: &str) {
    for dir in common::model_fixtures() {
        let model = load(&dir);
        let reference = common::reference(&dir);
        let c = case(&reference, name);
        let ids = common::ints2(&c["input_ids"]);
        let (expected, dims) = common::floats3(&c["logits"]);
        let logits = model.forward(ids_tensor(&ids));
        assert_eq!(logits.dims(), dims);
        let ours = logits.into_data().into_vec::<f32>().unwrap();
        let diff = max_abs_diff(&ours, &expected, dims[2], |_| true);
        println!("{} {name}: max abs diff {diff:.2e}", dir.display());
        assert!(
            diff < TOLERANCE,
            "{}: {name} differs by {diff}",
            dir.display()
        );
    }
}

#[test]
fn prefill_batch_logits() {
    check_full_logits("prefill_batch");
}

#[test]
fn prefill_past_max_positions_uses_dynamic_ntk() {
    check_full_logits("prefill_past_max_positions");
}

#[test]
fn left_padded_batch_logits_at_real_tokens() {
    for dir in common::model_fixtures() {
        let model = load(&dir);
        let reference = common::reference(&dir);
        let c = case(&reference, "left_padded_batch");
        let ids = common::ints2(&c["input_ids"]);
        let mask = common::ints2(&c["attention_mask"]);
        let positions = common::ints2(&c["position_ids"]);
        let (expected, dims) = common::floats3(&c["logits"]);
        let input = ForwardInput::new(ids_tensor(&ids))
            .with_positions(positions.iter().flatten().map(|&p| p as usize).collect())
            .with_padding(mask.iter().flatten().map(|&m| m == 0).collect());
        let ours = model
            .forward_input(input)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let real: Vec<bool> = mask.iter().flatten().map(|&m| m == 1).collect();
        assert!(real.iter().any(|r| !r), "the case has padding");
        let diff = max_abs_diff(&ours, &expected, dims[2], |token| real[token]);
        println!(
            "{} left_padded_batch: max abs diff {diff:.2e}",
            dir.display()
        );
        assert!(
            diff < TOLERANCE,
            "{}: left padded differs by {diff}",
            dir.display()
        );
    }
}

#[test]
fn greedy_with_cache_tokens() {
    for dir in common::model_fixtures() {
        let model = load(&dir);
        let reference = common::reference(&dir);
        let c = case(&reference, "greedy_with_cache");
        let prompt = common::ints2(&c["input_ids"]);
        let expected: Vec<i64> = c["new_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| match v.as_array() {
                Some(row) => row.iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>(),
                None => vec![v.as_i64().unwrap()],
            })
            .collect();
        let mut cache = KvCache::new(model.config(), 1, prompt[0].len() + expected.len());
        let mut next = ids_tensor(&prompt);
        let mut produced = Vec::new();
        for _ in 0..expected.len() {
            let logits = model.forward_cache(
                ForwardInput::new(next).with_last_logits_only(true),
                &mut cache,
            );
            let token = logits
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .unwrap()[0];
            produced.push(token);
            next = ids_tensor(&[vec![token]]);
        }
        assert_eq!(produced, expected, "{}", dir.display());
    }
}

/// The fixture's `prefill_batch` prompt as one training batch: every next token counts.
fn training_batch(ids: &[Vec<i64>]) -> internlm2_train::TokenBatch {
    let (b, s) = (ids.len(), ids[0].len() - 1);
    let inputs = ids
        .iter()
        .flat_map(|r| r[..s].iter().map(|&t| t as u32))
        .collect();
    let targets = ids
        .iter()
        .flat_map(|r| r[1..].iter().map(|&t| t as u32))
        .collect();
    internlm2_train::TokenBatch {
        batch: b,
        seq_len: s,
        inputs,
        targets,
        loss_mask: vec![true; b * s],
        positions: (0..b).flat_map(|_| 0..s).collect(),
        segments: None,
    }
}

/// Loss and global gradient norm of one training batch on autodiff backend `A`.
fn loss_and_grad_norm<A: internlm2_train::TrainBackend>(
    dir: &std::path::Path,
    batch: &internlm2_train::TokenBatch,
) -> (f64, f64) {
    use internlm2_train::{OptimizerConfig, Trainer, optim::global_grad_norm};
    let model = InternLM2::<A>::load(dir, DType::F32, &Default::default()).expect("fixture loads");
    let trainer = Trainer::new(model, OptimizerConfig::new());
    let gradients = trainer
        .gradients(std::slice::from_ref(batch), &batch.loss_tokens())
        .unwrap();
    (gradients.loss, global_grad_norm(&trainer.model, &gradients.grads))
}

/// Training on the backend under test: under `Autodiff<B>` every kernel is the differentiable
/// composite reference (the fused kernels have no backward pass), so the autodiff forward
/// matches the official logits as the fused inference forward does, and the loss and gradient
/// norm match the CPU backend's.
#[test]
fn autodiff_takes_the_composite_path_and_matches_the_cpu_gradients() {
    use burn::backend::Autodiff;
    let dir = &common::model_fixtures()[0];
    let reference = common::reference(dir);
    let c = case(&reference, "prefill_batch");
    let ids = common::ints2(&c["input_ids"]);
    let (expected, dims) = common::floats3(&c["logits"]);

    let model = InternLM2::<Autodiff<B>>::load(dir, DType::F32, &Default::default()).unwrap();
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    let input = Tensor::<Autodiff<B>, 2, Int>::from_data(
        TensorData::new(flat, [ids.len(), ids[0].len()]),
        &Default::default(),
    );
    let logits = model.forward(input).into_data().into_vec::<f32>().unwrap();
    let diff = max_abs_diff(&logits, &expected, dims[2], |_| true);
    assert!(diff < TOLERANCE, "autodiff forward differs by {diff}");

    let batch = training_batch(&ids);
    let (loss, norm) = loss_and_grad_norm::<Autodiff<B>>(dir, &batch);
    let (cpu_loss, cpu_norm) = loss_and_grad_norm::<internlm2::backends::CpuAutodiff>(dir, &batch);
    println!(
        "{}: loss {loss} (cpu {cpu_loss}), grad norm {norm} (cpu {cpu_norm}), forward diff {diff:.2e}",
        std::any::type_name::<B>()
    );
    assert!(loss.is_finite() && norm.is_finite() && norm > 0.0);
    assert!(
        (loss - cpu_loss).abs() < 1e-4,
        "loss {loss} vs cpu {cpu_loss}"
    );
    assert!(
        (norm - cpu_norm).abs() < 1e-3 * cpu_norm,
        "grad norm {norm} vs cpu {cpu_norm}"
    );
}
