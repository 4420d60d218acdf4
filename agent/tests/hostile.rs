//! Hostile code against the sandboxed interpreter: runaway loops, memory and fork bombs, a
//! gigabyte of output, reading the host's environment, the network, writing outside the work
//! dir, forbidden syscalls. Each test starts its own interpreter (private work dir, ephemeral
//! ports), so they run in parallel.

mod common;

use std::time::{Duration, Instant};

use internlm2_agent::{ExecStatus, Layer, LayerStatus, SandboxConfig};

/// A line of `/proc/<pid>/status` in kB.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Live processes whose process group is `pgid`.
fn group_size(pgid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields[0] != "Z" && fields[2].parse::<u32>().ok() == Some(pgid)
        })
        .count()
}

#[test]
fn an_endless_loop_is_interrupted_and_the_next_call_works() {
    let mut python = common::interpreter(1.0);
    python.exec("kept = 'still here'").unwrap();
    let started = Instant::now();
    let out = python.exec("while True:\n    pass").unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status, ExecStatus::Interrupted);
    assert!(
        out.text.contains("Timeout: the code ran longer than 1 s"),
        "{}",
        out.text
    );
    assert!(out.text.contains("KeyboardInterrupt"), "{}", out.text);
    assert_eq!(python.exec("kept").unwrap().text, "'still here'");
}

#[test]
fn code_that_ignores_the_interrupt_is_killed_and_replaced() {
    let mut python = common::interpreter(1.0);
    let first_pid = python.pid().unwrap();
    python.exec("kept = 1").unwrap();
    let started = Instant::now();
    let out = python
        .exec("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(out.status, ExecStatus::Restarted(_)), "{out:?}");
    assert!(
        out.text.contains("did not stop when interrupted"),
        "{}",
        out.text
    );
    assert_eq!(group_size(first_pid), 0, "the old process group is gone");
    // A fresh interpreter answers; the old state is gone.
    assert_eq!(python.exec("1 + 1").unwrap().text, "2");
    assert_ne!(python.pid().unwrap(), first_pid);
    assert!(python.exec("kept").unwrap().text.contains("NameError"));
}

#[test]
fn a_memory_bomb_hits_the_address_space_limit() {
    let mut python = common::interpreter(20.0);
    if !python.sandbox_report().is_active(Layer::ResourceLimits) {
        panic!(
            "rlimits are always available on Linux:\n{}",
            python.sandbox_report()
        );
    }
    let pid = python.pid().unwrap();
    let big = python.exec("x = bytearray(8 * 1024**3)").unwrap();
    assert!(big.text.ends_with("MemoryError"), "{}", big.text);
    let grow = python
        .exec("chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024**2))")
        .unwrap();
    assert!(grow.text.contains("MemoryError"), "{}", grow.text);
    let peak_kb = status_kb(pid, "VmHWM:").unwrap();
    assert!(
        peak_kb < 800 * 1024,
        "peak RSS {peak_kb} kB exceeds the 768 MiB limit"
    );
    python.exec("del chunks").unwrap();
    assert_eq!(python.exec("len(bytearray(1024))").unwrap().text, "1024");
}

#[test]
fn a_fork_bomb_stays_within_the_process_limit() {
    let mut python = common::interpreter_on(common::system_python(), 5.0, SandboxConfig::default());
    let report = python.sandbox_report().clone();
    let pgid = python.pid().unwrap();
    let (stop, watcher) = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let watcher = std::thread::spawn(move || {
            let mut most = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(group_size(pgid));
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        (stop, watcher)
    };
    let out = python
        .exec("import os\nwhile True:\n    os.fork()")
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    eprintln!("fork bomb: at most {most} processes; result: {}", out.text);
    assert!(out.is_error());
    if report.is_active(Layer::Unprivileged) {
        assert!(
            most <= 32,
            "{most} processes despite RLIMIT_NPROC = 32\n{report}"
        );
        assert!(
            out.text.contains("BlockingIOError") || out.text.contains("Timeout"),
            "{}",
            out.text
        );
    } else {
        eprintln!("RLIMIT_NPROC is not enforced for this user:\n{report}");
    }
    assert_eq!(
        group_size(pgid).saturating_sub(1),
        0,
        "no stray processes are left"
    );
    assert_eq!(python.exec("'alive'").unwrap().text, "'alive'");
}

#[test]
fn a_gigabyte_of_output_is_drained_and_truncated() {
    let mut python = common::interpreter(60.0);
    let rss_before = status_kb(std::process::id(), "VmRSS:").unwrap();
    let out = python
        .exec("import sys\ns = 'x' * (100 * 1024 * 1024)\nfor _ in range(10):\n    sys.stdout.write(s)\nprint('done')")
        .unwrap();
    let rss_after = status_kb(std::process::id(), "VmRSS:").unwrap();
    assert_eq!(out.status, ExecStatus::Completed, "{}", out.text);
    assert_eq!(out.output_bytes, 10 * 100 * 1024 * 1024 + 5);
    assert!(out.text.chars().count() <= 2048);
    assert!(
        out.text
            .contains("[... output truncated: 1048576005 bytes in all ...]"),
        "{}",
        &out.text[..200]
    );
    assert!(
        out.text.ends_with("xxxdone"),
        "the end of the output is kept"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "host memory grew from {rss_before} kB to {rss_after} kB"
    );
    assert_eq!(python.exec("1").unwrap().text, "1");
}

#[test]
fn the_host_environment_is_not_visible() {
    // cargo and nextest set these for every test process.
    let host_value = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo");
    let mut python = common::interpreter_with(
        10.0,
        SandboxConfig::default().with_allowed_env(["CARGO_PKG_NAME"]),
    );
    let out = python
        .exec("import os\nsorted(k for k in os.environ if k.startswith('CARGO'))")
        .unwrap();
    assert_eq!(
        out.text, "['CARGO_PKG_NAME']",
        "only the allowed variable passes"
    );
    let home = python.exec("os.environ['HOME']").unwrap();
    assert_eq!(home.text, format!("'{}'", python.work_dir().display()));
    let leaked = python
        .exec(&format!(
            "any({host_value:?} in v for v in os.environ.values())"
        ))
        .unwrap();
    assert_eq!(leaked.text, "False");
}

#[test]
fn connecting_to_a_host_listener_fails() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut python = common::interpreter(10.0);
    let out = python
        .exec(&format!(
            "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)"
        ))
        .unwrap();
    assert!(out.is_error(), "{}", out.text);
    assert!(
        out.text.contains("PermissionError") || out.text.contains("OSError"),
        "{}",
        out.text
    );
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "no connection reached the listener"
    );
    let report = python.sandbox_report();
    assert!(
        report.is_active(Layer::Network)
            || report.is_active(Layer::Seccomp)
            || report.is_active(Layer::Landlock),
        "no network layer is active:\n{report}"
    );
}

#[test]
fn writing_outside_the_work_dir_fails_where_landlock_is_available() {
    let mut python = common::interpreter(10.0);
    // A world-writable directory outside the work dir: file permissions would allow the
    // write, so only Landlock can stop it.
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        outside.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let target = outside.path().join("escaped.txt");
    let out = python
        .exec(&format!(
            "open({:?}, 'w').write('escaped')",
            target.display().to_string()
        ))
        .unwrap();
    let inside = python.exec("open('inside.txt', 'w').write('ok')").unwrap();
    assert_eq!(inside.text, "2");
    assert!(python.work_dir().join("inside.txt").is_file());
    match python.sandbox_report().status(Layer::Landlock) {
        LayerStatus::Active(how) => {
            eprintln!("landlock: {how}");
            assert!(out.text.contains("PermissionError"), "{}", out.text);
            assert!(
                !target.exists(),
                "the file was written outside the work dir"
            );
        }
        other => {
            eprintln!("Landlock is not active ({other:?}): the outside-write assertion is skipped")
        }
    }
}

#[test]
fn dangerous_syscalls_are_refused() {
    let mut python = common::interpreter(10.0);
    if !python.sandbox_report().is_active(Layer::Seccomp) {
        panic!(
            "seccomp is available on Linux:\n{}",
            python.sandbox_report()
        );
    }
    let out = python
        .exec(
            "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n\
             results = {}\n\
             for name, call in [('unshare', lambda: libc.unshare(0x10000000)),\n\
                                ('ptrace', lambda: libc.ptrace(0, 0, 0, 0)),\n\
                                ('setsid', lambda: libc.setsid())]:\n\
             \x20   rc = call()\n\
             \x20   results[name] = (rc, errno.errorcode.get(ctypes.get_errno()))\n\
             results",
        )
        .unwrap();
    assert_eq!(
        out.text, "{'unshare': (-1, 'EPERM'), 'ptrace': (-1, 'EPERM'), 'setsid': (-1, 'EPERM')}",
        "{out:?}"
    );
}

#[test]
fn strict_mode_starts_only_with_every_layer() {
    // The system Python, which uid 65534 can run (a Python under root's home cannot drop root).
    let config = internlm2_agent::InterpreterConfig::default()
        .with_python(common::system_python())
        .with_sandbox(SandboxConfig::strict());
    match internlm2_agent::CodeInterpreter::start(config) {
        Ok(mut python) => {
            let report = python.sandbox_report().clone();
            eprintln!("strict:\n{report}");
            assert_eq!(python.exec("6 * 7").unwrap().text, "42");
            for (layer, status) in report.layers() {
                assert!(
                    matches!(status, LayerStatus::Active(_)),
                    "{layer}: {status:?}"
                );
            }
        }
        Err(e) => {
            eprintln!("strict mode refused this host: {e}");
            assert!(matches!(
                e,
                internlm2_agent::InterpreterError::Sandbox(
                    internlm2_agent::SandboxError::LayerUnavailable { .. }
                )
            ));
        }
    }
}
