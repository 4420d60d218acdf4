//! The OpenAI-compatible HTTP API over an [`EngineHandle`], as an axum [`Router`] you can
//! serve as is ([`serve`]) or nest into your own application.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | chat with tools, `tool_choice`, `response_format`, streaming |
//! | `POST /v1/completions` | raw text or token-id prompts |
//! | `GET /v1/models` | the served model |
//! | `GET /health` | `200 {"status": "ok"}` while the engine accepts requests (never needs a key) |
//! | `GET /metrics` | Prometheus text from [`EngineMetrics`](crate::engine::EngineMetrics) |
//! | `GET /` | the chat page |
//!
//! With an API key every route but `/health` needs `Authorization: Bearer <key>` (HTTP Basic
//! with the key as the password also works, so a browser can open the chat page).
//!
//! ```no_run
//! use std::sync::Arc;
//! use burn::tensor::DType;
//! use internlm2::{InternLM2, Tokenizer};
//! use internlm2::backends::Cpu;
//! use internlm2_serve::engine::{Engine, EngineConfig};
//! use internlm2_serve::server::{self, ServerConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let model = InternLM2::<Cpu>::load("model", DType::F32, &Default::default())?;
//!     let tokenizer = Arc::new(Tokenizer::from_dir("model")?);
//!     let engine = Engine::start(model, Some(tokenizer), EngineConfig::new())?;
//!     let app = server::router(engine.clone(), ServerConfig::new("internlm2-chat-1_8b"))?;
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//!     server::serve(listener, app, engine, server::shutdown_signal()).await?;
//!     Ok(())
//! }
//! ```

mod auth;
mod chat;
mod choice;
mod completions;
mod error;
mod metrics;
mod page;
mod params;
mod prompt;
pub mod protocol;
mod sse;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use internlm2::Tokenizer;
use internlm2::sampling::SamplingConfig;

use crate::constraint::{ConstraintBuildError, ConstraintFactory};
use crate::engine::{EngineHandle, TokenLogprob};

/// axum's router type, re-exported so that a program can nest the API without naming axum.
pub use auth::presented_key_matches;
pub use axum::Router;
pub use choice::{ChoiceResult, Piece};
pub use error::{ApiError, RETRY_AFTER_SECONDS};
pub use metrics::prometheus_text;
pub use params::{MAX_CHOICES, MAX_STOP_BYTES, MAX_STOP_STRINGS};
pub use prompt::{ChatPlan, plan_chat};
use protocol::TokenLogprobInfo;

/// Largest request body accepted (413 above it): a prompt of about two million tokens.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The model id clients must send (and `/v1/models` lists).
    pub model_name: String,
    /// Required `Bearer` key; `None` = open.
    pub api_key: Option<String>,
    /// Sampling for the fields a request leaves out (default: InternLM2's chat defaults,
    /// temperature 0.8 and top-p 0.8).
    pub default_sampling: SamplingConfig,
    /// Make chat-token text inside chat messages plain text (default `true`), so that no
    /// message can open a turn of its own (see
    /// [`escape_chat_tokens`](internlm2::chat::escape_chat_tokens)). Raw completions prompts
    /// are never escaped.
    pub escape_chat_tokens: bool,
}

impl ServerConfig {
    /// Defaults for a model id.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            api_key: None,
            default_sampling: SamplingConfig::default(),
            escape_chat_tokens: true,
        }
    }

    /// Requires this API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Lets chat-token text inside messages act as the tokens (for trusted clients that build
    /// protocol text themselves).
    pub fn with_literal_chat_tokens(mut self) -> Self {
        self.escape_chat_tokens = false;
        self
    }

    /// Sets the sampling used for the fields a request leaves out.
    pub fn with_default_sampling(mut self, sampling: SamplingConfig) -> Self {
        self.default_sampling = sampling;
        self
    }
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The engine has no tokenizer (the API speaks text).
    #[error("the HTTP API needs an engine started with a tokenizer")]
    NoTokenizer,
    /// Binding or serving failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

struct Inner {
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    constraints: Result<ConstraintFactory, ConstraintBuildError>,
    config: ServerConfig,
    started: u64,
    next_id: AtomicU64,
}

/// What every handler shares (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Shares `engine` with the handlers; indexes the vocabulary for constrained decoding
    /// (a tokenizer without a byte table serves everything but constrained requests).
    pub fn new(engine: EngineHandle, config: ServerConfig) -> Result<Self, ServerError> {
        let tokenizer = engine.tokenizer().ok_or(ServerError::NoTokenizer)?;
        let constraints = ConstraintFactory::new(tokenizer.clone());
        if let Err(e) = &constraints {
            log::warn!("constrained decoding is off: {e}");
        }
        Ok(Self(Arc::new(Inner {
            engine,
            tokenizer,
            constraints,
            config,
            started: unix_now(),
            next_id: AtomicU64::new(0),
        })))
    }

    /// The engine.
    pub fn engine(&self) -> &EngineHandle {
        &self.0.engine
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.0.tokenizer
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// The constraint factory, or a 400 for `param` saying why there is none.
    fn constraints(&self, param: &str) -> Result<&ConstraintFactory, ApiError> {
        self.0
            .constraints
            .as_ref()
            .map_err(|e| ApiError::constraint(param, e.clone()))
    }

    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.0.config.model_name {
            Ok(())
        } else {
            Err(ApiError::unknown_model(model, &self.0.config.model_name))
        }
    }

    /// A fresh response id: `prefix-` and 24 hex digits (a counter and random bits).
    fn next_id(&self, prefix: &str) -> String {
        let n = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:08x}{:016x}", n as u32, rand::random::<u64>())
    }

    /// A token's bytes and text.
    fn token_text(&self, id: u32) -> (Vec<u8>, String) {
        let bytes = match self.0.tokenizer.token_bytes(id) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes.to_vec(),
            _ => self
                .0
                .tokenizer
                .decode(&[id])
                .unwrap_or_default()
                .into_bytes(),
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (bytes, text)
    }

    /// Chat-shaped logprob entries.
    fn logprob_entries(&self, logprobs: &[TokenLogprob]) -> Vec<TokenLogprobInfo> {
        logprobs
            .iter()
            .map(|lp| {
                let (bytes, token) = self.token_text(lp.token);
                TokenLogprobInfo {
                    token,
                    logprob: lp.logprob,
                    bytes,
                    top_logprobs: Some(
                        lp.top
                            .iter()
                            .map(|&(id, logprob)| {
                                let (bytes, token) = self.token_text(id);
                                TokenLogprobInfo {
                                    token,
                                    logprob,
                                    bytes,
                                    top_logprobs: None,
                                }
                            })
                            .collect(),
                    ),
                }
            })
            .collect()
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a JSON body; the error names the field at fault.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        ApiError::malformed(format!("invalid request body: {}", e.into_inner()), param)
    })
}

/// The router over `engine`.
pub fn router(engine: EngineHandle, config: ServerConfig) -> Result<Router, ServerError> {
    Ok(router_with_state(AppState::new(engine, config)?))
}

/// The router over a prepared state.
pub fn router_with_state(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    let _ = &state;
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn models(State(state): State<AppState>) -> Response {
    axum::Json(protocol::ModelList {
        object: "list",
        data: vec![protocol::ModelCard {
            id: state.0.config.model_name.clone(),
            object: "model",
            created: state.0.started,
            owned_by: "internlm2-rs",
            max_model_len: state.0.engine.context_limit(),
        }],
    })
    .into_response()
}

async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Response {
    ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{method} is not allowed on {}", uri.path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
    }
    .into_response()
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                log::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then shuts down gracefully: no new
/// connections, the engine stops accepting requests and lets running ones finish (for at most
/// 30 seconds, then cancels them), open streams end, and this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    engine: EngineHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with_grace(listener, app, engine, shutdown, Duration::from_secs(30)).await
}

/// [`serve`] with an explicit grace period.
pub async fn serve_with_grace(
    listener: tokio::net::TcpListener,
    app: Router,
    engine: EngineHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServerError> {
    let stopping = async move {
        shutdown.await;
        log::info!("shutting down: finishing running requests");
        let graceful = engine.clone();
        let stopper = tokio::task::spawn_blocking(move || graceful.shutdown());
        tokio::spawn(async move {
            if tokio::time::timeout(grace, stopper).await.is_err() {
                log::warn!("grace period over: cancelling running requests");
                let _ = tokio::task::spawn_blocking(move || engine.abort()).await;
            }
        });
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stopping)
        .await?;
    Ok(())
}
