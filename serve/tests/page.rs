//! The chat page in a real headless browser (Debian's `chromium`, driven over the DevTools
//! protocol by `page_check.py`): it loads, the system prompt and temperature set on it reach
//! the request, a sent message gets a streamed answer, a forced tool call is shown, and a
//! screenshot is written to `target/tmp/serve-chat-page.png`.
//!
//! Needs `chromium` and python3's `websocket-client` (`.ci/run` installs both). Outside CI a
//! missing one skips the test with a message; with `CI=true` it fails.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{MODEL, TestServer};
use internlm2_serve::engine::EngineConfig;
use internlm2_serve::server::ServerConfig;

const TIMEOUT: Duration = Duration::from_secs(240);

fn browser_available() -> Result<(), String> {
    let chromium = Command::new("chromium")
        .arg("--version")
        .output()
        .map_err(|e| format!("chromium not runnable: {e}"))?;
    if !chromium.status.success() {
        return Err("chromium --version failed".into());
    }
    let probe = Command::new("python3")
        .args(["-c", "import websocket"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if probe.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&probe.stderr).trim().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_streams_an_answer_in_a_real_browser() {
    if let Err(why) = browser_available() {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!in_ci, "CI=true but the browser test cannot run: {why}");
        eprintln!(
            "SKIPPED: no headless browser ({why}); apt-get install chromium, pip install websocket-client"
        );
        return;
    }
    let server = TestServer::start(
        EngineConfig::new().with_kv_memory_bytes(8 << 20),
        ServerConfig::new(MODEL),
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/page_check.py");
    let screenshot = concat!(env!("CARGO_TARGET_TMPDIR"), "/serve-chat-page.png");
    let _ = std::fs::remove_file(screenshot);
    let url = server.url("/");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .args([
                script,
                "--url",
                &url,
                "--model",
                MODEL,
                "--screenshot",
                screenshot,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
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
        output.status.success() && stdout.contains("chat page: all checks passed"),
        "the browser check failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
    let png = std::fs::read(screenshot).expect("screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    server.stop().await;
}
