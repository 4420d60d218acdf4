//! A continuous-batching inference engine over a paged KV cache.
//!
//! [`Engine::start`] moves a model onto a worker thread and returns an [`EngineHandle`]:
//! cheap to clone, `Send + Sync`, not generic over the backend. [`EngineHandle::submit`]
//! validates a [`Request`] and returns a [`RequestHandle`] streaming [`Event`]s: one
//! [`Event::Token`] per generated token (with its text delta and, on request, logprobs),
//! then [`Event::Finished`] with the reason and the token counts.
//!
//! At every step the worker runs one forward pass over all scheduled sequences: each
//! decoding sequence contributes its last token, and sequences still reading their prompt
//! contribute a chunk of it (at most [`EngineConfig::prefill_chunk`] prompt tokens per step in
//! all), packed into one row so that every linear layer is one matrix product. Finished and
//! cancelled sequences leave and waiting ones join between steps. Keys and values live in a
//! pool of fixed-size blocks; full blocks of identical prompt prefixes are shared. When the
//! pool runs out, new requests wait, or the youngest running sequence is preempted (its
//! blocks freed) and recomputed later.
//!
//! ```
//! use internlm2::generate::GenerationConfig;
//! use internlm2::sampling::SamplingConfig;
//! use internlm2::{InternLM2, InternLM2Config};
//! use internlm2::backends::Cpu;
//! use internlm2_serve::engine::{Engine, EngineConfig, Event, Request};
//!
//! let config = InternLM2Config::new(128, 32, 64, 2, 4, 2);
//! let model = InternLM2::<Cpu>::init(&config, &Default::default());
//! let engine = Engine::start(model, None, EngineConfig::new().with_kv_memory_bytes(1 << 20))?;
//! let greedy = GenerationConfig::default()
//!     .with_max_new_tokens(8)
//!     .with_sampling(SamplingConfig::greedy());
//! let mut handle = engine.submit(Request::new(vec![1, 5, 9], greedy))?;
//! let mut tokens = Vec::new();
//! while let Some(event) = handle.next_blocking() {
//!     if let Event::Token { token, .. } = event {
//!         tokens.push(token);
//!     }
//! }
//! assert_eq!(tokens.len(), 8);
//! engine.shutdown();
//! # Ok::<(), internlm2_serve::engine::EngineError>(())
//! ```

mod blocks;
mod config;
mod error;
mod handle;
mod metrics;
mod request;
mod scheduler;
mod sequence;
mod step;
mod validate;
mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use internlm2::backends::Kernels;
use internlm2::{InternLM2, Tokenizer};

pub use config::EngineConfig;
pub use error::EngineError;
pub use handle::{CancelToken, EngineHandle, RequestHandle};
pub use metrics::{EngineMetrics, FinishCounts, LatencySummary, percentile};
pub use request::{
    ConstraintError, Event, FinishReason, Request, StopKind, TokenConstraint, TokenLogprob, Usage,
};
pub use validate::MAX_TOP_LOGPROBS;

use handle::Shared;
use validate::Limits;

/// Starts engines.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Moves `model` onto a new worker thread that schedules and runs every request, and
    /// returns the handle to it. `tokenizer` is needed for text deltas and stop strings.
    ///
    /// Returns once the worker has allocated the KV pool. Fails with
    /// [`EngineError::InvalidConfig`] when the configuration cannot work (a zero size, a KV
    /// budget below one block, a pool that cannot be allocated).
    pub fn start<B: Kernels>(
        model: InternLM2<B>,
        tokenizer: Option<Arc<Tokenizer>>,
        config: EngineConfig,
    ) -> Result<EngineHandle, EngineError> {
        let plan = worker::Plan::new(&model, &config)?;
        let limits = Limits {
            context_limit: internlm2::generate::default_context_limit(&model),
            vocab_size: model.config().vocab_size,
            pool_tokens: plan.pool_tokens(),
            max_waiting: config.max_waiting,
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        let metrics = Arc::new(Mutex::new(EngineMetrics::default()));
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = worker::spawn(
            model,
            tokenizer.clone(),
            config,
            plan,
            receiver,
            metrics.clone(),
            queued.clone(),
        )?;
        Ok(EngineHandle {
            shared: Arc::new(Shared {
                commands: Mutex::new(Some(sender)),
                worker: Mutex::new(Some(worker)),
                metrics,
                queued,
                next_id: AtomicU64::new(0),
                limits,
                tokenizer,
            }),
        })
    }
}
