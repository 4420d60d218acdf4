//! Property tests (issue 16) of the requests the serving layer takes from callers and the
//! network:
//!
//! - the engine: random [`Request`]s (any prompt ids, empty or past the vocabulary or the
//!   context; `max_new_tokens` and context limits up to `usize::MAX`; NaN, negative or huge
//!   sampling values; any stop ids and strings; any logprob count) are accepted or refused
//!   with a typed [`EngineError`], and an accepted one finishes in time within its context
//!   policy;
//! - the HTTP server, over a real loopback socket: valid chat and completion bodies with
//!   hostile field values put in (or fields removed, or bytes of the body edited) answer 200
//!   or a 4xx OpenAI error object in time, never a 5xx or a dropped connection, and the
//!   server keeps answering.
//!
//! `HOSTILE_CASES=n` overrides the number of cases of every property.

mod common;
#[path = "../../internlm2/tests/common/mutate.rs"]
mod mutate;
#[path = "../../internlm2/tests/common/requests.rs"]
mod requests;
mod support;

use std::sync::OnceLock;
use std::time::Duration;

use internlm2::generate::{GenerationConfig, OverflowPolicy};
use internlm2::sampling::SamplingConfig;
use internlm2_serve::engine::{
    EngineConfig, EngineError, EngineHandle, Event, FinishReason, Request,
};
use internlm2_serve::server::ServerConfig;
use mutate::{apply_edits, byte_edit, cases, json_edit, mutate_json};
use proptest::prelude::*;
use requests::{sampling, size};
use serde_json::{Value, json};

/// The time bound of one case.
const CASE_LIMIT: Duration = Duration::from_secs(60);

// --- The engine.

/// An engine on the `tiny-internlm2` fixture (context 128, vocabulary 512) with the real
/// tokenizer, shared by every case.
fn engine() -> &'static EngineHandle {
    static ENGINE: OnceLock<EngineHandle> = OnceLock::new();
    ENGINE.get_or_init(|| {
        internlm2_serve::engine::Engine::start(
            support::model("tiny-internlm2"),
            Some(support::tokenizer()),
            // 16 blocks of 16 tokens: every accepted request ends within 256 tokens.
            EngineConfig::new()
                .with_kv_memory_bytes(128 << 10)
                .with_max_waiting(64),
        )
        .expect("engine")
    })
}

#[derive(Debug, Clone)]
struct EngineCase {
    prompt: Vec<u32>,
    max_new_tokens: usize,
    context_limit: Option<usize>,
    clamp: bool,
    sampling: SamplingConfig,
    stop_ids: Vec<u32>,
    stop_strings: Vec<String>,
    logprobs: Option<usize>,
}

fn engine_case() -> impl Strategy<Value = EngineCase> {
    let id = prop_oneof![2000 => 0u32..512, 1 => 512u32..1000, 1 => any::<u32>()];
    (
        prop_oneof![
            1 => Just(Vec::new()),
            30 => proptest::collection::vec(id, 1..60),
            1 => proptest::collection::vec(0u32..512, 120..200),
        ],
        size(),
        proptest::option::of(size()),
        any::<bool>(),
        sampling(),
        proptest::collection::vec(prop_oneof![0u32..512, any::<u32>()], 0..3),
        proptest::collection::vec(
            prop_oneof![
                20 => "[a-z <>|]{1,6}",
                1 => Just(String::new()),
                1 => (1usize..3000).prop_map(|n| "a".repeat(n)),
            ],
            0..3,
        ),
        proptest::option::of(prop_oneof![4 => 0usize..6, 1 => size()]),
    )
        .prop_map(
            |(
                prompt,
                max_new_tokens,
                context_limit,
                clamp,
                sampling,
                stop_ids,
                stop_strings,
                logprobs,
            )| EngineCase {
                prompt,
                max_new_tokens,
                context_limit,
                clamp,
                sampling,
                stop_ids,
                stop_strings,
                logprobs,
            },
        )
}

/// Submits one case and reads it to the end; panics (failing the case) on an untyped outcome
/// or a broken context policy.
fn run_engine_case(case: EngineCase) {
    let engine = engine();
    let mut config = GenerationConfig::default()
        .with_max_new_tokens(case.max_new_tokens)
        .with_sampling(case.sampling.clone())
        .with_stop_token_ids(case.stop_ids.clone())
        .with_stop_strings(case.stop_strings.clone())
        .with_overflow(if case.clamp {
            OverflowPolicy::ClampNewTokens
        } else {
            OverflowPolicy::Error
        });
    if let Some(limit) = case.context_limit {
        config = config.with_context_limit(Some(limit));
    }
    let mut request = Request::new(case.prompt.clone(), config);
    if let Some(top) = case.logprobs {
        request = request.with_logprobs(top);
    }
    let handle = match engine.submit(request) {
        Ok(handle) => handle,
        Err(
            EngineError::ContextOverflow { .. }
            | EngineError::ExceedsKvPool { .. }
            | EngineError::InvalidRequest { .. }
            | EngineError::QueueFull { .. },
        ) => return,
        Err(other) => panic!("unexpected refusal {other:?}"),
    };
    let prompt_len = case.prompt.len();
    let mut generated = 0usize;
    let mut finished = None;
    let mut handle = handle;
    while let Some(event) = handle.next_blocking() {
        match event {
            Event::Token { token, .. } => {
                assert!((token as usize) < engine.vocab_size(), "token {token}");
                generated += 1;
            }
            Event::Finished { reason, usage } => {
                assert!(
                    !matches!(reason, FinishReason::Error(_)),
                    "a request failed while running: {reason:?}"
                );
                assert_eq!(usage.completion_tokens, generated);
                assert_eq!(usage.prompt_tokens, prompt_len);
                finished = Some(reason);
            }
            Event::ToolCall(_) => {}
        }
    }
    assert!(
        finished.is_some(),
        "the stream ended without a finish event"
    );
    // The context policy: never more than asked, never past the caller's context limit (the
    // model's when the request sets none).
    assert!(generated <= case.max_new_tokens);
    let limit = case.context_limit.unwrap_or(engine.context_limit());
    assert!(
        prompt_len + generated <= limit,
        "{prompt_len} + {generated} > {limit}"
    );
}

proptest! {
    #![proptest_config(cases(600))]

    /// Random engine requests: a typed refusal, or a run that finishes within its policy.
    #[test]
    fn engine_requests_are_refused_typed_or_hold_the_context_policy(case in engine_case()) {
        mutate::within(CASE_LIMIT, move || run_engine_case(case));
    }
}

// --- The HTTP server.

/// The server's model: the test model with a 256-token context, so that every generation is
/// short.
const HTTP_CONTEXT: usize = 256;

/// A runtime and a server on 127.0.0.1:0, shared by every case.
struct Http {
    runtime: tokio::runtime::Runtime,
    server: common::TestServer,
    client: reqwest::Client,
}

fn http() -> &'static Http {
    static HTTP: OnceLock<Http> = OnceLock::new();
    HTTP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = common::model_dir_with_context(HTTP_CONTEXT);
        let server = runtime.block_on(common::TestServer::start_in(
            &dir,
            EngineConfig::new().with_kv_memory_bytes(4 << 20),
            ServerConfig::new(common::MODEL),
        ));
        let client = reqwest::Client::builder()
            .timeout(CASE_LIMIT)
            .build()
            .unwrap();
        Http {
            runtime,
            server,
            client,
        }
    })
}

/// Valid requests the mutations start from: chat (with tools, a JSON schema, logprobs,
/// streaming) and completions (text and token prompts).
fn seed_requests() -> Vec<(&'static str, Value)> {
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
            "required": ["city"]}
    }}]);
    let model = common::MODEL;
    vec![
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there"}],
                "max_tokens": 6, "temperature": 0.7, "top_p": 0.9, "stop": ["\n\n"],
                "seed": 3, "n": 1, "logprobs": true, "top_logprobs": 2}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "sunny"}],
                "tools": tools, "tool_choice": "auto", "max_tokens": 6, "stream": true,
                "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": "Pick a city"}],
                "tools": tools,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "max_tokens": 12}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": "JSON please"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}},
                        "required": ["a"]}}},
                "max_tokens": 10, "top_k": 20}),
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "Once upon a time", "max_tokens": 6,
                "n": 2, "logprobs": 2, "stop": "x", "repetition_penalty": 1.1}),
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": [1, 333, 4444, 92000], "max_tokens": 6,
                "stream": true, "min_p": 0.05}),
        ),
    ]
}

/// One HTTP case: which seed, JSON edits, and (rarely) byte edits of the serialised body.
#[derive(Debug, Clone)]
struct HttpCase {
    seed: usize,
    edits: Vec<(mutate::JsonPath, Value)>,
    bytes: Vec<mutate::ByteEdit>,
}

fn http_case() -> impl Strategy<Value = HttpCase> {
    (
        any::<usize>(),
        proptest::collection::vec(json_edit(), 0..4),
        prop_oneof![6 => Just(Vec::new()), 1 => proptest::collection::vec(byte_edit(), 1..3)],
    )
        .prop_map(|(seed, edits, bytes)| HttpCase { seed, edits, bytes })
}

/// Statuses a hostile body may get: success, or a client error.
const ALLOWED: [u16; 5] = [200, 400, 404, 413, 429];

async fn run_http_case(http: &Http, case: HttpCase) {
    let seeds = seed_requests();
    let (path, mut body) = seeds[case.seed % seeds.len()].clone();
    for (at, value) in &case.edits {
        mutate_json(&mut body, at, value.clone());
    }
    let streaming = body["stream"] == json!(true);
    let mut bytes = body.to_string().into_bytes();
    apply_edits(&mut bytes, &case.bytes, 0);
    let response = http
        .client
        .post(http.server.url(path))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    assert!(ALLOWED.contains(&status), "status {status}");
    let text = response.text().await.expect("the whole body arrives");
    if status != 200 {
        let error: Value = serde_json::from_str(&text).expect("a JSON error body");
        assert!(error["error"]["message"].is_string(), "{error}");
        assert!(error["error"]["type"].is_string(), "{error}");
        return;
    }
    if streaming && text.starts_with("data:") {
        let payloads = common::sse_payloads(&text);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{text}"
        );
        for payload in &payloads[..payloads.len() - 1] {
            let chunk: Value = serde_json::from_str(payload).expect("JSON chunks");
            assert!(chunk["error"].is_null(), "an error mid-stream: {chunk}");
            no_failed_choice(&chunk);
        }
    } else {
        let value: Value = serde_json::from_str(&text).expect("a JSON completion");
        assert!(value["choices"].is_array(), "{value}");
        no_failed_choice(&value);
        let usage = &value["usage"];
        let total = usage["prompt_tokens"].as_u64().unwrap() as usize
            + usage["completion_tokens"].as_u64().unwrap() as usize
                / value["choices"].as_array().unwrap().len().max(1);
        assert!(total <= HTTP_CONTEXT, "{usage}");
    }
}

/// A choice finishing with `error` is a request that failed inside the engine.
fn no_failed_choice(value: &Value) {
    for choice in value["choices"].as_array().into_iter().flatten() {
        assert_ne!(choice["finish_reason"], "error", "{value}");
    }
}

proptest! {
    #![proptest_config(cases(400))]

    /// Hostile request bodies: 200 or a 4xx OpenAI error in time; the server keeps serving.
    #[test]
    fn http_requests_answer_success_or_a_client_error(case in http_case()) {
        let http = http();
        http.runtime.block_on(async {
            tokio::time::timeout(CASE_LIMIT, run_http_case(http, case))
                .await
                .expect("the case ran past its time bound");
            let health = http
                .client
                .get(http.server.url("/health"))
                .send()
                .await
                .expect("the server still answers");
            assert_eq!(health.status().as_u16(), 200);
        });
    }
}
