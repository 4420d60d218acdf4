//! The fused kernels on burn's `Fusion<B>` backend (what `burn::backend::Wgpu` and `Cuda` are).
//!
//! A fusion backend records operations into a stream and executes them later. Each kernel is
//! registered as an [`OperationIr::Custom`] operation that declares its input and output
//! tensors; when the stream runs it, the operation fetches the inner backend's primitives from
//! the handle container, calls the inner [`CubeOps`] kernel and registers the outputs. Burn's
//! elementwise fusion does not reach across a custom operation, so the ops around it are fused
//! on their own.

use core::marker::PhantomData;

use burn::tensor::DType;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::CubeOps;

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// Which fused kernel a [`CustomKernel`] runs, with its scalar arguments.
#[derive(Debug, Clone, Copy)]
enum Kind {
    RmsNorm {
        eps: f32,
    },
    AddRmsNorm {
        eps: f32,
    },
    Rope,
    Swiglu,
    /// Inputs q, k, v, then the int masks that are present, in this order.
    Attention {
        past_len: usize,
        padding: bool,
        segments: bool,
    },
}

/// One fused kernel recorded in a fusion stream.
#[derive(Debug)]
struct CustomKernel<B> {
    desc: CustomOpIr,
    kind: Kind,
    _backend: PhantomData<fn() -> B>,
}

impl<B: FusionBackend + CubeOps> Operation<B::FusionRuntime> for CustomKernel<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let mut inputs = (self.desc.inputs.iter())
            .filter(|t| t.dtype.is_float())
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect::<Vec<_>>()
            .into_iter();
        let mut int_inputs = (self.desc.inputs.iter())
            .filter(|t| !t.dtype.is_float())
            .map(|t| handles.get_int_tensor::<B>(t))
            .collect::<Vec<_>>()
            .into_iter();
        let mut next = || inputs.next().expect("input declared by the custom op");
        let mut next_int = |present: bool| {
            present.then(|| {
                int_inputs
                    .next()
                    .expect("int input declared by the custom op")
            })
        };
        let outputs = match self.kind {
            Kind::RmsNorm { eps } => vec![B::fused_rms_norm(next(), next(), eps)],
            Kind::AddRmsNorm { eps } => {
                let (sum, normed) = B::fused_add_rms_norm(next(), next(), next(), eps);
                vec![sum, normed]
            }
            Kind::Rope => vec![B::fused_rope(next(), next(), next())],
            Kind::Swiglu => vec![B::fused_swiglu(next(), next())],
            Kind::Attention {
                past_len,
                padding,
                segments,
            } => vec![B::fused_attention(
                next(),
                next(),
                next(),
                next_int(padding),
                next_int(segments),
                past_len,
            )],
        };
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, tensor);
        }
    }
}

/// Records `kind` on `inputs` with `outputs` tensors shaped like the first input (and of its
/// dtype).
fn register<B: FusionBackend + CubeOps>(
    name: &'static str,
    kind: Kind,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    outputs: usize,
) -> Vec<FusionTensor<B::FusionRuntime>> {
    let client = inputs[0].client.clone();
    let (shape, dtype): (_, DType) = (inputs[0].shape.clone(), inputs[0].dtype);
    let streams = OperationStreams::with_inputs(&inputs);
    let outputs: Vec<TensorIr> = (0..outputs)
        .map(|_| TensorIr::uninit(client.create_empty_handle(), shape.clone(), dtype))
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    let op = CustomKernel::<B> {
        desc: desc.clone(),
        kind,
        _backend: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

impl<B: FusionBackend + CubeOps> CubeOps for Fusion<B> {
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        register::<B>(
            "internlm2_rms_norm",
            Kind::RmsNorm { eps },
            vec![x, weight],
            1,
        )
        .output()
    }

    fn fused_add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [sum, normed] = register::<B>(
            "internlm2_add_rms_norm",
            Kind::AddRmsNorm { eps },
            vec![x, residual, weight],
            2,
        )
        .outputs();
        (sum, normed)
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        register::<B>("internlm2_rope", Kind::Rope, vec![x, cos, sin], 1).output()
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        register::<B>("internlm2_swiglu", Kind::Swiglu, vec![gate, up], 1).output()
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        padding: Option<IntTensor<Self>>,
        segments: Option<IntTensor<Self>>,
        past_len: usize,
    ) -> FloatTensor<Self> {
        let kind = Kind::Attention {
            past_len,
            padding: padding.is_some(),
            segments: segments.is_some(),
        };
        let inputs = [q, k, v]
            .into_iter()
            .chain(padding)
            .chain(segments)
            .collect();
        register::<B>("internlm2_attention", kind, inputs, 1).output()
    }
}
