//! The interpreter's sandbox: layers applied to the Python process between `fork` and `exec`,
//! each reported as active, unavailable (and why) or disabled.
//!
//! | layer | what it does |
//! |---|---|
//! | [`Layer::Environment`] | the environment is rebuilt from an allow-list: no host tokens or keys |
//! | [`Layer::WorkDir`] | a private directory (mode 0700) is the only writable place and the cwd |
//! | [`Layer::Unprivileged`] | when the host runs as root, the process runs as uid/gid 65534 |
//! | [`Layer::Namespaces`] | new user, IPC and UTS namespaces (the process limit then counts per sandbox) |
//! | [`Layer::Network`] | a new network namespace: no interfaces, not even loopback |
//! | [`Layer::ResourceLimits`] | rlimits: address space, CPU seconds, processes, open files, file size, no core dumps |
//! | [`Layer::Landlock`] | the filesystem outside the work dir is read-only; no TCP (ABI 4+), no signals or abstract sockets out of the sandbox (ABI 6+) |
//! | [`Layer::Seccomp`] | a deny-list of dangerous syscalls (ptrace, mount, namespaces, bpf, perf, kexec, modules, io_uring, keyrings, ...), plus IPv4/IPv6/packet sockets when the network is off |
//!
//! Everything that can fail in the child is prepared in the parent first (the Landlock ruleset,
//! the seccomp BPF programs, the rlimit values, the environment): between `fork` and `exec` the
//! child only makes system calls, which keeps it async-signal-safe. The child writes one status
//! record per layer to a pipe that closes at `exec`, so the [`SandboxReport`] says what really
//! took effect. In strict mode a layer that does not take effect fails the start instead.

use std::fmt;
use std::path::Path;

#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod rules;

#[cfg(target_os = "linux")]
pub(crate) use child::{ChildSetup, SetupStatus};

/// One isolation layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// Environment variables rebuilt from an allow-list.
    Environment,
    /// A private work directory.
    WorkDir,
    /// Not running as root.
    Unprivileged,
    /// User, IPC and UTS namespaces.
    Namespaces,
    /// A network namespace without interfaces.
    Network,
    /// Resource limits (rlimits).
    ResourceLimits,
    /// Landlock filesystem (and network, signal) restrictions.
    Landlock,
    /// The seccomp syscall deny-list.
    Seccomp,
}

impl Layer {
    /// Every layer, in the order they are applied.
    pub const ALL: [Layer; 8] = [
        Layer::Environment,
        Layer::WorkDir,
        Layer::Unprivileged,
        Layer::Namespaces,
        Layer::Network,
        Layer::ResourceLimits,
        Layer::Landlock,
        Layer::Seccomp,
    ];

    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Environment => "environment",
            Layer::WorkDir => "work-dir",
            Layer::Unprivileged => "unprivileged",
            Layer::Namespaces => "namespaces",
            Layer::Network => "network",
            Layer::ResourceLimits => "rlimits",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
        }
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn from_index(index: u8) -> Option<Layer> {
        Layer::ALL.get(index as usize).copied()
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn index(self) -> u8 {
        Layer::ALL.iter().position(|&l| l == self).expect("listed") as u8
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What became of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerStatus {
    /// In force; the text says how.
    Active(String),
    /// Wanted but not possible on this host; the text says why.
    Unavailable(String),
    /// Turned off by the configuration.
    Disabled,
}

/// The state of every layer for one interpreter process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxReport {
    layers: Vec<(Layer, LayerStatus)>,
}

impl SandboxReport {
    /// Sets a layer's status (replacing an earlier one).
    pub(crate) fn set(&mut self, layer: Layer, status: LayerStatus) {
        match self.layers.iter_mut().find(|(l, _)| *l == layer) {
            Some(entry) => entry.1 = status,
            None => {
                self.layers.push((layer, status));
                self.layers.sort_by_key(|(l, _)| *l);
            }
        }
    }

    /// A layer's status (`Disabled` when never set).
    pub fn status(&self, layer: Layer) -> LayerStatus {
        self.layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, s)| s.clone())
            .unwrap_or(LayerStatus::Disabled)
    }

    /// Whether a layer is in force.
    pub fn is_active(&self, layer: Layer) -> bool {
        matches!(self.status(layer), LayerStatus::Active(_))
    }

    /// Every layer with its status, in application order.
    pub fn layers(&self) -> &[(Layer, LayerStatus)] {
        &self.layers
    }

    /// The layers that were wanted but are not in force, with the reason.
    pub fn unavailable(&self) -> Vec<(Layer, String)> {
        self.layers
            .iter()
            .filter_map(|(l, s)| match s {
                LayerStatus::Unavailable(why) => Some((*l, why.clone())),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (layer, status) in &self.layers {
            let (state, text) = match status {
                LayerStatus::Active(t) => ("active", t.as_str()),
                LayerStatus::Unavailable(t) => ("UNAVAILABLE", t.as_str()),
                LayerStatus::Disabled => ("disabled", ""),
            };
            writeln!(f, "{:<13} {:<11} {}", layer.name(), state, text)?;
        }
        Ok(())
    }
}

/// Resource limits of the interpreter process (each `None` = inherit the host's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Address space in bytes (`RLIMIT_AS`; default 2 GiB). Bounds the memory the code can use.
    pub address_space_bytes: Option<u64>,
    /// CPU seconds over the process's life (`RLIMIT_CPU`; default 600). Past it the process is
    /// killed and restarted.
    pub cpu_seconds: Option<u64>,
    /// Processes and threads (`RLIMIT_NPROC`; default 64). Counted per sandbox when the user
    /// namespace is active; not enforced for a root process.
    pub processes: Option<u64>,
    /// Open files (`RLIMIT_NOFILE`; default 1,024).
    pub open_files: Option<u64>,
    /// Largest file the code may write, in bytes (`RLIMIT_FSIZE`; default 256 MiB).
    pub file_size_bytes: Option<u64>,
    /// Allow core dumps (`RLIMIT_CORE`; default false: 0 bytes).
    pub core_dumps: bool,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            address_space_bytes: Some(2 << 30),
            cpu_seconds: Some(600),
            processes: Some(64),
            open_files: Some(1024),
            file_size_bytes: Some(256 << 20),
            core_dumps: false,
        }
    }
}

/// Which sandbox layers to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Apply the sandbox at all (default true on Linux). When false, the process inherits the
    /// host's environment and rights, as in Lagent.
    pub enabled: bool,
    /// Fail the start when any wanted layer is unavailable (default false: report it).
    pub strict: bool,
    /// Host variables copied into the scrubbed environment (default none).
    pub allow_env: Vec<String>,
    /// Variables set in the scrubbed environment (after the defaults).
    pub set_env: Vec<(String, String)>,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// Let the code use the network (default false: new network namespace, sockets denied).
    pub allow_network: bool,
    /// Drop root to uid/gid 65534 when the host runs as root (default true).
    pub drop_root: bool,
    /// Landlock: read-only filesystem outside the work dir (default true).
    pub landlock: bool,
    /// The seccomp deny-list (default true).
    pub seccomp: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            strict: false,
            allow_env: Vec::new(),
            set_env: Vec::new(),
            limits: ResourceLimits::default(),
            allow_network: false,
            drop_root: true,
            landlock: true,
            seccomp: true,
        }
    }
}

impl SandboxConfig {
    /// No isolation at all (the code runs with the host's rights, network and environment).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Every layer required: a missing one is an error.
    pub fn strict() -> Self {
        Self {
            strict: true,
            ..Self::default()
        }
    }

    /// Sets the resource limits.
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Copies these host variables into the environment.
    pub fn with_allowed_env<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.allow_env.extend(names.into_iter().map(Into::into));
        self
    }

    /// Lets the code use the network.
    pub fn with_network(mut self, allow: bool) -> Self {
        self.allow_network = allow;
        self
    }
}

/// The environment the interpreter gets: a fixed base plus the allow-list (sandboxed), or the
/// host's plus the interpreter's own settings (sandbox disabled).
pub(crate) fn environment(config: &SandboxConfig, work_dir: &Path) -> Vec<(String, String)> {
    let work = work_dir.display().to_string();
    let mut env: Vec<(String, String)> = Vec::new();
    if !config.enabled {
        env.extend(std::env::vars());
    } else {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        env.push(("LANG".into(), "C.UTF-8".into()));
        env.push(("LC_ALL".into(), "C.UTF-8".into()));
        for name in &config.allow_env {
            if let Ok(value) = std::env::var(name) {
                env.push((name.clone(), value));
            }
        }
    }
    // What the interpreter itself needs, sandboxed or not.
    env.push(("HOME".into(), work.clone()));
    env.push(("TMPDIR".into(), format!("{work}/.tmp")));
    env.push(("MPLBACKEND".into(), "Agg".into()));
    env.push(("MPLCONFIGDIR".into(), format!("{work}/.matplotlib")));
    for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"] {
        env.push((var.into(), "1".into()));
    }
    env.extend(config.set_env.iter().cloned());
    // Later entries win; keep the last of each name.
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_an_allow_list() {
        let config = SandboxConfig::default().with_allowed_env(["PATH_THAT_DOES_NOT_EXIST"]);
        let env = environment(&config, Path::new("/w"));
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"HOME") && names.contains(&"PATH"));
        assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "{names:?}");
        assert_eq!(env.iter().find(|(k, _)| k == "HOME").unwrap().1, "/w");
        let open = environment(&SandboxConfig::disabled(), Path::new("/w"));
        assert!(
            open.iter().any(|(k, _)| k == "CARGO_MANIFEST_DIR")
                || std::env::var("CARGO_MANIFEST_DIR").is_err()
        );
    }

    #[test]
    fn the_report_lists_layers_in_order() {
        let mut report = SandboxReport::default();
        report.set(Layer::Seccomp, LayerStatus::Active("x".into()));
        report.set(Layer::Environment, LayerStatus::Unavailable("y".into()));
        assert_eq!(report.layers()[0].0, Layer::Environment);
        assert!(report.is_active(Layer::Seccomp));
        assert_eq!(
            report.unavailable(),
            vec![(Layer::Environment, "y".to_string())]
        );
        assert_eq!(report.status(Layer::Network), LayerStatus::Disabled);
        assert!(report.to_string().contains("UNAVAILABLE"));
    }
}
