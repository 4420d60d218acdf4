//! Interactive, streaming chat with an InternLM2 HuggingFace checkpoint.
//!
//! ```text
//! cargo run --release --example chat -- --model-dir internlm2-chat-1_8b [--system "..."]
//!     [--temperature 0.8 --top-p 0.8 --top-k 0 --min-p 0 --repetition-penalty 1.0 --seed 0]
//!     [--max-new-tokens 512] [--tools tools.json] [--interpreter] [--device cpu] [--dtype auto]
//!     [--quant f32|f16|bf16|q8_0|q4_0|q4_k] [--tokenizer tokenizer.model]
//! # a GGUF file (tokenizer from its metadata) or a quantized / AWQ checkpoint, as stored:
//! cargo run --release --example chat -- --model-dir internlm2-chat-1_8b-Q4_K_M.gguf
//! ```
//!
//! `--quant` quantizes a HuggingFace checkpoint while loading it (see `internlm2::quant`).
//!
//! Type a message and press enter; `/reset` starts over, `/quit` (or end of input) leaves.
//! With `--tools` (a JSON list of function schemas) or `--interpreter`, the model may call a
//! tool: the call is shown, and the next line you type is sent back as the tool's result.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceSpec};
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::chat::{self, Message, Tool, ToolCall};
use internlm2::checkpoint::gguf::tokenizer_from_gguf;
use internlm2::generate::{GenerationConfig, generate};
use internlm2::quant::{LoadOptions, QuantConfig};
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, Tokenizer};

#[derive(Parser)]
#[command(about = "Chat with an InternLM2 checkpoint")]
struct Args {
    /// HuggingFace model directory (config.json, safetensors, tokenizer.model), or a GGUF file.
    #[arg(long)]
    model_dir: PathBuf,
    /// System prompt.
    #[arg(long, default_value = "You are InternLM2, a helpful assistant.")]
    system: String,
    /// JSON file with a list of function schemas the model may call.
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Announce the code interpreter.
    #[arg(long)]
    interpreter: bool,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.8)]
    top_p: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
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
    /// Tokenizer file (default: the model directory's, or a GGUF file's metadata).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

fn main() -> ExitCode {
    run_program(Args::parse())
}

/// The chat loop, generic over the backend `--device` names.
impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        run_chat::<B>(self, device)
    }
}

fn run_chat<B: Kernels>(args: Args, device: B::Device) -> ProgramResult {
    let dtype = args.dtype.resolve(&args.device);
    let start = std::time::Instant::now();
    let options = LoadOptions::new(dtype).with_quant(args.quant);
    let model = InternLM2::<B>::load_with(&args.model_dir, &options, &device)?;
    let is_gguf = args
        .model_dir
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let tokenizer = match &args.tokenizer {
        Some(path) => Tokenizer::from_file(path)?,
        None if is_gguf => tokenizer_from_gguf(&args.model_dir)?,
        None => Tokenizer::from_dir(&args.model_dir)?,
    };
    eprintln!(
        "loaded {} ({} parameters) in {:.1}s",
        args.model_dir.display(),
        model.config().num_parameters(),
        start.elapsed().as_secs_f64()
    );

    let mut preamble = vec![Message::system(&args.system)];
    if let Some(path) = &args.tools {
        let schemas: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path)?)?;
        preamble.push(Message::plugins(&schemas)?);
    }
    if args.interpreter {
        preamble.push(Message::interpreter(
            "You can run Python code by calling the interpreter; its output comes back to you.",
        ));
    }
    let sampling = SamplingConfig::default()
        .with_temperature(args.temperature)
        .with_top_p(args.top_p)
        .with_top_k(args.top_k)
        .with_min_p(args.min_p)
        .with_repetition_penalty(args.repetition_penalty)
        .with_seed(args.seed);
    let config = GenerationConfig::chat(&tokenizer)
        .with_sampling(sampling)
        .with_max_new_tokens(args.max_new_tokens);

    let mut history = preamble.clone();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut pending_tool: Option<Tool> = None;
    loop {
        let prompt = match pending_tool {
            Some(Tool::Plugin) => "tool result> ",
            Some(Tool::Interpreter) => "interpreter output> ",
            None => "user> ",
        };
        print!("{prompt}");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "/quit" => break,
            "/reset" => {
                history = preamble.clone();
                pending_tool = None;
                continue;
            }
            "" => continue,
            _ => {}
        }
        history.push(match pending_tool.take() {
            Some(tool) => Message::environment(tool, line),
            None => Message::user(line),
        });

        let ids = chat::encode(&tokenizer, &history, true)?;
        print!("assistant> ");
        std::io::stdout().flush()?;
        let started = std::time::Instant::now();
        let out = generate(&model, Some(&tokenizer), vec![ids], &config, |event| {
            print!("{}", event.delta);
            std::io::stdout().flush().is_ok()
        })?;
        let out = out.into_iter().next().expect("one prompt, one output");
        let seconds = started.elapsed().as_secs_f64();
        println!();
        eprintln!(
            "[{} tokens, {:.1} tok/s]",
            out.tokens.len(),
            out.tokens.len() as f64 / seconds
        );

        let text = out.text.unwrap_or_default();
        match chat::parse_assistant(&text) {
            Ok(reply) => {
                match &reply.tool_call {
                    Some(ToolCall::Plugin { name, parameters }) => {
                        println!("[tool call] {name}({parameters})");
                        pending_tool = Some(Tool::Plugin);
                    }
                    Some(ToolCall::Interpreter { code }) => {
                        println!("[interpreter call]\n{code}");
                        pending_tool = Some(Tool::Interpreter);
                    }
                    None => {}
                }
                history.push(reply);
            }
            Err(e) => {
                eprintln!("[the model produced a malformed tool call: {e}]");
                history.push(Message::assistant(text));
            }
        }
    }
    Ok(())
}
