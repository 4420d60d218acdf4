//! The rules of the two kernel filters, built in the parent before `fork`: the Landlock
//! ruleset (with the `landlock` crate) and the seccomp BPF programs (with `seccompiler`).

use std::collections::BTreeMap;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    Scope, path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The newest Landlock ABI these rules were written and tested for; the crate downgrades them
/// on older kernels (best effort) and the child reports what took effect.
const LANDLOCK_ABI: ABI = ABI::V6;

/// A ruleset: everything readable and executable, the work dir (and `/dev/null`) writable;
/// without network, TCP bind/connect denied (ABI 4+); signals and abstract UNIX sockets scoped
/// to the sandbox (ABI 6+).
pub(super) fn landlock_ruleset(
    work_dir: &Path,
    allow_network: bool,
) -> Result<RulesetCreated, landlock::RulesetError> {
    let abi = LANDLOCK_ABI;
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi))?;
    if !allow_network {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    ruleset = ruleset.scope(Scope::from_all(abi))?;
    ruleset
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules([work_dir], AccessFs::from_all(abi)))?
        .add_rules(path_beneath_rules(["/dev/null"], AccessFs::from_all(abi)))
}

/// Syscalls no interpreter cell needs and sandbox escapes use.
pub(super) fn denied_syscalls() -> Vec<i64> {
    let mut calls = vec![
        // Debugging and reading other processes.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        // Mounts and namespaces (the sandbox's own namespaces are made before the filter).
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        // Kernel attack surface: eBPF, perf, kexec, modules, io_uring, keyrings, userfaultfd.
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        // Whole-system state.
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_syslog,
        libc::SYS_quotactl,
        libc::SYS_vhangup,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fanotify_init,
        // Leaving the process group the host kills on timeout.
        libc::SYS_setsid,
        libc::SYS_setpgid,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    calls.into_iter().map(i64::from).collect()
}

fn arg_eq(index: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

fn arg_has_bits(index: u8, bits: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(bits),
        bits,
    )?])
}

/// Two programs: the deny-list (EPERM), and `clone3` answered with ENOSYS so that libc falls
/// back to `clone`, whose namespace flags the first program can see and refuse.
pub(super) fn seccomp_programs(allow_network: bool) -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let arch: TargetArch = std::env::consts::ARCH.try_into()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let namespace_flags = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    let clone_rules = namespace_flags
        .iter()
        .map(|&flag| arg_has_bits(0, flag as u64))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone.into(), clone_rules);
    if !allow_network {
        let socket_rules = [libc::AF_INET, libc::AF_INET6, libc::AF_PACKET]
            .iter()
            .map(|&family| arg_eq(0, family as u64))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_socket.into(), socket_rules);
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(i64::from(libc::SYS_clone3), Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(vec![deny.try_into()?, clone3.try_into()?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_architecture() {
        let programs = seccomp_programs(false).unwrap();
        assert_eq!(programs.len(), 2);
        assert!(programs[0].len() > denied_syscalls().len());
        assert!(seccomp_programs(true).unwrap()[0].len() < programs[0].len());
    }

    #[test]
    fn the_ruleset_builds_for_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        landlock_ruleset(dir.path(), false).unwrap();
    }
}
