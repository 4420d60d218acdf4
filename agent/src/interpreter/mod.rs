//! The code interpreter: a persistent, sandboxed `python3` process that runs the model's code
//! cells as a notebook would, speaking InternLM2's interpreter protocol.
//!
//! - State persists across cells (one process; [`CodeInterpreter::reset`] starts a fresh one).
//! - The value of a cell's last expression is shown, as in a notebook; `input()` and reading
//!   stdin fail with a clear message; `!shell` lines and `%magics` are refused.
//! - matplotlib figures left open by a cell are saved into the work dir and reported by path
//!   (`![image](figure-3-1.png)`), when matplotlib is installed ([`InterpreterInfo`] says).
//! - A wall-clock timeout per cell is enforced from the host: SIGINT, a grace period, then
//!   SIGKILL of the whole process group and a fresh interpreter; the model is told which.
//! - Output (stdout and stderr, subprocesses included) is drained continuously and capped
//!   ([`format`]); a traceback is cut to start at its first error line.
//! - The sandbox ([`crate::sandbox`]) is on by default.
//!
//! ```no_run
//! use internlm2_agent::interpreter::{CodeInterpreter, InterpreterConfig};
//! let mut python = CodeInterpreter::start(InterpreterConfig::default())?;
//! print!("{}", python.sandbox_report());
//! python.exec("x = 21")?;
//! assert_eq!(python.exec("x * 2")?.text, "42");
//! # Ok::<(), internlm2_agent::InterpreterError>(())
//! ```

pub mod format;
mod output;
#[cfg(unix)]
mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use format::{DEFAULT_MAX_CHARS, cut_traceback};

use crate::error::InterpreterError;
use crate::sandbox::{Layer, LayerStatus, SandboxConfig, SandboxReport};

/// InternLM2's interpreter system prompt, word for word (InternLM `chat/chat_format.md`, the
/// `system name=<|interpreter|>` turn of the code-interpreter example).
pub const INTERPRETER_PROMPT: &str = "You now have access to a Jupyter notebook environment supporting Python code execution. Just send code to python to run in this stateful environment. This feature is suitable for:\n- Data analysis or processing (such as data manipulation and graphic creation)\n- Complex calculations (such as math and physics problems)\n- Programming examples (for understanding programming concepts or language features)\n- Text processing and analysis (including text analysis and natural language processing)\n- Machine learning and data science (model training and data visualization)\n- File operations and data import (handling CSV, JSON, etc. formats)";

/// Settings of a [`CodeInterpreter`].
#[derive(Debug, Clone, PartialEq)]
pub struct InterpreterConfig {
    /// The Python executable: a path, or a name looked up on the host's `PATH`.
    pub python: String,
    /// The work directory (`None`: a private temporary one, removed on drop). When the host
    /// runs as root and the sandbox drops to uid 65534, the directory is given to that uid.
    pub work_dir: Option<PathBuf>,
    /// Wall-clock limit of one cell (default 30 s).
    pub timeout: Duration,
    /// How long a cell may take to stop after SIGINT before the process group is killed
    /// (default 2 s).
    pub grace: Duration,
    /// Cap of the result text in characters (default 2,048, as InternLM's Lagent).
    pub max_output_chars: usize,
    /// The sandbox (on by default).
    pub sandbox: SandboxConfig,
}

impl Default for InterpreterConfig {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            work_dir: None,
            timeout: Duration::from_secs(30),
            grace: Duration::from_secs(2),
            max_output_chars: DEFAULT_MAX_CHARS,
            sandbox: SandboxConfig::default(),
        }
    }
}

impl InterpreterConfig {
    /// Sets the per-cell timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the grace period after SIGINT.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets the sandbox.
    pub fn with_sandbox(mut self, sandbox: SandboxConfig) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Uses this work directory (created if missing).
    pub fn with_work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Sets the Python executable.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }
}

/// What the interpreter process reported when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpreterInfo {
    /// The Python version (e.g. `3.11.7`).
    pub python_version: String,
    /// matplotlib's version, or `None` when it is not installed (figures are then unavailable).
    pub matplotlib: Option<String>,
}

/// How a cell ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    /// It ran to its end (possibly raising: see [`ExecOutcome::error`]).
    Completed,
    /// It hit the timeout and stopped on SIGINT; the interpreter's state is kept.
    Interrupted,
    /// The interpreter was restarted (state lost); the text says why.
    Restarted(String),
}

/// The result of one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutcome {
    /// What the model reads in the `environment name=<|interpreter|>` turn.
    pub text: String,
    /// stdout and stderr, interleaved as written (with a notice where bytes were dropped).
    pub output: String,
    /// Bytes written to stdout and stderr in all.
    pub output_bytes: u64,
    /// The repr of the last expression's value (when not `None`).
    pub value: Option<String>,
    /// The traceback (cut at its first error line), or a refusal message.
    pub error: Option<String>,
    /// Figures saved (absolute paths).
    pub figures: Vec<PathBuf>,
    /// How the cell ended.
    pub status: ExecStatus,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl ExecOutcome {
    /// Whether the cell failed (raised, was refused, timed out or crashed the interpreter).
    pub fn is_error(&self) -> bool {
        self.error.is_some() || self.status != ExecStatus::Completed
    }
}

enum WorkDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(dir) => dir.path(),
            WorkDir::Given(path) => path,
        }
    }
}

/// A persistent Python interpreter (see the module docs).
pub struct CodeInterpreter {
    config: InterpreterConfig,
    /// The sandbox in force (`drop_root` cleared when uid 65534 cannot run this Python).
    sandbox: SandboxConfig,
    /// Why the process keeps root, when it does although asked not to.
    root_kept: Option<String>,
    python: PathBuf,
    work_dir: WorkDir,
    #[cfg(unix)]
    process: Option<process::PythonProcess>,
    report: SandboxReport,
    info: InterpreterInfo,
}

impl std::fmt::Debug for CodeInterpreter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeInterpreter")
            .field("python", &self.python)
            .field("work_dir", &self.work_dir.path())
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Finds `python` on the host's `PATH` (or checks the path it names).
fn find_python(python: &str) -> Result<PathBuf, InterpreterError> {
    if python.contains('/') {
        let path = PathBuf::from(python);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(InterpreterError::PythonNotFound(python.into()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(python))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| InterpreterError::PythonNotFound(python.into()))
}

/// The real executable and the standard-library prefix behind a Python command (a pyenv
/// shim, a symlink), asked of Python itself; the command as given when it cannot say.
fn resolve_python(python: &Path) -> (PathBuf, Option<PathBuf>) {
    let asked = std::process::Command::new(python)
        .args([
            "-I",
            "-c",
            "import sys; print(sys.executable); print(sys.base_prefix)",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(out) = asked
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        if let (Some(exe), Some(prefix)) = (lines.next(), lines.next()) {
            let exe = PathBuf::from(exe);
            if exe.is_file() {
                return (exe, Some(PathBuf::from(prefix)));
            }
        }
    }
    (python.to_path_buf(), None)
}

/// Whether users other than the owner can reach and run these paths (every ancestor
/// searchable, the path itself readable and executable).
#[cfg(unix)]
fn others_can_use(paths: &[&Path]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    for path in paths {
        let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for dir in real.ancestors().skip(1) {
            if mode(dir)? & 0o001 == 0 {
                return Err(format!(
                    "{} is not searchable by other users",
                    dir.display()
                ));
            }
        }
        if mode(&real)? & 0o005 != 0o005 {
            return Err(format!("{} is not readable by other users", real.display()));
        }
    }
    Ok(())
}

impl CodeInterpreter {
    /// Creates the work directory and starts the interpreter (so a missing Python or, in
    /// strict mode, a missing sandbox layer is reported here).
    pub fn start(config: InterpreterConfig) -> Result<Self, InterpreterError> {
        if !cfg!(unix) {
            return Err(InterpreterError::Unsupported(
                "the interpreter drives python3 through Unix pipes and signals",
            ));
        }
        let (python, prefix) = resolve_python(&find_python(&config.python)?);
        let mut sandbox = config.sandbox.clone();
        let mut root_kept = None;
        #[cfg(unix)]
        if sandbox.enabled && sandbox.drop_root && nix::unistd::Uid::effective().is_root() {
            let mut needed = vec![python.as_path()];
            needed.extend(prefix.as_deref());
            if let Err(why) = others_can_use(&needed) {
                let reason = format!(
                    "{why}: uid 65534 could not run {}, so the code keeps uid 0 inside its user \
                     namespace (install Python where other users can run it to drop root)",
                    python.display()
                );
                if sandbox.strict {
                    return Err(crate::error::SandboxError::LayerUnavailable {
                        layer: Layer::Unprivileged,
                        reason,
                    }
                    .into());
                }
                log::warn!("{reason}");
                sandbox.drop_root = false;
                root_kept = Some(reason);
            }
        }
        let work_dir = match &config.work_dir {
            None => WorkDir::Temp(
                tempfile::Builder::new()
                    .prefix("internlm2-agent-")
                    .tempdir()
                    .map_err(|source| InterpreterError::WorkDir {
                        path: std::env::temp_dir(),
                        source,
                    })?,
            ),
            Some(path) => WorkDir::Given(path.clone()),
        };
        prepare_work_dir(work_dir.path(), &sandbox)?;
        let mut interpreter = Self {
            config,
            sandbox,
            root_kept,
            python,
            work_dir,
            #[cfg(unix)]
            process: None,
            report: SandboxReport::default(),
            info: InterpreterInfo {
                python_version: String::new(),
                matplotlib: None,
            },
        };
        interpreter.ensure_running()?;
        Ok(interpreter)
    }

    /// The work directory (the cells' cwd; figures are saved here).
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// The settings.
    pub fn config(&self) -> &InterpreterConfig {
        &self.config
    }

    /// The Python executable that runs the cells (the real binary behind a shim).
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Which sandbox layers are in force for the current process.
    pub fn sandbox_report(&self) -> &SandboxReport {
        &self.report
    }

    /// Python's and matplotlib's versions.
    pub fn info(&self) -> &InterpreterInfo {
        &self.info
    }

    /// The interpreter process's pid (its process group id too), when it runs.
    pub fn pid(&self) -> Option<u32> {
        #[cfg(unix)]
        {
            self.process
                .as_ref()
                .filter(|p| p.is_alive())
                .map(|p| p.hello().pid as u32)
        }
        #[cfg(not(unix))]
        None
    }

    /// Kills the interpreter and starts a fresh one: variables and imports are gone, files in
    /// the work directory stay.
    pub fn reset(&mut self) -> Result<(), InterpreterError> {
        #[cfg(unix)]
        {
            self.process = None;
        }
        self.ensure_running()
    }

    fn ensure_running(&mut self) -> Result<(), InterpreterError> {
        #[cfg(unix)]
        {
            if self.process.as_ref().is_some_and(|p| p.is_alive()) {
                return Ok(());
            }
            self.process = None;
            let (process, report) =
                process::PythonProcess::spawn(&self.python, self.work_dir.path(), &self.sandbox)?;
            self.info = InterpreterInfo {
                python_version: process.hello().python.clone(),
                matplotlib: process.hello().matplotlib.clone(),
            };
            self.report = self.full_report(report);
            self.process = Some(process);
        }
        Ok(())
    }

    /// The child's layers plus the two the host sets up itself.
    fn full_report(&self, child: Option<SandboxReport>) -> SandboxReport {
        let Some(mut report) = child else {
            let mut report = SandboxReport::default();
            for layer in Layer::ALL {
                report.set(layer, LayerStatus::Disabled);
            }
            return report;
        };
        if let Some(reason) = &self.root_kept {
            report.set(
                Layer::Unprivileged,
                LayerStatus::Unavailable(reason.clone()),
            );
        }
        let allowed = &self.sandbox.allow_env;
        report.set(
            Layer::Environment,
            LayerStatus::Active(if allowed.is_empty() {
                "rebuilt from scratch: PATH, LANG, HOME, TMPDIR and the interpreter's own settings"
                    .into()
            } else {
                format!(
                    "rebuilt from scratch, plus the allowed {}",
                    allowed.join(", ")
                )
            }),
        );
        report.set(
            Layer::WorkDir,
            LayerStatus::Active(match &self.work_dir {
                WorkDir::Temp(dir) => {
                    format!("private temporary directory {}", dir.path().display())
                }
                WorkDir::Given(path) => {
                    format!("directory {} (given by the caller)", path.display())
                }
            }),
        );
        report
    }

    /// Runs one cell (the code of an interpreter call, without fences). Errors are host-side
    /// failures only (the interpreter cannot be started); everything the code does, raises or
    /// breaks comes back in the [`ExecOutcome`].
    pub fn exec(&mut self, code: &str) -> Result<ExecOutcome, InterpreterError> {
        #[cfg(unix)]
        {
            self.ensure_running()?;
            let process = self.process.as_mut().expect("started above");
            let run = process.run(code, self.config.timeout, self.config.grace);
            Ok(self.outcome(run))
        }
        #[cfg(not(unix))]
        {
            let _ = code;
            Err(InterpreterError::Unsupported("needs a Unix host"))
        }
    }

    #[cfg(unix)]
    fn outcome(&self, run: process::CellRun) -> ExecOutcome {
        use process::CellEnd;
        let timeout = self.config.timeout.as_secs_f64();
        let lost = "the interpreter was restarted, so all variables and imports are lost";
        let (response, status, mut notes) = match run.end {
            CellEnd::Done(r) => (Some(r), ExecStatus::Completed, Vec::new()),
            CellEnd::Interrupted(r) => (
                Some(r),
                ExecStatus::Interrupted,
                vec![format!(
                    "Timeout: the code ran longer than {timeout} s and was interrupted \
                     (variables set before the interruption are kept)."
                )],
            ),
            CellEnd::Killed => {
                let why = format!(
                    "Timeout: the code ran longer than {timeout} s and did not stop when \
                     interrupted; {lost}."
                );
                (None, ExecStatus::Restarted(why.clone()), vec![why])
            }
            CellEnd::Died(exit) => {
                let how = exit
                    .map(process::describe_status)
                    .unwrap_or_else(|| "it ended".into());
                let why = format!("The interpreter process stopped ({how}); {lost}.");
                (None, ExecStatus::Restarted(why.clone()), vec![why])
            }
            CellEnd::Protocol(problem) => {
                let why = format!("The interpreter broke down ({problem}); {lost}.");
                (None, ExecStatus::Restarted(why.clone()), vec![why])
            }
        };
        if run.stopped_processes > 0 {
            notes.push(format!(
                "{} background process(es) started by the code were stopped.",
                run.stopped_processes
            ));
        }
        if !run.output_complete && status == ExecStatus::Completed {
            notes.push("(the output may be incomplete: its end was not seen)".into());
        }
        let output = format::segment_text(&run.output);
        let (value, error, figures) = match &response {
            Some(r) => {
                notes.extend(r.notes.iter().cloned());
                (r.value.clone(), r.error.clone(), r.figures.clone())
            }
            None => (None, None, Vec::new()),
        };
        let error = error.map(|e| cut_traceback(&e).to_string());
        let figure_names = figures
            .iter()
            .map(|f| {
                f.strip_prefix(self.work_dir.path())
                    .unwrap_or(f)
                    .display()
                    .to_string()
            })
            .collect();
        let omitted = run.output.omitted() > 0;
        let (head, tail) = if omitted {
            (
                String::from_utf8_lossy(&run.output.head).into_owned(),
                String::from_utf8_lossy(&run.output.tail).into_owned(),
            )
        } else {
            let mut all = run.output.head.clone();
            all.extend_from_slice(&run.output.tail);
            (String::from_utf8_lossy(&all).into_owned(), String::new())
        };
        let parts = format::Parts {
            output_head: head,
            output_tail: tail,
            output_bytes: run.output.total,
            output_omitted: omitted,
            value: value.clone(),
            figures: figure_names,
            error: error.clone(),
            notes,
        };
        ExecOutcome {
            text: format::render(&parts, self.config.max_output_chars),
            output,
            output_bytes: run.output.total,
            value,
            error,
            figures,
            status,
            elapsed: run.elapsed,
        }
    }
}

/// Creates the work directory with the cache and temp subdirectories; when the sandbox will
/// drop a root host to uid 65534, gives them to that uid.
fn prepare_work_dir(dir: &Path, sandbox: &SandboxConfig) -> Result<(), InterpreterError> {
    let err = |source| InterpreterError::WorkDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let subdirs = [dir.join(".tmp"), dir.join(".matplotlib")];
    for sub in &subdirs {
        std::fs::create_dir_all(sub).map_err(err)?;
    }
    #[cfg(unix)]
    if sandbox.enabled && sandbox.drop_root && nix::unistd::Uid::effective().is_root() {
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        let nogroup = Some(nix::unistd::Gid::from_raw(65534));
        for path in std::iter::once(dir).chain(subdirs.iter().map(PathBuf::as_path)) {
            nix::unistd::chown(path, nobody, nogroup).map_err(|e| err(std::io::Error::from(e)))?;
        }
    }
    #[cfg(not(unix))]
    let _ = sandbox;
    Ok(())
}
