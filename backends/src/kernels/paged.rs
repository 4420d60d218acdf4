//! The layout of a paged KV cache, shared by the paged-attention kernels.
//!
//! Keys and values live in pools of fixed-size blocks, one pool per layer and per K/V, shaped
//! `[blocks, kv_heads, block_size, head_dim]` (the `block_size` rows of one block and one head
//! are contiguous). A sequence owns a *block table*: logical slot `i` (its `i`-th token) lives
//! in physical block `blocks[i / block_size]` at row `i % block_size`. A forward call packs
//! several sequences back to back along the token dimension; [`PagedLayout`] says which packed
//! rows belong to which sequence and where their keys go.

/// One packed sequence of a paged-attention call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PagedSequence {
    /// Block table: physical block of each logical block of the sequence; it must cover the
    /// slots `0..past + len`.
    pub blocks: Vec<u32>,
    /// Tokens already in the pool; this call's tokens take slots `past..past + len`.
    pub past: usize,
    /// Tokens of this call (consecutive packed rows, in the order of
    /// [`PagedLayout::sequences`]).
    pub len: usize,
}

/// Which packed rows belong to which sequence, and where each sequence's keys live.
///
/// ```
/// use internlm2_backends::kernels::{PagedLayout, PagedSequence};
/// // Sequence A decodes its 21st token (block size 16: blocks 4 and 9), B reads 3 prompt tokens.
/// let layout = PagedLayout {
///     block_size: 16,
///     sequences: vec![
///         PagedSequence { blocks: vec![4, 9], past: 20, len: 1 },
///         PagedSequence { blocks: vec![2], past: 0, len: 3 },
///     ],
/// };
/// assert_eq!(layout.tokens(), 4);
/// assert_eq!(layout.slot(0, 20), (9, 4));
/// layout.check(10, 4).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PagedLayout {
    /// Tokens per block.
    pub block_size: usize,
    /// The packed sequences, in row order.
    pub sequences: Vec<PagedSequence>,
}

impl PagedLayout {
    /// Packed rows in all (the sum of the sequences' `len`).
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.len).sum()
    }

    /// First packed row of each sequence.
    pub fn offsets(&self) -> Vec<usize> {
        let mut at = 0;
        self.sequences
            .iter()
            .map(|s| {
                let start = at;
                at += s.len;
                start
            })
            .collect()
    }

    /// `(physical block, row in block)` of logical slot `slot` of sequence `seq`.
    ///
    /// # Panics
    /// If the block table does not cover the slot.
    pub fn slot(&self, seq: usize, slot: usize) -> (usize, usize) {
        let s = &self.sequences[seq];
        (
            s.blocks[slot / self.block_size] as usize,
            slot % self.block_size,
        )
    }

    /// Checks the layout against a pool of `pool_blocks` blocks and a packed input of `tokens`
    /// rows: every block table covers its slots with blocks inside the pool, and the lengths
    /// add up. The kernels assume a checked layout.
    pub fn check(&self, pool_blocks: usize, tokens: usize) -> Result<(), String> {
        if self.block_size == 0 {
            return Err("block size 0".into());
        }
        let packed = self
            .sequences
            .iter()
            .try_fold(0usize, |acc, s| acc.checked_add(s.len))
            .ok_or("packed length overflows")?;
        if packed != tokens {
            return Err(format!(
                "the sequences hold {packed} tokens, the input has {tokens}"
            ));
        }
        for (i, s) in self.sequences.iter().enumerate() {
            let end = s
                .past
                .checked_add(s.len)
                .ok_or_else(|| format!("sequence {i}: slot count overflows"))?;
            let needed = end.div_ceil(self.block_size);
            if s.blocks.len() < needed {
                return Err(format!(
                    "sequence {i}: {end} slots need {needed} blocks, the table has {}",
                    s.blocks.len()
                ));
            }
            if let Some(&b) = s.blocks[..needed]
                .iter()
                .find(|&&b| b as usize >= pool_blocks)
            {
                return Err(format!(
                    "sequence {i}: block {b} is outside the pool of {pool_blocks}"
                ));
            }
        }
        Ok(())
    }
}

/// What a paged-attention call returns: the attention output and the pools holding the new
/// keys and values.
#[derive(Debug, Clone)]
pub struct PagedAttentionOutput<B: burn::tensor::backend::Backend> {
    /// `[1, heads, tokens, head_dim]`.
    pub output: burn::tensor::Tensor<B, 4>,
    /// The key pool, `[blocks, kv_heads, block_size, head_dim]`.
    pub key_pool: burn::tensor::Tensor<B, 4>,
    /// The value pool, same shape.
    pub value_pool: burn::tensor::Tensor<B, 4>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> PagedLayout {
        PagedLayout {
            block_size: 4,
            sequences: vec![
                PagedSequence {
                    blocks: vec![3, 1],
                    past: 5,
                    len: 1,
                },
                PagedSequence {
                    blocks: vec![0, 2],
                    past: 0,
                    len: 7,
                },
            ],
        }
    }

    #[test]
    fn slots_and_offsets() {
        let l = layout();
        assert_eq!(l.offsets(), vec![0, 1]);
        assert_eq!(l.slot(0, 5), (1, 1));
        assert_eq!(l.slot(1, 6), (2, 2));
        assert_eq!(l.check(4, 8), Ok(()));
    }

    #[test]
    fn bad_layouts_are_reported() {
        let l = layout();
        assert!(l.check(4, 9).unwrap_err().contains("hold 8 tokens"));
        assert!(l.check(3, 8).unwrap_err().contains("outside the pool"));
        let mut short = l.clone();
        short.sequences[1].blocks.pop();
        assert!(short.check(4, 8).unwrap_err().contains("need 2 blocks"));
    }
}
