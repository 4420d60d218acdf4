//! The `main` of a command-line program that runs on the device its user names: the device
//! spec picks the backend, the program's body runs generic over it, and whatever fails — a
//! backend that is not compiled in, or the body's own error — is printed to stderr with its
//! causes and turns into exit code 1. Every example of the SDK starts this way:
//!
//! ```no_run
//! use std::process::ExitCode;
//! use internlm2_backends::Kernels;
//! use internlm2_backends::device::DeviceSpec;
//! use internlm2_backends::program::{Program, ProgramResult, run_program};
//!
//! struct Args {
//!     device: DeviceSpec, // e.g. from clap: `#[arg(long, default_value = "cpu")]`
//! }
//!
//! impl Program for Args {
//!     fn device(&self) -> DeviceSpec {
//!         self.device
//!     }
//!
//!     fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
//!         let x = burn::tensor::Tensor::<B, 1>::ones([4], &device);
//!         println!("{}", x.sum());
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     run_program(Args { device: DeviceSpec::Cpu })
//! }
//! ```
//!
//! This is the one place of the SDK that prints: it is what a program's `main` does.

use std::error::Error;
use std::process::ExitCode;

use crate::Kernels;
use crate::device::{DeviceError, DeviceSpec, DevicesTask, run_on};

/// What a program's body returns.
pub type ProgramResult = Result<(), Box<dyn Error>>;

/// A command-line program generic over the backend: its arguments name the device, its body
/// runs on that device's backend.
pub trait Program: Sized {
    /// The device to run on (typically the `--device` flag).
    fn device(&self) -> DeviceSpec;
    /// The body, on backend `B` and `device`.
    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult;
}

/// A program on several devices of one backend (data-parallel training).
pub trait ParallelProgram: Sized {
    /// The devices to run on (typically a `--devices cpu,cpu` flag, see
    /// [`parse_devices`](crate::device::parse_devices)).
    fn devices(&self) -> Result<Vec<DeviceSpec>, DeviceError>;
    /// The body, on backend `B` with one device per spec.
    fn run<B: Kernels>(self, devices: Vec<B::Device>) -> ProgramResult;
}

/// Runs `program` on the backend its device names; prints a failure (with its causes) to
/// stderr and returns the process's exit code.
pub fn run_program<P: Program>(program: P) -> ExitCode {
    struct One<P>(P);
    impl<P: Program> DevicesTask for One<P> {
        type Output = ProgramResult;
        fn run<B: Kernels>(self, devices: Vec<B::Device>) -> ProgramResult {
            let device = devices.into_iter().next().expect("one spec, one device");
            self.0.run::<B>(device)
        }
    }
    let spec = program.device();
    exit_code(
        run_on(&[spec], One(program))
            .map_err(Into::into)
            .and_then(|r| r),
    )
}

/// Runs `program` on the backend all its devices name; prints a failure (with its causes) to
/// stderr and returns the process's exit code.
pub fn run_parallel_program<P: ParallelProgram>(program: P) -> ExitCode {
    struct Many<P>(P);
    impl<P: ParallelProgram> DevicesTask for Many<P> {
        type Output = ProgramResult;
        fn run<B: Kernels>(self, devices: Vec<B::Device>) -> ProgramResult {
            self.0.run::<B>(devices)
        }
    }
    let result = program
        .devices()
        .and_then(|specs| run_on(&specs, Many(program)))
        .map_err(Into::into)
        .and_then(|r| r);
    exit_code(result)
}

/// The exit code of a program's outcome: success, or 1 after printing `error: ...` and each
/// cause (`caused by: ...`) to stderr.
pub fn exit_code<E: Into<Box<dyn Error>>>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: Box<dyn Error> = e.into();
            eprintln!("error: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                eprintln!("caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum(DeviceSpec, bool);

    impl Program for Sum {
        fn device(&self) -> DeviceSpec {
            self.0
        }

        fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
            let x = burn::tensor::Tensor::<B, 1>::ones([3], &device);
            assert_eq!(x.dims(), [3]);
            if self.1 {
                Err("the body failed".into())
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn outcomes_become_exit_codes() {
        assert_eq!(run_program(Sum(DeviceSpec::Cpu, false)), ExitCode::SUCCESS);
        assert_eq!(run_program(Sum(DeviceSpec::Cpu, true)), ExitCode::FAILURE);
        // A backend that is not compiled in fails before the body runs.
        if !DeviceSpec::Tch(crate::device::TchDevice::Cpu).is_compiled() {
            let spec = DeviceSpec::Tch(crate::device::TchDevice::Cpu);
            assert_eq!(run_program(Sum(spec, false)), ExitCode::FAILURE);
        }
        assert_eq!(exit_code(Err::<(), _>("x")), ExitCode::FAILURE);
    }
}
