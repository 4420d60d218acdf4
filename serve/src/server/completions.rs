//! `POST /v1/completions`: raw prompts (text, texts, token ids, lists of token ids) continued
//! without the chat template; `n` choices per prompt, `echo`, legacy `logprobs`, streaming.
//!
//! `max_tokens` defaults to 16, as in OpenAI's API. Text prompts get BOS first (as the model
//! was trained); token-id prompts are used exactly as given.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::choice::{ChoiceResult, ChoiceStream, Piece};
use super::error::ApiError;
use super::params;
use super::prompt::refuse_unknown;
use super::protocol::{
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptInput, UsageInfo,
};
use super::sse::{SseBody, sse_response};
use crate::engine::{Request, TokenLogprob};

/// Default `max_tokens` of a completion (OpenAI's).
pub const DEFAULT_MAX_TOKENS: u64 = 16;
/// Most alternatives per token in completions' `logprobs` (OpenAI's).
pub const MAX_COMPLETION_LOGPROBS: u64 = 5;
/// Most prompts times choices in one request.
pub const MAX_SEQUENCES: usize = 64;

/// The handler.
pub async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return ApiError::unreadable_body(rejection).into_response(),
    };
    match run(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn run(state: AppState, body: Bytes) -> Result<Response, ApiError> {
    let request: CompletionRequest = super::parse_body(&body)?;
    state.check_model(&request.model)?;
    refuse_unknown(&request.unknown, "")?;
    if let Some(top) = request.logprobs
        && top > MAX_COMPLETION_LOGPROBS
    {
        return Err(ApiError::invalid(
            "logprobs",
            format!("`logprobs` must be in [0, {MAX_COMPLETION_LOGPROBS}], got {top}"),
        ));
    }
    let echo = request.echo.unwrap_or(false);
    if echo && request.logprobs.is_some() {
        return Err(ApiError::unsupported(
            "echo",
            "`echo` with `logprobs` is not supported (prompt log-probabilities are not computed)",
        ));
    }
    let tokenizer = state.tokenizer();
    let prompts: Vec<Vec<u32>> = match &request.prompt {
        PromptInput::Text(text) => vec![encode(&state, text)?],
        PromptInput::Texts(texts) => texts
            .iter()
            .map(|t| encode(&state, t))
            .collect::<Result<_, _>>()?,
        PromptInput::Tokens(ids) => vec![ids.clone()],
        PromptInput::TokenLists(lists) => lists.clone(),
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    let plan = params::plan(
        &request.sampling(),
        Some(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        &state.config().default_sampling,
        state.engine().context_limit(),
        tokenizer.eos_id().into_iter().collect(),
    )?;
    if let Some(best_of) = request.best_of
        && best_of != plan.n as u64
    {
        return Err(ApiError::unsupported(
            "best_of",
            "`best_of` other than `n` is not supported (candidates are not ranked)",
        ));
    }
    if prompts.len().saturating_mul(plan.n) > MAX_SEQUENCES {
        return Err(ApiError::invalid(
            "n",
            format!("at most {MAX_SEQUENCES} sequences (prompts times n) per request"),
        ));
    }
    let id = state.next_id("cmpl");
    let mut choices = Vec::with_capacity(prompts.len() * plan.n);
    let mut echoes = Vec::with_capacity(prompts.len() * plan.n);
    for prompt in &prompts {
        let echoed = if echo {
            tokenizer
                .decode(prompt)
                .map_err(|e| ApiError::invalid("prompt", e.to_string()))?
        } else {
            String::new()
        };
        for j in 0..plan.n {
            let mut engine_request = Request::new(prompt.clone(), plan.choice(j));
            if let Some(top) = request.logprobs {
                engine_request = engine_request.with_logprobs(top as usize);
            }
            let handle = state.engine().submit(engine_request)?;
            let index = choices.len();
            choices.push(ChoiceStream::new(
                index,
                handle,
                tokenizer.eos_id().into_iter().collect(),
                String::new(),
            ));
            echoes.push(echoed.clone());
        }
    }
    let head = Head {
        id,
        created: super::unix_now(),
        model: state.config().model_name.clone(),
        logprobs: request.logprobs.is_some(),
    };
    if plan.stream {
        Ok(
            stream_response(state, head, choices, echoes, plan.n, plan.include_usage)
                .into_response(),
        )
    } else {
        collect_response(state, head, choices, echoes, plan.n).await
    }
}

fn encode(state: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    state
        .tokenizer()
        .encode(text, true)
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))
}

#[derive(Debug, Clone)]
struct Head {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
}

impl Head {
    fn object(&self, choices: Vec<CompletionChoice>, usage: Option<UsageInfo>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

/// Legacy logprobs of `tokens`, whose text starts at byte `offset` of the choice's text.
fn legacy_logprobs(
    state: &AppState,
    tokens: &[TokenLogprob],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for lp in tokens {
        let (bytes, text) = state.token_text(lp.token);
        out.tokens.push(text);
        out.token_logprobs.push(lp.logprob);
        out.text_offset.push(*offset);
        *offset += bytes.len();
        let mut top = Map::new();
        for &(id, logprob) in &lp.top {
            top.insert(state.token_text(id).1, json!(logprob));
        }
        out.top_logprobs.push(top);
    }
    out
}

async fn collect_response(
    state: AppState,
    head: Head,
    choices: Vec<ChoiceStream>,
    echoes: Vec<String>,
    n: usize,
) -> Result<Response, ApiError> {
    let results =
        futures_util::future::join_all(choices.into_iter().map(ChoiceResult::collect)).await;
    let mut usage = UsageInfo::default();
    let mut out = Vec::with_capacity(results.len());
    for ((index, result), echoed) in results.into_iter().enumerate().zip(echoes) {
        if let Some(error) = &result.error {
            return Err(ApiError::internal(format!("generation failed: {error}")));
        }
        usage.add(&result.usage, index % n == 0);
        let mut offset = echoed.len();
        let logprobs = head
            .logprobs
            .then(|| legacy_logprobs(&state, &result.logprobs, &mut offset));
        out.push(CompletionChoice {
            index,
            text: echoed + &result.content,
            logprobs,
            finish_reason: Some(result.reason),
        });
    }
    Ok(axum::Json(head.object(out, Some(usage))).into_response())
}

fn stream_response(
    state: AppState,
    head: Head,
    choices: Vec<ChoiceStream>,
    echoes: Vec<String>,
    n: usize,
    include_usage: bool,
) -> SseBody {
    let first: Vec<Value> = echoes
        .iter()
        .enumerate()
        .filter(|(_, echoed)| !echoed.is_empty())
        .map(|(index, echoed)| {
            json!(head.object(
                vec![CompletionChoice {
                    index,
                    text: echoed.clone(),
                    logprobs: None,
                    finish_reason: None,
                }],
                None
            ))
        })
        .collect();
    let offsets = std::sync::Mutex::new(echoes.iter().map(String::len).collect::<Vec<_>>());
    let render_head = head.clone();
    let render = move |index: usize, piece: Piece| {
        let mut offsets = match offsets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut offset = offsets.get(index).copied().unwrap_or(0);
        let choice = match piece {
            Piece::Content { text, logprobs } => {
                let logprobs = render_head
                    .logprobs
                    .then(|| legacy_logprobs(&state, &logprobs, &mut offset));
                CompletionChoice {
                    index,
                    text,
                    logprobs,
                    finish_reason: None,
                }
            }
            Piece::Finish {
                error: Some(message),
                ..
            } => {
                return vec![ApiError::internal(format!("generation failed: {message}")).body()];
            }
            Piece::Finish {
                reason, logprobs, ..
            } => CompletionChoice {
                index,
                text: String::new(),
                logprobs: (render_head.logprobs && !logprobs.is_empty())
                    .then(|| legacy_logprobs(&state, &logprobs, &mut offset)),
                finish_reason: Some(reason),
            },
            // Completions never parse tool calls.
            Piece::Call { .. } => return Vec::new(),
        };
        if let Some(slot) = offsets.get_mut(index) {
            *slot = offset;
        }
        vec![json!(render_head.object(vec![choice], None))]
    };
    sse_response(choices, first, n, render, move |usage| {
        include_usage.then(|| json!(head.object(Vec::new(), Some(usage))))
    })
}
