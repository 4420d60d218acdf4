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
    internlm2_rs::quiet_logs();
    eprintln!(
        "orchestrator listening on ws://0.0.0.0:{} (Ctrl-C to stop)",
        args.port
    );
    exit_code(internlm2_train::serve_orchestrator(args.port))
}
