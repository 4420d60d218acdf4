//! Applying the sandbox in the child between `fork` and `exec`, and reading back what took
//! effect.
//!
//! [`ChildSetup::prepare`] (in the parent) builds everything that allocates or can fail for
//! host reasons: the Landlock ruleset, the seccomp programs, the clamped rlimit values, and the
//! status pipe. [`ChildSetup::apply`] (in the child) only makes system calls: `unshare`,
//! `setgroups`/`setgid`/`setuid`, `setrlimit`, `landlock_restrict_self`, `seccomp`, and a
//! `write` of one fixed-size status record per layer, so it stays async-signal-safe in a child
//! forked from a multi-threaded host. The status pipe's write end is close-on-exec: the parent
//! reads records until EOF, which comes at `exec` (or at the child's death).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use landlock::{RulesetCreated, RulesetStatus};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{Gid, Uid};
use seccompiler::BpfProgram;

use super::{Layer, LayerStatus, SandboxConfig, SandboxReport, rules};
use crate::error::SandboxError;

/// The uid/gid of `nobody`, which a root host drops to.
const NOBODY: u32 = 65534;

/// Status record kinds.
const ACTIVE: u8 = 0;
const FAILED: u8 = 1;
const PARTIAL: u8 = 2;

/// Everything the child needs, prepared in the parent; moved into the `pre_exec` closure.
pub(crate) struct ChildSetup {
    strict: bool,
    drop_root: bool,
    isolate_network: bool,
    rlimits: Vec<(Resource, u64)>,
    landlock: Option<RulesetCreated>,
    seccomp: Vec<BpfProgram>,
    status_write: OwnedFd,
}

/// The parent's end: what it knew before the spawn and the pipe the child reports through.
pub(crate) struct SetupStatus {
    status_read: OwnedFd,
    report: SandboxReport,
}

impl ChildSetup {
    /// Builds the child's setup for `config` (its `enabled` is assumed true) and the parent's
    /// end of the status pipe.
    pub(crate) fn prepare(
        config: &SandboxConfig,
        work_dir: &Path,
    ) -> Result<(Self, SetupStatus), SandboxError> {
        let mut report = SandboxReport::default();
        let unavailable = |layer: Layer, reason: String| -> Result<LayerStatus, SandboxError> {
            if config.strict {
                Err(SandboxError::LayerUnavailable { layer, reason })
            } else {
                log::warn!("sandbox layer {layer} unavailable: {reason}");
                Ok(LayerStatus::Unavailable(reason))
            }
        };
        let root = Uid::effective().is_root();
        let drop_root = root && config.drop_root;
        if root && !config.drop_root {
            report.set(Layer::Unprivileged, LayerStatus::Disabled);
        } else if !root {
            report.set(
                Layer::Unprivileged,
                LayerStatus::Active(format!(
                    "the host runs as uid {}, not root",
                    Uid::effective()
                )),
            );
        }
        if config.allow_network {
            report.set(Layer::Network, LayerStatus::Disabled);
        }

        let landlock = if config.landlock {
            match rules::landlock_ruleset(work_dir, config.allow_network) {
                Ok(ruleset) => Some(ruleset),
                Err(e) => {
                    let status =
                        unavailable(Layer::Landlock, format!("cannot build the ruleset: {e}"))?;
                    report.set(Layer::Landlock, status);
                    None
                }
            }
        } else {
            report.set(Layer::Landlock, LayerStatus::Disabled);
            None
        };
        let seccomp = if config.seccomp {
            match rules::seccomp_programs(config.allow_network) {
                Ok(programs) => programs,
                Err(e) => {
                    let status =
                        unavailable(Layer::Seccomp, format!("cannot build the filter: {e}"))?;
                    report.set(Layer::Seccomp, status);
                    Vec::new()
                }
            }
        } else {
            report.set(Layer::Seccomp, LayerStatus::Disabled);
            Vec::new()
        };

        let limits = &config.limits;
        let wanted = [
            (Resource::RLIMIT_AS, limits.address_space_bytes),
            (Resource::RLIMIT_CPU, limits.cpu_seconds),
            (Resource::RLIMIT_NPROC, limits.processes),
            (Resource::RLIMIT_NOFILE, limits.open_files),
            (Resource::RLIMIT_FSIZE, limits.file_size_bytes),
            (Resource::RLIMIT_CORE, (!limits.core_dumps).then_some(0)),
        ];
        let mut rlimits = Vec::new();
        for (resource, value) in wanted {
            let Some(value) = value else { continue };
            // Only lower: never above the host's hard limit.
            let hard = getrlimit(resource)
                .map(|(_, hard)| hard)
                .unwrap_or(u64::MAX);
            rlimits.push((resource, value.min(hard)));
        }

        let (status_read, status_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::Prepare {
                layer: Layer::Namespaces,
                reason: format!("status pipe: {e}"),
            })?;
        let setup = Self {
            strict: config.strict,
            drop_root,
            isolate_network: !config.allow_network,
            rlimits,
            landlock,
            seccomp,
            status_write,
        };
        Ok((
            setup,
            SetupStatus {
                status_read,
                report,
            },
        ))
    }

    fn record(&self, layer: Layer, kind: u8, value: i32) {
        let mut record = [0u8; 6];
        record[0] = layer.index();
        record[1] = kind;
        record[2..].copy_from_slice(&value.to_le_bytes());
        let _ = nix::unistd::write(&self.status_write, &record);
    }

    /// Records a failure; in strict mode it also fails the exec.
    fn fail(&self, layer: Layer, errno: Errno) -> std::io::Result<()> {
        self.record(layer, FAILED, errno as i32);
        if self.strict {
            Err(std::io::Error::from_raw_os_error(errno as i32))
        } else {
            Ok(())
        }
    }

    /// In the child, after `fork`, before `exec`: only system calls, no allocation.
    pub(crate) fn apply(&mut self) -> std::io::Result<()> {
        // Namespaces. A root host makes the network namespace while it still may, then drops
        // to nobody; the user namespace comes last (a user namespace cannot be left for an
        // unmapped uid).
        let extra = if self.isolate_network {
            CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS
        } else {
            CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS
        };
        let mut extra_done = false;
        if self.drop_root {
            extra_done = nix::sched::unshare(extra).is_ok();
            if let Err(e) = drop_to_nobody() {
                self.fail(Layer::Unprivileged, e)?;
            } else {
                self.record(Layer::Unprivileged, ACTIVE, NOBODY as i32);
            }
        }
        let flags = if extra_done {
            CloneFlags::CLONE_NEWUSER
        } else {
            CloneFlags::CLONE_NEWUSER | extra
        };
        match nix::sched::unshare(flags) {
            Ok(()) => {
                self.record(Layer::Namespaces, ACTIVE, 0);
                extra_done = true;
            }
            Err(e) => {
                // Without a user namespace, a process that still has CAP_SYS_ADMIN (root with
                // drop_root off) can make the others.
                if !extra_done {
                    extra_done = nix::sched::unshare(extra).is_ok();
                }
                self.fail(Layer::Namespaces, e)?;
            }
        }
        if self.isolate_network {
            if extra_done {
                self.record(Layer::Network, ACTIVE, 0);
            } else {
                self.fail(Layer::Network, Errno::EPERM)?;
            }
        }

        // Resource limits (after the user namespace, so the process limit counts this
        // sandbox's processes only).
        let mut limits_ok = true;
        for &(resource, value) in &self.rlimits {
            if let Err(e) = setrlimit(resource, value, value) {
                limits_ok = false;
                self.fail(Layer::ResourceLimits, e)?;
                break;
            }
        }
        if limits_ok && !self.rlimits.is_empty() {
            self.record(Layer::ResourceLimits, ACTIVE, 0);
        }

        if let Some(ruleset) = self.landlock.take() {
            match ruleset.restrict_self() {
                Ok(status) => {
                    let abi = match status.landlock {
                        landlock::LandlockStatus::Available { effective_abi, .. } => {
                            abi_number(effective_abi)
                        }
                        _ => 0,
                    };
                    match status.ruleset {
                        RulesetStatus::FullyEnforced => self.record(Layer::Landlock, ACTIVE, abi),
                        RulesetStatus::PartiallyEnforced => {
                            self.record(Layer::Landlock, PARTIAL, abi)
                        }
                        RulesetStatus::NotEnforced => {
                            self.record(Layer::Landlock, FAILED, -abi);
                            if self.strict {
                                return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
                            }
                        }
                    }
                }
                Err(_) => self.fail(Layer::Landlock, Errno::last())?,
            }
        }

        if !self.seccomp.is_empty() {
            for program in &self.seccomp {
                if seccompiler::apply_filter(program).is_err() {
                    return self.fail(Layer::Seccomp, Errno::last());
                }
            }
            self.record(Layer::Seccomp, ACTIVE, 0);
        }
        Ok(())
    }
}

impl SetupStatus {
    /// In the parent, once the child exec'd or failed and every copy of the write end is
    /// closed: turns the child's records into the report (strict mode: an error for a layer
    /// that did not take effect).
    pub(crate) fn finish(self, config: &SandboxConfig) -> Result<SandboxReport, SandboxError> {
        let mut bytes = Vec::new();
        let _ = std::fs::File::from(self.status_read).read_to_end(&mut bytes);
        let mut report = self.report;
        for record in bytes.chunks_exact(6) {
            let Some(layer) = Layer::from_index(record[0]) else {
                continue;
            };
            let value = i32::from_le_bytes([record[2], record[3], record[4], record[5]]);
            report.set(layer, describe(layer, record[1], value, config));
        }
        if config.strict {
            if let Some((layer, reason)) = report.unavailable().into_iter().next() {
                return Err(SandboxError::LayerUnavailable { layer, reason });
            }
            if let LayerStatus::Active(text) = report.status(Layer::Landlock)
                && text.starts_with("partial")
            {
                return Err(SandboxError::LayerUnavailable {
                    layer: Layer::Landlock,
                    reason: text,
                });
            }
        }
        Ok(report)
    }
}

/// The number of a Landlock ABI (the crate's enum cannot be cast: it is non-exhaustive).
fn abi_number(abi: landlock::ABI) -> i32 {
    use landlock::ABI;
    match abi {
        ABI::Unsupported => 0,
        ABI::V1 => 1,
        ABI::V2 => 2,
        ABI::V3 => 3,
        ABI::V4 => 4,
        ABI::V5 => 5,
        ABI::V6 => 6,
        ABI::V7 => 7,
        ABI::V8 => 8,
        ABI::V9 => 9,
        _ => 10,
    }
}

fn drop_to_nobody() -> Result<(), Errno> {
    nix::unistd::setgroups(&[])?;
    nix::unistd::setgid(Gid::from_raw(NOBODY))?;
    nix::unistd::setuid(Uid::from_raw(NOBODY))
}

fn errno_text(value: i32) -> String {
    let errno = Errno::from_raw(value);
    format!("{} ({})", errno.desc(), errno)
}

/// The report text for one child record.
fn describe(layer: Layer, kind: u8, value: i32, config: &SandboxConfig) -> LayerStatus {
    if kind == FAILED {
        let reason = match layer {
            Layer::Landlock if value <= 0 => {
                "the kernel does not enforce Landlock (not built in, not enabled at boot, or older than 5.13); \
                 the filesystem outside the work dir stays writable where Unix permissions allow"
                    .to_string()
            }
            Layer::Namespaces => format!(
                "unshare(CLONE_NEWUSER) failed: {}; the process limit then counts every process of the uid",
                errno_text(value)
            ),
            Layer::Network => {
                "no network namespace could be made (needs a user namespace or CAP_SYS_ADMIN); \
                 the seccomp and Landlock layers still refuse IP sockets where they are active"
                    .to_string()
            }
            Layer::Unprivileged => format!("dropping to uid {NOBODY} failed: {}", errno_text(value)),
            _ => errno_text(value),
        };
        return LayerStatus::Unavailable(reason);
    }
    let text = match layer {
        Layer::Unprivileged => format!("runs as uid/gid {NOBODY} (the host is root)"),
        Layer::Namespaces => "new user, IPC and UTS namespaces".to_string(),
        Layer::Network => "new network namespace: no interfaces, loopback down".to_string(),
        Layer::ResourceLimits => {
            let l = &config.limits;
            let show = |v: Option<u64>, unit: &str| match v {
                Some(v) => format!("{v}{unit}"),
                None => "host".to_string(),
            };
            format!(
                "address space {}, CPU {}, processes {}, open files {}, file size {}, core dumps {}",
                show(l.address_space_bytes.map(|b| b >> 20), " MiB"),
                show(l.cpu_seconds, " s"),
                show(l.processes, ""),
                show(l.open_files, ""),
                show(l.file_size_bytes.map(|b| b >> 20), " MiB"),
                if l.core_dumps { "on" } else { "off" }
            )
        }
        Layer::Landlock => {
            let what = if config.allow_network {
                "filesystem read-only outside the work dir"
            } else {
                "filesystem read-only outside the work dir, TCP bind/connect denied"
            };
            if kind == PARTIAL {
                format!("partial (kernel ABI {value}): {what} as far as this ABI supports")
            } else {
                format!("ABI {value}: {what}; signals and abstract sockets scoped to the sandbox")
            }
        }
        Layer::Seccomp => {
            let denied = rules::denied_syscalls().len();
            if config.allow_network {
                format!("{denied} dangerous syscalls and namespace clone flags refused")
            } else {
                format!(
                    "{denied} dangerous syscalls and namespace clone flags refused; \
                     IPv4/IPv6/packet sockets refused"
                )
            }
        }
        Layer::Environment | Layer::WorkDir => "active".to_string(),
    };
    LayerStatus::Active(text)
}
