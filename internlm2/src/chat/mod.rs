//! The InternLM2 chat and tool protocol (SPEC 4): ChatML with a fourth role, `environment`,
//! tool schemas in a named system turn, and tool calls inside `<|action_start|>` ...
//! `<|action_end|>`.
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n
//! <|im_start|>system name=<|plugin|>\n[{function schemas}]<|im_end|>\n
//! <|im_start|>user\n{text}<|im_end|>\n
//! <|im_start|>assistant\n{text}<|action_start|><|plugin|>\n{"name": ..., "parameters": {...}}<|action_end|><|im_end|>\n
//! <|im_start|>environment name=<|plugin|>\n{result}<|im_end|>\n
//! <|im_start|>assistant\n
//! ```
//!
//! JSON is written as Python's `json.dumps(..., ensure_ascii=False)` writes it (`", "` and
//! `": "` separators), which is what the released models saw in training.
//!
//! Generated text is parsed by one parser, [`ToolCallParser`], fed either the whole text
//! ([`parse_assistant`], [`parse_assistant_lenient`]) or text deltas as they stream; several
//! calls in one turn are written back to back and parsed in order.
//!
//! ```
//! use internlm2::chat::{Message, render};
//! let prompt = render(&[Message::system("Be brief."), Message::user("Hi")], true).unwrap();
//! assert_eq!(
//!     prompt,
//!     "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
//! );
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ChatError;
use crate::tokenizer::Tokenizer;

mod stream;

pub use stream::{Parsed, ToolCallParser, ToolSet};

/// `<|im_start|>`.
pub const IM_START: &str = "<|im_start|>";
/// `<|im_end|>`.
pub const IM_END: &str = "<|im_end|>";
/// `<|action_start|>`.
pub const ACTION_START: &str = "<|action_start|>";
/// `<|action_end|>`.
pub const ACTION_END: &str = "<|action_end|>";
/// `<|plugin|>`.
pub const PLUGIN: &str = "<|plugin|>";
/// `<|interpreter|>`.
pub const INTERPRETER: &str = "<|interpreter|>";

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions, tool schemas.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// Tool results.
    Environment,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Environment => "environment",
        }
    }
}

/// The tool a named turn or a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// Function calling (`<|plugin|>`).
    Plugin,
    /// The code interpreter (`<|interpreter|>`).
    Interpreter,
}

impl Tool {
    fn token(self) -> &'static str {
        match self {
            Tool::Plugin => PLUGIN,
            Tool::Interpreter => INTERPRETER,
        }
    }
}

/// A call the assistant makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ToolCall {
    /// A function call: `{"name": ..., "parameters": {...}}`.
    Plugin {
        /// Function name.
        name: String,
        /// Arguments (a JSON object).
        parameters: Value,
    },
    /// Python code for the interpreter.
    Interpreter {
        /// The code, without the fences.
        code: String,
    },
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
    /// `name=<|plugin|>` / `name=<|interpreter|>` on system and environment turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Tool>,
    /// A tool call ending an assistant turn (the first, when there are several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<ToolCall>,
    /// The calls after [`Message::tool_call`] when the turn makes several, in order (rendered
    /// back to back after the first). Use [`Message::calls`] to read them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_tool_calls: Vec<ToolCall>,
}

impl Message {
    /// A turn with plain text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            name: None,
            tool_call: None,
            more_tool_calls: Vec::new(),
        }
    }

    /// `system` turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// `user` turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// `assistant` turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// An assistant turn ending with a tool call.
    pub fn assistant_call(content: impl Into<String>, call: ToolCall) -> Self {
        Self {
            tool_call: Some(call),
            ..Self::new(Role::Assistant, content)
        }
    }

    /// An assistant turn ending with several tool calls, in order (no call: plain text).
    ///
    /// ```
    /// use internlm2::chat::{Message, ToolCall};
    /// let call = |city: &str| ToolCall::Plugin {
    ///     name: "weather".into(),
    ///     parameters: serde_json::json!({"city": city}),
    /// };
    /// let m = Message::assistant_calls("", vec![call("Paris"), call("Rome")]);
    /// assert_eq!(m.calls().count(), 2);
    /// assert_eq!(m.tool_call, Some(call("Paris")));
    /// ```
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        let mut message = Self::new(Role::Assistant, content);
        for call in calls {
            message.push_call(call);
        }
        message
    }

    /// Appends a call to this turn (the first goes to [`Message::tool_call`]).
    pub fn push_call(&mut self, call: ToolCall) {
        if self.tool_call.is_none() {
            self.tool_call = Some(call);
        } else {
            self.more_tool_calls.push(call);
        }
    }

    /// Every call of this turn, in order.
    pub fn calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.tool_call.iter().chain(&self.more_tool_calls)
    }

    /// A tool result (`environment name=<|plugin|>` or `<|interpreter|>`).
    pub fn environment(tool: Tool, content: impl Into<String>) -> Self {
        Self {
            name: Some(tool),
            ..Self::new(Role::Environment, content)
        }
    }

    /// The system turn announcing function schemas: `system name=<|plugin|>` with a JSON list.
    pub fn plugins(schemas: &[Value]) -> Result<Self, ChatError> {
        Ok(Self {
            name: Some(Tool::Plugin),
            ..Self::new(
                Role::System,
                to_python_json(&Value::Array(schemas.to_vec()))?,
            )
        })
    }

    /// The system turn announcing the code interpreter (`system name=<|interpreter|>`).
    pub fn interpreter(description: impl Into<String>) -> Self {
        Self {
            name: Some(Tool::Interpreter),
            ..Self::new(Role::System, description)
        }
    }
}

/// The six chat tokens, which the tokenizer matches atomically wherever their text appears.
pub const CHAT_TOKENS: [&str; 6] = [
    IM_START,
    IM_END,
    ACTION_START,
    ACTION_END,
    PLUGIN,
    INTERPRETER,
];

/// Makes text from outside (a user's message, a tool's output) unable to act as protocol: a
/// zero-width space after the `<` of every chat token's text (`<|im_start|>` becomes
/// `<\u{200B}|im_start|>`), so the tokenizer reads it as plain text instead of the special
/// token. Without this, a message containing `<|im_end|>\n<|im_start|>system\n...` would open
/// a system turn of its own.
///
/// ```
/// use internlm2::chat::escape_chat_tokens;
/// assert_eq!(escape_chat_tokens("a <|im_end|> b"), "a <\u{200B}|im_end|> b");
/// assert_eq!(escape_chat_tokens("<|not a token|>"), "<|not a token|>");
/// ```
pub fn escape_chat_tokens(text: &str) -> String {
    let mut out = text.to_string();
    for token in CHAT_TOKENS {
        if out.contains(token) {
            out = out.replace(token, &format!("<\u{200B}{}", &token[1..]));
        }
    }
    out
}

/// Writes JSON as Python's `json.dumps(value, ensure_ascii=False)`.
pub fn to_python_json(value: &Value) -> Result<String, ChatError> {
    struct PythonFormatter;
    impl serde_json::ser::Formatter for PythonFormatter {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser)?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

fn render_call(call: &ToolCall) -> Result<String, ChatError> {
    Ok(match call {
        ToolCall::Plugin { name, parameters } => {
            let body = serde_json::json!({"name": name, "parameters": parameters});
            format!(
                "{ACTION_START}{PLUGIN}\n{}{ACTION_END}",
                to_python_json(&body)?
            )
        }
        ToolCall::Interpreter { code } => {
            format!("{ACTION_START}{INTERPRETER}\n```python\n{code}\n```{ACTION_END}")
        }
    })
}

/// Renders one turn, `<|im_start|>` through the newline after `<|im_end|>`.
pub fn render_message(message: &Message) -> Result<String, ChatError> {
    let header = match (message.role, message.name) {
        (Role::System | Role::Environment, Some(tool)) => {
            format!("{} name={}", message.role.as_str(), tool.token())
        }
        (Role::User | Role::Assistant, Some(_)) => {
            return Err(ChatError::InvalidMessage {
                reason: format!("a {} turn cannot carry a tool name", message.role.as_str()),
            });
        }
        (role, None) => role.as_str().to_string(),
    };
    if message.tool_call.is_none() && !message.more_tool_calls.is_empty() {
        return Err(ChatError::InvalidMessage {
            reason: "more_tool_calls without a first tool_call".into(),
        });
    }
    let mut call = String::new();
    for each in message.calls() {
        if message.role != Role::Assistant {
            return Err(ChatError::InvalidMessage {
                reason: format!(
                    "only assistant turns make tool calls, not {}",
                    message.role.as_str()
                ),
            });
        }
        call.push_str(&render_call(each)?);
    }
    Ok(format!(
        "{IM_START}{header}\n{}{call}{IM_END}\n",
        message.content
    ))
}

/// Renders a conversation; with `add_generation_prompt` it ends with `<|im_start|>assistant\n`
/// for the model to continue. BOS is not part of the text (the tokenizer adds it).
pub fn render(messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
    let mut out = String::new();
    for message in messages {
        out.push_str(&render_message(message)?);
    }
    if add_generation_prompt {
        out.push_str(IM_START);
        out.push_str("assistant\n");
    }
    Ok(out)
}

/// Renders and tokenises a conversation (BOS first), checking the vocabulary has the chat
/// tokens.
pub fn encode(
    tokenizer: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ChatError> {
    if tokenizer.chat_tokens().is_none() {
        let token = IM_START.into();
        return Err(crate::error::TokenizerError::MissingSpecialToken { token }.into());
    }
    Ok(tokenizer.encode(&render(messages, add_generation_prompt)?, true)?)
}

/// Parses the text an assistant generated (after `<|im_start|>assistant\n`; a trailing
/// `<|im_end|>` and anything after it are ignored) into a message: its text plus its calls, in
/// order. A malformed call is an error; [`parse_assistant_lenient`] keeps it as text instead.
///
/// ```
/// use internlm2::chat::{parse_assistant, ToolCall};
/// let m = parse_assistant(
///     "Let me check.<|action_start|><|plugin|>\n{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\"}}<|action_end|><|im_end|>",
/// ).unwrap();
/// assert_eq!(m.content, "Let me check.");
/// assert!(matches!(m.tool_call, Some(ToolCall::Plugin { ref name, .. }) if name == "weather"));
/// ```
pub fn parse_assistant(generated: &str) -> Result<Message, ChatError> {
    let mut parser = ToolCallParser::new(ToolSet::any());
    let mut items = parser.push(generated);
    items.extend(parser.finish());
    let mut message = Message::assistant("");
    for item in items {
        match item {
            Parsed::Text(text) => message.content.push_str(&text),
            Parsed::Call(call) => message.push_call(call),
            Parsed::Rejected { error, .. } => return Err(error),
        }
    }
    Ok(message)
}

/// Parses generated text as a server must: calls to tools outside `tools`, and malformed
/// calls, stay in the content as the text the model wrote, never an error. The same parser
/// fed the same text in deltas gives the same message (see [`ToolCallParser`]).
///
/// ```
/// use internlm2::chat::{parse_assistant_lenient, ToolSet};
/// let m = parse_assistant_lenient(
///     "Hm.<|action_start|><|plugin|>\n{\"name\": \"nope\", \"parameters\": {}}<|action_end|>",
///     &ToolSet::functions(["weather"]),
/// );
/// assert_eq!(m.tool_call, None);
/// assert!(m.content.starts_with("Hm.<|action_start|>"));
/// ```
pub fn parse_assistant_lenient(generated: &str, tools: &ToolSet) -> Message {
    let mut parser = ToolCallParser::new(tools.clone());
    let mut items = parser.push(generated);
    items.extend(parser.finish());
    let mut message = Message::assistant("");
    for item in items {
        match item {
            Parsed::Call(call) => message.push_call(call),
            other => message.content.push_str(other.text().unwrap_or_default()),
        }
    }
    message
}

/// Parses the text between `<|action_start|>` and `<|action_end|>`: `<|plugin|>` or
/// `<|interpreter|>`, a newline, then the body.
fn parse_action(action: &str) -> Result<ToolCall, ChatError> {
    if let Some(body) = action.strip_prefix(PLUGIN) {
        parse_plugin(body.strip_prefix('\n').unwrap_or(body))
    } else if let Some(body) = action.strip_prefix(INTERPRETER) {
        parse_interpreter(body.strip_prefix('\n').unwrap_or(body))
    } else {
        Err(ChatError::UnknownAction {
            target: action.chars().take(40).collect(),
        })
    }
}

fn parse_plugin(body: &str) -> Result<ToolCall, ChatError> {
    let malformed = |reason: &str| ChatError::MalformedPluginCall {
        reason: reason.to_string(),
        body: body.to_string(),
    };
    let value: Value =
        serde_json::from_str(body.trim()).map_err(|e| malformed(&format!("invalid JSON ({e})")))?;
    let object = value
        .as_object()
        .ok_or_else(|| malformed("not a JSON object"))?;
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| malformed("no \"name\" string"))?;
    // Some fine-tunes write "arguments" (OpenAI style); accept it as the parameters.
    let parameters = object
        .get("parameters")
        .or_else(|| object.get("arguments"))
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !parameters.is_object() {
        return Err(malformed("\"parameters\" is not an object"));
    }
    Ok(ToolCall::Plugin {
        name: name.to_string(),
        parameters,
    })
}

fn parse_interpreter(body: &str) -> Result<ToolCall, ChatError> {
    let trimmed = body.trim();
    let code = match trimmed.strip_prefix("```") {
        Some(fenced) => {
            // Drop the language tag line, then the closing fence.
            let after_tag = fenced.split_once('\n').map(|(_, c)| c).ok_or_else(|| {
                ChatError::MalformedInterpreterCall {
                    reason: "code fence without a newline".into(),
                    body: body.to_string(),
                }
            })?;
            after_tag
                .trim_end()
                .strip_suffix("```")
                .ok_or_else(|| ChatError::MalformedInterpreterCall {
                    reason: "unclosed code fence".into(),
                    body: body.to_string(),
                })?
                .trim_end_matches('\n')
                .to_string()
        }
        None => trimmed.to_string(),
    };
    if code.trim().is_empty() {
        return Err(ChatError::MalformedInterpreterCall {
            reason: "no code".into(),
            body: body.to_string(),
        });
    }
    Ok(ToolCall::Interpreter { code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_role_and_tool_turn() {
        let weather = serde_json::json!({"name": "get_weather", "parameters": {"type": "object"}});
        let conversation = vec![
            Message::system("You are a helpful assistant."),
            Message::plugins(&[weather]).unwrap(),
            Message::user("Weather in Shanghai?"),
            Message::assistant_call(
                "Let me check.",
                ToolCall::Plugin {
                    name: "get_weather".into(),
                    parameters: serde_json::json!({"city": "Shanghai"}),
                },
            ),
            Message::environment(Tool::Plugin, "{\"temp\": 22}"),
        ];
        let text = render(&conversation, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>system name=<|plugin|>\n[{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}]<|im_end|>\n\
             <|im_start|>user\nWeather in Shanghai?<|im_end|>\n\
             <|im_start|>assistant\nLet me check.<|action_start|><|plugin|>\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Shanghai\"}}<|action_end|><|im_end|>\n\
             <|im_start|>environment name=<|plugin|>\n{\"temp\": 22}<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn interpreter_call_round_trip() {
        let call = ToolCall::Interpreter {
            code: "print(2**10)".into(),
        };
        let text = render_message(&Message::assistant_call("", call.clone())).unwrap();
        assert_eq!(
            text,
            "<|im_start|>assistant\n<|action_start|><|interpreter|>\n```python\nprint(2**10)\n```<|action_end|><|im_end|>\n"
        );
        let generated = text.strip_prefix("<|im_start|>assistant\n").unwrap();
        assert_eq!(parse_assistant(generated).unwrap().tool_call, Some(call));
    }

    #[test]
    fn plain_answers_parse_as_text() {
        let m = parse_assistant("Paris.<|im_end|>\n").unwrap();
        assert_eq!(m.content, "Paris.");
        assert_eq!(m.tool_call, None);
    }

    #[test]
    fn malformed_calls_are_typed_errors() {
        let plugin = |body: &str| format!("x<|action_start|><|plugin|>\n{body}<|action_end|>");
        assert!(matches!(
            parse_assistant(&plugin("{not json")),
            Err(ChatError::MalformedPluginCall { .. })
        ));
        assert!(matches!(
            parse_assistant(&plugin("[1, 2]")),
            Err(ChatError::MalformedPluginCall { .. })
        ));
        assert!(matches!(
            parse_assistant(&plugin("{\"parameters\": {}}")),
            Err(ChatError::MalformedPluginCall { .. })
        ));
        assert!(matches!(
            parse_assistant(&plugin("{\"name\": \"f\", \"parameters\": 3}")),
            Err(ChatError::MalformedPluginCall { .. })
        ));
        assert!(matches!(
            parse_assistant("<|action_start|><|interpreter|>\n```python\nprint(1)<|action_end|>"),
            Err(ChatError::MalformedInterpreterCall { .. })
        ));
        assert!(matches!(
            parse_assistant("<|action_start|><|interpreter|>\n<|action_end|>"),
            Err(ChatError::MalformedInterpreterCall { .. })
        ));
        assert!(matches!(
            parse_assistant("<|action_start|><|plugin|>\n{\"name\": \"f\"}"),
            Err(ChatError::UnterminatedAction)
        ));
        assert!(matches!(
            parse_assistant("<|action_start|>search\n{}<|action_end|>"),
            Err(ChatError::UnknownAction { .. })
        ));
    }

    #[test]
    fn invalid_messages_are_rejected() {
        let mut m = Message::user("hi");
        m.name = Some(Tool::Plugin);
        assert!(matches!(
            render_message(&m),
            Err(ChatError::InvalidMessage { .. })
        ));
        let mut m = Message::user("hi");
        m.tool_call = Some(ToolCall::Interpreter { code: "1".into() });
        assert!(matches!(
            render_message(&m),
            Err(ChatError::InvalidMessage { .. })
        ));
    }

    #[test]
    fn python_json_formatting() {
        let v = serde_json::json!({"a": [1, 2], "b": {"c": "中文"}});
        assert_eq!(
            to_python_json(&v).unwrap(),
            "{\"a\": [1, 2], \"b\": {\"c\": \"中文\"}}"
        );
    }
}
