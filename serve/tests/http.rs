//! The HTTP API over a real socket: every error status, the API key, the queue limit,
//! streaming and non-streaming giving the same message (tool calls included), a client
//! disconnect freeing its KV blocks, completions, models, metrics, and graceful shutdown.
//! The model has random weights and the real InternLM2 vocabulary (see `common`).

mod common;

use std::time::Duration;

use common::{
    CONTEXT, MODEL, TestServer, expect_error, fold_chat_stream, metric, sse_payloads,
    wait_for_metrics,
};
use futures_util::StreamExt;
use internlm2::chat::{self, Message};
use internlm2_serve::engine::EngineConfig;
use internlm2_serve::server::ServerConfig;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Tokyo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7}
            },
            "required": ["city", "days"],
            "additionalProperties": false
        }
    }}, {"type": "function", "function": {"name": "now", "description": "The time"}}])
}

async fn post(
    client: &reqwest::Client,
    server: &TestServer,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The same shape from a non-streaming completion.
fn chat_choices(body: &Value) -> Vec<Value> {
    body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let calls: Vec<Value> = c["message"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| json!({"name": t["function"]["name"], "arguments": t["function"]["arguments"]}))
                .collect();
            json!({
                "content": c["message"]["content"].as_str().unwrap_or(""),
                "tool_calls": calls,
                "finish_reason": c["finish_reason"],
            })
        })
        .collect()
}

async fn stream_text(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        response.headers()
    );
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_non_stream_give_the_same_message_tool_calls_included() {
    let server = TestServer::default().await;
    let client = client();
    let user = json!([{"role": "system", "content": "You are a weather bot."},
                      {"role": "user", "content": "Weather in Paris for 3 days, and the time?"}]);
    let cases = [
        json!({"model": MODEL, "messages": user, "temperature": 0, "max_tokens": 24}),
        json!({"model": MODEL, "messages": user, "temperature": 0, "max_tokens": 120,
               "tools": weather_tools(), "tool_choice": "required"}),
        json!({"model": MODEL, "messages": user, "temperature": 0, "max_tokens": 120,
               "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        json!({"model": MODEL, "messages": user, "temperature": 0, "max_tokens": 24,
               "tools": weather_tools(), "tool_choice": "auto"}),
        json!({"model": MODEL, "messages": user, "temperature": 0.9, "seed": 5, "n": 2, "max_tokens": 16}),
    ];
    let mut saw_calls = 0;
    for case in cases {
        let whole: Value = post(&client, &server, "/v1/chat/completions", &case)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(whole["object"], "chat.completion", "{whole}");
        let expected = chat_choices(&whole);
        let mut streamed_request = case.clone();
        streamed_request["stream"] = json!(true);
        streamed_request["stream_options"] = json!({"include_usage": true});
        let body =
            stream_text(post(&client, &server, "/v1/chat/completions", &streamed_request).await)
                .await;
        let (streamed, usage) = fold_chat_stream(&sse_payloads(&body));
        assert_eq!(streamed, expected, "stream vs non-stream for {case}");
        let usage = usage.expect("usage chunk with include_usage");
        assert_eq!(usage["prompt_tokens"], whole["usage"]["prompt_tokens"]);
        assert_eq!(
            usage["completion_tokens"],
            whole["usage"]["completion_tokens"]
        );
        for choice in &expected {
            let calls = choice["tool_calls"].as_array().unwrap();
            if !calls.is_empty() {
                // A random model may chain calls until max_tokens: then the finish is `length`
                // (the complete calls are still returned).
                let truncated = whole["usage"]["completion_tokens"] == case["max_tokens"];
                let finish = if truncated { "length" } else { "tool_calls" };
                assert_eq!(choice["finish_reason"], finish, "{case}\n{whole}");
            }
            for call in calls {
                saw_calls += 1;
                let args: Value =
                    serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
                match call["name"].as_str().unwrap() {
                    "get_weather" => {
                        assert!(
                            ["Paris", "Tokyo"].contains(&args["city"].as_str().unwrap()),
                            "{args}"
                        );
                        assert!((1..=7).contains(&args["days"].as_i64().unwrap()), "{args}");
                        assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
                    }
                    "now" => assert_eq!(args, json!({})),
                    other => panic!("undeclared function {other}"),
                }
            }
        }
        if case.get("tool_choice").is_some_and(|c| c != "auto") {
            assert!(
                !expected[0]["tool_calls"].as_array().unwrap().is_empty(),
                "forced call missing: {whole}"
            );
            // No content beside the calls, except the text of a last call that max_tokens cut
            // off (an unterminated call is shown as text, never as a call).
            let content = expected[0]["content"].as_str().unwrap_or_default();
            let truncated = whole["usage"]["completion_tokens"] == case["max_tokens"];
            assert!(
                content.is_empty() || (truncated && content.starts_with("<|action_start|>")),
                "a forced call has no content: {whole}"
            );
        }
    }
    assert!(saw_calls >= 2);
    // Without include_usage there is no usage chunk (and no usage key on chunks).
    let plain = json!({"model": MODEL, "messages": user, "max_tokens": 4, "stream": true});
    let body = stream_text(post(&client, &server, "/v1/chat/completions", &plain).await).await;
    let payloads = sse_payloads(&body);
    assert!(payloads[..payloads.len() - 1].iter().all(|p| {
        serde_json::from_str::<Value>(p)
            .unwrap()
            .get("usage")
            .is_none()
    }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_status_and_openai_shape() {
    let server = TestServer::default().await;
    let client = client();
    let chat = "/v1/chat/completions";
    let hi = json!([{"role": "user", "content": "hi"}]);

    let raw = client
        .post(server.url(chat))
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(raw, 400).await;
    let wrong_type = expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": MODEL, "messages": hi, "temperature": "hot"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(wrong_type["error"]["param"], "temperature", "{wrong_type}");
    let missing = expect_error(
        post(&client, &server, chat, &json!({"messages": hi})).await,
        400,
    )
    .await;
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model"),
        "{missing}"
    );
    let unknown = expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": MODEL, "messages": hi, "best_guess": 1}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(unknown["error"]["param"], "best_guess");
    let out_of_range = expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": MODEL, "messages": hi, "temperature": 3}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(out_of_range["error"]["param"], "temperature");
    let penalty = expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": MODEL, "messages": hi, "presence_penalty": 1}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(penalty["error"]["param"], "presence_penalty");
    let model = expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": "gpt-4o", "messages": hi}),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(model["error"]["param"], "model");
    expect_error(
        client.get(server.url("/v1/nothing")).send().await.unwrap(),
        404,
    )
    .await;
    let too_big = client
        .post(server.url(chat))
        .header("content-type", "application/json")
        .body(vec![b' '; internlm2_serve::server::MAX_BODY_BYTES + 1])
        .send()
        .await
        .unwrap();
    expect_error(too_big, 413).await;
    let method = expect_error(client.get(server.url(chat)).send().await.unwrap(), 405).await;
    assert_eq!(method["error"]["code"], "method_not_allowed");

    // Prompt plus max_tokens beyond the context: 400 stating both numbers.
    let long = "lorem ipsum dolor sit amet ".repeat(100);
    let messages = [Message::user(long.clone())];
    let prompt_len = chat::encode(&common::tokenizer(), &messages, true)
        .unwrap()
        .len();
    assert!(
        prompt_len < CONTEXT && prompt_len + 900 > CONTEXT,
        "prompt of {prompt_len}"
    );
    let overflow = expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": MODEL, "max_tokens": 900,
             "messages": [{"role": "user", "content": long}]}),
        )
        .await,
        400,
    )
    .await;
    let message = overflow["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&prompt_len.to_string())
            && message.contains("900")
            && message.contains(&CONTEXT.to_string()),
        "{message}"
    );
    // A prompt that alone overflows, without max_tokens.
    let huge = "lorem ipsum dolor sit amet ".repeat(400);
    expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": huge}]}),
        )
        .await,
        400,
    )
    .await;
    // Completions: bad logprobs, empty prompt, out-of-vocabulary ids.
    let logprobs = expect_error(
        post(
            &client,
            &server,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "a", "logprobs": 9}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(logprobs["error"]["param"], "logprobs");
    expect_error(
        post(
            &client,
            &server,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": []}),
        )
        .await,
        400,
    )
    .await;
    let vocab = expect_error(
        post(
            &client,
            &server,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": [1, 99999999]}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(vocab["error"]["param"], "prompt", "{vocab}");
    // An unknown tool_choice function and an unsupported schema keyword value.
    let choice = expect_error(
        post(
            &client,
            &server,
            chat,
            &json!({"model": MODEL, "messages": hi, "tools": weather_tools(),
        "tool_choice": {"type": "function", "function": {"name": "launch"}}}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(choice["error"]["param"], "tool_choice");
    let schema = expect_error(post(&client, &server, chat, &json!({"model": MODEL, "messages": hi,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "tensor"}}}})).await, 400).await;
    assert_eq!(schema["error"]["param"], "response_format");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_every_route_but_health() {
    let server = TestServer::start(
        EngineConfig::new().with_kv_memory_bytes(2 << 20),
        ServerConfig::new(MODEL).with_api_key("sk-test"),
    )
    .await;
    let client = client();
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let completion = json!({"model": MODEL, "prompt": "hi", "max_tokens": 2});
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/nothing"),
    ] {
        for key in [None, Some("Bearer wrong"), Some("sk-test")] {
            let mut request = match method {
                "GET" => client.get(server.url(path)),
                _ => client
                    .post(server.url(path))
                    .json(if path.ends_with("chat/completions") {
                        &body
                    } else {
                        &completion
                    }),
            };
            if let Some(key) = key {
                request = request.header("authorization", key);
            }
            let error = expect_error(request.send().await.unwrap(), 401).await;
            assert_eq!(error["error"]["type"], "authentication_error");
        }
        let ok = match method {
            "GET" => client.get(server.url(path)),
            _ => client
                .post(server.url(path))
                .json(if path.ends_with("chat/completions") {
                    &body
                } else {
                    &completion
                }),
        }
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap();
        let expected = if path == "/v1/nothing" { 404 } else { 200 };
        assert_eq!(ok.status().as_u16(), expected, "{path} with the key");
    }
    // Browsers: HTTP Basic with the key as the password.
    let page = client
        .get(server.url("/"))
        .basic_auth("me", Some("sk-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = TestServer::start(
        EngineConfig::new()
            .with_kv_memory_bytes(2 << 20)
            .with_max_running(1)
            .with_max_waiting(1),
        ServerConfig::new(MODEL),
    )
    .await;
    let client = client();
    let body = json!({"model": MODEL, "prompt": [1, 2, 3, 4], "max_tokens": 200, "temperature": 0});
    let responses = futures_util::future::join_all(
        (0..6).map(|_| post(&client, &server, "/v1/completions", &body)),
    )
    .await;
    let mut rejected = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => {
                let done: Value = response.json().await.unwrap();
                assert_eq!(done["choices"][0]["finish_reason"], "length");
            }
            429 => {
                let retry = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .to_string();
                assert!(retry.parse::<u64>().unwrap() >= 1);
                let error = expect_error(response, 429).await;
                assert_eq!(error["error"]["type"], "rate_limit_error");
                rejected += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!((1..=5).contains(&rejected), "{rejected} of 6 rejected");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_request_and_frees_its_blocks() {
    let server = TestServer::default().await;
    let client = client();
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 800, "temperature": 0.9,
                      "messages": [{"role": "user", "content": "Tell me a long story."}]});
    let response = post(&client, &server, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let busy = wait_for_metrics(&client, &server, Duration::from_secs(30), |m| {
        metric(m, "internlm2_kv_blocks_used") > 0.0
    })
    .await;
    assert!(metric(&busy, "internlm2_requests_running") >= 1.0);
    drop(stream);
    let freed = wait_for_metrics(&client, &server, Duration::from_secs(30), |m| {
        metric(m, "internlm2_kv_blocks_used") == 0.0
            && metric(m, "internlm2_requests_running") == 0.0
            && metric(m, "internlm2_requests_finished_total{reason=\"cancelled\"}") >= 1.0
    })
    .await;
    assert!(
        metric(&freed, "internlm2_generation_tokens_total") < 800.0,
        "the request ran to its end"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_models_logprobs_and_metrics() {
    let server = TestServer::default().await;
    let client = client();
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], CONTEXT);

    let ids: Value = post(
        &client,
        &server,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": [[1, 333, 444], [1, 555]],
        "max_tokens": 5, "temperature": 0, "n": 2, "logprobs": 2}),
    )
    .await
    .json()
    .await
    .unwrap();
    let choices = ids["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    // Greedy: both choices of a prompt are the same; prompt tokens counted once per prompt.
    assert_eq!(choices[0]["text"], choices[1]["text"]);
    assert_eq!(ids["usage"]["prompt_tokens"], 5);
    for choice in choices {
        let lp = &choice["logprobs"];
        let n = lp["tokens"].as_array().unwrap().len();
        assert!((1..=5).contains(&n));
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        assert_eq!(lp["text_offset"].as_array().unwrap().len(), n);
        for (top, chosen) in lp["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(lp["token_logprobs"].as_array().unwrap())
        {
            let top = top.as_object().unwrap();
            assert!(!top.is_empty() && top.len() <= 2);
            // Greedy: the chosen token is the most likely one.
            let best = top
                .values()
                .map(|v| v.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            assert!((best - chosen.as_f64().unwrap()).abs() < 1e-4, "{lp}");
            assert!(chosen.as_f64().unwrap() <= 0.0);
        }
    }
    let echo: Value = post(
        &client,
        &server,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Once upon a time",
        "max_tokens": 3, "echo": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(
        echo["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Once upon a time"),
        "{echo}"
    );
    // Streaming completions end with the usage chunk and [DONE].
    let body = stream_text(post(&client, &server, "/v1/completions", &json!({"model": MODEL, "prompt": "Hello",
        "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}, "temperature": 0})).await).await;
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let text: String = payloads[..payloads.len() - 2]
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let whole: Value = post(
        &client,
        &server,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hello",
        "max_tokens": 6, "temperature": 0}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());

    // Chat logprobs: one entry per generated token but the stop token.
    let chat: Value = post(
        &client,
        &server,
        "/v1/chat/completions",
        &json!({"model": MODEL, "max_tokens": 4, "temperature": 0,
        "logprobs": true, "top_logprobs": 3, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let entries = chat["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert!(!entries.is_empty() && entries.len() <= 4, "{chat}");
    assert!(
        entries
            .iter()
            .all(|e| e["top_logprobs"].as_array().unwrap().len() == 3 && e["bytes"].is_array())
    );

    let metrics = client.get(server.url("/metrics")).send().await.unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    assert!(metric(&text, "internlm2_generation_tokens_total") > 0.0);
    assert!(metric(&text, "internlm2_kv_blocks_total") > 0.0);
    assert!(metric(&text, "internlm2_time_to_first_token_seconds_count") >= 5.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_running_streams_finish() {
    let mut server = TestServer::default().await;
    let client = client();
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 60, "temperature": 0,
                      "messages": [{"role": "user", "content": "Count to sixty."}]});
    let response = post(&client, &server, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    let base = server.base.clone();
    server.signal_shutdown();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let payloads = sse_payloads(&text);
    assert_eq!(
        payloads.last().unwrap(),
        "[DONE]",
        "the running stream was cut: {text}"
    );
    let (choices, _) = fold_chat_stream(&payloads);
    assert!(
        ["length", "stop"].contains(&choices[0]["finish_reason"].as_str().unwrap()),
        "{choices:?}"
    );
    server.join().await;
    // Nothing listens any more.
    assert!(client.get(format!("{base}/health")).send().await.is_err());
}
