//! An OpenAI-compatible server for an InternLM2 checkpoint: the continuous-batching engine
//! behind the `internlm2_serve::server` router, plus the chat page at `/`.
//!
//! ```text
//! cargo run --release --features server --example serve -- --model-dir internlm2-chat-1_8b \
//!     [--host 127.0.0.1 --port 8000 --device cpu --dtype auto --quant f32 --kv-memory 2GiB \
//!      --max-running 32 --max-waiting 1024 --api-key KEY --model-name NAME \
//!      --interpreter --interpreter-timeout 10 --interpreter-max-turns 5]
//! ```
//!
//! Then, e.g. `curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type:
//! application/json' -d '{"model": "internlm2-chat-1_8b", "messages": [{"role": "user",
//! "content": "Hi"}]}'`, any OpenAI client with `base_url="http://127.0.0.1:8000/v1"`, or open
//! `http://127.0.0.1:8000/` in a browser. Ctrl-C (or SIGTERM) stops accepting requests, lets
//! running ones finish (30 s at most) and exits. With `--port 0` the system picks a free port;
//! the first line printed says which (`listening on http://...`).
//!
//! `--interpreter` (off by default) also serves `POST /v1/agent/chat`: the agent loop runs on
//! the server with InternLM2's sandboxed Python code interpreter (see `docs/agents.md`,
//! "Serving the agent"). It is off by default because every such request runs model-written
//! code on this host; the sandbox report is printed at start. The API key covers it too.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceSpec};
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::checkpoint::gguf::tokenizer_from_gguf;
use internlm2::generate::GenerationConfig;
use internlm2::quant::{LoadOptions, QuantConfig};
use internlm2::{InternLM2, Tokenizer};
use internlm2_agent::http::{AgentService, agent_router};
use internlm2_agent::{CodeInterpreter, InterpreterConfig};
use internlm2_serve::engine::{Engine, EngineConfig};
use internlm2_serve::server::{self, ServerConfig};

#[derive(Parser)]
#[command(about = "Serve an InternLM2 checkpoint over the OpenAI API")]
struct Args {
    /// HuggingFace model directory (config.json, safetensors, tokenizer.model), or a .gguf file.
    #[arg(long)]
    model_dir: PathBuf,
    /// Tokenizer file (default: the model directory's, or a GGUF file's metadata).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Address to listen on (keep 127.0.0.1 unless a proxy in front handles TLS and access).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 = any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto (bf16 on CUDA, f32 elsewhere), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
    /// Weight storage when loading a HuggingFace checkpoint: f32 (dense in --dtype), f16, bf16,
    /// q8_0, q4_0 or q4_k. GGUF files and quantized checkpoints load as stored.
    #[arg(long, default_value = "f32")]
    quant: QuantConfig,
    /// KV cache budget: bytes, or with a unit (512MiB, 2GiB, 1.5GB).
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    kv_memory: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 32)]
    max_running: usize,
    /// Most requests waiting; more are answered 429.
    #[arg(long, default_value_t = 1024)]
    max_waiting: usize,
    /// Prompt tokens processed per step.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Require `Authorization: Bearer <key>` (also read from $INTERNLM2_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// The model id clients send (default: the directory's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Also serve `POST /v1/agent/chat`: the agent loop with the sandboxed Python code
    /// interpreter, run on this host (off by default: the model's code runs here).
    #[arg(long)]
    interpreter: bool,
    /// Wall-clock limit of one code cell, in seconds (with --interpreter).
    #[arg(long, default_value_t = 10.0)]
    interpreter_timeout: f64,
    /// Most model turns of one agent request, each tool call costing one (with --interpreter).
    #[arg(long, default_value_t = AgentService::DEFAULT_MAX_TURNS)]
    interpreter_max_turns: usize,
}

/// `2GiB`, `512MiB`, `1.5GB`, `1000000`.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("not a size: {text:?}"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let bytes = number * scale;
    if bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64 {
        Ok(bytes as usize)
    } else {
        Err(format!("size out of range: {text:?}"))
    }
}

fn main() -> ExitCode {
    // Library logs (engine, server) to stderr; RUST_LOG=debug for more.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    run_program(Args::parse())
}

impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        serve::<B>(self, device)
    }
}

/// The interpreter's settings for `--interpreter` (the default sandbox), after checking that
/// it starts: its sandbox report is printed, so the operator sees which layers are active.
fn interpreter_config(args: &Args) -> Result<InterpreterConfig, Box<dyn std::error::Error>> {
    let timeout = Duration::try_from_secs_f64(args.interpreter_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            format!(
                "--interpreter-timeout must be a positive number of seconds, got {}",
                args.interpreter_timeout
            )
        })?;
    if args.interpreter_max_turns == 0 {
        return Err("--interpreter-max-turns must be at least 1".into());
    }
    let config = InterpreterConfig::default().with_timeout(timeout);
    let probe = CodeInterpreter::start(config.clone())?;
    eprintln!(
        "agent route: POST /v1/agent/chat runs model-written Python on this host \
         (Python {}, matplotlib: {}, {:.0} s per cell, {} turns at most)\nsandbox:\n{}",
        probe.info().python_version,
        probe
            .info()
            .matplotlib
            .as_deref()
            .unwrap_or("not installed: no figures"),
        timeout.as_secs_f64(),
        args.interpreter_max_turns,
        probe.sandbox_report()
    );
    Ok(config)
}

fn serve<B: Kernels>(args: Args, device: B::Device) -> ProgramResult {
    // Checked before the model loads, so a host without Python fails at once.
    let interpreter = if args.interpreter {
        Some(interpreter_config(&args)?)
    } else {
        None
    };
    let dtype = args.dtype.resolve(&args.device);
    let start = std::time::Instant::now();
    let options = LoadOptions::new(dtype).with_quant(args.quant);
    let model = InternLM2::<B>::load_with(&args.model_dir, &options, &device)?;
    let is_gguf = args
        .model_dir
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let tokenizer = Arc::new(match &args.tokenizer {
        Some(path) => Tokenizer::from_file(path)?,
        None if is_gguf => tokenizer_from_gguf(&args.model_dir)?,
        None => Tokenizer::from_dir(&args.model_dir)?,
    });
    eprintln!(
        "loaded {} ({} parameters) in {:.1}s",
        args.model_dir.display(),
        model.config().num_parameters(),
        start.elapsed().as_secs_f64()
    );
    let engine = Engine::start(
        model,
        Some(tokenizer),
        EngineConfig::new()
            .with_kv_memory_bytes(args.kv_memory)
            .with_max_running(args.max_running)
            .with_max_waiting(args.max_waiting)
            .with_prefill_chunk(args.prefill_chunk),
    )?;
    let name = args.model_name.clone().unwrap_or_else(|| {
        args.model_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "internlm2".into())
    });
    let mut config = ServerConfig::new(name.clone());
    // A key on the command line shows in `ps`; the environment does not.
    let key = args.api_key.clone().or_else(|| {
        std::env::var("INTERNLM2_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    });
    if let Some(key) = &key {
        config = config.with_api_key(key.clone());
    }
    let mut app = server::router(engine.clone(), config)?;
    if let Some(interpreter) = interpreter {
        // The OpenAI router's key check covers its own routes only: the agent route gets the
        // same key.
        let agent = AgentService::engine(
            engine.clone(),
            GenerationConfig::default().with_max_new_tokens(1024),
            interpreter,
        )
        .with_max_turns(args.interpreter_max_turns)
        .with_api_key(key.clone());
        app = app.merge(agent_router(agent));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
        let address = listener.local_addr()?;
        println!("listening on http://{address} (model {name:?})");
        eprintln!("chat page: http://{address}/   OpenAI base URL: http://{address}/v1");
        if args.interpreter {
            eprintln!("agent route (code interpreter on): POST http://{address}/v1/agent/chat");
        }
        server::serve(listener, app, engine, server::shutdown_signal()).await?;
        eprintln!("stopped");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
