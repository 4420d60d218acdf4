//! Errors as OpenAI returns them: an HTTP status and
//! `{"error": {"message", "type", "param", "code"}}` (plus LMDeploy's top-level
//! `"object": "error"`, which clients ignore).
//!
//! | status | when |
//! |---|---|
//! | 400 | malformed JSON, a bad or unsupported parameter (named in `param`), a prompt plus max tokens beyond the context (both numbers in the message) |
//! | 401 | missing or wrong API key (every route but `/health`) |
//! | 404 | unknown model, unknown route |
//! | 405 | a known route with the wrong method |
//! | 413 | a body over [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES) |
//! | 429 | the engine's queue is full (with `Retry-After`) |
//! | 503 | the engine is shut down |

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::constraint::ConstraintBuildError;
use crate::engine::EngineError;

/// Seconds a client is told to wait after a 429.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// An error response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    /// The request parameter at fault.
    pub param: Option<String>,
    /// A short machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: Some("invalid_value"),
        }
    }

    /// 400 for a parameter we cannot honour.
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: Some("unsupported_parameter"),
            ..Self::invalid(param, message)
        }
    }

    /// 400 for a body that is not the JSON we expect.
    pub fn malformed(message: impl Into<String>, param: Option<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: Some("invalid_json"),
        }
    }

    /// A body that could not be read (too large: 413).
    pub fn unreadable_body(rejection: axum::extract::rejection::BytesRejection) -> Self {
        Self {
            status: rejection.status(),
            message: format!("request body: {}", rejection.body_text()),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_body"),
        }
    }

    /// 404 for a model we do not serve.
    pub fn unknown_model(requested: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{requested}` does not exist; this server serves `{served}`."
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 404 for a path we do not serve.
    pub fn not_found(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("No route {path}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect or missing API key: send `Authorization: Bearer <key>`.".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 500 for a failure inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "object": "error",
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let message = error.to_string();
        match error {
            EngineError::ContextOverflow { .. } | EngineError::ExceedsKvPool { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::invalid("max_tokens", message)
            },
            EngineError::InvalidRequest { param, .. } => Self::invalid(param, message),
            EngineError::QueueFull { .. } => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                message,
                kind: "rate_limit_error",
                param: None,
                code: Some("queue_full"),
            },
            EngineError::ShutDown => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
                kind: "server_error",
                param: None,
                code: Some("shutting_down"),
            },
            EngineError::InvalidConfig { .. } => Self::internal(message),
        }
    }
}

impl ApiError {
    /// A constraint that cannot be built for `param` (a schema llguidance refuses, a tokenizer
    /// without a byte table).
    pub fn constraint(param: &str, error: ConstraintBuildError) -> Self {
        match error {
            ConstraintBuildError::Schema { reason } => {
                Self::invalid(param, format!("`{param}` cannot be enforced: {reason}"))
            }
            other => Self::unsupported(
                param,
                format!("`{param}` needs constrained decoding: {other}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}
