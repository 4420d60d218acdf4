//! Load test (bounded, loopback only, stops by itself): two rounds of 64 concurrent streaming
//! clients x 4 requests of mixed prompt and answer lengths, a quarter of the clients hanging up
//! early on one request. Every completed stream must be complete and well formed, greedy and
//! seeded answers must equal the same requests run one at a time beforehand, the KV pool must
//! be empty after each round, and the process's RSS must not grow from round 1 to round 2.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{MODEL, TestServer, fold_chat_stream, metric, sse_payloads, wait_for_metrics};
use futures_util::StreamExt;
use internlm2_serve::engine::EngineConfig;
use internlm2_serve::server::ServerConfig;
use serde_json::{Value, json};

const CLIENTS: usize = 64;
const REQUESTS_PER_CLIENT: usize = 4;
const MAX_TOKENS: [u64; 4] = [6, 12, 24, 40];

/// The request for (client, k): one of 8 prompts of 10 to ~300 tokens, one of 4 lengths,
/// greedy or (every third) seeded sampling.
fn request(client: usize, k: usize) -> Value {
    let variant = (client * REQUESTS_PER_CLIENT + k) % 24;
    let prompt = variant % 8;
    let words = [
        "tell me",
        "a story about",
        "the sea",
        "and ships",
        "in winter",
    ];
    let text: Vec<&str> = (0..(prompt * prompt * 4 + 2))
        .map(|i| words[i % words.len()])
        .collect();
    let mut body = json!({
        "model": MODEL,
        "stream": true,
        "max_tokens": MAX_TOKENS[variant % 4],
        "messages": [
            {"role": "system", "content": "You are a storyteller."},
            {"role": "user", "content": format!("#{prompt}: {}", text.join(" "))}
        ],
    });
    if variant.is_multiple_of(3) {
        body["temperature"] = json!(0.8);
        body["seed"] = json!(variant);
    } else {
        body["temperature"] = json!(0);
    }
    body
}

/// The key of a request's expected answer.
fn key(body: &Value) -> String {
    let mut b = body.clone();
    b.as_object_mut().unwrap().remove("stream");
    b.to_string()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs one client's requests; returns (completed, hung up).
async fn run_client(
    http: reqwest::Client,
    url: String,
    client: usize,
    expected: std::sync::Arc<HashMap<String, (String, String)>>,
) -> (usize, usize) {
    let (mut completed, mut hung_up) = (0, 0);
    for k in 0..REQUESTS_PER_CLIENT {
        let body = request(client, k);
        let response = http.post(&url).json(&body).send().await.expect("send");
        assert_eq!(response.status(), 200, "client {client} request {k}");
        let mut stream = response.bytes_stream();
        let hang_up = client % 4 == 3 && k == client % REQUESTS_PER_CLIENT;
        let mut raw = Vec::new();
        let mut chunks = 0;
        while let Some(bytes) = stream.next().await {
            raw.extend_from_slice(&bytes.expect("body"));
            chunks += 1;
            if hang_up && chunks >= 2 {
                break;
            }
        }
        if hang_up {
            drop(stream);
            hung_up += 1;
            continue;
        }
        let text = String::from_utf8(raw).expect("UTF-8 stream");
        let (choices, _) = fold_chat_stream(&sse_payloads(&text));
        assert_eq!(choices.len(), 1);
        let (content, finish) = &expected[&key(&body)];
        assert_eq!(
            (
                choices[0]["content"].as_str().unwrap(),
                choices[0]["finish_reason"].as_str().unwrap()
            ),
            (content.as_str(), finish.as_str()),
            "client {client} request {k}: batched answer differs from the sequential one"
        );
        completed += 1;
    }
    (completed, hung_up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streaming_clients_twice() {
    let started = Instant::now();
    let server = TestServer::start(
        EngineConfig::new()
            .with_kv_memory_bytes(32 << 20)
            .with_max_running(32),
        ServerConfig::new(MODEL),
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let url = server.url("/v1/chat/completions");

    // The answers of every distinct request, one at a time (not streamed).
    let mut expected = HashMap::new();
    for client in 0..CLIENTS {
        for k in 0..REQUESTS_PER_CLIENT {
            let body = request(client, k);
            let key = key(&body);
            if expected.contains_key(&key) {
                continue;
            }
            let mut whole = body.clone();
            whole["stream"] = json!(false);
            let reply: Value = http
                .post(&url)
                .json(&whole)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let choice = &reply["choices"][0];
            expected.insert(
                key,
                (
                    choice["message"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    choice["finish_reason"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    let expected = std::sync::Arc::new(expected);
    eprintln!(
        "{} sequential reference answers in {:.1}s",
        expected.len(),
        started.elapsed().as_secs_f64()
    );

    let mut rss = Vec::new();
    for round in 1..=2 {
        let round_start = Instant::now();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(run_client(
                    http.clone(),
                    url.clone(),
                    client,
                    expected.clone(),
                ))
            })
            .collect();
        let (mut completed, mut hung_up) = (0, 0);
        for task in tasks {
            let (c, h) = task.await.expect("client task");
            completed += c;
            hung_up += h;
        }
        assert_eq!(completed + hung_up, CLIENTS * REQUESTS_PER_CLIENT);
        assert_eq!(hung_up, CLIENTS / 4);
        let metrics = wait_for_metrics(&http, &server, Duration::from_secs(60), |m| {
            metric(m, "internlm2_kv_blocks_used") == 0.0
                && metric(m, "internlm2_requests_running") == 0.0
                && metric(m, "internlm2_requests_waiting") == 0.0
        })
        .await;
        assert!(
            metric(
                &metrics,
                "internlm2_requests_finished_total{reason=\"cancelled\"}"
            ) >= (round * CLIENTS / 4) as f64
        );
        rss.push(rss_bytes());
        eprintln!(
            "round {round}: {completed} complete, {hung_up} hung up, {:.1}s, KV blocks back to 0, RSS {:.1} MiB",
            round_start.elapsed().as_secs_f64(),
            rss[round - 1] as f64 / (1 << 20) as f64
        );
    }
    // Round 2 reuses what round 1 allocated: no growth beyond allocator noise.
    assert!(rss[0] > 0, "VmRSS readable");
    assert!(
        rss[1] <= rss[0] + rss[0] / 10 + (16 << 20),
        "RSS grew from {} to {} bytes",
        rss[0],
        rss[1]
    );
    server.stop().await;
    eprintln!("load test in {:.1}s", started.elapsed().as_secs_f64());
}
