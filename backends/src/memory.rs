//! Keeping freed memory in the process, so that the CPU backend's activation buffers do not
//! page-fault on every forward pass.
//!
//! A prefill allocates a fresh output for every layer's every kernel (a 512-token prompt of the
//! ~140M shape: 1-3 MiB each). glibc's `malloc` serves blocks above its mmap threshold (128 KiB
//! at start, raised on the fly up to the largest block freed so far) with a fresh `mmap` and
//! unmaps them on `free`, and it gives the top of its heap back to the kernel once more than
//! its trim threshold is free there; either way the next buffer of that size comes back as
//! untouched pages, and writing them costs a page fault and a page clear per 4 KiB. On the
//! 2-core AMD EPYC VM that was 8-12% of the prefill's samples (kernel `clear_page`,
//! `exc_page_fault`), and prefill ran 20% faster (median of 8 interleaved runs) with freed
//! memory kept. llama.cpp avoids the same cost by allocating its compute buffers once.
//!
//! [`keep_freed_memory`] sets glibc's mmap threshold to its maximum (32 MiB) and its trim
//! threshold to 1 GiB, so that blocks up to 32 MiB come from the heap and freed ones are
//! reused. The CPU kernels call it on their first output, so every CPU user gets it; the
//! process's resident memory then stays near its peak instead of shrinking between passes.
//! The environment variable `INTERNLM2_MALLOC_DEFAULTS` (any value) leaves glibc's defaults
//! alone. Other C libraries (musl, macOS, Windows) are left as they are.

use std::sync::OnceLock;

/// glibc's largest accepted mmap threshold on 64-bit targets (`HEAP_MAX_SIZE / 2`).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of glibc's heap kept before it is given back to the kernel.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MallocTuning {
    /// glibc's thresholds were set to [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`].
    Applied,
    /// `INTERNLM2_MALLOC_DEFAULTS` is set: glibc's defaults stay.
    Disabled,
    /// Not glibc, or glibc refused a value: nothing was changed.
    Unsupported,
}

/// Makes glibc's `malloc` keep freed blocks of up to 32 MiB for reuse (see the module
/// documentation). Idempotent: the first call decides, later calls return its result.
///
/// ```
/// use internlm2_backends::memory::{MallocTuning, keep_freed_memory};
/// let t = keep_freed_memory();
/// assert_eq!(t, keep_freed_memory());
/// assert!(matches!(t, MallocTuning::Applied | MallocTuning::Disabled | MallocTuning::Unsupported));
/// ```
pub fn keep_freed_memory() -> MallocTuning {
    static DONE: OnceLock<MallocTuning> = OnceLock::new();
    *DONE.get_or_init(|| {
        if std::env::var_os("INTERNLM2_MALLOC_DEFAULTS").is_some() {
            return MallocTuning::Disabled;
        }
        apply()
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> MallocTuning {
    // SAFETY: `mallopt` only changes the allocator's parameters; glibc takes its own lock.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    };
    if ok {
        MallocTuning::Applied
    } else {
        MallocTuning::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> MallocTuning {
    MallocTuning::Unsupported
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn faults() -> i64 {
        // SAFETY: `getrusage` fills the struct it is given.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
            u.ru_minflt
        }
    }

    /// Allocates and writes `bytes`, then frees them; returns the page faults it took.
    fn touch(bytes: usize) -> i64 {
        let before = faults();
        let mut v = vec![0u8; bytes];
        for i in (0..bytes).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        drop(v);
        faults() - before
    }

    #[test]
    fn a_freed_buffer_is_reused_without_page_faults() {
        if std::env::var_os("INTERNLM2_MALLOC_DEFAULTS").is_some() {
            return;
        }
        assert_eq!(keep_freed_memory(), MallocTuning::Applied);
        let bytes = 8 << 20; // 2,048 pages, below the 32 MiB threshold
        let pages = (bytes / 4096) as i64;
        let first = touch(bytes);
        let again: i64 = (0..4).map(|_| touch(bytes)).sum();
        // The first buffer may fault in every page; the next four reuse it.
        assert!(
            again < pages / 10,
            "4 more rounds took {again} page faults (first round {first}, {pages} pages)"
        );
    }
}
