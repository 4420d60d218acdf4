//! The official `openai` Python package against the server (in process, on 127.0.0.1:0, a
//! random-weight model with the real InternLM2 vocabulary): chat, streaming chat, a forced tool
//! call whose arguments validate against the schema, a tool result round trip, completions,
//! the models list and error cases (see `openai_client.py`).
//!
//! Needs `python3` with `openai` and `jsonschema` (`.ci/run` pip-installs pinned versions).
//! Outside CI a missing package skips the test with a message; with `CI=true` it fails.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{MODEL, TestServer};
use internlm2_serve::engine::EngineConfig;
use internlm2_serve::server::ServerConfig;

const KEY: &str = "sk-internlm2-test";
const TIMEOUT: Duration = Duration::from_secs(300);

fn python_has_client() -> Result<(), String> {
    let probe = Command::new("python3")
        .args(["-c", "import openai, jsonschema; print(openai.__version__)"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if probe.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&probe.stderr).trim().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_works_against_the_server() {
    if let Err(why) = python_has_client() {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !in_ci,
            "CI=true but python3 cannot import openai/jsonschema: {why}"
        );
        eprintln!(
            "SKIPPED: python3 lacks the openai client ({why}); pip install openai jsonschema"
        );
        return;
    }
    let server = TestServer::start(
        EngineConfig::new().with_kv_memory_bytes(8 << 20),
        ServerConfig::new(MODEL).with_api_key(KEY),
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let base_url = server.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .args([
                script,
                "--base-url",
                &base_url,
                "--model",
                MODEL,
                "--api-key",
                KEY,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        let started = Instant::now();
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if started.elapsed() > TIMEOUT {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("python3 output")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("openai client: all checks passed"),
        "the openai client failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    server.stop().await;
}
