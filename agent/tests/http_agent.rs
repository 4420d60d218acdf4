//! `POST /v1/agent/chat` (feature `server`) over a real socket: a scripted policy calls the
//! sandboxed interpreter with `print(6*7)` and answers, and the response carries the answer and
//! the transcript with the `environment` turn; bad requests are 400s in OpenAI's error shape, a
//! missing key is a 401 and an interpreter that cannot start is a 500.
#![cfg(feature = "server")]

use std::convert::Infallible;
use std::time::Duration;

use internlm2_agent::http::{AgentService, GeneratorRequest, agent_router};
use internlm2_agent::{InterpreterConfig, ResourceLimits, SandboxConfig, ScriptedGenerator};
use serde_json::{Value, json};

const CODE_CALL: &str =
    "Let me compute.<|action_start|><|interpreter|>\n```python\nprint(6*7)\n```<|action_end|>";
const ANSWER: &str = "6 times 7 is 42.<|im_end|>";

/// The interpreter's settings: sandboxed as by default, with short timeouts and small limits
/// (as `common::interpreter`).
fn interpreter_config() -> InterpreterConfig {
    let limits = ResourceLimits {
        address_space_bytes: Some(768 << 20),
        cpu_seconds: Some(60),
        processes: Some(32),
        ..ResourceLimits::default()
    };
    InterpreterConfig::default()
        .with_timeout(Duration::from_secs(10))
        .with_grace(Duration::from_secs(1))
        .with_sandbox(SandboxConfig::default().with_limits(limits))
}

/// A service whose every request replays the interpreter call and the answer.
fn scripted(interpreter: InterpreterConfig) -> AgentService {
    AgentService::new(
        |_: &GeneratorRequest| Ok::<_, Infallible>(ScriptedGenerator::new([CODE_CALL, ANSWER])),
        interpreter,
    )
}

/// Serves `service` on a free loopback port; returns the route's URL.
async fn start(service: AgentService) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, agent_router(service)).await.unwrap();
    });
    format!("http://{address}/v1/agent/chat")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let response = client().post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_runs_the_interpreter_and_returns_the_transcript() {
    let url = start(scripted(interpreter_config())).await;
    let (status, body) = post(
        &url,
        &json!({"messages": [{"role": "user", "content": "What is 6 times 7?"}], "max_turns": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["answer"], "6 times 7 is 42.", "{body}");
    assert_eq!(body["finish"], "answered");
    assert_eq!(
        (body["turns"].as_u64(), body["tool_calls"].as_u64()),
        (Some(2), Some(1))
    );

    let transcript = body["transcript"].as_array().unwrap();
    let roles: Vec<&str> = transcript
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "environment", "assistant"],
        "{body}"
    );
    assert_eq!(transcript[0]["name"], "interpreter");
    assert_eq!(transcript[1]["content"], "What is 6 times 7?");
    assert_eq!(
        transcript[2]["tool_call"],
        json!({"type": "interpreter", "code": "print(6*7)"})
    );
    let result = &transcript[3];
    assert_eq!(result["name"], "interpreter", "{body}");
    assert_eq!(result["content"].as_str().unwrap().trim(), "42", "{body}");
    assert_eq!(transcript[4]["content"], "6 times 7 is 42.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400s_in_openai_shape() {
    // No request here reaches the interpreter or the script.
    let url = start(scripted(interpreter_config())).await;
    let user = json!([{"role": "user", "content": "Hi"}]);
    let cases = [
        (json!({}), "messages"),
        (json!({"max_turns": 2}), "messages"),
        (json!({"messages": "Hi"}), "messages"),
        (json!({"messages": user, "temperature": 0}), "temperature"),
        (json!({"messages": user, "max_turns": 0}), "max_turns"),
        (json!({"messages": user, "max_turns": 1000}), "max_turns"),
        (json!({"messages": user, "max_tokens": -5}), "max_tokens"),
        (
            json!({"messages": [{"role": "assistant", "content": "Hi"}]}),
            "messages[0].role",
        ),
    ];
    for (request, param) in cases {
        let (status, body) = post(&url, &request).await;
        assert_eq!(status, 400, "{request}: {body}");
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["param"], param, "{request}: {body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error["code"].is_string(), "{body}");
    }
    let response = client()
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_required_when_set() {
    let url = start(scripted(interpreter_config()).with_api_key(Some("sk-agent".into()))).await;
    let request = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let (status, body) = post(&url, &request).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error");
    let response = client()
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_that_cannot_start_is_a_500() {
    let missing = interpreter_config().with_python("/nonexistent/python3");
    let url = start(scripted(missing)).await;
    let (status, body) = post(
        &url,
        &json!({"messages": [{"role": "user", "content": "What is 6 times 7?"}]}),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "server_error");
}
