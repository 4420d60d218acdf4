//! The streaming InternLM2 tool-call parser: text deltas in (special-token text such as
//! `<|action_start|><|plugin|>` kept in the text), content deltas and complete tool calls out.
//!
//! One parser serves every path: a server's streaming and non-streaming responses, the
//! serving engine, [`parse_assistant`](super::parse_assistant) and
//! [`parse_assistant_lenient`](super::parse_assistant_lenient) all feed text to a
//! [`ToolCallParser`], so they cannot disagree about what a turn contains. Whatever way the
//! text is cut into deltas, the parser yields the same content and the same calls (a test
//! feeds every split).
//!
//! - Text outside `<|action_start|>` ... `<|action_end|>` is content. The parser holds back
//!   only a tail that could still become a marker (`<|act`), so content streams as it comes.
//! - An action is parsed when its `<|action_end|>` arrives; a turn may hold several.
//! - A call that cannot be used — broken JSON, no name, an unknown action target, a function
//!   the request did not declare, no `<|action_end|>` before the turn ends — is
//!   [`Parsed::Rejected`]: its exact text plus the reason. Servers show that text as content;
//!   [`parse_assistant`](super::parse_assistant) turns the reason into an error.
//! - `<|im_end|>` ends the turn: nothing after it is read.
//!
//! ```
//! use internlm2::chat::{Parsed, ToolCallParser, ToolSet};
//! let mut parser = ToolCallParser::new(ToolSet::functions(["weather"]));
//! let mut items = Vec::new();
//! for delta in ["Let me ", "check.<|action_start|>", "<|plugin|>\n{\"name\": \"weather\", ",
//!               "\"parameters\": {\"city\": \"Paris\"}}<|action_end|>"] {
//!     items.extend(parser.push(delta));
//! }
//! items.extend(parser.finish());
//! let text: String = items.iter().filter_map(Parsed::text).collect();
//! assert_eq!(text, "Let me check.");
//! assert!(matches!(items.last(), Some(Parsed::Call(_))));
//! ```

use super::{ACTION_END, ACTION_START, IM_END, ToolCall, parse_action};
use crate::error::ChatError;

/// Which tools a turn may call: calls to anything else are [`Parsed::Rejected`] with
/// [`ChatError::UndeclaredTool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSet {
    /// Function names allowed in plugin calls; `None` = any name.
    functions: Option<Vec<String>>,
    /// Whether code-interpreter calls are allowed.
    interpreter: bool,
}

impl Default for ToolSet {
    /// [`ToolSet::any`].
    fn default() -> Self {
        Self::any()
    }
}

impl ToolSet {
    /// Any function name, and the code interpreter.
    pub fn any() -> Self {
        Self {
            functions: None,
            interpreter: true,
        }
    }

    /// No tools at all: every call is rejected (and stays text on a server).
    pub fn none() -> Self {
        Self {
            functions: Some(Vec::new()),
            interpreter: false,
        }
    }

    /// Only these functions (the `tools` of an OpenAI request), no interpreter.
    pub fn functions<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self {
            functions: Some(names.into_iter().map(Into::into).collect()),
            interpreter: false,
        }
    }

    /// Allows or forbids code-interpreter calls.
    pub fn with_interpreter(mut self, allowed: bool) -> Self {
        self.interpreter = allowed;
        self
    }

    /// Whether `call` is one of the offered tools; `Err` names the tool that is not.
    pub fn check(&self, call: &ToolCall) -> Result<(), ChatError> {
        match call {
            ToolCall::Plugin { name, .. } => match &self.functions {
                Some(names) if !names.iter().any(|n| n == name) => {
                    Err(ChatError::UndeclaredTool { name: name.clone() })
                }
                _ => Ok(()),
            },
            ToolCall::Interpreter { .. } if !self.interpreter => Err(ChatError::UndeclaredTool {
                name: "<|interpreter|>".into(),
            }),
            ToolCall::Interpreter { .. } => Ok(()),
        }
    }
}

/// One piece of a parsed assistant turn, in the order the model wrote it.
#[derive(Debug)]
pub enum Parsed {
    /// Content text (possibly empty of meaning, e.g. a newline between two calls).
    Text(String),
    /// A complete, well-formed call to an offered tool.
    Call(ToolCall),
    /// An action that is not a usable call: its exact text (markers included) and why.
    Rejected {
        /// The text as generated, from `<|action_start|>` through `<|action_end|>` (or the end).
        text: String,
        /// Why it is not a call.
        error: ChatError,
    },
}

impl Parsed {
    /// The text this piece shows as content: `Text` and `Rejected` have some, `Call` none.
    pub fn text(&self) -> Option<&str> {
        match self {
            Parsed::Text(text) | Parsed::Rejected { text, .. } => Some(text),
            Parsed::Call(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside an action.
    Text,
    /// After `<|action_start|>`, waiting for `<|action_end|>`.
    Action,
    /// After `<|im_end|>`: the turn is over.
    Ended,
}

/// The incremental parser; see the module docs.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    tools: ToolSet,
    state: State,
    /// Text: a held-back tail that may start a marker. Action: the action text so far.
    pending: String,
}

impl ToolCallParser {
    /// A parser accepting calls to `tools`.
    pub fn new(tools: ToolSet) -> Self {
        Self {
            tools,
            state: State::Text,
            pending: String::new(),
        }
    }

    /// The tools this parser accepts.
    pub fn tools(&self) -> &ToolSet {
        &self.tools
    }

    /// Whether an action is open (text is being held until its `<|action_end|>`).
    pub fn in_call(&self) -> bool {
        self.state == State::Action
    }

    /// Feeds a text delta; returns what became final (adjacent text merged).
    pub fn push(&mut self, delta: &str) -> Vec<Parsed> {
        let mut out = Vec::new();
        if self.state == State::Ended {
            return out;
        }
        self.pending.push_str(delta);
        loop {
            match self.state {
                State::Ended => {
                    self.pending.clear();
                    break;
                }
                State::Text => {
                    let action = self.pending.find(ACTION_START);
                    let end = self.pending.find(IM_END);
                    match (action, end) {
                        (Some(a), e) if e.is_none_or(|e| a < e) => {
                            emit_text(&mut out, &self.pending[..a]);
                            self.pending.drain(..a + ACTION_START.len());
                            self.state = State::Action;
                        }
                        (_, Some(e)) => {
                            emit_text(&mut out, &self.pending[..e]);
                            self.pending.clear();
                            self.state = State::Ended;
                        }
                        (None, None) => {
                            let keep = marker_prefix_len(&self.pending, &[ACTION_START, IM_END]);
                            let cut = self.pending.len() - keep;
                            emit_text(&mut out, &self.pending[..cut]);
                            self.pending.drain(..cut);
                            break;
                        }
                        (Some(_), None) => unreachable!("covered by the first arm"),
                    }
                }
                State::Action => {
                    let close = self.pending.find(ACTION_END);
                    let end = self.pending.find(IM_END);
                    match (close, end) {
                        (Some(c), e) if e.is_none_or(|e| c < e) => {
                            let body = &self.pending[..c];
                            let raw = format!("{ACTION_START}{body}{ACTION_END}");
                            out.push(self.classify(body, raw));
                            self.pending.drain(..c + ACTION_END.len());
                            self.state = State::Text;
                        }
                        (_, Some(e)) => {
                            let raw = format!("{ACTION_START}{}", &self.pending[..e]);
                            out.push(Parsed::Rejected {
                                text: raw,
                                error: ChatError::UnterminatedAction,
                            });
                            self.pending.clear();
                            self.state = State::Ended;
                        }
                        (None, None) => break,
                        (Some(_), None) => unreachable!("covered by the first arm"),
                    }
                }
            }
        }
        out
    }

    /// Ends the turn: flushes held-back text; an open action is rejected as unterminated.
    pub fn finish(&mut self) -> Vec<Parsed> {
        let pending = std::mem::take(&mut self.pending);
        let state = std::mem::replace(&mut self.state, State::Ended);
        let mut out = Vec::new();
        match state {
            State::Text => emit_text(&mut out, &pending),
            State::Action => out.push(Parsed::Rejected {
                text: format!("{ACTION_START}{pending}"),
                error: ChatError::UnterminatedAction,
            }),
            State::Ended => {}
        }
        out
    }

    fn classify(&self, body: &str, raw: String) -> Parsed {
        match parse_action(body).and_then(|call| self.tools.check(&call).map(|()| call)) {
            Ok(call) => Parsed::Call(call),
            Err(error) => Parsed::Rejected { text: raw, error },
        }
    }
}

/// Appends text, merging with a preceding `Text` (empty text is dropped).
fn emit_text(out: &mut Vec<Parsed>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Parsed::Text(last)) = out.last_mut() {
        last.push_str(text);
    } else {
        out.push(Parsed::Text(text.to_string()));
    }
}

/// The length of the longest tail of `text` that is a proper prefix of one of `markers`.
fn marker_prefix_len(text: &str, markers: &[&str]) -> usize {
    let mut best = 0;
    for marker in markers {
        for len in (1..marker.len()).rev() {
            if len <= best {
                break;
            }
            if text.len() >= len
                && text.is_char_boundary(text.len() - len)
                && marker.starts_with(&text[text.len() - len..])
            {
                best = len;
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Message, parse_assistant, parse_assistant_lenient};
    use serde_json::json;

    fn weather(city: &str) -> ToolCall {
        ToolCall::Plugin {
            name: "weather".into(),
            parameters: json!({"city": city}),
        }
    }

    fn call_text(body: &str) -> String {
        format!("<|action_start|><|plugin|>\n{body}<|action_end|>")
    }

    /// Collects items the way a server builds its final message.
    fn collect(items: Vec<Parsed>) -> Message {
        let mut message = Message::assistant("");
        for item in items {
            match item {
                Parsed::Call(call) => message.push_call(call),
                other => message.content.push_str(other.text().unwrap()),
            }
        }
        message
    }

    fn feed(parser: &mut ToolCallParser, deltas: &[&str]) -> Vec<Parsed> {
        let mut items = Vec::new();
        for d in deltas {
            items.extend(parser.push(d));
        }
        items.extend(parser.finish());
        items
    }

    #[test]
    fn several_calls_in_one_turn_with_text_between() {
        let text = format!(
            "Two cities.{}\n{}<|im_end|>ignored",
            call_text(r#"{"name": "weather", "parameters": {"city": "Paris"}}"#),
            call_text(r#"{"name": "weather", "parameters": {"city": "Rome"}}"#),
        );
        let m = parse_assistant(&text).unwrap();
        assert_eq!(m.content, "Two cities.\n");
        assert_eq!(
            m.calls().cloned().collect::<Vec<_>>(),
            vec![weather("Paris"), weather("Rome")]
        );
        // Rendering the turn and parsing it back gives the same calls.
        let rendered = crate::chat::render_message(&Message::assistant_calls(
            "",
            vec![weather("Paris"), weather("Rome")],
        ))
        .unwrap();
        let body = rendered.strip_prefix("<|im_start|>assistant\n").unwrap();
        let back = parse_assistant(body).unwrap();
        assert_eq!(back.content, "");
        assert_eq!(back.calls().count(), 2);
    }

    #[test]
    fn every_split_of_the_text_gives_the_same_message() {
        let text = format!(
            "Héllo 你好 <|act{}mid <|im_{}{}tail<|im_end|>after",
            call_text(r#"{"name": "weather", "parameters": {"city": "Paris"}}"#),
            call_text(r#"{"name": "nope", "parameters": {}}"#),
            call_text("{broken"),
        );
        let tools = ToolSet::functions(["weather"]);
        let whole = parse_assistant_lenient(&text, &tools);
        assert_eq!(
            whole.calls().cloned().collect::<Vec<_>>(),
            vec![weather("Paris")]
        );
        assert!(
            whole
                .content
                .starts_with("Héllo 你好 <|actmid <|im_<|action_start|>")
        );
        assert!(whole.content.ends_with("{broken<|action_end|>tail"));
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &bounds {
            for &j in bounds.iter().filter(|&&j| j >= i).step_by(7) {
                let mut parser = ToolCallParser::new(tools.clone());
                let items = feed(&mut parser, &[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(collect(items), whole, "split at {i}, {j}");
            }
        }
        // One character at a time, as a token stream would.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let deltas: Vec<&str> = chars.iter().map(String::as_str).collect();
        let mut parser = ToolCallParser::new(tools);
        assert_eq!(collect(feed(&mut parser, &deltas)), whole);
    }

    #[test]
    fn content_streams_before_the_turn_ends() {
        let mut parser = ToolCallParser::new(ToolSet::any());
        let items = parser.push("Hello, wor");
        assert!(matches!(&items[..], [Parsed::Text(t)] if t == "Hello, wor"));
        // A possible marker start is held back, then released when it turns out not to be one.
        assert!(
            parser
                .push("ld <|ac")
                .iter()
                .all(|p| p.text() == Some("ld "))
        );
        let items = parser.push("ross");
        assert!(matches!(&items[..], [Parsed::Text(t)] if t == "<|across"));
        // Inside a call nothing is emitted until the call is complete.
        assert!(
            parser
                .push("<|action_start|><|plugin|>\n{\"name\": ")
                .is_empty()
        );
        assert!(parser.in_call());
        let items =
            parser.push("\"weather\", \"parameters\": {\"city\": \"Paris\"}}<|action_end|>");
        assert!(matches!(&items[..], [Parsed::Call(c)] if *c == weather("Paris")));
    }

    #[test]
    fn unusable_calls_are_rejected_with_their_text() {
        let tools = ToolSet::functions(["weather"]);
        let cases = [
            (call_text("{not json"), "MalformedPluginCall"),
            (
                call_text(r#"{"name": "search", "parameters": {}}"#),
                "UndeclaredTool",
            ),
            (
                "<|action_start|><|interpreter|>\n```python\nprint(1)\n```<|action_end|>".into(),
                "UndeclaredTool",
            ),
            (
                "<|action_start|>search\n{}<|action_end|>".into(),
                "UnknownAction",
            ),
            (
                "<|action_start|><|plugin|>\n{\"name\": \"weather\"".into(),
                "UnterminatedAction",
            ),
        ];
        for (text, kind) in cases {
            let mut parser = ToolCallParser::new(tools.clone());
            let items = feed(&mut parser, &[&text]);
            match &items[..] {
                [Parsed::Rejected { text: raw, error }] => {
                    assert_eq!(raw, &text);
                    assert!(
                        format!("{error:?}").starts_with(kind),
                        "{error:?} for {text}"
                    );
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // An action cut by <|im_end|> is unterminated; what follows is not read.
        let mut parser = ToolCallParser::new(tools);
        let items = feed(&mut parser, &["a<|action_start|><|plugin|>\n{<|im_end|>b"]);
        assert!(
            matches!(&items[..], [Parsed::Text(a), Parsed::Rejected { text, error: ChatError::UnterminatedAction }]
            if a == "a" && text == "<|action_start|><|plugin|>\n{")
        );
        assert!(parser.push("more").is_empty());
    }

    #[test]
    fn tool_sets() {
        let i = ToolCall::Interpreter { code: "1".into() };
        assert!(ToolSet::any().check(&i).is_ok());
        assert!(ToolSet::any().check(&weather("x")).is_ok());
        assert!(ToolSet::none().check(&weather("x")).is_err());
        assert!(ToolSet::functions(["weather"]).check(&i).is_err());
        assert!(
            ToolSet::functions(["weather"])
                .with_interpreter(true)
                .check(&i)
                .is_ok()
        );
    }
}
