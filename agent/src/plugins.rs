//! Plugins: tools the model calls with `<|action_start|><|plugin|>` and a JSON body.
//!
//! A [`Plugin`] is a name, a description, a JSON schema for its parameters and a Rust handler
//! (a fallible closure, optionally with a timeout). A [`PluginRegistry`] renders the tools as
//! InternLM2 expects them (the `system name=<|plugin|>` turn holding the JSON list of function
//! objects, see [`internlm2::chat::Message::plugins`]) and runs calls: the arguments are
//! validated against the schema (with the `jsonschema` crate) before the handler runs, and an
//! unknown tool, invalid arguments, a handler error, a panic or a timeout all come back as the
//! tool result text (`{"error": "..."}`) for the model to read, never as a crash.
//!
//! ```
//! use internlm2_agent::{Plugin, PluginRegistry};
//! use serde_json::json;
//! let add = Plugin::new(
//!     "add",
//!     "Adds two integers.",
//!     json!({"type": "object",
//!            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
//!            "required": ["a", "b"]}),
//!     |args| Ok(json!({"sum": args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0)})),
//! )?;
//! let registry = PluginRegistry::new().with(add)?;
//! let ok = registry.call("add", &json!({"a": 2, "b": 3}));
//! assert_eq!((ok.content.as_str(), ok.is_error), ("{\"sum\": 5}", false));
//! let bad = registry.call("add", &json!({"a": "two"}));
//! assert!(bad.is_error && bad.content.contains("invalid parameters"));
//! # Ok::<(), internlm2_agent::PluginSpecError>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use internlm2::chat::{self, Message};
use serde_json::{Value, json};

use crate::error::PluginSpecError;

/// A handler's failure; its message is what the model reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError(pub String);

impl PluginError {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PluginError {}

impl From<String> for PluginError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> Self {
        Self(message.to_string())
    }
}

/// What a handler returns: a JSON value (a string is passed to the model as plain text,
/// anything else as JSON) or an error.
pub type PluginResult = Result<Value, PluginError>;

type Handler = dyn Fn(Value) -> PluginResult + Send + Sync;

/// One tool.
#[derive(Clone)]
pub struct Plugin {
    name: String,
    description: String,
    parameters: Value,
    validator: Arc<jsonschema::Validator>,
    handler: Arc<Handler>,
    timeout: Option<Duration>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("parameters", &self.parameters)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// A tool named `name` (letters, digits, `_`, `-`, `.`), described for the model, whose
    /// arguments must match the JSON schema `parameters` (an object schema).
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        handler: impl Fn(Value) -> PluginResult + Send + Sync + 'static,
    ) -> Result<Self, PluginSpecError> {
        let name = name.into();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid_name {
            return Err(PluginSpecError::InvalidName(name));
        }
        if !parameters.is_object() {
            return Err(PluginSpecError::InvalidSchema {
                name,
                reason: "the schema must be a JSON object".into(),
            });
        }
        let validator =
            jsonschema::validator_for(&parameters).map_err(|e| PluginSpecError::InvalidSchema {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            name,
            description: description.into(),
            parameters,
            validator: Arc::new(validator),
            handler: Arc::new(handler),
            timeout: None,
        })
    }

    /// Gives up on the handler after `timeout` (it runs on its own thread then; a handler that
    /// never returns keeps that thread, so make long work cancellable yourself).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The name the model calls it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The function object shown to the model: `{"name", "description", "parameters"}`.
    pub fn schema(&self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        })
    }

    /// Validates `arguments`; the error lists every violation with its location.
    pub fn validate(&self, arguments: &Value) -> Result<(), String> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(arguments)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{e} (at {at})")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Runs the handler (no validation), catching panics and enforcing the timeout.
    fn run(&self, arguments: Value) -> PluginResult {
        let handler = Arc::clone(&self.handler);
        let Some(timeout) = self.timeout else {
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(arguments)))
                .unwrap_or_else(|_| Err(PluginError::new("the tool failed (it panicked)")));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("plugin-{}", self.name))
            .spawn(move || {
                let _ = tx.send(handler(arguments));
            });
        if let Err(e) = spawned {
            return Err(PluginError::new(format!("the tool could not start: {e}")));
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(PluginError::new(format!(
                "the tool did not answer within {:.1} s",
                timeout.as_secs_f64()
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(PluginError::new("the tool failed (it panicked)"))
            }
        }
    }
}

/// The result of one plugin call, as the model will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOutcome {
    /// The `environment name=<|plugin|>` turn's text.
    pub content: String,
    /// Whether the call failed (unknown tool, invalid arguments, handler error, timeout).
    pub is_error: bool,
}

impl PluginOutcome {
    fn error(message: impl fmt::Display) -> Self {
        let body = json!({"error": message.to_string()});
        Self {
            content: chat::to_python_json(&body).unwrap_or_else(|_| message.to_string()),
            is_error: true,
        }
    }
}

/// The tools an agent offers, in registration order.
#[derive(Debug, Clone, Default)]
pub struct PluginRegistry {
    plugins: Vec<Plugin>,
}

impl PluginRegistry {
    /// No tools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool; names must be unique.
    pub fn register(&mut self, plugin: Plugin) -> Result<(), PluginSpecError> {
        if self.get(plugin.name()).is_some() {
            return Err(PluginSpecError::Duplicate(plugin.name));
        }
        self.plugins.push(plugin);
        Ok(())
    }

    /// Adds a tool (builder form of [`PluginRegistry::register`]).
    pub fn with(mut self, plugin: Plugin) -> Result<Self, PluginSpecError> {
        self.register(plugin)?;
        Ok(self)
    }

    /// The tool with this name.
    pub fn get(&self, name: &str) -> Option<&Plugin> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// Whether there are no tools.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The function objects, in order.
    pub fn schemas(&self) -> Vec<Value> {
        self.plugins.iter().map(Plugin::schema).collect()
    }

    /// The `system name=<|plugin|>` turn announcing the tools (`None` without tools).
    pub fn system_message(&self) -> Option<Message> {
        if self.is_empty() {
            return None;
        }
        Some(Message::plugins(&self.schemas()).expect("JSON values always serialise"))
    }

    /// Runs a call: unknown tool, invalid arguments, handler errors, panics and timeouts all
    /// become an error outcome for the model.
    pub fn call(&self, name: &str, arguments: &Value) -> PluginOutcome {
        let Some(plugin) = self.get(name) else {
            let known: Vec<&str> = self.plugins.iter().map(Plugin::name).collect();
            return PluginOutcome::error(format!(
                "unknown tool `{name}`; available tools: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        if let Err(problems) = plugin.validate(arguments) {
            return PluginOutcome::error(format!("invalid parameters for `{name}`: {problems}"));
        }
        match plugin.run(arguments.clone()) {
            Ok(Value::String(text)) => PluginOutcome {
                content: text,
                is_error: false,
            },
            Ok(value) => PluginOutcome {
                content: chat::to_python_json(&value).expect("JSON values always serialise"),
                is_error: false,
            },
            Err(e) => PluginOutcome::error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> Plugin {
        Plugin::new(
            "echo",
            "Repeats the text.",
            json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
            |args| Ok(args["text"].clone()),
        )
        .unwrap()
    }

    #[test]
    fn names_and_schemas_are_checked_at_registration() {
        let ok = |_: Value| -> PluginResult { Ok(Value::Null) };
        assert!(matches!(
            Plugin::new("", "d", json!({}), ok),
            Err(PluginSpecError::InvalidName(_))
        ));
        assert!(matches!(
            Plugin::new("bad name", "d", json!({}), ok),
            Err(PluginSpecError::InvalidName(_))
        ));
        assert!(matches!(
            Plugin::new("f", "d", json!([1]), ok),
            Err(PluginSpecError::InvalidSchema { .. })
        ));
        assert!(matches!(
            Plugin::new("f", "d", json!({"type": "no-such-type"}), ok),
            Err(PluginSpecError::InvalidSchema { .. })
        ));
        let registry = PluginRegistry::new().with(echo()).unwrap();
        assert!(matches!(
            registry.with(echo()),
            Err(PluginSpecError::Duplicate(_))
        ));
    }

    #[test]
    fn the_system_turn_lists_the_function_objects() {
        let registry = PluginRegistry::new().with(echo()).unwrap();
        let text = chat::render_message(&registry.system_message().unwrap()).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system name=<|plugin|>\n[{\"name\": \"echo\", \"description\": \"Repeats the text.\", \
             \"parameters\": {\"type\": \"object\", \"properties\": {\"text\": {\"type\": \"string\"}}, \
             \"required\": [\"text\"]}}]<|im_end|>\n"
        );
        assert!(PluginRegistry::new().system_message().is_none());
    }

    #[test]
    fn failures_become_error_results() {
        let failing = Plugin::new("fail", "Fails.", json!({"type": "object"}), |_| {
            Err(PluginError::new("database offline"))
        })
        .unwrap();
        let panicking = Plugin::new("boom", "Panics.", json!({"type": "object"}), |_| {
            panic!("handler bug")
        })
        .unwrap();
        let slow = Plugin::new("slow", "Sleeps.", json!({"type": "object"}), |_| {
            std::thread::sleep(Duration::from_secs(5));
            Ok(Value::Null)
        })
        .unwrap()
        .with_timeout(Duration::from_millis(50));
        let registry = PluginRegistry::new()
            .with(echo())
            .unwrap()
            .with(failing)
            .unwrap()
            .with(panicking)
            .unwrap()
            .with(slow)
            .unwrap();

        let ok = registry.call("echo", &json!({"text": "hi"}));
        assert_eq!(
            ok,
            PluginOutcome {
                content: "hi".into(),
                is_error: false
            }
        );

        let unknown = registry.call("nope", &json!({}));
        assert!(unknown.is_error);
        assert!(
            unknown.content.contains("unknown tool `nope`"),
            "{}",
            unknown.content
        );
        assert!(unknown.content.contains("echo, fail, boom, slow"));

        let missing = registry.call("echo", &json!({}));
        assert!(missing.is_error);
        assert!(
            missing
                .content
                .contains("\\\"text\\\" is a required property"),
            "{}",
            missing.content
        );
        let wrong_type = registry.call("echo", &json!({"text": 3}));
        assert!(
            wrong_type.content.contains("/text"),
            "{}",
            wrong_type.content
        );

        assert_eq!(
            registry.call("fail", &json!({})).content,
            "{\"error\": \"database offline\"}"
        );
        let panicked = registry.call("boom", &json!({}));
        assert!(panicked.is_error && panicked.content.contains("panicked"));
        let started = std::time::Instant::now();
        let timed_out = registry.call("slow", &json!({}));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(timed_out.is_error && timed_out.content.contains("did not answer"));
    }
}
