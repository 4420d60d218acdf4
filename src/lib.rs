#![doc = include_str!("../README.md")]
//!
//! This root package holds the runnable examples (`examples/`) and the cross-crate integration
//! tests (`tests/`); it re-exports the SDK's crates for them.

pub use internlm2;
pub use internlm2::backends;
pub use internlm2_agent;
pub use internlm2_align;
pub use internlm2_datasets;
pub use internlm2_eval;
pub use internlm2_train;

/// The user guide's code blocks, compiled (and run unless marked `no_run`) as doctests.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../docs/models-and-checkpoints.md")]
    struct ModelsAndCheckpoints;
    #[doc = include_str!("../docs/tokenizer.md")]
    struct Tokenizer;
    #[doc = include_str!("../docs/chat.md")]
    struct Chat;
    #[doc = include_str!("../docs/generation.md")]
    struct Generation;
    #[doc = include_str!("../docs/data-pipeline.md")]
    struct DataPipeline;
    #[doc = include_str!("../docs/training.md")]
    struct Training;
    #[doc = include_str!("../docs/alignment.md")]
    struct Alignment;
    #[doc = include_str!("../docs/quantization.md")]
    struct Quantization;
    // Its HTTP half uses the `server` feature (on by default).
    #[cfg(feature = "server")]
    #[doc = include_str!("../docs/serving.md")]
    struct Serving;
    #[doc = include_str!("../docs/evaluation.md")]
    struct Evaluation;
    #[doc = include_str!("../docs/agents.md")]
    struct Agents;
}

/// For the examples that train across nodes: burn-communication installs an INFO-level log
/// subscriber (several lines per step) unless the program has one, so they install a quieter
/// one first (`RUST_LOG` when set, warnings otherwise). The SDK's libraries never install one.
pub fn quiet_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
