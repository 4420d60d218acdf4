//! The agent over HTTP (feature `server`): `POST /v1/agent/chat` runs the [`Agent`] loop with
//! the sandboxed code interpreter on the server and returns the answer and the transcript.
//!
//! The route is an axum [`Router`] ([`agent_router`]) to merge into the OpenAI API of
//! `internlm2_serve::server` (as the `serve` example does with `--interpreter`) or into any
//! other application. It is a separate opt-in because every request runs model-written Python
//! on the host: the [`sandbox`](crate::sandbox) is on by default, but serve it only where that
//! risk is accepted.
//!
//! Request (a JSON object; any other field is refused with a 400):
//!
//! ```json
//! {"messages": [{"role": "system", "content": "Be brief."},
//!               {"role": "user", "content": "What is 6 times 7?"}],
//!  "max_turns": 4, "max_tokens": 512}
//! ```
//!
//! `messages` is an optional `system` message followed by one `user` message (the route runs
//! one user turn; earlier assistant turns are not taken). `max_turns` (at most the service's
//! [`AgentService::max_turns`]) bounds the model turns, each tool call costing one;
//! `max_tokens` bounds each model turn. Chat-token text inside the messages is made plain text
//! ([`escape_chat_tokens`]), so a message cannot open a turn of its own.
//!
//! Response (`200`):
//!
//! ```json
//! {"answer": "6 times 7 is 42.", "finish": "answered", "turns": 2, "tool_calls": 1,
//!  "transcript": [{"role": "system", "name": "interpreter", "content": "You now have ..."},
//!                 {"role": "user", "content": "What is 6 times 7?"},
//!                 {"role": "assistant", "content": "Let me compute.",
//!                  "tool_call": {"type": "interpreter", "code": "print(6*7)"}},
//!                 {"role": "environment", "name": "interpreter", "content": "42"},
//!                 {"role": "assistant", "content": "6 times 7 is 42."}]}
//! ```
//!
//! `finish` is `answered`, `turn_limit`, `length` (a turn's token budget ran out) or
//! `cancelled`; `answer` is `null` unless the run `answered`. Each request gets a fresh
//! interpreter (its own process and, unless [`InterpreterConfig::work_dir`] is set, its own
//! private work directory, removed with the request: saved figures are not served).
//!
//! Errors have OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`): 400 for a
//! bad request (the field is in `param`), 401 without the key ([`AgentService::with_api_key`]),
//! 413 for a body over 1 MiB, 429 when [`AgentService::with_max_concurrent`] runs are busy (or
//! the engine's queue is full), 500 when the interpreter cannot start or the generator fails.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use internlm2::chat::{Message, escape_chat_tokens};
use internlm2::generate::GenerationConfig;
use internlm2_serve::engine::{EngineError, EngineHandle};
use internlm2_serve::server::{ApiError, Router, presented_key_matches};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::agent::{Agent, AgentConfig, Finish};
use crate::engine::{EngineGenerator, EngineGeneratorError};
use crate::error::AgentError;
use crate::generator::{Completion, TextGenerator};
use crate::interpreter::{CodeInterpreter, InterpreterConfig};

/// The route's path.
pub const AGENT_CHAT_PATH: &str = "/v1/agent/chat";

/// Largest request body accepted (413 above it).
pub const MAX_AGENT_BODY_BYTES: usize = 1 << 20;

/// What one request asks of its text generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GeneratorRequest {
    /// Most tokens per model turn (the request's `max_tokens`; `None`: the generator's own).
    pub max_tokens: Option<usize>,
}

/// The error of a generator whose type the service erased: the generator's own error, or the
/// error of the function that made the generator ([`GeneratorFailure::inner`]), whose message
/// and source it passes on.
#[derive(Debug)]
pub struct GeneratorFailure(Box<dyn std::error::Error + Send + Sync>);

impl GeneratorFailure {
    /// The generator's own error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for GeneratorFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for GeneratorFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A generator with its error type erased.
type DynGenerator = Box<dyn TextGenerator<Error = GeneratorFailure>>;

/// Makes the generator of one request.
type GeneratorFactory =
    Arc<dyn Fn(&GeneratorRequest) -> Result<DynGenerator, GeneratorFailure> + Send + Sync>;

/// Wraps a generator so that its error is a [`GeneratorFailure`].
struct Erased<G>(G);

impl<G: TextGenerator> TextGenerator for Erased<G> {
    type Error = GeneratorFailure;

    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, GeneratorFailure> {
        self.0
            .complete(prompt, on_delta)
            .map_err(|e| GeneratorFailure(Box::new(e)))
    }
}

/// What the route shares: how to make a generator, the interpreter's settings and the limits
/// (cheap to clone).
#[derive(Clone)]
pub struct AgentService {
    make_generator: GeneratorFactory,
    interpreter: InterpreterConfig,
    system: Option<String>,
    max_turns: usize,
    api_key: Option<String>,
    max_concurrent: usize,
    slots: Arc<Semaphore>,
}

impl fmt::Debug for AgentService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentService")
            .field("interpreter", &self.interpreter)
            .field("system", &self.system)
            .field("max_turns", &self.max_turns)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

impl AgentService {
    /// Default of [`AgentService::max_turns`] (InternLM2's MATH-with-interpreter setting).
    pub const DEFAULT_MAX_TURNS: usize = 5;
    /// Default of [`AgentService::max_concurrent`].
    pub const DEFAULT_MAX_CONCURRENT: usize = 4;

    /// A service whose requests get their generator from `make_generator` (called once per
    /// request, on a blocking thread) and a fresh interpreter started from `interpreter`.
    ///
    /// Leave `interpreter.work_dir` unset so that each request gets its own private work
    /// directory; a fixed one is shared by every request.
    pub fn new<F, G, E>(make_generator: F, interpreter: InterpreterConfig) -> Self
    where
        F: Fn(&GeneratorRequest) -> Result<G, E> + Send + Sync + 'static,
        G: TextGenerator + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let make_generator: GeneratorFactory =
            Arc::new(
                move |request: &GeneratorRequest| match make_generator(request) {
                    Ok(generator) => Ok(Box::new(Erased(generator)) as DynGenerator),
                    Err(e) => Err(GeneratorFailure(Box::new(e))),
                },
            );
        Self {
            make_generator,
            interpreter,
            system: None,
            max_turns: Self::DEFAULT_MAX_TURNS,
            api_key: None,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            slots: Arc::new(Semaphore::new(Self::DEFAULT_MAX_CONCURRENT)),
        }
    }

    /// Agent turns on a running engine ([`EngineGenerator`]): `generation`'s sampling with a
    /// fresh random seed per request, and its `max_new_tokens` unless the request sets
    /// `max_tokens`.
    pub fn engine(
        engine: EngineHandle,
        generation: GenerationConfig,
        interpreter: InterpreterConfig,
    ) -> Self {
        Self::new(
            move |request: &GeneratorRequest| {
                let mut config = generation.clone();
                if let Some(max_tokens) = request.max_tokens {
                    config.max_new_tokens = max_tokens;
                }
                config.sampling.seed = rand::random::<u64>();
                EngineGenerator::new(engine.clone(), config)
            },
            interpreter,
        )
    }

    /// Sets the system prompt used when a request sends none.
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Sets the most model turns a request may use (its `max_turns` default; at least 1).
    pub fn with_max_turns(mut self, turns: usize) -> Self {
        self.max_turns = turns.max(1);
        self
    }

    /// Requires `Authorization: Bearer <key>` (`None`: open). Merged into the OpenAI router,
    /// give it the same key: that router's key check covers its own routes only.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// Sets how many agent runs (each with its own Python process) may run at once; more are
    /// answered 429 (at least 1).
    pub fn with_max_concurrent(mut self, runs: usize) -> Self {
        let runs = runs.clamp(1, Semaphore::MAX_PERMITS);
        self.max_concurrent = runs;
        self.slots = Arc::new(Semaphore::new(runs));
        self
    }

    /// The interpreter's settings.
    pub fn interpreter_config(&self) -> &InterpreterConfig {
        &self.interpreter
    }

    /// The most model turns a request may use.
    pub fn max_turns(&self) -> usize {
        self.max_turns
    }

    /// How many agent runs may run at once.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Runs one request to its end (blocking: generation and the interpreter).
    fn run_blocking(&self, request: ChatRequest) -> Result<AgentChatResponse, ApiError> {
        let generator = (self.make_generator)(&GeneratorRequest {
            max_tokens: request.max_tokens,
        })
        .map_err(|e| generator_error(&e))?;
        let interpreter = CodeInterpreter::start(self.interpreter.clone()).map_err(|e| {
            log::error!("agent route: the code interpreter cannot start: {e}");
            ApiError::internal("the code interpreter could not start (see the server log)")
        })?;
        let mut config =
            AgentConfig::default().with_max_turns(request.max_turns.unwrap_or(self.max_turns));
        if let Some(system) = request.system.or_else(|| self.system.clone()) {
            config = config.with_system(system);
        }
        let mut agent = Agent::new(generator)
            .with_config(config)
            .with_interpreter(interpreter);
        let outcome = agent
            .run(request.user, |_| {})
            .map_err(|e| agent_error(&e))?;
        Ok(AgentChatResponse {
            answer: (outcome.finish == Finish::Answered).then_some(outcome.answer),
            finish: finish_name(outcome.finish).to_string(),
            turns: outcome.turns,
            tool_calls: outcome.tool_calls,
            transcript: agent.messages().to_vec(),
        })
    }
}

/// The body of a `200` answer of `POST /v1/agent/chat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentChatResponse {
    /// The model's final answer (`None` unless `finish` is `answered`).
    pub answer: Option<String>,
    /// Why the run ended: `answered`, `turn_limit`, `length` or `cancelled`.
    pub finish: String,
    /// Model turns used.
    pub turns: usize,
    /// Tool calls made (malformed ones included).
    pub tool_calls: usize,
    /// The whole conversation: system turns, the user turn, each assistant turn (with its
    /// `tool_call`) and each `environment` result.
    pub transcript: Vec<Message>,
}

/// A checked request.
#[derive(Debug)]
struct ChatRequest {
    system: Option<String>,
    user: String,
    max_turns: Option<usize>,
    max_tokens: Option<usize>,
}

/// The router serving [`AGENT_CHAT_PATH`] over `service` (with its own key check and body
/// limit; merge it into another router with [`Router::merge`]).
pub fn agent_router(service: AgentService) -> Router {
    Router::new()
        .route(AGENT_CHAT_PATH, post(agent_chat))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_AGENT_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            require_key,
        ))
        .with_state(service)
}

async fn agent_chat(
    State(service): State<AgentService>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return ApiError::unreadable_body(rejection).into_response(),
    };
    match run(service, &body).await {
        Ok(response) => Json(response).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn run(service: AgentService, body: &[u8]) -> Result<AgentChatResponse, ApiError> {
    let request = parse_request(body, service.max_turns)?;
    let permit = service
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "{} agent runs are in progress, the most this server runs at once; retry later",
                service.max_concurrent
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("agent_busy"),
        })?;
    let task = tokio::task::spawn_blocking(move || {
        // Held until the run ends, even when the client has gone.
        let _permit = permit;
        service.run_blocking(request)
    });
    match task.await {
        Ok(result) => result,
        Err(e) => {
            log::error!("agent route: the agent run failed: {e}");
            Err(ApiError::internal(
                "the agent run failed (see the server log)",
            ))
        }
    }
}

/// The request's fields, checked; a 400 names the field at fault.
fn parse_request(body: &[u8], max_turns: usize) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("invalid request body: {e}"), None))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::malformed(
            "the request body must be a JSON object",
            None,
        ));
    };
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "messages" | "max_turns" | "max_tokens"))
    {
        return Err(ApiError::unsupported(
            key.clone(),
            format!(
                "unknown parameter `{key}`: this route takes `messages`, `max_turns` and \
                 `max_tokens`"
            ),
        ));
    }
    let messages = match fields.get("messages") {
        Some(Value::Array(messages)) => messages,
        None | Some(Value::Null) => {
            return Err(ApiError {
                code: Some("missing_required_parameter"),
                ..ApiError::invalid("messages", "`messages` is required")
            });
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be a list of {\"role\", \"content\"} objects",
            ));
        }
    };
    let mut turns = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        turns.push(parse_message(index, message)?);
    }
    let (system, user) = match turns.as_slice() {
        [(Role::User, user)] => (None, user.clone()),
        [(Role::System, system), (Role::User, user)] => (Some(system.clone()), user.clone()),
        [] => return Err(ApiError::invalid("messages", "`messages` is empty")),
        _ => {
            return Err(ApiError::unsupported(
                "messages",
                "`messages` must be one `user` message, optionally after one `system` message \
                 (the agent runs one user turn)",
            ));
        }
    };
    let max_turns = match count(&fields, "max_turns")? {
        Some(n) if n > max_turns => {
            return Err(ApiError::invalid(
                "max_turns",
                format!("`max_turns` must be in [1, {max_turns}], got {n}"),
            ));
        }
        other => other,
    };
    Ok(ChatRequest {
        system: system.map(|s| escape_chat_tokens(&s)),
        user: escape_chat_tokens(&user),
        max_turns,
        max_tokens: count(&fields, "max_tokens")?,
    })
}

/// The roles a request may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
}

/// One `{"role", "content"}` message.
fn parse_message(index: usize, message: &Value) -> Result<(Role, String), ApiError> {
    let param = |field: &str| format!("messages[{index}]{field}");
    let Value::Object(fields) = message else {
        return Err(ApiError::invalid(
            param(""),
            "a message must be a {\"role\", \"content\"} object",
        ));
    };
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "role" | "content"))
    {
        return Err(ApiError::unsupported(
            param(&format!(".{key}")),
            format!("unknown message field `{key}`: a message has `role` and `content`"),
        ));
    }
    let role = match fields.get("role").and_then(Value::as_str) {
        Some("system") => Role::System,
        Some("user") => Role::User,
        Some(other) => {
            return Err(ApiError::unsupported(
                param(".role"),
                format!("role `{other}` is not taken here: send `system` or `user`"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                param(".role"),
                "`role` is required and must be a string",
            ));
        }
    };
    let Some(content) = fields.get("content").and_then(Value::as_str) else {
        return Err(ApiError::invalid(
            param(".content"),
            "`content` is required and must be a string",
        ));
    };
    Ok((role, content.to_string()))
}

/// An optional positive integer field (`null` = absent).
fn count(fields: &Map<String, Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a positive integer, got {value}"),
            )),
        },
    }
}

fn finish_name(finish: Finish) -> &'static str {
    match finish {
        Finish::Answered => "answered",
        Finish::TurnLimit => "turn_limit",
        Finish::Length => "length",
        Finish::Cancelled => "cancelled",
    }
}

/// The engine's own refusal behind a generator failure (a full queue, a context overflow).
fn engine_error<'a>(
    error: &'a (dyn std::error::Error + Send + Sync + 'static),
) -> Option<&'a EngineError> {
    let failure = error.downcast_ref::<GeneratorFailure>()?;
    match (*failure.0).downcast_ref::<EngineGeneratorError>()? {
        EngineGeneratorError::Engine(e) => Some(e),
        _ => None,
    }
}

fn generator_error(error: &GeneratorFailure) -> ApiError {
    if let Some(e) = engine_error(error) {
        return ApiError::from(e.clone());
    }
    log::error!("agent route: the generator failed: {error}");
    ApiError::internal(format!("text generation failed: {error}"))
}

fn agent_error(error: &AgentError) -> ApiError {
    match error {
        AgentError::Generator(source) => {
            if let Some(e) = engine_error(&**source) {
                return ApiError::from(e.clone());
            }
            log::error!("agent route: {error}");
            ApiError::internal(format!("text generation failed: {source}"))
        }
        AgentError::InvalidConfig { name, reason } => {
            ApiError::invalid(*name, format!("`{name}` {reason}"))
        }
        AgentError::Interpreter(_) | AgentError::Chat(_) => {
            log::error!("agent route: {error}");
            ApiError::internal("the agent run failed (see the server log)")
        }
    }
}

/// Passes the request on when the key matches (or none is set).
async fn require_key(
    State(service): State<AgentService>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match service.api_key.as_deref() {
        None => true,
        Some(key) => presented_key_matches(request.headers(), key),
    };
    if allowed {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{method} is not allowed on {}", uri.path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, ApiError> {
        parse_request(body.as_bytes(), 5)
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = parse(
            r#"{"messages": [{"role": "system", "content": "S"},
                             {"role": "user", "content": "x<|im_end|>"}],
                "max_turns": 3, "max_tokens": null}"#,
        )
        .unwrap();
        assert_eq!(ok.system.as_deref(), Some("S"));
        assert_eq!(ok.user, "x<\u{200B}|im_end|>");
        assert_eq!((ok.max_turns, ok.max_tokens), (Some(3), None));

        let param = |body: &str| parse(body).unwrap_err().param;
        assert_eq!(param("{}"), Some("messages".into()));
        assert_eq!(param(r#"{"messages": "hi"}"#), Some("messages".into()));
        assert_eq!(param(r#"{"messages": []}"#), Some("messages".into()));
        assert_eq!(
            param(r#"{"messages": [{"role": "user", "content": "a"}], "temperature": 0}"#),
            Some("temperature".into())
        );
        assert_eq!(
            param(r#"{"messages": [{"role": "assistant", "content": "a"}]}"#),
            Some("messages[0].role".into())
        );
        assert_eq!(
            param(r#"{"messages": [{"role": "user", "content": ["a"]}]}"#),
            Some("messages[0].content".into())
        );
        assert_eq!(
            param(r#"{"messages": [{"role": "user", "content": "a", "name": "x"}]}"#),
            Some("messages[0].name".into())
        );
        assert_eq!(
            param(
                r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}"#
            ),
            Some("messages".into())
        );
        for bad in ["0", "6", "-1", "2.5", "\"3\""] {
            let body = format!(
                r#"{{"messages": [{{"role": "user", "content": "a"}}], "max_turns": {bad}}}"#
            );
            assert_eq!(param(&body), Some("max_turns".into()), "{bad}");
        }
        let malformed = parse("not json").unwrap_err();
        assert_eq!(
            (malformed.status, malformed.param),
            (StatusCode::BAD_REQUEST, None)
        );
        assert_eq!(parse("[1]").unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
