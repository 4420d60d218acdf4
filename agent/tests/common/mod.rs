//! Shared helpers of the agent's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use internlm2::Tokenizer;
use internlm2_agent::{CodeInterpreter, InterpreterConfig, ResourceLimits, SandboxConfig};

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

/// The released InternLM2 tokenizer (with the chat tokens).
pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("tokenizer/tokenizer_internlm2.model")).unwrap()
}

/// An interpreter with short timeouts and small limits, sandboxed as by default.
pub fn interpreter(timeout_s: f64) -> CodeInterpreter {
    interpreter_with(timeout_s, SandboxConfig::default())
}

/// A Python that uid 65534 can run when the host is root: the system one where it exists (a
/// Python under root's home, such as pyenv's, cannot drop root; the kernel does not apply the
/// process limit to uid 0).
pub fn system_python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// An interpreter with short timeouts and the given sandbox (its limits made small).
pub fn interpreter_with(timeout_s: f64, sandbox: SandboxConfig) -> CodeInterpreter {
    interpreter_on("python3", timeout_s, sandbox)
}

/// [`interpreter_with`] on a given Python.
pub fn interpreter_on(python: &str, timeout_s: f64, sandbox: SandboxConfig) -> CodeInterpreter {
    let limits = ResourceLimits {
        address_space_bytes: Some(768 << 20),
        cpu_seconds: Some(60),
        processes: Some(32),
        ..ResourceLimits::default()
    };
    let config = InterpreterConfig::default()
        .with_python(python)
        .with_timeout(Duration::from_secs_f64(timeout_s))
        .with_grace(Duration::from_secs(1))
        .with_sandbox(sandbox.with_limits(limits));
    let interpreter = CodeInterpreter::start(config).expect("python3 starts");
    eprintln!("sandbox:\n{}", interpreter.sandbox_report());
    interpreter
}
