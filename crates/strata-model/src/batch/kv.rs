//! Paged KV memory: the block allocator shared by every sequence of a [`super::Scheduler`].
//!
//! The caches themselves are the scheduler's session's per-layer K and V caches, each on the
//! device of its layer's placement (host memory for cpu layers, the accelerator for resident
//! and streamed ones) and counted against that device's budget when the session is opened:
//! `n_blocks × block_size` rows `[rows, n_head_kv, head_dim]` per layer. A sequence owns a list
//! of block indices (its table), and its logical position `p` lives in row
//! `table[p / block_size] × block_size + p % block_size` of every layer. A block is free or
//! owned by exactly one sequence, so sequences of any length share the pool without
//! fragmentation; finishing or cancelling a sequence returns its blocks. The attention that
//! reads a sequence's blocks through its table is `strata_tensor::ops::paged_attention`.

use crate::config::LlamaConfig;
use crate::model::KvType;
use crate::{Error, Result};

/// The free list of a pool of fixed-size KV blocks.
#[derive(Debug, Clone)]
pub struct KvPool {
    block_size: usize,
    n_blocks: usize,
    free: Vec<u32>,
}

impl KvPool {
    /// `n_blocks` free blocks of `block_size` positions.
    ///
    /// # Errors
    /// A zero size, or more blocks than a block index holds.
    pub fn new(n_blocks: usize, block_size: usize) -> Result<KvPool> {
        if n_blocks == 0 || block_size == 0 {
            return Err(Error::invalid(format!(
                "a KV pool needs at least one block of at least one position (got {n_blocks} blocks of {block_size})"
            )));
        }
        let rows = n_blocks.checked_mul(block_size).filter(|&r| i32::try_from(r).is_ok());
        if rows.is_none() {
            return Err(Error::invalid(format!(
                "{n_blocks} KV blocks of {block_size} positions are more cache rows than an i32 indexes"
            )));
        }
        // Hand out low block numbers first (pop from the end).
        let free = (0..n_blocks as u32).rev().collect();
        Ok(KvPool { block_size, n_blocks, free })
    }

    /// Bytes one block takes over all layers, K and V.
    pub fn block_bytes(cfg: &LlamaConfig, block_size: usize, kv: KvType) -> u64 {
        (cfg.n_layers * 2 * block_size * cfg.kv_dim() * kv.bytes()) as u64
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Blocks not owned by any sequence.
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks holding `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Takes `n` blocks, or none when fewer are free.
    pub fn alloc(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        Some(self.free.split_off(self.free.len() - n))
    }

    /// Returns blocks to the pool.
    pub fn release(&mut self, blocks: Vec<u32>) {
        self.free.extend(blocks);
    }

    /// The cache row of logical position `pos` of the sequence with block table `table`.
    pub fn row(&self, table: &[u32], pos: usize) -> Option<usize> {
        table.get(pos / self.block_size).map(|&b| b as usize * self.block_size + pos % self.block_size)
    }
}
