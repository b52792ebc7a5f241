//! Attention for a batch of sequences of different lengths over a paged KV cache
//! (`paged_attention.cu`): the rows of one continuous-batching pass, each attending its own
//! sequence's cached positions through that sequence's block table.
//!
//! The caches are one pool of `cache_rows` rows [n_kv_heads][head_dim] (f32 or f16), cut into
//! blocks of `block_size` rows. Row r of the batch is the query at logical position
//! `positions[r]` of a sequence whose block table starts at `tables[table_start[r]]`: its
//! logical position p lives in cache row `b * block_size + p % block_size`, where block
//! `b = tables[table_start[r] + p / block_size]`. The query sees positions
//! `first_visible(positions[r], window)..=positions[r]`.
//! The arithmetic per (row, head) is the reference attention's (f32 scores, max-subtracted
//! softmax, one pass over V), so a row's result does not depend on the other rows.

use half::f16;
use rayon::prelude::*;

use super::attention::first_visible;
use super::{CacheRef, expect_len};
use crate::{Error, Result};

/// The sizes of a [`paged_attention`] call.
#[derive(Debug, Clone, Copy)]
pub struct PagedShape {
    /// Query rows in the batch.
    pub n_rows: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads (`n_heads` is a multiple).
    pub n_kv_heads: usize,
    /// Values per head (1..=256).
    pub head_dim: usize,
    /// Cache rows per block.
    pub block_size: usize,
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

/// Checks every index a [`paged_attention`] call will follow; returns the cache rows.
fn check_paged(
    op: &'static str,
    q: &[f32],
    k: &CacheRef,
    v: &CacheRef,
    sh: &PagedShape,
    tables: &[i32],
    table_start: &[i32],
    positions: &[i32],
    window: Option<usize>,
    out: &[f32],
) -> Result<usize> {
    if window == Some(0) {
        return Err(Error::invalid(op, "a sliding window must hold at least 1 position (None: no window)"));
    }
    if sh.n_kv_heads == 0 || !sh.n_heads.is_multiple_of(sh.n_kv_heads) {
        return Err(Error::invalid(
            op,
            format!("n_heads {} must be a multiple of n_kv_heads {}", sh.n_heads, sh.n_kv_heads),
        ));
    }
    if sh.head_dim == 0 || sh.head_dim > 256 || sh.block_size == 0 {
        return Err(Error::invalid(
            op,
            format!("head_dim must be in 1..=256 and block_size at least 1, got {} and {}", sh.head_dim, sh.block_size),
        ));
    }
    if k.dtype() != v.dtype() || k.len() != v.len() {
        return Err(Error::invalid(
            op,
            format!("K cache ({}, {}) and V cache ({}, {}) differ", k.dtype(), k.len(), v.dtype(), v.len()),
        ));
    }
    let n = sh.n_rows.checked_mul(sh.n_heads).and_then(|x| x.checked_mul(sh.head_dim));
    expect_len(op, "q", q.len(), n)?;
    expect_len(op, "out", out.len(), n)?;
    expect_len(op, "positions", positions.len(), Some(sh.n_rows))?;
    expect_len(op, "table_start", table_start.len(), Some(sh.n_rows))?;
    let row = sh.n_kv_heads * sh.head_dim;
    if !k.len().is_multiple_of(row) {
        return Err(Error::invalid(op, format!("the caches have {} elements, not whole rows of {row}", k.len())));
    }
    let cache_rows = k.len() / row;
    for (r, (&p, &start)) in positions.iter().zip(table_start).enumerate() {
        if p < 0 || start < 0 {
            return Err(Error::invalid(op, format!("row {r}: position {p} or table start {start} is negative")));
        }
        let last = start as usize + p as usize / sh.block_size;
        for t in start as usize..=last {
            let Some(&b) = tables.get(t) else {
                return Err(Error::invalid(
                    op,
                    format!("row {r} at position {p} needs table entry {t}, the tables hold {}", tables.len()),
                ));
            };
            let end = (b as usize).checked_add(1).and_then(|x| x.checked_mul(sh.block_size));
            if b < 0 || end.is_none_or(|e| e > cache_rows) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "row {r}: block {b} is outside the cache of {cache_rows} rows in blocks of {}",
                        sh.block_size
                    ),
                ));
            }
        }
    }
    Ok(cache_rows)
}

/// Paged attention of every row of `q` `[n_rows][n_heads][head_dim]` into `out` (same shape),
/// each row over its own sequence's blocks (see the module doc; `strata_paged_attention_f32`).
///
/// # Errors
/// Lengths that do not match the shape, a table entry or block outside the tables or the
/// cache, a window of 0.
pub fn paged_attention(
    q: &[f32],
    k_cache: CacheRef,
    v_cache: CacheRef,
    shape: PagedShape,
    tables: &[i32],
    table_start: &[i32],
    positions: &[i32],
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "paged_attention";
    check_paged(OP, q, &k_cache, &v_cache, &shape, tables, table_start, positions, window, out)?;
    if shape.n_rows == 0 || shape.n_heads == 0 {
        return Ok(());
    }
    let rows = Rows { tables, table_start, positions, window, scale };
    match (k_cache, v_cache) {
        (CacheRef::F16(k), CacheRef::F16(v)) => attend_all(&shape, &rows, q, k, v, out),
        (CacheRef::F32(k), CacheRef::F32(v)) => attend_all(&shape, &rows, q, k, v, out),
        // Checked above: both caches have one type.
        _ => return Err(Error::invalid(OP, "the K and V caches differ in type")),
    }
    Ok(())
}

struct Rows<'a> {
    tables: &'a [i32],
    table_start: &'a [i32],
    positions: &'a [i32],
    window: Option<usize>,
    scale: f32,
}

/// The attention of every (row, head), in parallel; the caches are typed once here, not per
/// element.
fn attend_all<T: Elem>(sh: &PagedShape, rows: &Rows<'_>, q: &[f32], k: &[T], v: &[T], out: &mut [f32]) {
    let (hd, bs, nh) = (sh.head_dim, sh.block_size, sh.n_heads);
    let group = nh / sh.n_kv_heads;
    let row_len = sh.n_kv_heads * hd;
    out.par_chunks_mut(hd).zip(q.par_chunks(hd)).enumerate().for_each(|(item, (o, qh))| {
        let (r, h) = (item / nh, item % nh);
        // Checked by `check_paged`: non-negative, and every table entry up to pos is a block.
        let pos = rows.positions[r] as usize;
        let table = &rows.tables[rows.table_start[r] as usize..];
        let first = first_visible(pos, rows.window);
        let kv_off = (h / group) * hd;
        let base = |p: usize| (table[p / bs] as usize * bs + p % bs) * row_len + kv_off;
        let scores: Vec<f32> = (first..=pos)
            .map(|p| {
                let kr = &k[base(p)..base(p) + hd];
                let mut s = 0.0f32;
                for (&qd, &kd) in qh.iter().zip(kr) {
                    s += qd * kd.f32();
                }
                s * rows.scale
            })
            .collect();
        let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut l = 0.0f32;
        o.fill(0.0);
        for (p, &sc) in (first..=pos).zip(&scores) {
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
