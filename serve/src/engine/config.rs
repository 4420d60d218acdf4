//! The engine's configuration: KV-cache budget, block size, batch limits, prefill chunking.

use burn::config::Config;

/// How the engine sizes its KV cache and its batches.
///
/// ```
/// use internlm2_serve::engine::EngineConfig;
/// let config = EngineConfig::new()
///     .with_kv_memory_bytes(256 << 20)
///     .with_max_running(16)
///     .with_prefill_chunk(256);
/// assert_eq!(config.block_size, 16);
/// assert!(config.prefix_caching);
/// ```
#[derive(Config, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Bytes of the KV pool (keys and values of every layer); the pool holds
    /// `kv_memory_bytes / bytes_per_block` blocks.
    #[config(default = "1 << 30")]
    pub kv_memory_bytes: usize,
    /// Tokens per KV block.
    #[config(default = 16)]
    pub block_size: usize,
    /// Most sequences decoded together in one step.
    #[config(default = 32)]
    pub max_running: usize,
    /// Most requests waiting to start; a submit past it fails with
    /// [`EngineError::QueueFull`](super::EngineError::QueueFull).
    #[config(default = 1024)]
    pub max_waiting: usize,
    /// Most prompt tokens processed in one step (summed over the sequences being prefilled);
    /// decoding sequences add one token each on top of it.
    #[config(default = 512)]
    pub prefill_chunk: usize,
    /// Share the KV blocks of identical prompt prefixes between requests.
    #[config(default = true)]
    pub prefix_caching: bool,
}
