//! Typed errors of the agent crate, one enum per subsystem.
//!
//! Only failures of the host side are errors: a tool call the model gets wrong (malformed,
//! unknown tool, invalid arguments, a failing handler, code that raises or runs too long) goes
//! back to the model as the tool's result text and never surfaces here.

use std::path::PathBuf;

use crate::sandbox::Layer;

/// A plugin that cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum PluginSpecError {
    /// The name is empty or holds characters a call could not name it by.
    #[error("invalid plugin name {0:?}: use letters, digits, `_`, `-` and `.`")]
    InvalidName(String),
    /// Two plugins share a name.
    #[error("a plugin named `{0}` is already registered")]
    Duplicate(String),
    /// The parameters schema is not a JSON object or not a valid JSON schema.
    #[error("plugin `{name}`: invalid parameters schema: {reason}")]
    InvalidSchema {
        /// The plugin.
        name: String,
        /// What the schema compiler said.
        reason: String,
    },
}

/// The Python interpreter cannot be started or driven (the host side failed, not the code).
#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    /// The code interpreter needs a Unix host.
    #[error("the code interpreter is not supported on this platform: {0}")]
    Unsupported(&'static str),
    /// No Python executable was found.
    #[error("python executable `{0}` not found on PATH")]
    PythonNotFound(String),
    /// The work directory could not be created or prepared.
    #[error("work directory {path}: {source}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Spawning the Python process failed.
    #[error("cannot start {python}: {source}")]
    Spawn {
        /// The executable.
        python: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The sandbox could not be set up (in strict mode: a layer is missing).
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The driver process did not say hello, or spoke something other than the protocol.
    #[error("interpreter protocol error: {0}")]
    Protocol(String),
    /// A pipe to the driver failed.
    #[error("interpreter I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A sandbox layer that could not be prepared or applied.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Strict mode: a layer is unavailable on this host.
    #[error("sandbox layer `{layer}` is unavailable (strict mode): {reason}")]
    LayerUnavailable {
        /// The layer.
        layer: Layer,
        /// Why.
        reason: String,
    },
    /// Building a layer's rules failed on the host.
    #[error("sandbox layer `{layer}`: cannot prepare: {reason}")]
    Prepare {
        /// The layer.
        layer: Layer,
        /// Why.
        reason: String,
    },
}

/// An agent run that cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The conversation could not be rendered.
    #[error(transparent)]
    Chat(#[from] internlm2::ChatError),
    /// The interpreter could not be (re)started.
    #[error(transparent)]
    Interpreter(#[from] InterpreterError),
    /// The text generator failed.
    #[error("text generation failed: {0}")]
    Generator(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A setting is out of range.
    #[error("invalid agent setting `{name}`: {reason}")]
    InvalidConfig {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// A scripted generator ran out of turns.
#[derive(Debug, thiserror::Error)]
#[error("the script has no turn left (it had {0})")]
pub struct ScriptExhausted(pub usize);
