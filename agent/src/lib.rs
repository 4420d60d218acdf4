//! InternLM2 agents: the tool-calling loop, plugins, and a sandboxed, stateful Python code
//! interpreter.
//!
//! InternLM2-Chat calls tools inside its own turns (`<|action_start|><|plugin|>` with a JSON
//! body, `<|action_start|><|interpreter|>` with a fenced Python block) and reads their results
//! in `environment` turns. This crate runs that protocol:
//!
//! - [`Agent`]: system prompt and tools -> generate until `<|action_end|>` or `<|im_end|>` ->
//!   parse -> run the tool -> append the `environment` turn -> generate again, up to a turn
//!   limit, with streamed [`AgentEvent`]s and the whole transcript as [`Message`]s and text.
//! - [`TextGenerator`]: how text is produced, so the loop runs on [`ModelGenerator`]
//!   (`internlm2::generate`), a serving engine or a [`ScriptedGenerator`] in tests.
//! - [`PluginRegistry`]: tools with JSON-schema-validated arguments and Rust handlers.
//! - [`CodeInterpreter`]: a persistent `python3` process driven over pipes, with a host-side
//!   timeout and the [`sandbox`] on by default on Linux.
//! - [`math`]: the MATH-with-interpreter evaluation in InternLM2's official setting.
//! - `http` (feature `server`): `POST /v1/agent/chat`, the loop with the interpreter as an
//!   HTTP route to merge into the OpenAI server.
//!
//! [`Message`]: internlm2::chat::Message
#![deny(missing_docs)]

mod agent;
#[cfg(feature = "engine")]
mod engine;
mod error;
mod generator;
#[cfg(feature = "server")]
pub mod http;
pub mod interpreter;
pub mod math;
mod model;
mod plugins;
pub mod sandbox;
mod stream;

pub use agent::{Agent, AgentConfig, AgentEvent, AgentOutcome, Finish, neutralize_special_tokens};
#[cfg(feature = "engine")]
pub use engine::{EngineGenerator, EngineGeneratorError};
pub use error::{AgentError, InterpreterError, PluginSpecError, SandboxError, ScriptExhausted};
pub use generator::{Completion, ScriptedGenerator, StopReason, TextGenerator};
pub use interpreter::{
    CodeInterpreter, ExecOutcome, ExecStatus, INTERPRETER_PROMPT, InterpreterConfig,
    InterpreterInfo,
};
pub use model::{ModelGenerator, ModelGeneratorError};
pub use plugins::{Plugin, PluginError, PluginOutcome, PluginRegistry, PluginResult};
pub use sandbox::{Layer, LayerStatus, ResourceLimits, SandboxConfig, SandboxReport};
