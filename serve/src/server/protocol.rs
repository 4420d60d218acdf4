//! The OpenAI wire format: request bodies of `/v1/chat/completions` and `/v1/completions`
//! and the JSON objects we answer with (completions, stream chunks, models, usage).
//!
//! Request structs keep every field the OpenAI API defines that we act on; anything else a
//! client sends lands in `unknown` and is refused with a 400 naming it (never silently
//! ignored).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// A single stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StopField {
    /// The strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send one last chunk with the usage (and `"usage": null` on the others).
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling parameters both endpoints share, as one value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingParams {
    /// `[0, 2]`; 0 = greedy.
    pub temperature: Option<f32>,
    /// `(0, 1]`.
    pub top_p: Option<f32>,
    /// `>= 0` (0 or -1 = off); an extension of vLLM and LMDeploy.
    pub top_k: Option<i64>,
    /// `[0, 1]`; an extension.
    pub min_p: Option<f32>,
    /// `> 0` (1 = off); an extension.
    pub repetition_penalty: Option<f32>,
    /// Most new tokens.
    pub max_tokens: Option<u64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Seed of the request's sampler.
    pub seed: Option<i64>,
    /// Choices per prompt.
    pub n: Option<u64>,
    /// End-user id (logged, for abuse tracing).
    pub user: Option<String>,
    /// Answer as Server-Sent Events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Only 0 is supported (we have no presence penalty).
    pub presence_penalty: Option<f32>,
    /// Only 0 is supported (we have no frequency penalty).
    pub frequency_penalty: Option<f32>,
    /// Only an empty map is supported.
    pub logit_bias: Option<Map<String, Value>>,
}

/// Declares a request struct with the shared sampling fields appended (kept as plain fields,
/// not `#[serde(flatten)]`, so that a type error still names its field) and a `sampling()`
/// accessor.
macro_rules! request_with_sampling {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($body)*
            /// `[0, 2]`; 0 = greedy.
            pub temperature: Option<f32>,
            /// `(0, 1]`.
            pub top_p: Option<f32>,
            /// `>= 0` (0 or -1 = off); an extension of vLLM and LMDeploy.
            pub top_k: Option<i64>,
            /// `[0, 1]`; an extension.
            pub min_p: Option<f32>,
            /// `> 0` (1 = off); an extension.
            pub repetition_penalty: Option<f32>,
            /// Most new tokens.
            pub max_tokens: Option<u64>,
            /// Stop strings.
            pub stop: Option<StopField>,
            /// Seed of the request's sampler.
            pub seed: Option<i64>,
            /// Choices per prompt.
            pub n: Option<u64>,
            /// End-user id (logged, for abuse tracing).
            pub user: Option<String>,
            /// Answer as Server-Sent Events.
            pub stream: Option<bool>,
            /// Streaming options.
            pub stream_options: Option<StreamOptions>,
            /// Only 0 is supported (we have no presence penalty).
            pub presence_penalty: Option<f32>,
            /// Only 0 is supported (we have no frequency penalty).
            pub frequency_penalty: Option<f32>,
            /// Only an empty map is supported.
            pub logit_bias: Option<Map<String, Value>>,
        }

        impl $name {
            /// The shared sampling fields.
            pub fn sampling(&self) -> SamplingParams {
                SamplingParams {
                    temperature: self.temperature.clone(),
                    top_p: self.top_p.clone(),
                    top_k: self.top_k.clone(),
                    min_p: self.min_p.clone(),
                    repetition_penalty: self.repetition_penalty.clone(),
                    max_tokens: self.max_tokens.clone(),
                    stop: self.stop.clone(),
                    seed: self.seed.clone(),
                    n: self.n.clone(),
                    user: self.user.clone(),
                    stream: self.stream.clone(),
                    stream_options: self.stream_options.clone(),
                    presence_penalty: self.presence_penalty.clone(),
                    frequency_penalty: self.frequency_penalty.clone(),
                    logit_bias: self.logit_bias.clone(),
                }
            }
        }
    };
}

request_with_sampling! {
/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatCompletionRequest {
    /// Model id (must be the served one).
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// Return log-probabilities of the chosen tokens.
    pub logprobs: Option<bool>,
    /// Alternatives per token, `0..=20` (needs `logprobs: true`).
    pub top_logprobs: Option<u64>,
    /// Functions the model may call.
    pub tools: Option<Vec<ToolSpec>>,
    /// `none`, `auto`, `required` or a named function.
    pub tool_choice: Option<ToolChoice>,
    /// Several calls per turn (the default); `false` is only honoured with a named function.
    pub parallel_tool_calls: Option<bool>,
    /// `text`, `json_object` or `json_schema`.
    pub response_format: Option<ResponseFormat>,
    /// Fields we do not know (refused).
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatMessage {
    /// `system` (or `developer`), `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of `{"type": "text", "text": ...}` parts; may be null on an assistant
    /// message with `tool_calls`.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// A participant name (only accepted on `tool` messages, where it names the function).
    #[serde(default)]
    pub name: Option<String>,
    /// Calls an assistant made (history).
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallMessage>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Fields we do not know (refused).
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// Message content: a string or parts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` parts are supported.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentPart {
    /// `text` (anything else is refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A call in an assistant message of the history, or in a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallMessage {
    /// `call_...`.
    #[serde(default)]
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// Name and arguments.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

/// A function call: name and arguments as a JSON string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments, a JSON object as a string.
    pub arguments: String,
}

/// An entry of `tools`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionSpec,
}

/// A function's declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// What it does (shown to the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments' JSON schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// OpenAI's strict flag: arguments always follow the schema. Calls we constrain
    /// (`required`, named) always do; under `auto` the model is free.
    #[serde(default, skip_serializing)]
    pub strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// `{"type": "function", "function": {"name": ...}}`.
    Named(NamedToolChoice),
}

/// A named function in `tool_choice`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NamedToolChoice {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: NamedFunction,
}

/// `{"name": ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NamedFunction {
    /// Function name.
    pub name: String,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON under a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JsonSchemaFormat {
    /// Schema name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// The schema (default: any JSON object).
    #[serde(default)]
    pub schema: Option<Value>,
    /// Accepted; the output always follows the schema.
    #[serde(default)]
    pub strict: Option<bool>,
}

request_with_sampling! {
/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompletionRequest {
    /// Model id.
    pub model: String,
    /// Text, texts, token ids, or lists of token ids.
    pub prompt: PromptInput,
    /// Alternatives per token, `0..=5` (log-probabilities of the chosen tokens too).
    pub logprobs: Option<u64>,
    /// Prepend the prompt to the text.
    pub echo: Option<bool>,
    /// Must equal `n` when given (we do not rank candidates).
    pub best_of: Option<u64>,
    /// Fields we do not know (refused).
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}
}

/// A completions `prompt`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// Token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct UsageInfo {
    /// Prompt tokens (summed over prompts).
    pub prompt_tokens: usize,
    /// Generated tokens (summed over choices).
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

impl UsageInfo {
    /// Adds one request's counts (`prompt` = false for the extra choices of one prompt).
    pub fn add(&mut self, usage: &crate::engine::Usage, count_prompt: bool) {
        if count_prompt {
            self.prompt_tokens += usage.prompt_tokens;
            self.prompt_tokens_details.cached_tokens += usage.cached_tokens;
        }
        self.completion_tokens += usage.completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
    }
}

/// The assistant message of a chat choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text (null when the turn is only tool calls).
    pub content: Option<String>,
    /// The calls it made.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallMessage>,
}

/// One token's log-probability, OpenAI's chat shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprobInfo {
    /// The token's text (lossy for a partial UTF-8 sequence; see `bytes`).
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives (chosen token only at the top level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<TokenLogprobInfo>>,
}

/// `choices[i].logprobs` of a chat completion.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated content token.
    pub content: Vec<TokenLogprobInfo>,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChoice {
    /// Position among the choices.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// With `logprobs: true`.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, `tool_calls`, ...
    pub finish_reason: String,
}

/// A chat completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model.
    pub model: String,
    /// The answers.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: UsageInfo,
}

/// `choices[i].logprobs` of a text completion (OpenAI's legacy shape).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per token: text -> log-probability.
    pub top_logprobs: Vec<Map<String, Value>>,
    /// Byte offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// One choice of a text completion (also a stream chunk's choice).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionChoice {
    /// Position among the choices.
    pub index: usize,
    /// The text (a delta in a stream).
    pub text: String,
    /// With `logprobs`.
    pub logprobs: Option<CompletionLogprobs>,
    /// Set on the last chunk / the final object.
    pub finish_reason: Option<String>,
}

/// A text completion (also a stream chunk).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model.
    pub model: String,
    /// The answers.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (streams: only on the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageInfo>,
}

/// `GET /v1/models` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCard {
    /// Model id.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds when the server started.
    pub created: u64,
    /// `internlm2-rs`.
    pub owned_by: &'static str,
    /// Context limit in tokens (an extension, as vLLM's `max_model_len`).
    pub max_model_len: usize,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The one served model.
    pub data: Vec<ModelCard>,
}
