//! PPO's arithmetic as pure functions, each checked against numbers worked out by hand: the
//! KL-shaped per-token rewards, generalised advantage estimation, advantage whitening, the
//! clipped policy loss and the (optionally clipped) value loss.
//!
//! The host functions work on one response (`t = 0..n`, its tokens in order); the losses work
//! elementwise on `[batch, seq]` tensors and are masked and averaged by their caller.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Per-token rewards of one response: `-kl_coef * (log pi_old(t) - log pi_ref(t))` at every
/// token, plus the reward model's `score` on the last token. Returns the rewards and the
/// response's summed KL estimate `sum_t (log pi_old(t) - log pi_ref(t))`.
///
/// An empty response has no rewards and no KL.
pub fn kl_shaped_rewards(
    old_logprobs: &[f64],
    ref_logprobs: &[f64],
    score: f64,
    kl_coef: f64,
) -> (Vec<f64>, f64) {
    let kl: Vec<f64> = old_logprobs
        .iter()
        .zip(ref_logprobs)
        .map(|(old, reference)| old - reference)
        .collect();
    let mut rewards: Vec<f64> = kl.iter().map(|k| -kl_coef * k).collect();
    if let Some(last) = rewards.last_mut() {
        *last += score;
    }
    (rewards, kl.iter().sum())
}

/// Generalised advantage estimation over one response.
///
/// `rewards[t]` and `values[t]` for the response tokens `t = 0..n`; the value after the last
/// token is 0. Returns `(advantages, returns)` with `returns = advantages + values`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut next_value = 0.0;
    let mut next_advantage = 0.0;
    for t in (0..n).rev() {
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lambda * next_advantage;
        advantages[t] = next_advantage;
        next_value = values[t];
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Whitens `values` in place over the entries where `mask` is set: `(x - mean) / std` with the
/// population standard deviation (floored at 1e-8). Entries outside the mask are untouched;
/// fewer than two masked entries leave everything as is.
pub fn whiten(values: &mut [f64], mask: &[bool]) {
    let count = mask.iter().filter(|&&m| m).count();
    if count < 2 {
        return;
    }
    let masked = || {
        values
            .iter()
            .zip(mask)
            .filter(|(_, m)| **m)
            .map(|(v, _)| *v)
    };
    let mean = masked().sum::<f64>() / count as f64;
    let var = masked().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64;
    let std = var.sqrt().max(1e-8);
    for (v, &m) in values.iter_mut().zip(mask) {
        if m {
            *v = (*v - mean) / std;
        }
    }
}

/// The clipped surrogate loss per token: `-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`.
///
/// # Shapes
/// `ratio`, `advantages`: `[batch, seq]` -> `[batch, seq]`
pub fn clipped_policy_loss<B: Backend>(
    ratio: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    clip_eps: f64,
) -> Tensor<B, 2> {
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages;
    unclipped.min_pair(clipped).neg()
}

/// The value loss per token: `0.5 * (V - R)^2`, or with `clip = Some(c)` the larger of that and
/// `0.5 * (V_old + clip(V - V_old, -c, c) - R)^2`.
///
/// # Shapes
/// `values`, `old_values`, `returns`: `[batch, seq]` -> `[batch, seq]`
pub fn value_loss<B: Backend>(
    values: Tensor<B, 2>,
    old_values: Tensor<B, 2>,
    returns: Tensor<B, 2>,
    clip: Option<f64>,
) -> Tensor<B, 2> {
    let plain = (values.clone() - returns.clone()).powf_scalar(2.0);
    let squared = match clip {
        Some(c) => {
            let clipped = old_values.clone() + (values - old_values).clamp(-c, c);
            plain.max_pair((clipped - returns).powf_scalar(2.0))
        }
        None => plain,
    };
    squared.mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use internlm2::backends::Cpu;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    fn tensor(values: &[f32]) -> Tensor<Cpu, 2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [1, values.len()]),
            &Default::default(),
        )
    }

    fn host(t: Tensor<Cpu, 2>) -> Vec<f64> {
        t.into_data()
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    #[test]
    fn kl_shaped_rewards_by_hand() {
        // KL per token: -1 - (-1.5) = 0.5, -2 - (-1) = -1, -0.5 - (-0.5) = 0; kl_coef 0.1.
        let (r, kl) = kl_shaped_rewards(&[-1.0, -2.0, -0.5], &[-1.5, -1.0, -0.5], 2.0, 0.1);
        assert!(close(&r, &[-0.05, 0.1, 2.0]), "{r:?}");
        assert!((kl - -0.5).abs() < 1e-12);
        let (r, kl) = kl_shaped_rewards(&[], &[], 3.0, 0.1);
        assert!(r.is_empty() && kl == 0.0);
    }

    #[test]
    fn gae_by_hand() {
        // gamma 1, lambda 1: advantages are reward-to-go minus value.
        let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 1.0, 1.0);
        assert!(close(&ret, &[1.0, 1.0, 1.0]), "{ret:?}");
        assert!(close(&adv, &[0.5, 0.8, 0.9]), "{adv:?}");
        // lambda 0: one-step TD errors.
        let (adv, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 1.0, 0.0);
        assert!(close(&adv, &[0.2 - 0.5, 0.1 - 0.2, 1.0 - 0.1]), "{adv:?}");
        // gamma 0.5, lambda 0.5: delta_2 = 1 - 0.1 = 0.9; delta_1 = 0 + 0.05 - 0.2 = -0.15;
        // A_1 = -0.15 + 0.25 * 0.9 = 0.075.
        let (adv, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 0.5, 0.5);
        assert!((adv[1] - 0.075).abs() < 1e-12);
    }

    #[test]
    fn whitening_by_hand() {
        // Masked entries 1, 2, 3, 6: mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5.
        let mut v = [1.0, 2.0, 100.0, 3.0, 6.0];
        whiten(&mut v, &[true, true, false, true, true]);
        let s = 3.5f64.sqrt();
        assert!(
            close(&v, &[-2.0 / s, -1.0 / s, 100.0, 0.0, 3.0 / s]),
            "{v:?}"
        );
        // One masked entry: unchanged.
        let mut one = [4.0, 5.0];
        whiten(&mut one, &[true, false]);
        assert_eq!(one, [4.0, 5.0]);
    }

    #[test]
    fn clipped_policy_loss_by_hand() {
        // eps 0.2. ratio 1.5, A 2: min(3, 1.2 * 2 = 2.4) = 2.4 -> -2.4.
        // ratio 0.5, A 2: min(1, 0.8 * 2 = 1.6) = 1 -> -1.
        // ratio 0.5, A -1: min(-0.5, 0.8 * -1 = -0.8) = -0.8 -> 0.8.
        // ratio 1.5, A -1: min(-1.5, -1.2) = -1.5 -> 1.5.
        let loss = clipped_policy_loss(
            tensor(&[1.5, 0.5, 0.5, 1.5]),
            tensor(&[2.0, 2.0, -1.0, -1.0]),
            0.2,
        );
        let got = host(loss);
        let want = [-2.4, -1.0, 0.8, 1.5];
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?}"
        );
    }

    #[test]
    fn value_loss_by_hand() {
        // V 1.0, V_old 0.0, R 0.5: 0.5 * 0.25 = 0.125; clipped at 0.2: V_c = 0.2,
        // 0.5 * (0.2 - 0.5)^2 = 0.045 -> max 0.125.
        // V 0.3, V_old 0.0, R 2.0: 0.5 * 1.7^2 = 1.445; clipped V_c = 0.2: 0.5 * 1.8^2 = 1.62.
        let values = tensor(&[1.0, 0.3]);
        let old = tensor(&[0.0, 0.0]);
        let returns = tensor(&[0.5, 2.0]);
        let plain = host(value_loss(
            values.clone(),
            old.clone(),
            returns.clone(),
            None,
        ));
        assert!((plain[0] - 0.125).abs() < 1e-6 && (plain[1] - 1.445).abs() < 1e-6);
        let clipped = host(value_loss(values, old, returns, Some(0.2)));
        assert!((clipped[0] - 0.125).abs() < 1e-6, "{clipped:?}");
        assert!((clipped[1] - 1.62).abs() < 1e-6, "{clipped:?}");
    }
}
