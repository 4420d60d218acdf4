#![doc = include_str!("../README.md")]
//!
//! This root package holds the runnable examples (`examples/`) and the cross-crate integration
//! tests (`tests/`); it re-exports the SDK's crates for them.

pub use internlm2;
pub use internlm2::backends;
