//! The KV block allocator and the prefix cache.
//!
//! Every block of the pool has a reference count. A block with count 0 sits in the free
//! queue (least recently freed first). A full block whose keys and values are computed can be
//! *registered* under the hash of its content chain: (hash of the previous block, its tokens,
//! the RoPE bases of its tokens). A later sequence whose prompt has the same chain takes the
//! registered block instead of recomputing it (count + 1), even after its first owner
//! finished, as long as the block was not handed out again: allocation takes the oldest free
//! block and forgets what it held. Lookups compare the stored content, so a hash collision
//! can never serve wrong keys.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The chain hash before a sequence's first block.
pub(crate) const ROOT_HASH: u64 = 0x696e_7465_726e_6c6d; // "internlm"

/// What a registered block holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Content {
    parent: u64,
    tokens: Box<[u32]>,
    extra: u64,
}

/// Block allocator with reference counts, a free queue and the prefix cache.
#[derive(Debug)]
pub(crate) struct BlockPool {
    refs: Vec<u32>,
    /// Free blocks by the tick they were freed at (oldest first).
    free: BTreeMap<u64, u32>,
    /// The tick each free block is queued under.
    free_tick: Vec<u64>,
    tick: u64,
    /// Registered block of each chain hash.
    cached: HashMap<u64, u32>,
    /// Hash and content of each registered block.
    registered: Vec<Option<(u64, Content)>>,
    used: usize,
}

impl BlockPool {
    /// `blocks` free blocks, nothing cached.
    pub fn new(blocks: usize) -> Self {
        let mut pool = Self {
            refs: vec![0; blocks],
            free: BTreeMap::new(),
            free_tick: vec![0; blocks],
            tick: 0,
            cached: HashMap::new(),
            registered: vec![None; blocks],
            used: 0,
        };
        for b in 0..blocks as u32 {
            pool.enqueue(b);
        }
        pool
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Blocks that can be handed out (free, possibly still cached).
    pub fn available(&self) -> usize {
        self.free.len()
    }

    fn enqueue(&mut self, block: u32) {
        self.tick += 1;
        self.free.insert(self.tick, block);
        self.free_tick[block as usize] = self.tick;
    }

    /// A fresh block (count 1), forgetting what it cached; `None` when every block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let (_, block) = self.free.pop_first()?;
        if let Some((hash, _)) = self.registered[block as usize].take() {
            self.cached.remove(&hash);
        }
        self.refs[block as usize] = 1;
        self.used += 1;
        Some(block)
    }

    /// Drops one reference; at zero the block joins the free queue (staying cached).
    pub fn release(&mut self, block: u32) {
        let r = &mut self.refs[block as usize];
        debug_assert!(*r > 0, "block {block} released more than held");
        if *r == 0 {
            return;
        }
        *r -= 1;
        if *r == 0 {
            self.used -= 1;
            self.enqueue(block);
        }
    }

    /// Releases a sequence's blocks, last block first (so that its tail is reused before its
    /// shared prefix).
    pub fn release_all(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            self.release(b);
        }
    }

    /// The chain hash of a block's content.
    pub fn chain_hash(parent: u64, tokens: &[u32], extra: u64) -> u64 {
        // Fixed keys: the same value for the same content throughout the process.
        let mut h = std::hash::DefaultHasher::new();
        parent.hash(&mut h);
        tokens.hash(&mut h);
        extra.hash(&mut h);
        h.finish()
    }

    /// The registered block with this content, taken (count + 1); `None` on a miss.
    pub fn lookup(&mut self, parent: u64, tokens: &[u32], extra: u64) -> Option<(u32, u64)> {
        let hash = Self::chain_hash(parent, tokens, extra);
        let &block = self.cached.get(&hash)?;
        let (_, content) = self.registered[block as usize].as_ref()?;
        if content.parent != parent || *content.tokens != *tokens || content.extra != extra {
            return None; // a hash collision: never serve another chain's keys
        }
        let r = &mut self.refs[block as usize];
        if *r == 0 {
            self.free.remove(&self.free_tick[block as usize]);
            self.used += 1;
        }
        *r += 1;
        Some((block, hash))
    }

    /// Registers a full, computed block under its chain hash and returns the hash. If the
    /// same content is registered already (another sequence computed it at the same time),
    /// that registration stays and this block is simply not shared.
    pub fn register(&mut self, block: u32, parent: u64, tokens: &[u32], extra: u64) -> u64 {
        let hash = Self::chain_hash(parent, tokens, extra);
        if self.registered[block as usize].is_none() && !self.cached.contains_key(&hash) {
            self.cached.insert(hash, block);
            self.registered[block as usize] = Some((
                hash,
                Content {
                    parent,
                    tokens: tokens.into(),
                    extra,
                },
            ));
        }
        hash
    }

    /// Forgets every registration and frees every block (after a failed step left the pool's
    /// contents unknown).
    pub fn reset(&mut self) {
        *self = Self::new(self.total());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_until_empty_then_reuse_oldest_freed() {
        let mut pool = BlockPool::new(3);
        let blocks: Vec<u32> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(pool.allocate(), None);
        assert_eq!(pool.used(), 3);
        pool.release(blocks[2]);
        pool.release(blocks[0]);
        assert_eq!(pool.used(), 1);
        assert_eq!(pool.allocate(), Some(blocks[2]));
        assert_eq!(pool.allocate(), Some(blocks[0]));
    }

    #[test]
    fn shared_blocks_need_every_release() {
        let mut pool = BlockPool::new(2);
        let b = pool.allocate().unwrap();
        let h = pool.register(b, ROOT_HASH, &[1, 2], 0);
        assert_eq!(pool.lookup(ROOT_HASH, &[1, 2], 0), Some((b, h)));
        pool.release(b);
        assert_eq!(pool.used(), 1);
        pool.release(b);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn freed_blocks_stay_cached_until_reallocated() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        pool.register(a, ROOT_HASH, &[5, 6], 0);
        pool.release(a);
        // A hit takes it back out of the free queue.
        assert_eq!(pool.lookup(ROOT_HASH, &[5, 6], 0).map(|x| x.0), Some(a));
        assert_eq!(pool.available(), 1);
        pool.release(a);
        // Allocation hands out the other block first (a was freed later), then evicts a.
        let other = pool.allocate().unwrap();
        assert_ne!(other, a);
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.lookup(ROOT_HASH, &[5, 6], 0), None);
    }

    #[test]
    fn content_and_chain_must_match() {
        let mut pool = BlockPool::new(4);
        let a = pool.allocate().unwrap();
        let ha = pool.register(a, ROOT_HASH, &[1, 2], 0);
        let b = pool.allocate().unwrap();
        pool.register(b, ha, &[3, 4], 0);
        assert!(pool.lookup(ha, &[3, 4], 0).is_some());
        assert!(pool.lookup(ROOT_HASH, &[3, 4], 0).is_none(), "other parent");
        assert!(pool.lookup(ha, &[3, 4], 7).is_none(), "other RoPE bases");
        assert!(pool.lookup(ha, &[3, 5], 0).is_none(), "other tokens");
    }

    #[test]
    fn a_duplicate_registration_keeps_the_first() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.register(a, ROOT_HASH, &[9], 0);
        pool.register(b, ROOT_HASH, &[9], 0);
        assert_eq!(pool.lookup(ROOT_HASH, &[9], 0).map(|x| x.0), Some(a));
    }
}
