//! An interactive InternLM2 agent: the model calls plugins and a sandboxed Python interpreter,
//! and every call and result is shown.
//!
//! ```text
//! cargo run --release --example agent -- --model-dir internlm2-chat-1_8b [--interpreter]
//!     [--plugins examples/data/agent/tools.json] [--prompt "..."] [--max-turns 8]
//!     [--timeout 30] [--no-sandbox] [--allow-network] [--work-dir DIR]
//!     [--temperature 0.8 --top-p 0.8 --seed 0 --max-new-tokens 512] [--device cpu]
//! ```
//!
//! Each line you type is a user turn (`/reset` starts over, `/quit` or end of input leaves);
//! with `--prompt` one turn runs and the program exits. A plugins file is a JSON list of
//! function objects (`name`, `description`, `parameters` as a JSON schema) each with a
//! `command` (argv) that runs on the host: it gets the call's arguments as JSON on stdin and
//! its stdout is the result (JSON or text); see `examples/data/agent/tools.json`.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceSpec};
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::chat::ToolCall;
use internlm2::generate::GenerationConfig;
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, Tokenizer};
use internlm2_agent::{
    Agent, AgentConfig, AgentEvent, CodeInterpreter, InterpreterConfig, ModelGenerator, Plugin,
    PluginError, PluginRegistry, SandboxConfig,
};
use serde_json::Value;

#[derive(Parser)]
#[command(about = "A tool-using InternLM2 agent with a sandboxed code interpreter")]
struct Args {
    /// HuggingFace model directory (config.json, safetensors, tokenizer.model).
    #[arg(long)]
    model_dir: PathBuf,
    /// System prompt.
    #[arg(
        long,
        default_value = "You are InternLM2-Chat, a harmless AI assistant."
    )]
    system: String,
    /// Give the model the Python code interpreter.
    #[arg(long)]
    interpreter: bool,
    /// JSON list of plugins (function objects with a `command`).
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Run this one user turn and exit (instead of reading stdin).
    #[arg(long)]
    prompt: Option<String>,
    /// Most model turns per user turn.
    #[arg(long, default_value_t = 8)]
    max_turns: usize,
    /// Wall-clock limit of one code cell, in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Run the interpreter without the sandbox (the code gets your rights and network).
    #[arg(long)]
    no_sandbox: bool,
    /// Let sandboxed code use the network.
    #[arg(long)]
    allow_network: bool,
    /// The interpreter's work directory (default: a private temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.8)]
    top_p: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most tokens per model turn.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto (bf16 on CUDA, f32 elsewhere), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
}

fn main() -> ExitCode {
    run_program(Args::parse())
}

/// The body, generic over the backend `--device` names.
impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        run::<B>(self, device)
    }
}

/// A plugin whose handler runs a host command: arguments as JSON on stdin, result on stdout.
fn command_plugin(spec: &Value) -> Result<Plugin, Box<dyn std::error::Error>> {
    let name = spec["name"].as_str().ok_or("a plugin without a \"name\"")?;
    let argv: Vec<String> = serde_json::from_value(spec["command"].clone())
        .map_err(|_| format!("plugin `{name}`: \"command\" must be a list of strings"))?;
    if argv.is_empty() {
        return Err(format!("plugin `{name}`: empty \"command\"").into());
    }
    let timeout = spec["timeout_s"].as_f64().unwrap_or(30.0);
    let plugin = Plugin::new(
        name,
        spec["description"].as_str().unwrap_or_default(),
        spec.get("parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        move |arguments| {
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| PluginError::new(format!("cannot run {}: {e}", argv[0])))?;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(arguments.to_string().as_bytes());
            }
            let mut stdout = Vec::new();
            if let Some(out) = child.stdout.take() {
                let _ = out.take(1 << 20).read_to_end(&mut stdout);
            }
            let output = child.wait_with_output().map_err(PluginError::new)?;
            if !output.status.success() {
                return Err(PluginError::new(format!(
                    "the tool failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            let text = String::from_utf8_lossy(&stdout).trim().to_string();
            Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
        },
    )?;
    Ok(plugin.with_timeout(Duration::from_secs_f64(timeout)))
}

fn load_plugins(path: &PathBuf) -> Result<PluginRegistry, Box<dyn std::error::Error>> {
    let specs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path)?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut registry = PluginRegistry::new();
    for spec in &specs {
        registry.register(command_plugin(spec)?)?;
    }
    Ok(registry)
}

fn show(event: &AgentEvent) {
    match event {
        AgentEvent::TurnStarted { turn } if *turn > 1 => print!("assistant> "),
        AgentEvent::TurnStarted { .. } => {}
        AgentEvent::TextDelta(text) => print!("{text}"),
        AgentEvent::ToolCall(ToolCall::Plugin { name, parameters }) => {
            println!("\n[plugin call] {name} {parameters}");
        }
        AgentEvent::ToolCall(ToolCall::Interpreter { code }) => {
            println!("\n[interpreter call]\n```python\n{code}\n```");
        }
        AgentEvent::MalformedCall { reason, .. } => println!("\n[malformed call] {reason}"),
        AgentEvent::ToolResult {
            content,
            is_error,
            figures,
            ..
        } => {
            let label = if *is_error {
                "tool error"
            } else {
                "tool result"
            };
            println!("[{label}]\n{content}");
            for figure in figures {
                println!("[figure] {}", figure.display());
            }
        }
        AgentEvent::FinalAnswer(_) => println!(),
    }
    let _ = std::io::stdout().flush();
}

fn run<B: Kernels>(args: Args, device: B::Device) -> Result<(), Box<dyn std::error::Error>> {
    let dtype = args.dtype.resolve(&args.device);
    let started = std::time::Instant::now();
    let model = InternLM2::<B>::load(&args.model_dir, dtype, &device)?;
    let tokenizer = Tokenizer::from_dir(&args.model_dir)?;
    eprintln!(
        "loaded {} ({} parameters) in {:.1}s",
        args.model_dir.display(),
        model.config().num_parameters(),
        started.elapsed().as_secs_f64()
    );
    let sampling = SamplingConfig::default()
        .with_temperature(args.temperature)
        .with_top_p(args.top_p)
        .with_seed(args.seed);
    let generation = GenerationConfig::default()
        .with_sampling(sampling)
        .with_max_new_tokens(args.max_new_tokens);
    let generator = ModelGenerator::new(&model, &tokenizer, generation)?;
    let mut agent = Agent::new(generator).with_config(
        AgentConfig::default()
            .with_system(args.system.clone())
            .with_max_turns(args.max_turns),
    );
    if let Some(path) = &args.plugins {
        let plugins = load_plugins(path)?;
        eprintln!(
            "plugins: {}",
            plugins
                .schemas()
                .iter()
                .map(|s| s["name"].to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        agent = agent.with_plugins(plugins);
    }
    if args.interpreter {
        let sandbox = if args.no_sandbox {
            SandboxConfig::disabled()
        } else {
            SandboxConfig::default().with_network(args.allow_network)
        };
        let mut config = InterpreterConfig::default()
            .with_timeout(Duration::from_secs_f64(args.timeout))
            .with_sandbox(sandbox);
        config.work_dir = args.work_dir.clone();
        let interpreter = CodeInterpreter::start(config)?;
        eprintln!(
            "interpreter: Python {} in {} (matplotlib: {})\nsandbox:\n{}",
            interpreter.info().python_version,
            interpreter.work_dir().display(),
            interpreter
                .info()
                .matplotlib
                .as_deref()
                .unwrap_or("not installed: no figures"),
            interpreter.sandbox_report()
        );
        agent = agent.with_interpreter(interpreter);
    }

    if let Some(prompt) = &args.prompt {
        println!("user> {prompt}");
        print!("assistant> ");
        let outcome = agent.run(prompt.clone(), show)?;
        println!();
        eprintln!(
            "[{:?} after {} turns, {} tool calls]",
            outcome.finish, outcome.turns, outcome.tool_calls
        );
        return Ok(());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("user> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "/quit" => break,
            "/reset" => {
                agent.reset()?;
                continue;
            }
            "" => continue,
            _ => {}
        }
        print!("assistant> ");
        let outcome = agent.run(line, show)?;
        println!();
        eprintln!(
            "[{:?} after {} turns, {} tool calls]",
            outcome.finish, outcome.turns, outcome.tool_calls
        );
    }
    Ok(())
}
