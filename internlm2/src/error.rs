//! Typed errors, one enum per subsystem, each variant carrying the offending name, path or value.

use std::path::PathBuf;

/// A bad `config.json` or an invalid [`crate::InternLM2Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not a valid config.json.
    #[error("{origin}: invalid config.json: {source}")]
    Json {
        /// Where the text came from.
        origin: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A size that must be at least 1 is 0.
    #[error("config field `{field}` must be positive")]
    NotPositive {
        /// The config.json key.
        field: &'static str,
    },
    /// A size above its bound in [`crate::config::limits`] (checked before anything is
    /// allocated from it).
    #[error("config field `{field}` is {value}, above the limit of {max}")]
    TooLarge {
        /// The config.json key.
        field: &'static str,
        /// The value found.
        value: String,
        /// The largest value accepted.
        max: String,
    },
    /// A field has a value the model cannot use.
    #[error("config field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The config.json key.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// GQA needs `heads % kv_heads == 0`.
    #[error("num_attention_heads ({heads}) is not divisible by num_key_value_heads ({kv_heads})")]
    HeadsNotDivisible {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
    /// `hidden_size % num_attention_heads != 0`.
    #[error("hidden_size ({hidden}) is not divisible by num_attention_heads ({heads})")]
    HiddenNotDivisible {
        /// Hidden size.
        hidden: usize,
        /// Query heads.
        heads: usize,
    },
    /// `rope_scaling.type` is neither `linear` nor `dynamic`.
    #[error("unknown rope_scaling type `{name}` (supported: `linear`, `dynamic`)")]
    UnknownRopeScaling {
        /// The type the file names.
        name: String,
    },
    /// `hidden_act` other than `silu`.
    #[error("unsupported hidden_act `{name}` (InternLM2 uses `silu`)")]
    UnsupportedActivation {
        /// The activation the file names.
        name: String,
    },
    /// `model_type` other than `internlm2`.
    #[error("model_type is `{name}`, expected `internlm2`")]
    WrongModelType {
        /// The model type the file names.
        name: String,
    },
}

/// A checkpoint that cannot be loaded or saved. Every variant names the file and, where there
/// is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The model directory's config.json is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be opened, read, mapped or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The directory holds no weights in a format we read.
    #[error(
        "{dir}: no weights found (expected model.safetensors, model.safetensors.index.json or pytorch_model*.bin)"
    )]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// A format we know but do not read.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported and what to do instead.
        reason: String,
    },
    /// The safetensors header or data is malformed or truncated.
    #[error("{path}: corrupt or truncated safetensors file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// `model.safetensors.index.json` is malformed or points at a missing shard.
    #[error("{path}: bad shard index: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model needs a tensor that no file holds.
    #[error("{dir}: missing tensor `{name}`")]
    MissingTensor {
        /// The model directory.
        dir: PathBuf,
        /// The HuggingFace tensor name.
        name: String,
    },
    /// A file holds a tensor the model does not have.
    #[error("{path}: unexpected tensor `{name}` (not part of this InternLM2 config)")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The HuggingFace tensor name.
        name: String,
    },
    /// A tensor's shape disagrees with config.json.
    #[error("{path}: tensor `{name}` has shape {got:?}, config.json implies {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The HuggingFace tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A stored dtype we cannot convert.
    #[error("{path}: tensor `{name}` is stored as {dtype}, expected BF16, F16 or F32")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The HuggingFace tensor name.
        name: String,
        /// The stored dtype.
        dtype: String,
    },
}

/// Tokenizer files that cannot be loaded, or text/ids that cannot be processed.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `tokenizer.model` is not a SentencePiece model we can use.
    #[error("{origin}: invalid SentencePiece model: {reason}")]
    InvalidModel {
        /// Where the bytes came from.
        origin: String,
        /// Why.
        reason: String,
    },
    /// Neither `tokenizer.json` nor `tokenizer.model` is present.
    #[error("{0}: no tokenizer.json or tokenizer.model found")]
    NotFound(PathBuf),
    /// The `tokenizers` crate refused the model or the input.
    #[error("tokenizer: {0}")]
    Backend(String),
    /// An id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A special token the chat protocol needs is not in the vocabulary.
    #[error("the vocabulary has no `{token}` token, which the chat protocol needs")]
    MissingSpecialToken {
        /// The token's text.
        token: String,
    },
}

/// A chat turn that cannot be rendered or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A tool call whose body is not the expected JSON.
    #[error("malformed plugin call: {reason} in {body:?}")]
    MalformedPluginCall {
        /// Why.
        reason: String,
        /// The text between `<|plugin|>` and `<|action_end|>`.
        body: String,
    },
    /// An interpreter call without a code block.
    #[error("malformed interpreter call: {reason} in {body:?}")]
    MalformedInterpreterCall {
        /// Why.
        reason: String,
        /// The text between `<|interpreter|>` and `<|action_end|>`.
        body: String,
    },
    /// `<|action_start|>` followed by something other than a known tool name.
    #[error("unknown action target {target:?} after <|action_start|>")]
    UnknownAction {
        /// What followed `<|action_start|>` (its first 40 characters).
        target: String,
    },
    /// `<|action_start|>` without `<|action_end|>`.
    #[error("unterminated action: <|action_start|> without <|action_end|>")]
    UnterminatedAction,
    /// A well-formed call to a tool the conversation did not offer (see `chat::ToolSet`).
    #[error("call to undeclared tool {name:?}")]
    UndeclaredTool {
        /// The tool's name (`<|interpreter|>` for the interpreter).
        name: String,
    },
    /// A message that the protocol cannot express.
    #[error("invalid message: {reason}")]
    InvalidMessage {
        /// Why the protocol cannot express it.
        reason: String,
    },
    /// Tool schemas that cannot be serialised.
    #[error("tool schemas: {0}")]
    Json(#[from] serde_json::Error),
    /// Tokenising the prompt failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A generation request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// No prompts, or an empty prompt.
    #[error("prompt {index} is empty: every prompt needs at least one token")]
    EmptyPrompt {
        /// Which prompt of the batch.
        index: usize,
    },
    /// The batch has no prompts.
    #[error("no prompts given")]
    EmptyBatch,
    /// Prompt plus `max_new_tokens` does not fit the context.
    #[error(
        "prompt of {prompt_len} tokens plus max_new_tokens {max_new_tokens} exceeds the context limit of {limit} tokens"
    )]
    ContextOverflow {
        /// Longest prompt of the batch.
        prompt_len: usize,
        /// Requested new tokens.
        max_new_tokens: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A prompt token outside the vocabulary.
    #[error("prompt token {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// Sampling parameters out of range.
    #[error("invalid sampling parameter `{name}`: {reason}")]
    InvalidSampling {
        /// The parameter.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The streaming callback asked to stop with an error.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// See [`CheckpointError`].
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// See [`TokenizerError`].
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// See [`ChatError`].
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// See [`GenerateError`].
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
