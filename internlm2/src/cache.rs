//! The key/value cache used for decoding, kept outside the model so the model stays `&self`.
//!
//! Each layer owns preallocated `[batch, kv_heads, capacity, head_dim]` buffers. New keys and
//! values are written in place with `slice_assign` at slot `len..len + s` (burn's CPU backends
//! write into a buffer they own alone without copying it); attention reads a view of the first
//! `len + s` slots. When a call would pass the capacity, the buffers grow by doubling, so the
//! whole cache is never re-concatenated per token. The cache also remembers which slots hold
//! padding, so that left-padded rows never attend to their pads.
//!
//! [`paged`] holds the other layout: pools of fixed-size blocks shared by many sequences, for
//! the serving engine. A decoder layer sees either through [`LayerKv`].

pub mod paged;

use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};
use internlm2_backends::kernels::PagedLayout;
use internlm2_backends::{AttentionMask, Kernels};

use crate::config::InternLM2Config;
pub use paged::{PagedKvCache, PagedLayerCache};

/// The KV cache one decoder layer reads and extends during a forward call.
#[derive(Debug)]
pub enum LayerKv<'a, B: Kernels> {
    /// No cache: the call's tokens attend to each other (prefill, training).
    None,
    /// A [`KvCache`] layer: the call's tokens come after the cached ones, row by row.
    Contiguous(&'a mut LayerCache<B>),
    /// A [`PagedKvCache`] layer: packed sequences, placed by the layout.
    Paged(&'a mut PagedLayerCache<B>, &'a PagedLayout),
}

impl<B: Kernels> LayerKv<'_, B> {
    /// Stores `k`, `v` where this cache keeps them and runs causal attention.
    ///
    /// # Shapes
    /// `q`: `[batch, heads, s, d]`, `k`/`v`: `[batch, kv_heads, s, d]` -> `[batch, heads, s, d]`
    pub fn attend(
        self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &AttentionMask<B>,
    ) -> Tensor<B, 4> {
        match self {
            Self::None => B::causal_attention(q, k, v, mask),
            Self::Contiguous(cache) => {
                let (k, v) = cache.append(k, v, mask.past_len);
                B::causal_attention(q, k, v, mask)
            }
            Self::Paged(cache, layout) => cache.attend(q, k, v, layout),
        }
    }
}

/// The cache of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    capacity: usize,
}

impl<B: Kernels> LayerCache<B> {
    fn new(capacity: usize) -> Self {
        Self {
            keys: None,
            values: None,
            capacity,
        }
    }

    /// Writes `k`, `v` at slots `start..start + s` and returns views of slots `0..start + s`.
    ///
    /// # Shapes
    /// `k`, `v`: `[batch, kv_heads, s, d]` -> two `[batch, kv_heads, start + s, d]`
    pub fn append(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, nkv, s, d] = k.dims();
        let end = start + s;
        if end > self.capacity || self.keys.is_none() {
            self.grow(end.max(self.capacity), &k, start);
        }
        let keys = self.keys.take().expect("allocated above");
        let values = self.values.take().expect("allocated above");
        let keys = B::cache_write(keys, k, start);
        let values = B::cache_write(values, v, start);
        let visible = [0..b, 0..nkv, 0..end, 0..d];
        let out = (
            keys.clone().slice(visible.clone()),
            values.clone().slice(visible),
        );
        self.keys = Some(keys);
        self.values = Some(values);
        out
    }

    /// (Re)allocates the buffers to hold at least `needed` slots, keeping slots `0..keep`.
    fn grow(&mut self, needed: usize, like: &Tensor<B, 4>, keep: usize) {
        let [b, nkv, _, d] = like.dims();
        let capacity = if self.keys.is_none() {
            needed.max(1)
        } else {
            needed.max(self.capacity * 2)
        };
        let fresh =
            || Tensor::<B, 4>::zeros([b, nkv, capacity, d], &like.device()).cast(like.dtype());
        let (mut keys, mut values) = (fresh(), fresh());
        if let (Some(old_k), Some(old_v)) = (self.keys.take(), self.values.take())
            && keep > 0
        {
            let range = [0..b, 0..nkv, 0..keep, 0..d];
            keys = keys.slice_assign(range.clone(), old_k.slice(range.clone()));
            values = values.slice_assign(range.clone(), old_v.slice(range));
        }
        self.keys = Some(keys);
        self.values = Some(values);
        self.capacity = capacity;
    }
}

/// Keys and values of every layer for a batch of sequences, plus the padding of each slot.
///
/// ```
/// use internlm2::{InternLM2Config, KvCache};
/// use internlm2_backends::Cpu;
/// let config = InternLM2Config::new(64, 32, 64, 2, 4, 2);
/// let cache = KvCache::<Cpu>::new(&config, 1, 128);
/// assert_eq!(cache.len(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    batch: usize,
    len: usize,
    /// `[batch][slot]`, true where the slot holds a padding token.
    padding: Vec<Vec<bool>>,
}

impl<B: Kernels> KvCache<B> {
    /// An empty cache for `batch` rows, preallocated for `capacity` tokens per row (it grows
    /// past that if needed). Buffers take the dtype of the first keys written.
    pub fn new(config: &InternLM2Config, batch: usize, capacity: usize) -> Self {
        Self {
            layers: (0..config.num_hidden_layers)
                .map(|_| LayerCache::new(capacity))
                .collect(),
            batch,
            len: 0,
            padding: vec![Vec::with_capacity(capacity); batch],
        }
    }

    /// Tokens cached per row (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows of the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forgets every cached token; the buffers are kept for reuse.
    pub fn reset(&mut self) {
        self.len = 0;
        self.padding.iter_mut().for_each(Vec::clear);
    }

    /// The per-layer caches, for the model's forward pass.
    pub(crate) fn layers_mut(&mut self) -> &mut [LayerCache<B>] {
        &mut self.layers
    }

    /// Key padding over cached slots plus `new` (`[batch * s]`, row-major), as a mask tensor;
    /// `None` when no slot is padding.
    pub(crate) fn key_padding(
        &self,
        new: Option<&[bool]>,
        s: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 2, Bool>> {
        let any_new = new.is_some_and(|n| n.iter().any(|&p| p));
        let any_old = self.padding.iter().any(|row| row.iter().any(|&p| p));
        if !any_new && !any_old {
            return None;
        }
        let t = self.len + s;
        let mut flat = Vec::with_capacity(self.batch * t);
        for (row, old) in self.padding.iter().enumerate() {
            flat.extend_from_slice(old);
            match new {
                Some(new) => flat.extend_from_slice(&new[row * s..(row + 1) * s]),
                None => flat.extend(std::iter::repeat_n(false, s)),
            }
        }
        Some(Tensor::from_data(
            TensorData::new(flat, [self.batch, t]),
            device,
        ))
    }

    /// Records that `s` tokens per row were written (with their padding flags).
    pub(crate) fn advance(&mut self, s: usize, new: Option<&[bool]>) {
        for (row, old) in self.padding.iter_mut().enumerate() {
            match new {
                Some(new) => old.extend_from_slice(&new[row * s..(row + 1) * s]),
                None => old.extend(std::iter::repeat_n(false, s)),
            }
        }
        self.len += s;
    }
}
