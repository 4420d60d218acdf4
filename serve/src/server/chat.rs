//! `POST /v1/chat/completions`: the request is checked and rendered (see [`super::prompt`]),
//! `n` engine requests are submitted, and their pieces (see [`super::choice`]) are sent as
//! Server-Sent Events or folded into one `chat.completion` object.
//!
//! Stream layout (OpenAI's): per choice a first chunk with `delta.role`, then content deltas,
//! and for each call a chunk with its index, id, type and function name (empty arguments)
//! followed by one with the argument text; then each choice's finish chunk; with
//! `stream_options.include_usage` a last chunk with empty `choices` and the usage (`"usage":
//! null` on the others); then `data: [DONE]`. A client that disconnects drops the stream, which
//! drops the engine handles, which cancels the requests and frees their KV blocks.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use internlm2::chat::{self, ToolCall};
use internlm2::generate::GenerationConfig;
use serde_json::{Value, json};

use super::AppState;
use super::choice::{ChoiceResult, ChoiceStream, Piece};
use super::error::ApiError;
use super::params;
use super::prompt::{plan_chat, refuse_unknown};
use super::protocol::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, ChatLogprobs,
    FunctionCall, ToolCallMessage, UsageInfo,
};
use super::sse::{SseBody, sse_response};
use crate::constraint::BanTokens;
use crate::engine::{Request, TokenConstraint};

/// The handler.
pub async fn chat_completions(
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
    let request: ChatCompletionRequest = super::parse_body(&body)?;
    state.check_model(&request.model)?;
    refuse_unknown(&request.unknown, "")?;
    let top_logprobs = match (request.logprobs, request.top_logprobs) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        _ => None,
    };
    if let Some(top) = top_logprobs
        && top > crate::engine::MAX_TOP_LOGPROBS as u64
    {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!(
                "`top_logprobs` must be in [0, {}], got {top}",
                crate::engine::MAX_TOP_LOGPROBS
            ),
        ));
    }
    let chat_plan = plan_chat(&request, state.config().escape_chat_tokens)?;
    let tokenizer = state.tokenizer();
    let stop_ids = GenerationConfig::chat(tokenizer).stop_token_ids;
    let max_tokens = params::max_tokens(request.max_tokens, request.max_completion_tokens)?;
    let plan = params::plan(
        &request.sampling(),
        max_tokens,
        &state.config().default_sampling,
        state.engine().context_limit(),
        stop_ids.clone(),
    )?;
    let prompt = chat::encode(tokenizer, &chat_plan.messages, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let id = state.next_id("chatcmpl");
    let mut choices = Vec::with_capacity(plan.n);
    for index in 0..plan.n {
        let mut engine_request = Request::new(prompt.clone(), plan.choice(index));
        if let Some(top) = top_logprobs {
            engine_request = engine_request.with_logprobs(top as usize);
        }
        if let Some(grammar) = &chat_plan.grammar {
            let param = if request.response_format.is_some() {
                "response_format"
            } else {
                "tool_choice"
            };
            let constraint = state
                .constraints(param)?
                .build(grammar)
                .map_err(|e| ApiError::constraint(param, e))?;
            engine_request = engine_request.with_constraint(Box::new(constraint));
        } else if chat_plan.ban_calls
            && let Some(tokens) = tokenizer.chat_tokens()
        {
            let ban: Box<dyn TokenConstraint> = Box::new(BanTokens::new(vec![tokens.action_start]));
            engine_request = engine_request.with_constraint(ban);
        }
        if let Some(tools) = &chat_plan.tools {
            engine_request = engine_request.with_tool_parsing(tools.clone());
        }
        // Dropping the handles already submitted (on an error below) cancels them.
        let handle = state.engine().submit(engine_request)?;
        choices.push(ChoiceStream::new(
            index,
            handle,
            stop_ids.clone(),
            format!("call_{}_{index}", &id[id.len() - 12..]),
        ));
    }
    let head = Head {
        id,
        created: super::unix_now(),
        model: state.config().model_name.clone(),
        logprobs: top_logprobs.is_some(),
        include_usage: plan.include_usage,
    };
    if plan.stream {
        Ok(stream_response(state, head, choices).into_response())
    } else {
        collect_response(state, head, choices).await
    }
}

/// What every chunk repeats.
#[derive(Debug, Clone)]
struct Head {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    include_usage: bool,
}

impl Head {
    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

/// A call as OpenAI sends it: the arguments as a JSON string.
fn function_call(call: &ToolCall) -> FunctionCall {
    match call {
        ToolCall::Plugin { name, parameters } => FunctionCall {
            name: name.clone(),
            arguments: parameters.to_string(),
        },
        // Never produced: the server offers no interpreter (its calls stay content).
        ToolCall::Interpreter { code } => FunctionCall {
            name: "python".into(),
            arguments: json!({ "code": code }).to_string(),
        },
    }
}

async fn collect_response(
    state: AppState,
    head: Head,
    choices: Vec<ChoiceStream>,
) -> Result<Response, ApiError> {
    let results =
        futures_util::future::join_all(choices.into_iter().map(ChoiceResult::collect)).await;
    let mut usage = UsageInfo::default();
    let mut out = Vec::with_capacity(results.len());
    for (index, result) in results.into_iter().enumerate() {
        if let Some(error) = &result.error {
            return Err(ApiError::internal(format!("generation failed: {error}")));
        }
        usage.add(&result.usage, index == 0);
        let tool_calls: Vec<ToolCallMessage> = result
            .calls
            .iter()
            .map(|(id, call)| ToolCallMessage {
                id: id.clone(),
                kind: "function".into(),
                function: function_call(call),
            })
            .collect();
        let content = if result.content.is_empty() && !tool_calls.is_empty() {
            None
        } else {
            Some(result.content)
        };
        out.push(ChatChoice {
            index,
            message: AssistantMessage {
                role: "assistant",
                content,
                tool_calls,
            },
            logprobs: head.logprobs.then(|| ChatLogprobs {
                content: state.logprob_entries(&result.logprobs),
            }),
            finish_reason: result.reason,
        });
    }
    Ok(axum::Json(ChatCompletion {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: head.model,
        choices: out,
        usage,
    })
    .into_response())
}

/// The chunks one piece becomes.
fn piece_chunks(state: &AppState, head: &Head, index: usize, piece: Piece) -> Vec<Value> {
    let logprobs = |entries: &[crate::engine::TokenLogprob]| {
        if head.logprobs && !entries.is_empty() {
            json!({ "content": state.logprob_entries(entries) })
        } else {
            Value::Null
        }
    };
    let choice = |delta: Value, logprobs: Value, finish: Value| json!([{ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish }]);
    match piece {
        Piece::Content { text, logprobs: lp } => {
            vec![head.chunk(choice(
                json!({ "content": text }),
                logprobs(&lp),
                Value::Null,
            ))]
        }
        Piece::Call {
            index: call_index,
            id,
            call,
        } => {
            let function = function_call(&call);
            vec![
                head.chunk(choice(
                    json!({ "tool_calls": [{
                        "index": call_index, "id": id, "type": "function",
                        "function": { "name": function.name, "arguments": "" }
                    }]}),
                    Value::Null,
                    Value::Null,
                )),
                head.chunk(choice(
                    json!({ "tool_calls": [{
                        "index": call_index, "function": { "arguments": function.arguments }
                    }]}),
                    Value::Null,
                    Value::Null,
                )),
            ]
        }
        Piece::Finish {
            reason,
            error,
            logprobs: lp,
            ..
        } => match error {
            Some(message) => {
                vec![ApiError::internal(format!("generation failed: {message}")).body()]
            }
            None => vec![head.chunk(choice(json!({}), logprobs(&lp), json!(reason)))],
        },
    }
}

fn stream_response(state: AppState, head: Head, choices: Vec<ChoiceStream>) -> SseBody {
    let first: Vec<Value> = choices
        .iter()
        .map(|c| {
            head.chunk(json!([{
                "index": c.index,
                "delta": { "role": "assistant", "content": "" },
                "logprobs": Value::Null,
                "finish_reason": Value::Null,
            }]))
        })
        .collect();
    let render_head = head.clone();
    sse_response(
        choices,
        first,
        usize::MAX,
        move |index, piece| piece_chunks(&state, &render_head, index, piece),
        move |usage| {
            head.include_usage.then(|| {
                let mut chunk = head.chunk(json!([]));
                chunk["usage"] = json!(usage);
                chunk
            })
        },
    )
}
