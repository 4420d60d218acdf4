//! Device specs (`--device cpu`, `cuda:0`, `wgpu`, `vulkan`, `tch:cuda:0`, ...), the per-backend
//! default dtype policy, and dispatch of generic code onto the backend a spec names.
//!
//! ```
//! use internlm2_backends::device::{DeviceSpec, DTypeChoice};
//! let spec: DeviceSpec = "cpu".parse().unwrap();
//! assert_eq!(spec, DeviceSpec::Cpu);
//! assert_eq!(spec.default_dtype(), burn::tensor::DType::F32);
//! assert_eq!(DTypeChoice::parse("auto").unwrap().resolve(&spec), burn::tensor::DType::F32);
//! // A backend that was not compiled in is a typed error naming the feature to enable.
//! # #[cfg(not(feature = "cuda"))]
//! assert!("cuda:0".parse::<DeviceSpec>().unwrap_err().to_string().contains("`cuda` feature"));
//! ```

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;

use crate::Kernels;

/// What went wrong with a device spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The text is not a device spec.
    #[error(
        "unknown device {spec:?}: expected cpu, cuda[:N], wgpu[:N|:cpu], vulkan[:N], tch:cpu or tch:cuda[:N]"
    )]
    Unknown {
        /// What was given.
        spec: String,
    },
    /// The spec is valid but its backend is not compiled in.
    #[error(
        "device {spec:?} needs the `{feature}` feature of internlm2 (internlm2 = {{ features = [\"{feature}\"] }}, or cargo --features {feature})"
    )]
    FeatureMissing {
        /// What was given.
        spec: String,
        /// The feature to enable.
        feature: &'static str,
    },
    /// Devices of one group name different backends.
    #[error("devices {first:?} and {other:?} use different backends; one group uses one backend")]
    MixedBackends {
        /// The first device given.
        first: String,
        /// The first device of another backend.
        other: String,
    },
    /// A dtype name that is not `auto`, `f32`, `bf16` or `f16`.
    #[error("unknown dtype {name:?}: expected auto, f32, bf16 or f16")]
    UnknownDType {
        /// What was given.
        name: String,
    },
}

/// Which adapter a wgpu device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    /// The best adapter wgpu finds (`wgpu`, `vulkan`).
    Default,
    /// The N-th discrete GPU (`wgpu:N`, `vulkan:N`).
    Discrete(usize),
    /// A CPU (software) adapter such as Mesa's lavapipe (`wgpu:cpu`).
    Cpu,
}

/// Which libtorch device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TchDevice {
    /// libtorch on the CPU (`tch:cpu`).
    Cpu,
    /// libtorch on CUDA device N (`tch:cuda:N`).
    Cuda(usize),
}

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The embedded CPU backend ([`crate::Cpu`]).
    Cpu,
    /// burn's CUDA backend on device N.
    Cuda(usize),
    /// burn's wgpu backend (Vulkan SPIR-V as compiled here).
    Wgpu(WgpuAdapter),
    /// burn's libtorch backend.
    Tch(TchDevice),
}

fn index(s: &str, spec: &str) -> Result<usize, DeviceError> {
    s.parse()
        .map_err(|_| DeviceError::Unknown { spec: spec.into() })
}

impl DeviceSpec {
    /// Parse the syntax only, without checking which backends are compiled in.
    pub fn parse_syntax(spec: &str) -> Result<Self, DeviceError> {
        let s = spec.trim().to_ascii_lowercase();
        let parts: Vec<&str> = s.split(':').collect();
        Ok(match parts.as_slice() {
            ["cpu"] => DeviceSpec::Cpu,
            ["cuda"] => DeviceSpec::Cuda(0),
            ["cuda", n] => DeviceSpec::Cuda(index(n, spec)?),
            ["wgpu"] | ["vulkan"] => DeviceSpec::Wgpu(WgpuAdapter::Default),
            ["wgpu", "cpu"] => DeviceSpec::Wgpu(WgpuAdapter::Cpu),
            ["wgpu", n] | ["vulkan", n] => DeviceSpec::Wgpu(WgpuAdapter::Discrete(index(n, spec)?)),
            ["tch"] | ["tch", "cpu"] => DeviceSpec::Tch(TchDevice::Cpu),
            ["tch", "cuda"] => DeviceSpec::Tch(TchDevice::Cuda(0)),
            ["tch", "cuda", n] => DeviceSpec::Tch(TchDevice::Cuda(index(n, spec)?)),
            _ => return Err(DeviceError::Unknown { spec: spec.into() }),
        })
    }

    /// The cargo feature that compiles this spec's backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            DeviceSpec::Cpu => "flex",
            DeviceSpec::Cuda(_) => "cuda",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Tch(_) => "tch",
        }
    }

    /// Whether this build has the backend.
    pub fn is_compiled(&self) -> bool {
        match self {
            DeviceSpec::Cpu => cfg!(any(feature = "flex", feature = "ndarray")),
            DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
            DeviceSpec::Wgpu(_) => cfg!(feature = "wgpu"),
            DeviceSpec::Tch(_) => cfg!(feature = "tch"),
        }
    }

    /// Whether the device is the host CPU (`cpu`, `wgpu:cpu`, `tch:cpu`): benchmarks size their
    /// probes by it.
    pub fn is_host(&self) -> bool {
        matches!(
            self,
            DeviceSpec::Cpu | DeviceSpec::Wgpu(WgpuAdapter::Cpu) | DeviceSpec::Tch(TchDevice::Cpu)
        )
    }

    /// The dtype used when the user does not choose: bf16 where the device computes in it
    /// natively (CUDA, libtorch on CUDA), f32 otherwise (CPU backends, libtorch on the CPU,
    /// and wgpu, whose shaders have no bf16).
    pub fn default_dtype(&self) -> DType {
        match self {
            DeviceSpec::Cuda(_) | DeviceSpec::Tch(TchDevice::Cuda(_)) => DType::BF16,
            DeviceSpec::Cpu | DeviceSpec::Wgpu(_) | DeviceSpec::Tch(TchDevice::Cpu) => DType::F32,
        }
    }

    /// Run `task` with this spec's backend and device.
    pub fn run<T: BackendTask>(&self, task: T) -> Result<T::Output, DeviceError> {
        struct One<T>(T);
        impl<T: BackendTask> DevicesTask for One<T> {
            type Output = T::Output;
            fn run<B: Kernels>(self, devices: Vec<B::Device>) -> T::Output {
                let device = devices.into_iter().next().expect("one spec, one device");
                self.0.run::<B>(device)
            }
        }
        run_on(std::slice::from_ref(self), One(task))
    }
}

/// Run `task` on the backend that all `specs` name, with one device per spec (e.g. the
/// devices of a data-parallel group, `cuda:0,cuda:1`). Specs of different backends are
/// [`DeviceError::MixedBackends`]; an empty list is [`DeviceError::Unknown`].
pub fn run_on<T: DevicesTask>(specs: &[DeviceSpec], task: T) -> Result<T::Output, DeviceError> {
    let first = specs.first().ok_or_else(|| DeviceError::Unknown {
        spec: String::new(),
    })?;
    if let Some(other) = specs.iter().find(|s| s.feature() != first.feature()) {
        return Err(DeviceError::MixedBackends {
            first: first.to_string(),
            other: other.to_string(),
        });
    }
    if !first.is_compiled() {
        return Err(DeviceError::FeatureMissing {
            spec: first.to_string(),
            feature: first.feature(),
        });
    }
    match *first {
        #[cfg(any(feature = "flex", feature = "ndarray"))]
        DeviceSpec::Cpu => Ok(task.run::<crate::Cpu>(vec![Default::default(); specs.len()])),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => {
            let devices = specs
                .iter()
                .map(|s| match *s {
                    DeviceSpec::Cuda(index) => burn::backend::cuda::CudaDevice::new(index),
                    _ => unreachable!("checked: one backend"),
                })
                .collect();
            Ok(task.run::<crate::Cuda>(devices))
        }
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(_) => {
            use burn::backend::wgpu::WgpuDevice;
            let devices = specs
                .iter()
                .map(|s| match *s {
                    DeviceSpec::Wgpu(WgpuAdapter::Default) => WgpuDevice::DefaultDevice,
                    DeviceSpec::Wgpu(WgpuAdapter::Discrete(n)) => WgpuDevice::DiscreteGpu(n),
                    DeviceSpec::Wgpu(WgpuAdapter::Cpu) => WgpuDevice::Cpu,
                    _ => unreachable!("checked: one backend"),
                })
                .collect();
            Ok(task.run::<crate::Wgpu>(devices))
        }
        #[cfg(feature = "tch")]
        DeviceSpec::Tch(_) => {
            use burn::backend::libtorch::LibTorchDevice;
            let devices = specs
                .iter()
                .map(|s| match *s {
                    DeviceSpec::Tch(TchDevice::Cpu) => LibTorchDevice::Cpu,
                    DeviceSpec::Tch(TchDevice::Cuda(n)) => LibTorchDevice::Cuda(n),
                    _ => unreachable!("checked: one backend"),
                })
                .collect();
            Ok(task.run::<crate::LibTorch>(devices))
        }
        #[allow(unreachable_patterns)]
        _ => Err(DeviceError::FeatureMissing {
            spec: first.to_string(),
            feature: first.feature(),
        }),
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    /// Parse and check that the backend is compiled in.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = Self::parse_syntax(s)?;
        if !spec.is_compiled() {
            return Err(DeviceError::FeatureMissing {
                spec: s.to_string(),
                feature: spec.feature(),
            });
        }
        Ok(spec)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Default) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(n)) => write!(f, "wgpu:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Cpu) => write!(f, "wgpu:cpu"),
            DeviceSpec::Tch(TchDevice::Cpu) => write!(f, "tch:cpu"),
            DeviceSpec::Tch(TchDevice::Cuda(n)) => write!(f, "tch:cuda:{n}"),
        }
    }
}

/// Parse a comma-separated list (`cuda:0,cuda:1`).
pub fn parse_devices(list: &str) -> Result<Vec<DeviceSpec>, DeviceError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// `--dtype`: the device's default or a fixed dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// [`DeviceSpec::default_dtype`].
    #[default]
    Auto,
    /// Exactly this dtype.
    Fixed(DType),
}

impl DTypeChoice {
    /// Parse `auto`, `f32`, `bf16` or `f16`.
    pub fn parse(s: &str) -> Result<Self, DeviceError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => DTypeChoice::Auto,
            "f32" | "float32" => DTypeChoice::Fixed(DType::F32),
            "bf16" | "bfloat16" => DTypeChoice::Fixed(DType::BF16),
            "f16" | "float16" | "half" => DTypeChoice::Fixed(DType::F16),
            _ => {
                return Err(DeviceError::UnknownDType {
                    name: s.to_string(),
                });
            }
        })
    }

    /// The dtype to use on `spec`.
    pub fn resolve(&self, spec: &DeviceSpec) -> DType {
        match self {
            DTypeChoice::Auto => spec.default_dtype(),
            DTypeChoice::Fixed(d) => *d,
        }
    }
}

impl FromStr for DTypeChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Code generic over the backend, run by [`DeviceSpec::run`] on the backend a spec names.
///
/// ```
/// use burn::tensor::{ElementConversion, Tensor};
/// use internlm2_backends::{Kernels, device::{BackendTask, DeviceSpec}};
/// struct SumOnes;
/// impl BackendTask for SumOnes {
///     type Output = f32;
///     fn run<B: Kernels>(self, device: B::Device) -> f32 {
///         Tensor::<B, 1>::ones([4], &device).sum().into_scalar().elem::<f32>()
///     }
/// }
/// assert_eq!(DeviceSpec::Cpu.run(SumOnes).unwrap(), 4.0);
/// ```
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Run on backend `B` and `device`.
    fn run<B: Kernels>(self, device: B::Device) -> Self::Output;
}

/// Code generic over the backend that runs on several devices of it, run by [`run_on`].
///
/// ```
/// use internlm2_backends::{Kernels, device::{DevicesTask, parse_devices, run_on}};
/// struct Count;
/// impl DevicesTask for Count {
///     type Output = usize;
///     fn run<B: Kernels>(self, devices: Vec<B::Device>) -> usize {
///         devices.len()
///     }
/// }
/// assert_eq!(run_on(&parse_devices("cpu,cpu").unwrap(), Count).unwrap(), 2);
/// ```
pub trait DevicesTask {
    /// What the task returns.
    type Output;
    /// Run on backend `B` with `devices` (one per spec, in order).
    fn run<B: Kernels>(self, devices: Vec<B::Device>) -> Self::Output;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_parses_and_prints_back() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("CUDA:3", DeviceSpec::Cuda(3)),
            ("wgpu", DeviceSpec::Wgpu(WgpuAdapter::Default)),
            ("vulkan:1", DeviceSpec::Wgpu(WgpuAdapter::Discrete(1))),
            ("wgpu:cpu", DeviceSpec::Wgpu(WgpuAdapter::Cpu)),
            ("tch:cpu", DeviceSpec::Tch(TchDevice::Cpu)),
            ("tch:cuda:2", DeviceSpec::Tch(TchDevice::Cuda(2))),
        ] {
            assert_eq!(DeviceSpec::parse_syntax(text).unwrap(), spec, "{text}");
            assert_eq!(DeviceSpec::parse_syntax(&spec.to_string()).unwrap(), spec);
        }
        for bad in ["gpu", "cuda:x", "cuda:0:1", "", "tch:mps"] {
            assert!(
                matches!(
                    DeviceSpec::parse_syntax(bad),
                    Err(DeviceError::Unknown { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_backends_name_their_feature() {
        for (text, feature, compiled) in [
            ("cuda:0", "cuda", cfg!(feature = "cuda")),
            ("wgpu", "wgpu", cfg!(feature = "wgpu")),
            ("tch:cpu", "tch", cfg!(feature = "tch")),
        ] {
            match text.parse::<DeviceSpec>() {
                Ok(_) => assert!(compiled),
                Err(DeviceError::FeatureMissing { feature: f, .. }) => {
                    assert!(!compiled);
                    assert_eq!(f, feature);
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(parse_devices("cpu,cpu").unwrap(), vec![DeviceSpec::Cpu; 2]);
        let mixed = [DeviceSpec::Cpu, DeviceSpec::Cuda(0)];
        struct Nothing;
        impl DevicesTask for Nothing {
            type Output = ();
            fn run<B: Kernels>(self, _: Vec<B::Device>) {}
        }
        assert!(matches!(
            run_on(&mixed, Nothing),
            Err(DeviceError::MixedBackends { .. })
        ));
        assert!(matches!(
            run_on(&[], Nothing),
            Err(DeviceError::Unknown { .. })
        ));
    }

    #[test]
    fn host_devices() {
        for (text, host) in [
            ("cpu", true),
            ("wgpu:cpu", true),
            ("tch:cpu", true),
            ("cuda:1", false),
            ("wgpu", false),
            ("tch:cuda", false),
        ] {
            assert_eq!(
                DeviceSpec::parse_syntax(text).unwrap().is_host(),
                host,
                "{text}"
            );
        }
    }

    #[test]
    fn dtype_policy() {
        assert_eq!(DeviceSpec::Cuda(0).default_dtype(), DType::BF16);
        assert_eq!(
            DeviceSpec::Tch(TchDevice::Cuda(0)).default_dtype(),
            DType::BF16
        );
        assert_eq!(
            DeviceSpec::Wgpu(WgpuAdapter::Default).default_dtype(),
            DType::F32
        );
        assert_eq!(DeviceSpec::Cpu.default_dtype(), DType::F32);
        let f16 = DTypeChoice::parse("f16").unwrap();
        assert_eq!(f16.resolve(&DeviceSpec::Cuda(0)), DType::F16);
        assert!(DTypeChoice::parse("int8").is_err());
    }
}
