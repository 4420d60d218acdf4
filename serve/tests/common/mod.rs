//! Shared helpers of the server tests: the test model (random weights, the real InternLM2
//! vocabulary), an in-process server on 127.0.0.1:0, and a small SSE reader.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use burn::tensor::DType;
use internlm2::backends::Cpu;
use internlm2::checkpoint::SaveOptions;
use internlm2::{InternLM2, InternLM2Config, Tokenizer};
use internlm2_serve::engine::{Engine, EngineConfig, EngineHandle};
use internlm2_serve::server::{self, ServerConfig};
use serde_json::{Value, json};

/// The model id the test servers serve.
pub const MODEL: &str = "internlm2-test";
/// The test model's context limit.
pub const CONTEXT: usize = 1024;

/// `$INTERNLM2_FIXTURES`, or `../shared/fixtures` beside the workspace.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("INTERNLM2_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    assert!(
        dir.is_dir(),
        "reference fixtures not found at {} (set INTERNLM2_FIXTURES)",
        dir.display()
    );
    dir
}

/// A HuggingFace directory with a random-weight InternLM2 (hidden 64, 2 layers, 4 heads, 2 KV
/// heads, context 1024) and the real 92,544-piece `tokenizer.model`, written with the SDK's
/// checkpoint writer once under the target directory (shared by the test processes: written
/// to a fresh folder, then renamed into place).
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| model_dir_with_context(CONTEXT))
}

/// The same test model with another context limit (its own directory).
pub fn model_dir_with_context(context: usize) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let name = if context == CONTEXT {
        "internlm2-serve-test-model-v1".to_string()
    } else {
        format!("internlm2-serve-test-model-v1-context-{context}")
    };
    let dir = root.join(name);
    if dir.join("tokenizer.model").is_file() {
        return dir;
    }
    let staging = tempfile::Builder::new()
        .prefix("internlm2-serve-test-model-")
        .tempdir_in(&root)
        .expect("temp dir");
    let config =
        InternLM2Config::new(92_544, 64, 128, 2, 4, 2).with_max_position_embeddings(context);
    let model = InternLM2::<Cpu>::init(&config, &Default::default());
    model
        .save(staging.path(), &SaveOptions::default())
        .expect("save the test model");
    std::fs::copy(
        fixtures().join("tokenizer/tokenizer_internlm2.model"),
        staging.path().join("tokenizer.model"),
    )
    .expect("copy tokenizer.model");
    // Another test process may have won the race; its model is as good as ours.
    let staged = staging.keep();
    if std::fs::rename(&staged, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    assert!(
        dir.join("tokenizer.model").is_file(),
        "test model at {}",
        dir.display()
    );
    dir
}

/// The test model's tokenizer.
pub fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_dir(model_dir()).expect("tokenizer"))
}

/// Loads the test model and starts an engine on it.
pub fn engine(config: EngineConfig) -> EngineHandle {
    engine_in(model_dir(), config)
}

/// Loads the model of `dir` and starts an engine on it.
pub fn engine_in(dir: &Path, config: EngineConfig) -> EngineHandle {
    let model = InternLM2::<Cpu>::load(dir, DType::F32, &Default::default()).expect("load");
    Engine::start(model, Some(tokenizer()), config).expect("engine")
}

/// A server running in this process.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its engine.
    pub engine: EngineHandle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Serves a fresh engine on 127.0.0.1:0.
    pub async fn start(engine_config: EngineConfig, config: ServerConfig) -> Self {
        Self::start_in(model_dir(), engine_config, config).await
    }

    /// Serves a fresh engine on the model of `dir`.
    pub async fn start_in(dir: &Path, engine_config: EngineConfig, config: ServerConfig) -> Self {
        let engine = engine_in(dir, engine_config);
        let app = server::router(engine.clone(), config).expect("router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let handle = engine.clone();
        let task = tokio::spawn(async move {
            server::serve_with_grace(
                listener,
                app,
                handle,
                async move {
                    let _ = signal.await;
                },
                Duration::from_secs(20),
            )
            .await
            .expect("serve");
        });
        Self {
            base,
            engine,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// The default test server: no key, a 4 MiB KV pool.
    pub async fn default() -> Self {
        Self::start(
            EngineConfig::new().with_kv_memory_bytes(4 << 20),
            ServerConfig::new(MODEL),
        )
        .await
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the shutdown signal (as SIGTERM would) and waits for the server to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("server stops within 60 s")
                .expect("server task");
        }
    }

    /// Starts the shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task (after [`signal_shutdown`](Self::signal_shutdown)).
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("server stops within 60 s")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The `data:` payloads of an SSE body, in order (`[DONE]` included as a string).
pub fn sse_payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// One prometheus sample's value.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
}

/// Polls `/metrics` until `ready` holds for it (or panics after `timeout`).
pub async fn wait_for_metrics(
    client: &reqwest::Client,
    server: &TestServer,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if ready(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never got ready:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON of an error response, with its status checked.
pub async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: Value = response.json().await.expect("JSON error body");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    body
}

/// The final message of each choice of a streamed chat completion, rebuilt from its deltas as
/// an OpenAI client does: `[{content, tool_calls: [{name, arguments}], finish_reason}]`.
pub fn fold_chat_stream(payloads: &[String]) -> (Vec<Value>, Option<Value>) {
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{payloads:?}"
    );
    let mut choices: Vec<Value> = Vec::new();
    let mut usage = None;
    let mut roles_seen = Vec::new();
    for payload in &payloads[..payloads.len() - 1] {
        let chunk: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert!(chunk["error"].is_null(), "{chunk}");
        if !chunk["usage"].is_null() {
            assert!(
                chunk["choices"].as_array().unwrap().is_empty(),
                "usage chunk has no choices"
            );
            usage = Some(chunk["usage"].clone());
            continue;
        }
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            while choices.len() <= index {
                choices.push(json!({"content": "", "tool_calls": [], "finish_reason": null}));
            }
            let delta = &choice["delta"];
            if delta["role"] == "assistant" {
                assert!(!roles_seen.contains(&index), "role sent twice");
                assert!(choices[index]["content"] == "", "role must come first");
                roles_seen.push(index);
            }
            assert!(roles_seen.contains(&index), "a delta before the role chunk");
            assert!(
                choices[index]["finish_reason"].is_null(),
                "a chunk after the finish"
            );
            let entry = &mut choices[index];
            if let Some(text) = delta["content"].as_str() {
                let content = entry["content"].as_str().unwrap().to_string() + text;
                entry["content"] = json!(content);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let k = call["index"].as_u64().unwrap() as usize;
                let calls = entry["tool_calls"].as_array_mut().unwrap();
                if k == calls.len() {
                    // First delta of a call: id, type and name.
                    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
                    assert_eq!(call["type"], "function");
                    calls.push(json!({"name": call["function"]["name"], "arguments": ""}));
                }
                let arguments = calls[k]["arguments"].as_str().unwrap().to_string()
                    + call["function"]["arguments"].as_str().unwrap_or("");
                calls[k]["arguments"] = json!(arguments);
            }
            if !choice["finish_reason"].is_null() {
                entry["finish_reason"] = choice["finish_reason"].clone();
            }
        }
    }
    (choices, usage)
}
