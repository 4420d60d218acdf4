//! Serves burn-collective's global orchestrator for a multi-node training run.
//!
//! ```text
//! cargo run --release --example orchestrator -- --port 3000
//! ```
//!
//! Every node then runs `pretrain` (or its own program with `DataParallel::join`) with
//! `--orchestrator ws://THIS_HOST:3000`. The orchestrator only introduces the nodes to each
//! other at every step; gradients travel node to node. Stop it with Ctrl-C when the run is over.

use std::process::ExitCode;

use clap::Parser;
use internlm2::backends::program::exit_code;

#[derive(Parser)]
#[command(about = "Serve the global orchestrator of a multi-node training run")]
struct Args {
    /// Port to listen on (all interfaces).
    #[arg(long, default_value_t = 3000)]
    port: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    quiet_logs();
    eprintln!(
        "orchestrator listening on ws://0.0.0.0:{} (Ctrl-C to stop)",
        args.port
    );
    exit_code(internlm2_train::serve_orchestrator(args.port))
}

/// burn-communication installs an INFO-level log subscriber (several lines per step) unless the
/// program has one: install a quieter one first (`RUST_LOG` when set, warnings otherwise).
fn quiet_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
