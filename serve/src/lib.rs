//! Serving InternLM2: the parts a downstream server composes.
//!
//! - [`engine`]: a continuous-batching inference engine over a paged KV cache, generic over
//!   the backend, with no HTTP in it. Requests are submitted from any thread and stream
//!   [`engine::Event`]s back; sequences join and leave the running batch at every step.
//! - `server` (feature `server`): the OpenAI-compatible HTTP API built on the engine.
//!
//! ```no_run
//! use std::sync::Arc;
//! use burn::tensor::DType;
//! use internlm2::generate::GenerationConfig;
//! use internlm2::{InternLM2, Tokenizer, chat};
//! use internlm2::backends::Cpu;
//! use internlm2_serve::engine::{Engine, EngineConfig, Event, Request};
//!
//! let model = InternLM2::<Cpu>::load("model", DType::F32, &Default::default())?;
//! let tokenizer = Arc::new(Tokenizer::from_dir("model")?);
//! let engine = Engine::start(model, Some(tokenizer.clone()), EngineConfig::new())?;
//! let prompt = chat::encode(&tokenizer, &[chat::Message::user("Hi")], true)?;
//! let config = GenerationConfig::chat(&tokenizer).with_max_new_tokens(64);
//! let mut handle = engine.submit(Request::new(prompt, config))?;
//! while let Some(event) = handle.next_blocking() {
//!     match event {
//!         Event::Token { delta, .. } => print!("{delta}"),
//!         Event::ToolCall(call) => println!("{call:?}"),
//!         Event::Finished { reason, usage } => println!("\n{reason:?} {usage:?}"),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod engine;

#[cfg(feature = "server")]
pub mod constraint;
#[cfg(feature = "server")]
pub mod server;
