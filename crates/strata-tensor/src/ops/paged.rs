//! Paged attention for a batch of sequences of different lengths (`cpu::paged_attention`,
//! `kernels/paged_attention.cu`): the attention of a continuous-batching pass.

use strata_kernels::cpu::{self, PagedShape};

use super::{QueryShape, cache_ref, check_queries, dev, expect_dtype, expect_shape, gpu_stream};
use crate::kernel_call::KernelCall;
use crate::tensor::Stream;
use crate::{DType, Error, Result, Tensor, gpu};

/// Where each row of a batch finds its sequence's cache rows: i32 tensors on the op's device.
pub struct PagedIndex<'a> {
    /// Every sequence's block table, concatenated: `[n_table]` block indices.
    pub tables: &'a Tensor,
    /// Where row r's table starts in `tables`: `[n_rows]`.
    pub table_start: &'a Tensor,
    /// Row r's logical position (it sees positions `0..=positions[r]`): `[n_rows]`.
    pub positions: &'a Tensor,
    /// Cache rows per block.
    pub block_size: usize,
}

/// Causal grouped-query attention of q [n_rows, n_heads, head_dim], each row over its own
/// sequence's cache rows (logical position p of row r is cache row
/// `tables[table_start[r] + p / block_size] * block_size + p % block_size`), within a sliding
/// window if given; out like q. The caches are [cache_rows, n_kv_heads, head_dim] f32/f16.
///
/// # Errors
/// Shapes, types or devices that do not match. On the host also a table entry or block out of
/// range; a GPU cannot see those without a synchronize and writes NaN for that row instead.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    index: &PagedIndex<'_>,
    scale: f32,
    window: Option<usize>,
    out: &mut Tensor,
    s: &Stream,
) -> Result<()> {
    const OP: &str = "paged_attention";
    let QueryShape { n_tokens: n_rows, n_heads, head_dim, cache, cache_rows, n_kv_heads } =
        check_queries(OP, s, q, k_cache, v_cache, &[index.tables, index.table_start, index.positions], window, out)?;
    for (name, t) in [("tables", index.tables), ("table_start", index.table_start), ("positions", index.positions)] {
        expect_dtype(OP, name, t, &[DType::I32], "i32")?;
    }
    expect_shape(OP, "table_start", index.table_start, &[n_rows])?;
    expect_shape(OP, "positions", index.positions, &[n_rows])?;
    let n_table = index.tables.numel();
    if index.block_size == 0 {
        return Err(Error::shape(OP, "a block of 0 cache rows holds nothing"));
    }
    let shape = PagedShape { n_rows, n_heads, n_kv_heads, head_dim, block_size: index.block_size };
    match gpu_stream(s) {
        None => Ok(cpu::paged_attention(
            q.as_f32()?,
            cache_ref(k_cache)?,
            cache_ref(v_cache)?,
            shape,
            index.tables.as_i32()?,
            index.table_start.as_i32()?,
            index.positions.as_i32()?,
            scale,
            window,
            out.as_f32_mut()?,
        )?),
        Some(g) => gpu::launch(
            g,
            KernelCall::PagedAttention {
                q: dev(q)?,
                shape,
                positions: dev(index.positions)?,
                table_start: dev(index.table_start)?,
                tables: dev(index.tables)?,
                n_table,
                cache,
                k: dev(k_cache)?,
                v: dev(v_cache)?,
                cache_rows,
                scale,
                window,
                out: dev(out)?,
            },
        ),
    }
}
