//! One persistent `python3` process running the driver script: spawning it (with the sandbox
//! applied between `fork` and `exec`), the line-delimited JSON protocol on two pipes, and the
//! host-side wall-clock timeout (SIGINT, a grace period, then SIGKILL of the process group).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Deserialize;

use super::output::{OutputCollector, Segment};
use crate::error::InterpreterError;
use crate::sandbox::{self, SandboxConfig, SandboxReport};

/// The driver, embedded in the binary.
const DRIVER: &str = include_str!("driver.py");

/// Longest response line accepted from the driver.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// How long a fresh driver may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for a cell's output marker after its response arrived.
const MARKER_WAIT: Duration = Duration::from_secs(2);

/// What the driver says when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Hello {
    pub python: String,
    pub matplotlib: Option<String>,
    pub pid: i32,
}

/// The driver's answer to one cell.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct CellResponse {
    pub id: u64,
    pub value: Option<String>,
    pub error: Option<String>,
    #[serde(default)]
    pub interrupted: bool,
    #[serde(default)]
    pub figures: Vec<PathBuf>,
    #[serde(default)]
    pub notes: Vec<String>,
}

enum Line {
    Json(serde_json::Value),
    Invalid(String),
    Eof,
}

/// How a cell ended.
#[derive(Debug)]
pub(crate) enum CellEnd {
    /// The driver answered in time.
    Done(CellResponse),
    /// The timeout passed; SIGINT stopped the cell and the driver answered.
    Interrupted(CellResponse),
    /// The timeout passed and the driver did not answer SIGINT within the grace period: the
    /// process group was killed.
    Killed,
    /// The process exited on its own (the status, when known).
    Died(Option<ExitStatus>),
    /// The driver broke the protocol; the process was killed.
    Protocol(String),
}

/// The raw result of one cell.
#[derive(Debug)]
pub(crate) struct CellRun {
    pub end: CellEnd,
    pub output: Segment,
    /// Whether the output's end marker was seen (else it may be incomplete).
    pub output_complete: bool,
    pub elapsed: Duration,
    /// Background processes the cell left, stopped after it.
    pub stopped_processes: usize,
}

/// A running driver process.
pub(crate) struct PythonProcess {
    child: Child,
    commands: File,
    responses: Receiver<Line>,
    output: Arc<OutputCollector>,
    hello: Hello,
    next_id: u64,
    alive: bool,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), InterpreterError> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?)
}

/// Lets `fd` survive `exec` (in the child, async-signal-safe). The fd numbers go to the driver
/// on its command line, so nothing is moved onto fixed numbers (which could clobber an fd the
/// child still needs).
fn inherit(fd: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is open in the child: the closure that calls this owns the descriptor.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(target_os = "linux")]
type Setup = (sandbox::ChildSetup, sandbox::SetupStatus);
#[cfg(not(target_os = "linux"))]
type Setup = ((), ());

/// Prepares the sandbox layers (Linux) or reports them unavailable (elsewhere).
fn prepare_sandbox(
    config: &SandboxConfig,
    work_dir: &Path,
) -> Result<Option<Setup>, InterpreterError> {
    if !config.enabled {
        return Ok(None);
    }
    #[cfg(target_os = "linux")]
    {
        Ok(Some(sandbox::ChildSetup::prepare(config, work_dir)?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = work_dir;
        if config.strict {
            return Err(crate::error::SandboxError::LayerUnavailable {
                layer: crate::sandbox::Layer::Namespaces,
                reason: "namespaces, Landlock and seccomp need Linux".into(),
            }
            .into());
        }
        Ok(Some(((), ())))
    }
}

impl PythonProcess {
    /// Spawns the driver in `work_dir` with the sandbox of `config`; returns the process and
    /// the layers the child reported (`None` without sandbox).
    pub(crate) fn spawn(
        python: &Path,
        work_dir: &Path,
        config: &SandboxConfig,
    ) -> Result<(Self, Option<SandboxReport>), InterpreterError> {
        let secret = format!("{:016x}", rand::random::<u64>());
        let (command_read, command_write) = pipe()?;
        let (response_read, response_write) = pipe()?;
        let (output_read, output_write) = pipe()?;
        let output_write_2 = output_write.try_clone()?;

        let command_fd = command_read.as_raw_fd();
        let response_fd = response_write.as_raw_fd();
        let mut command = Command::new(python);
        command
            .args(["-I", "-B", "-u", "-c", DRIVER, &secret])
            .arg(work_dir)
            .args([command_fd.to_string(), response_fd.to_string()])
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output_write))
            .stderr(Stdio::from(output_write_2))
            .env_clear()
            .envs(sandbox::environment(config, work_dir));

        let (setup, status) = match prepare_sandbox(config, work_dir)? {
            Some((setup, status)) => (Some(setup), Some(status)),
            None => (None, None),
        };
        // The closure owns the child's pipe ends (and the sandbox setup): they are closed in
        // the parent when `command` is dropped below.
        let mut owned = (command_read, response_write, setup);
        // SAFETY: the closure only makes async-signal-safe system calls: setsid, fcntl and the
        // sandbox's unshare/setuid/setrlimit/landlock/seccomp/write calls, whose arguments were
        // all prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                #[cfg(target_os = "linux")]
                if let Some(setup) = owned.2.as_mut() {
                    setup.apply()?;
                }
                inherit(owned.0.as_raw_fd())?;
                inherit(owned.1.as_raw_fd())?;
                Ok(())
            });
        }
        let spawned = command.spawn();
        drop(command);
        #[cfg(target_os = "linux")]
        let report = status.map(|status| status.finish(config)).transpose();
        #[cfg(not(target_os = "linux"))]
        let report: Result<Option<SandboxReport>, InterpreterError> =
            Ok(status.map(|()| unsupported_report()));
        let child = spawned.map_err(|source| InterpreterError::Spawn {
            python: python.to_path_buf(),
            source,
        });
        let report = match (child, report) {
            (Ok(child), Ok(report)) => (child, report),
            (Ok(mut child), Err(e)) => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
            // A strict sandbox that failed in the child explains the spawn error best.
            (Err(_), Err(e)) => return Err(e.into()),
            (Err(e), Ok(_)) => return Err(e),
        };
        let (child, report) = report;

        let (tx, rx) = std::sync::mpsc::channel();
        let response_file = File::from(response_read);
        std::thread::Builder::new()
            .name("interpreter-responses".into())
            .spawn(move || read_lines(response_file, tx))?;
        let output = OutputCollector::start(File::from(output_read), &secret);
        let mut process = Self {
            child,
            commands: File::from(command_write),
            responses: rx,
            output,
            hello: Hello {
                python: String::new(),
                matplotlib: None,
                pid: 0,
            },
            next_id: 1,
            alive: true,
        };
        match process.responses.recv_timeout(HELLO_TIMEOUT) {
            Ok(Line::Json(value)) => match serde_json::from_value::<Hello>(value) {
                Ok(hello) => process.hello = hello,
                Err(e) => {
                    process.kill();
                    return Err(InterpreterError::Protocol(format!("bad hello: {e}")));
                }
            },
            Ok(Line::Invalid(why)) => {
                process.kill();
                return Err(InterpreterError::Protocol(why));
            }
            Ok(Line::Eof) | Err(_) => {
                let status = process.reap();
                let (early, _) = process.output.wait_cell(0, Duration::from_millis(500));
                return Err(InterpreterError::Protocol(format!(
                    "the interpreter did not start ({}): {}",
                    status
                        .map(describe_status)
                        .unwrap_or_else(|| "no hello".into()),
                    String::from_utf8_lossy(&early.head).trim()
                )));
            }
        }
        Ok((process, report))
    }

    /// The driver's hello.
    pub(crate) fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Whether the process is (as far as we know) alive.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Kills the whole process group and reaps the leader.
    pub(crate) fn kill(&mut self) {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.alive = false;
    }

    /// Runs one cell with the wall-clock `timeout`, then `grace` after SIGINT.
    pub(crate) fn run(&mut self, code: &str, timeout: Duration, grace: Duration) -> CellRun {
        let started = Instant::now();
        let id = self.next_id;
        self.next_id += 1;
        let command = serde_json::json!({"op": "exec", "id": id, "code": code});
        let mut line = command.to_string();
        line.push('\n');
        if self.commands.write_all(line.as_bytes()).is_err() {
            let status = self.reap();
            return self.finish(id, CellEnd::Died(status), started);
        }
        let end = match self.wait_response(id, timeout) {
            Waited::Response(r) => CellEnd::Done(r),
            Waited::Eof => CellEnd::Died(self.reap()),
            Waited::Invalid(why) => {
                self.kill();
                CellEnd::Protocol(why)
            }
            Waited::Timeout => {
                let _ = kill(self.pgid(), Signal::SIGINT);
                match self.wait_response(id, grace) {
                    Waited::Response(r) => CellEnd::Interrupted(r),
                    Waited::Eof => CellEnd::Died(self.reap()),
                    Waited::Invalid(why) => {
                        self.kill();
                        CellEnd::Protocol(why)
                    }
                    Waited::Timeout => {
                        self.kill();
                        CellEnd::Killed
                    }
                }
            }
        };
        self.finish(id, end, started)
    }

    fn finish(&mut self, id: u64, end: CellEnd, started: Instant) -> CellRun {
        let marker_wait = if self.alive {
            MARKER_WAIT
        } else {
            Duration::from_millis(500)
        };
        let stopped_processes = if self.alive {
            stop_background(self.child.id() as i32)
        } else {
            0
        };
        let (output, output_complete) = self.output.wait_cell(id, marker_wait);
        CellRun {
            end,
            output,
            output_complete,
            elapsed: started.elapsed(),
            stopped_processes,
        }
    }

    fn reap(&mut self) -> Option<ExitStatus> {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        self.alive = false;
        self.child.wait().ok()
    }

    fn wait_response(&mut self, id: u64, timeout: Duration) -> Waited {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.responses.recv_timeout(left) {
                Ok(Line::Json(value)) => match serde_json::from_value::<CellResponse>(value) {
                    Ok(r) if r.id == id => return Waited::Response(r),
                    Ok(_) => continue, // an answer to an earlier, abandoned cell
                    Err(e) => return Waited::Invalid(format!("bad response: {e}")),
                },
                Ok(Line::Invalid(why)) => return Waited::Invalid(why),
                Ok(Line::Eof) | Err(RecvTimeoutError::Disconnected) => return Waited::Eof,
                Err(RecvTimeoutError::Timeout) => return Waited::Timeout,
            }
        }
    }
}

enum Waited {
    Response(CellResponse),
    Timeout,
    Eof,
    Invalid(String),
}

impl Drop for PythonProcess {
    fn drop(&mut self) {
        if self.alive {
            self.kill();
        }
    }
}

/// Reads the driver's response lines (each at most [`MAX_RESPONSE_BYTES`]).
fn read_lines(file: File, tx: std::sync::mpsc::Sender<Line>) {
    let mut reader = BufReader::new(file);
    loop {
        let mut buf = Vec::new();
        match (&mut reader)
            .take(MAX_RESPONSE_BYTES)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => {
                let _ = tx.send(Line::Eof);
                return;
            }
            Ok(_) if buf.last() != Some(&b'\n') && buf.len() as u64 >= MAX_RESPONSE_BYTES => {
                let _ = tx.send(Line::Invalid(format!(
                    "a response line longer than {MAX_RESPONSE_BYTES} bytes"
                )));
                return;
            }
            Ok(_) => {
                let line = match serde_json::from_slice(&buf) {
                    Ok(value) => Line::Json(value),
                    Err(e) => Line::Invalid(format!("a response that is not JSON: {e}")),
                };
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

/// A process exit in words.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(Signal::SIGXCPU) => "killed by SIGXCPU: the CPU-time limit was reached".into(),
        Some(Signal::SIGKILL) => "killed by SIGKILL".into(),
        Some(Signal::SIGSEGV) => "crashed with SIGSEGV".into(),
        Some(signal) => format!("killed by {signal}"),
        None => "ended".into(),
    }
}

/// Kills the processes a cell left in the interpreter's process group (everything but the
/// driver itself); returns how many there were. Linux only (it reads `/proc`).
fn stop_background(leader: i32) -> usize {
    #[cfg(target_os = "linux")]
    {
        let mut stopped = std::collections::HashSet::new();
        for _ in 0..50 {
            let members = group_members(leader);
            if members.is_empty() {
                break;
            }
            for pid in members {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                stopped.insert(pid);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        stopped.len()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = leader;
        0
    }
}

/// Live processes of process group `leader`, except `leader` (zombies excluded).
#[cfg(target_os = "linux")]
fn group_members(leader: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != leader)
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
            pgrp == Some(leader) && state != Some("Z")
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn unsupported_report() -> SandboxReport {
    let mut report = SandboxReport::default();
    for layer in crate::sandbox::Layer::ALL {
        report.set(
            layer,
            crate::sandbox::LayerStatus::Unavailable("this layer needs Linux".into()),
        );
    }
    report
}
