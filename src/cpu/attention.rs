//! Grouped-query causal attention over a KV cache, optionally within a sliding window, and
//! appending to the cache (attention.cu, kv_cache.cu).
//!
//! A window of `w` positions (llama.cpp's standard sliding window, `is_masked_swa`: a key at
//! position k is masked for a query at p when p - k >= w) means the query at position p sees
//! the keys p+1-w..=p: itself and the w - 1 before it. `None` is global causal attention.

use half::f16;
use rayon::prelude::*;

use super::expect_len;
use crate::{DType, Error, Result};

/// A read-only KV cache, `[cache_rows][n_kv_heads][head_dim]` of f32 or f16.
#[derive(Debug, Clone, Copy)]
pub enum CacheRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// A writable KV cache, `[cache_rows][n_kv_heads][head_dim]` of f32 or f16.
#[derive(Debug)]
pub enum CacheMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
}

impl CacheRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            CacheRef::F32(c) => c.len(),
            CacheRef::F16(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            CacheRef::F32(_) => DType::F32,
            CacheRef::F16(_) => DType::F16,
        }
    }

    fn get(&self, i: usize) -> f32 {
        match self {
            CacheRef::F32(c) => c[i],
            CacheRef::F16(c) => c[i].to_f32(),
        }
    }
}

struct Shape {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

fn check_shape(op: &'static str, k: &CacheRef, v: &CacheRef, s: &Shape, rows_needed: usize) -> Result<()> {
    if s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
        return Err(Error::invalid(
            op,
            format!("n_heads {} must be a multiple of n_kv_heads {}", s.n_heads, s.n_kv_heads),
        ));
    }
    if s.head_dim == 0 || s.head_dim > 256 {
        return Err(Error::invalid(op, format!("head_dim must be in 1..=256, got {}", s.head_dim)));
    }
    if k.dtype() != v.dtype() {
        return Err(Error::invalid(op, format!("K cache is {}, V cache is {}", k.dtype(), v.dtype())));
    }
    let row = s.n_kv_heads * s.head_dim;
    let need = rows_needed.checked_mul(row).ok_or_else(|| Error::invalid(op, "cache size overflows usize"))?;
    for (name, c) in [("K cache", k), ("V cache", v)] {
        if c.len() < need || !c.len().is_multiple_of(row) {
            return Err(Error::invalid(
                op,
                format!(
                    "{name} has {} elements: it needs whole rows of {row} and at least {rows_needed} rows",
                    c.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The first cache row a query at position `pos` sees with `window` (see the module doc).
pub fn first_visible(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// One query head against cache rows `rows`: softmax((q . k) * scale) weighted sum of v.
fn attend(
    q: &[f32],
    k: &CacheRef,
    v: &CacheRef,
    kv_off: usize,
    row: usize,
    rows: std::ops::Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let head_dim = q.len();
    let scores: Vec<f32> = rows
        .clone()
        .map(|p| {
            let base = p * row + kv_off;
            let mut s = 0.0f32;
            for (d, &qd) in q.iter().enumerate() {
                s += qd * k.get(base + d);
            }
            s * scale
        })
        .collect();
    let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let e: Vec<f32> = scores.iter().map(|&s| (s - m).exp()).collect();
    let l: f32 = e.iter().sum();
    out.fill(0.0);
    for (p, &ep) in rows.zip(&e) {
        let base = p * row + kv_off;
        for (d, o) in out.iter_mut().enumerate().take(head_dim) {
            *o += ep * v.get(base + d);
        }
    }
    for o in out.iter_mut() {
        *o /= l;
    }
}

/// Decode attention: q and out are `[n_heads][head_dim]`; the query is at position n_kv - 1 and
/// attends cache rows 0..n_kv, or the last `window` of them (`strata_attention_decode_f32`).
pub fn attention_decode(
    q: &[f32],
    k_cache: CacheRef,
    v_cache: CacheRef,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    n_kv: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "attention_decode";
    if n_kv == 0 {
        return Err(Error::invalid(OP, "n_kv must be at least 1"));
    }
    attention_prefill(q, 1, n_kv - 1, k_cache, v_cache, n_heads, n_kv_heads, head_dim, scale, window, out).map_err(
        |e| match e {
            Error::InvalidArgument { what, .. } => Error::InvalidArgument { op: OP, what },
            e => e,
        },
    )
}

/// Prefill attention: q and out are `[n_tokens][n_heads][head_dim]`; token t attends cache rows
/// 0..=pos0+t, or with a window only `first_visible(pos0 + t, window)..=pos0+t`
/// (`strata_attention_prefill_f32`).
pub fn attention_prefill(
    q: &[f32],
    n_tokens: usize,
    pos0: usize,
    k_cache: CacheRef,
    v_cache: CacheRef,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "attention_prefill";
    check_attention(OP, q, n_tokens, pos0, &k_cache, &v_cache, n_heads, n_kv_heads, head_dim, window, out)?;
    if n_tokens == 0 || n_heads == 0 {
        return Ok(());
    }
    let group = n_heads / n_kv_heads;
    let row = n_kv_heads * head_dim;
    out.par_chunks_mut(head_dim).zip(q.par_chunks(head_dim)).enumerate().for_each(|(item, (o, qh))| {
        let (t, h) = (item / n_heads, item % n_heads);
        let p = pos0 + t;
        attend(qh, &k_cache, &v_cache, (h / group) * head_dim, row, first_visible(p, window)..p + 1, scale, o);
    });
    Ok(())
}

/// The argument checks of [`attention_prefill`] (shared with `fast::attention_prefill`).
pub(crate) fn check_attention(
    op: &'static str,
    q: &[f32],
    n_tokens: usize,
    pos0: usize,
    k_cache: &CacheRef,
    v_cache: &CacheRef,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    out: &[f32],
) -> Result<()> {
    if window == Some(0) {
        return Err(Error::invalid(op, "a sliding window must hold at least 1 position (None: no window)"));
    }
    let shape = Shape { n_heads, n_kv_heads, head_dim };
    let n = n_tokens.checked_mul(n_heads).and_then(|v| v.checked_mul(head_dim));
    expect_len(op, "q", q.len(), n)?;
    expect_len(op, "out", out.len(), n)?;
    if n_tokens == 0 || n_heads == 0 {
        return Ok(());
    }
    let rows = pos0
        .checked_add(n_tokens)
        .ok_or_else(|| Error::invalid(op, format!("pos0 {pos0} + {n_tokens} tokens overflows")))?;
    check_shape(op, k_cache, v_cache, &shape, rows)
}

/// `cache[positions[t]] = src[t]` converted to the cache type (`strata_kv_append_f32`). Unlike the
/// CUDA kernel, which skips them, a position outside [0, cache_rows) is an error here.
pub fn kv_append(
    src: &[f32],
    n_tokens: usize,
    row_len: usize,
    positions: &[i32],
    cache: CacheMut,
    cache_rows: usize,
) -> Result<()> {
    const OP: &str = "kv_append";
    expect_len(OP, "src", src.len(), n_tokens.checked_mul(row_len))?;
    expect_len(OP, "positions", positions.len(), Some(n_tokens))?;
    let cache_len = match &cache {
        CacheMut::F32(c) => c.len(),
        CacheMut::F16(c) => c.len(),
    };
    expect_len(OP, "cache", cache_len, cache_rows.checked_mul(row_len))?;
    if let Some((t, &p)) = positions.iter().enumerate().find(|&(_, &p)| p < 0 || p as usize >= cache_rows) {
        return Err(Error::invalid(OP, format!("position {p} of token {t} is outside the cache of {cache_rows} rows")));
    }
    if row_len == 0 {
        return Ok(());
    }
    let mut cache = cache;
    for (s, &p) in src.chunks_exact(row_len).zip(positions) {
        let at = p as usize * row_len;
        match &mut cache {
            CacheMut::F32(c) => c[at..at + row_len].copy_from_slice(s),
            CacheMut::F16(c) => {
                for (d, &v) in c[at..at + row_len].iter_mut().zip(s) {
                    *d = f16::from_f32(v);
                }
            }
        }
    }
    Ok(())
}
