//! InternLM2 on burn: configuration, model, checkpoints, tokenizer, chat protocol and generation.
#![deny(missing_docs)]

pub mod cache;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod model;
pub mod prefill;
pub mod quant;
pub mod sampling;
pub mod tokenizer;

pub use cache::KvCache;
pub use config::{InternLM2Config, RopeScaling};
pub use error::{
    ChatError, CheckpointError, ConfigError, Error, GenerateError, Result, TokenizerError,
};
pub use internlm2_backends as backends;
pub use model::{ForwardInput, InternLM2};
pub use tokenizer::Tokenizer;
