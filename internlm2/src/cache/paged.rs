//! The paged KV cache: per layer, a key pool and a value pool of fixed-size blocks shared by
//! many sequences (vLLM's PagedAttention layout).
//!
//! Each pool is one `[blocks, kv_heads, block_size, head_dim]` tensor allocated once. Which
//! blocks a sequence owns is the caller's business (the serving engine's block allocator);
//! a forward call describes it with a [`PagedLayout`], and
//! [`Kernels::paged_attention`] writes the new keys and values in place and attends over
//! the pool, so no step copies or concatenates the cache.

use burn::tensor::{DType, Tensor, backend::Backend};
use internlm2_backends::Kernels;
use internlm2_backends::kernels::PagedLayout;

use crate::config::InternLM2Config;

/// The key and value pools of one decoder layer.
#[derive(Debug, Clone)]
pub struct PagedLayerCache<B: Backend> {
    /// Taken out during a call (the kernel returns the updated pool), otherwise present.
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
}

impl<B: Kernels> PagedLayerCache<B> {
    /// Writes `k`, `v` into the slots the layout gives and attends; see
    /// [`Kernels::paged_attention`].
    ///
    /// # Shapes
    /// `q`: `[1, heads, tokens, d]`, `k`/`v`: `[1, kv_heads, tokens, d]` -> `[1, heads, tokens, d]`
    pub fn attend(
        &mut self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        layout: &PagedLayout,
    ) -> Tensor<B, 4> {
        let keys = self
            .keys
            .take()
            .expect("pools are put back after every call");
        let values = self
            .values
            .take()
            .expect("pools are put back after every call");
        let out = B::paged_attention(q, k, v, keys, values, layout);
        self.keys = Some(out.key_pool);
        self.values = Some(out.value_pool);
        out.output
    }

    /// The key pool, `[blocks, kv_heads, block_size, d]`.
    pub fn keys(&self) -> &Tensor<B, 4> {
        self.keys
            .as_ref()
            .expect("pools are put back after every call")
    }

    /// The value pool, `[blocks, kv_heads, block_size, d]`.
    pub fn values(&self) -> &Tensor<B, 4> {
        self.values
            .as_ref()
            .expect("pools are put back after every call")
    }
}

/// Key and value pools of every layer.
///
/// ```
/// use burn::tensor::DType;
/// use internlm2::InternLM2Config;
/// use internlm2::cache::PagedKvCache;
/// use internlm2_backends::Cpu;
/// let config = InternLM2Config::new(64, 32, 64, 2, 4, 2);
/// let per_block = PagedKvCache::<Cpu>::bytes_per_block(&config, 16, DType::F32).unwrap();
/// // 2 layers x (K, V) x 2 KV heads x 16 tokens x head_dim 8 x 4 bytes
/// assert_eq!(per_block, 2 * 2 * 2 * 16 * 8 * 4);
/// let cache = PagedKvCache::<Cpu>::new(&config, 10, 16, DType::F32, &Default::default());
/// assert_eq!(cache.blocks(), 10);
/// ```
#[derive(Debug, Clone)]
pub struct PagedKvCache<B: Backend> {
    layers: Vec<PagedLayerCache<B>>,
    blocks: usize,
    block_size: usize,
}

impl<B: Kernels> PagedKvCache<B> {
    /// Bytes one block takes over all layers (keys and values), `None` on overflow.
    pub fn bytes_per_block(
        config: &InternLM2Config,
        block_size: usize,
        dtype: DType,
    ) -> Option<usize> {
        [
            config.num_hidden_layers,
            2,
            config.num_key_value_heads,
            block_size,
            config.head_dim(),
            dtype.size(),
        ]
        .into_iter()
        .try_fold(1usize, usize::checked_mul)
    }

    /// Zeroed pools of `blocks` blocks of `block_size` tokens for every layer, in `dtype`
    /// (that of the model's activations).
    pub fn new(
        config: &InternLM2Config,
        blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        let shape = [
            blocks,
            config.num_key_value_heads,
            block_size,
            config.head_dim(),
        ];
        let pool = || Some(Tensor::<B, 4>::zeros(shape, device).cast(dtype));
        Self {
            layers: (0..config.num_hidden_layers)
                .map(|_| PagedLayerCache {
                    keys: pool(),
                    values: pool(),
                })
                .collect(),
            blocks,
            block_size,
        }
    }

    /// Blocks per pool.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The layers' pools.
    pub fn layers(&self) -> &[PagedLayerCache<B>] {
        &self.layers
    }

    /// The layers' pools, for the model's forward pass.
    pub(crate) fn layers_mut(&mut self) -> &mut [PagedLayerCache<B>] {
        &mut self.layers
    }
}
