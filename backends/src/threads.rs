//! Where a CPU decoding step runs: on one of the CPU kernels' own threads.
//!
//! The fused CPU kernels split their work over rayon's global pool. Called from a thread
//! outside the pool, every kernel call hands its tasks over and sleeps until they are done,
//! and the pool's threads, idle between two kernels, have often gone to sleep and must be
//! woken first; a decoding step makes about fifty such calls at batch 1. Called from a pool
//! thread, the caller runs tasks itself and its siblings are usually still awake. Moving a
//! whole step onto a pool thread pays that hand-over once per step instead of once per kernel.

/// Runs `f` on a thread of the CPU kernels' pool (rayon's global pool) and returns its result.
/// On such a thread already, or without the embedded CPU backend (feature `flex`), it simply
/// calls `f`. `internlm2::generate::Generation::step` and the serving engine's steps go
/// through it; a program that drives the model itself (its own decoding loop) can wrap each
/// step the same way.
///
/// `f` should not block on anything but the model (a pool thread waiting on a channel is a
/// thread the kernels cannot use).
///
/// ```
/// let sum = internlm2_backends::on_cpu_threads(|| (1..=10).sum::<u32>());
/// assert_eq!(sum, 55);
/// ```
pub fn on_cpu_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    if rayon::current_thread_index().is_none() {
        return rayon::join(f, || ()).0;
    }
    f()
}
