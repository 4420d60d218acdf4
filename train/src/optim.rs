//! AdamW with the SPEC 5 defaults, parameter groups, and global-norm gradient clipping.
//!
//! burn's `AdamWConfig` defaults (beta2 0.999, eps 1e-5, weight decay 1e-4) are not the
//! paper's, and its `GradientClipping::Norm` clips every tensor on its own. Here every
//! hyper-parameter is set explicitly, the clipping threshold applies to the norm of all
//! gradients together (as `torch.nn.utils.clip_grad_norm_` does), and 1-D parameters (RMSNorm
//! weights, biases) form a second group without weight decay.

use std::collections::HashSet;

use burn::config::Config;
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion as _, Tensor};

/// Optimiser hyper-parameters.
#[derive(Config, Debug, PartialEq)]
pub struct OptimizerConfig {
    /// AdamW beta1 (SPEC 5: 0.9).
    #[config(default = 0.9)]
    pub beta1: f32,
    /// AdamW beta2 (SPEC 5: 0.95).
    #[config(default = 0.95)]
    pub beta2: f32,
    /// AdamW epsilon (SPEC 5: 1e-8).
    #[config(default = 1e-8)]
    pub epsilon: f32,
    /// Decoupled weight decay of the matrices (SPEC 5: 0.1).
    #[config(default = 0.1)]
    pub weight_decay: f32,
    /// Weight decay of 1-D parameters (norm weights, biases).
    #[config(default = 0.0)]
    pub weight_decay_1d: f32,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    #[config(default = "Some(1.0)")]
    pub max_grad_norm: Option<f64>,
}

impl OptimizerConfig {
    /// burn's AdamW with these settings and the given weight decay.
    pub(crate) fn adamw(&self, weight_decay: f32) -> burn::optim::AdamWConfig {
        burn::optim::AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(weight_decay)
    }
}

/// AdamW over any module with the two parameter groups: matrices with `weight_decay`,
/// 1-D parameters with `weight_decay_1d`; gradients clipped to the global norm first.
pub struct GroupedAdamW<M: AutodiffModule<B>, B: AutodiffBackend> {
    decay: OptimizerAdaptor<AdamW, M, B>,
    no_decay: OptimizerAdaptor<AdamW, M, B>,
    one_d: HashSet<ParamId>,
    config: OptimizerConfig,
}

/// The saved state of a [`GroupedAdamW`]: the moments of both groups.
pub type GroupedAdamWRecord<M, B> = (
    <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
    <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
);

impl<M: AutodiffModule<B>, B: AutodiffBackend> GroupedAdamW<M, B> {
    /// Fresh optimiser state for `module`'s parameters.
    pub fn new(module: &M, config: OptimizerConfig) -> Self {
        Self {
            decay: config.adamw(config.weight_decay).init(),
            no_decay: config.adamw(config.weight_decay_1d).init(),
            one_d: one_dimensional_params::<B, M>(module),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Clips `grads` to the global norm (when configured) and applies one AdamW step to both
    /// groups; returns the updated module and the norm before clipping.
    pub fn step(&mut self, module: M, mut grads: GradientsParams, lr: f64) -> (M, f64) {
        let norm = match self.config.max_grad_norm {
            Some(max) => clip_global_norm::<B, M>(&module, &mut grads, max),
            None => global_grad_norm::<B, M>(&module, &grads),
        };
        let one_d_grads = split_grads::<B, M>(&module, &mut grads, &self.one_d);
        let module = self.decay.step(lr, module, grads);
        let module = self.no_decay.step(lr, module, one_d_grads);
        (module, norm)
    }

    /// The moments of both groups.
    pub fn to_record(&self) -> GroupedAdamWRecord<M, B> {
        (self.decay.to_record(), self.no_decay.to_record())
    }

    /// Restores the moments of both groups.
    pub fn load_record(mut self, record: GroupedAdamWRecord<M, B>) -> Self {
        self.decay = self.decay.load_record(record.0);
        self.no_decay = self.no_decay.load_record(record.1);
        self
    }
}

/// Ids of the 1-D parameters of a module.
pub(crate) fn one_dimensional_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
) -> HashSet<ParamId> {
    struct Collect(HashSet<ParamId>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if D == 1 {
                self.0.insert(param.id);
            }
        }
    }
    let mut visitor = Collect(HashSet::new());
    module.visit(&mut visitor);
    visitor.0
}

/// The L2 norm of all gradients of `module` together.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SquaredSum<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredSum<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sum = grad.cast(burn::tensor::DType::F32).square().sum();
                self.total = Some(match self.total.take() {
                    Some(total) => total + sum,
                    None => sum,
                });
            }
        }
    }
    let mut visitor = SquaredSum::<B> { grads, total: None };
    module.visit(&mut visitor);
    visitor
        .total
        .map_or(0.0, |t| (t.into_scalar().elem::<f64>()).sqrt())
}

/// Multiplies every gradient of `module` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
            }
        }
    }
    module.visit(&mut Scale { grads, factor });
}

/// Clips the global gradient norm to `max_norm`; returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_grad_norm::<B, M>(module, grads);
    if norm > max_norm {
        scale_grads::<B, M>(module, grads, max_norm / (norm + 1e-6));
    }
    norm
}

/// Moves the gradients of `ids` out of `grads` into a new set.
pub(crate) fn split_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    ids: &HashSet<ParamId>,
) -> GradientsParams {
    struct Split<'a> {
        from: &'a mut GradientsParams,
        to: GradientsParams,
        ids: &'a HashSet<ParamId>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.ids.contains(&param.id)
                && let Some(grad) = self.from.remove::<B::InnerBackend, D>(param.id)
            {
                self.to.register::<B::InnerBackend, D>(param.id, grad);
            }
        }
    }
    let mut split = Split {
        from: grads,
        to: GradientsParams::new(),
        ids,
    };
    module.visit(&mut split);
    split.to
}

#[cfg(test)]
mod tests {
    use super::*;
    use internlm2::backends::CpuAutodiff;
    use internlm2::{InternLM2, InternLM2Config};

    #[test]
    fn one_d_group_is_the_norm_weights_and_biases() {
        let config = InternLM2Config::new(32, 16, 24, 3, 4, 2).with_bias(true);
        let model: InternLM2<CpuAutodiff> = InternLM2::init(&config, &Default::default());
        // 2 norms per layer + final norm + 2 biases per layer.
        assert_eq!(
            one_dimensional_params::<CpuAutodiff, _>(&model).len(),
            2 * 3 + 1 + 2 * 3
        );
    }
}
