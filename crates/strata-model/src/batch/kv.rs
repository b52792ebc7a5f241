//! Paged KV memory: one pool of fixed-size blocks per layer, shared by every sequence of a
//! [`super::Scheduler`], and the attention that reads a sequence's blocks through its block
//! table.
//!
//! Each layer's K and V caches are one tensor of `n_blocks × block_size` rows
//! `[rows, n_head_kv, head_dim]`; a sequence owns a list of block indices (its table), and its
//! logical position `p` lives in row `table[p / block_size] × block_size + p % block_size` of
//! every layer. A block is free or owned by exactly one sequence, so sequences of any length
//! share the pool without fragmentation; finishing or cancelling a sequence returns its blocks.

use half::f16;
use rayon::prelude::*;
use strata_tensor::{DType, Stream, Tensor};

use crate::config::LlamaConfig;
use crate::forward::LayerKv;
use crate::model::KvType;
use crate::{Error, Result};

/// The free list and the per-layer caches.
pub struct KvPool {
    block_size: usize,
    n_blocks: usize,
    free: Vec<u32>,
    pub(super) layers: Vec<LayerKv>,
}

impl KvPool {
    /// `n_blocks` blocks of `block_size` positions in every layer of `cfg`, in host memory.
    ///
    /// # Errors
    /// A zero size, or out of memory.
    pub fn new(cfg: &LlamaConfig, n_blocks: usize, block_size: usize, kv: KvType) -> Result<KvPool> {
        if n_blocks == 0 || block_size == 0 {
            return Err(Error::invalid(format!(
                "a KV pool needs at least one block of at least one position (got {n_blocks} blocks of {block_size})"
            )));
        }
        let rows = n_blocks
            .checked_mul(block_size)
            .ok_or_else(|| Error::invalid(format!("{n_blocks} KV blocks of {block_size} positions overflow")))?;
        let dtype = kv_dtype(kv);
        let layers =
            (0..cfg.n_layers).map(|l| LayerKv::new(cfg, rows, dtype, &Stream::Host, l)).collect::<Result<Vec<_>>>()?;
        // Hand out low block numbers first (pop from the end).
        let free = (0..n_blocks as u32).rev().collect();
        Ok(KvPool { block_size, n_blocks, free, layers })
    }

    /// Bytes one block takes over all layers, K and V.
    pub fn block_bytes(cfg: &LlamaConfig, block_size: usize, kv: KvType) -> u64 {
        let elem = match kv {
            KvType::F16 => 2,
            KvType::F32 => 4,
        };
        (cfg.n_layers * 2 * block_size * cfg.kv_dim() * elem) as u64
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

fn kv_dtype(kv: KvType) -> DType {
    match kv {
        KvType::F16 => DType::F16,
        KvType::F32 => DType::F32,
    }
}

/// One row of a batched pass as attention sees it: the query at logical position `pos` of a
/// sequence whose cache rows are given by `table`.
pub struct AttnRow<'a> {
    /// The sequence's block table.
    pub table: &'a [u32],
    /// Logical position of the query (the sequence's keys 0..=pos are visible, or the last
    /// `window` of them).
    pub pos: usize,
}

/// A cache element read as f32.
trait Elem: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline]
    fn f32(self) -> f32 {
        self
    }
}

impl Elem for f16 {
    #[inline]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// Causal grouped-query attention of every row of `q` [R, n_head, head_dim] over its own
/// sequence's cache rows, into `out` (same shape). The arithmetic per (row, head) is that of
/// the CPU reference's attention (f32 scores, max-subtracted softmax, one pass over V), so a
/// row's result does not depend on the other rows of the batch.
///
/// # Errors
/// Shapes that do not match, a position beyond the sequence's table.
pub fn paged_attention(
    cfg: &LlamaConfig,
    layer: usize,
    pool: &KvPool,
    rows: &[AttnRow<'_>],
    q: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    let (nh, nkv, hd) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim);
    let kv = pool.layers.get(layer).ok_or_else(|| Error::invalid(format!("no KV pool for layer {layer}")))?;
    let want = rows.len() * nh * hd;
    if q.numel() != want || out.numel() != want {
        return Err(Error::invalid(format!(
            "paged attention: q has {} and out {} elements, {} rows need {want}",
            q.numel(),
            out.numel(),
            rows.len()
        )));
    }
    if nkv == 0 || !nh.is_multiple_of(nkv) {
        return Err(Error::invalid(format!("{nh} query heads are not a multiple of {nkv} KV heads")));
    }
    for r in rows {
        if pool.row(r.table, r.pos).is_none() {
            return Err(Error::invalid(format!(
                "position {} is beyond the {} blocks of its sequence",
                r.pos,
                r.table.len()
            )));
        }
    }
    let shape =
        Shape { nh, group: nh / nkv, hd, bs: pool.block_size, window: cfg.layer_window(layer), scale: cfg.attn_scale };
    let q = q.as_f32()?;
    let out = out.as_f32_mut()?;
    match (kv.k.dtype(), kv.v.dtype()) {
        (DType::F16, DType::F16) => attend_all(&shape, rows, q, kv.k.as_f16()?, kv.v.as_f16()?, out),
        _ => attend_all(&shape, rows, q, kv.k.as_f32()?, kv.v.as_f32()?, out),
    }
    Ok(())
}

struct Shape {
    nh: usize,
    group: usize,
    hd: usize,
    bs: usize,
    window: Option<usize>,
    scale: f32,
}

/// The attention of every (row, head), in parallel; the caches are typed once here, not per
/// element.
fn attend_all<T: Elem>(sh: &Shape, rows: &[AttnRow<'_>], q: &[f32], k: &[T], v: &[T], out: &mut [f32]) {
    let (hd, bs) = (sh.hd, sh.bs);
    let row_len = sh.nh / sh.group * hd;
    out.par_chunks_mut(hd).zip(q.par_chunks(hd)).enumerate().for_each(|(item, (o, qh))| {
        let (r, h) = (item / sh.nh, item % sh.nh);
        let row = &rows[r];
        let first = sh.window.map_or(0, |w| (row.pos + 1).saturating_sub(w));
        let kv_off = (h / sh.group) * hd;
        // Checked by the caller: every position up to row.pos has a block.
        let base = |p: usize| (row.table[p / bs] as usize * bs + p % bs) * row_len + kv_off;
        let scores: Vec<f32> = (first..=row.pos)
            .map(|p| {
                let kr = &k[base(p)..base(p) + hd];
                let mut s = 0.0f32;
                for (&qd, &kd) in qh.iter().zip(kr) {
                    s += qd * kd.f32();
                }
                s * sh.scale
            })
            .collect();
        let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut l = 0.0f32;
        o.fill(0.0);
        for (p, &sc) in (first..=row.pos).zip(&scores) {
            let e = (sc - m).exp();
            l += e;
            let vr = &v[base(p)..base(p) + hd];
            for (od, &vd) in o.iter_mut().zip(vr) {
                *od += e * vd.f32();
            }
        }
        for od in o.iter_mut() {
            *od /= l;
        }
    });
}
