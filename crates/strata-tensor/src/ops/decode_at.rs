//! Decode attention at a position held in device memory (issue 13 §4, CUDA graphs of the
//! decode step): the `next` decode step's attention reads the query's position from the same
//! one-value positions tensor that RoPE and the KV-cache append read, instead of taking the row
//! count as a launch argument. A captured launch then stays valid for every token; the host
//! updates that tensor (an ordinary copy on the stream) before each replay. The alternative,
//! rewriting the row count in each captured kernel node (`cuGraphExecKernelNodeSetParams`),
//! would have the Rust side know every kernel's argument layout and the flash-decoding grid,
//! which changes every 256 positions; here the grid is sized once for the whole cache and
//! blocks past the live splits exit at once.

use super::{check_caches, check_devices, check_window, dev, dims2, expect_dtype};
use super::{expect_shape, f32_out, gpu_stream};
use crate::gpu;
use crate::kernel_call::KernelCall;
use crate::tensor::Stream;
use crate::{DType, Error, Result, Tensor};

/// [`super::attention_decode`] for the query at position `position[0]` (an i32 tensor of one
/// value on the stream's device): it attends cache rows 0..=position, or with a sliding window
/// the last `window` of them. On a GPU this is the `next` set's flash-decoding kernel with the
/// position read on the device (whatever [`super::GpuKernels`] says, like the fused ops), with
/// the same arithmetic as [`super::attention_decode`] under `next` for the same rows; on the
/// host the position is read and [`super::attention_decode`] runs.
///
/// # Errors
/// Shapes, types or devices that do not match; a position outside the cache (checked on the
/// host; on a GPU the kernel clamps it to the cache instead of reading past it).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_at(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    position: &Tensor,
    scale: f32,
    window: Option<usize>,
    out: &mut Tensor,
    s: &Stream,
) -> Result<()> {
    const OP: &str = "attention_decode_at";
    check_devices(OP, s, &[q, k_cache, v_cache, position, out])?;
    expect_dtype(OP, "q", q, &[DType::F32], "f32")?;
    expect_dtype(OP, "position", position, &[DType::I32], "i32")?;
    expect_shape(OP, "position", position, &[1])?;
    let (n_heads, head_dim) = dims2(OP, "q", q)?;
    f32_out(OP, out)?;
    expect_shape(OP, "out", out, q.shape())?;
    let (cache, rows, n_kv_heads) = check_caches(OP, k_cache, v_cache, n_heads, head_dim)?;
    check_window(OP, window)?;
    match gpu_stream(s) {
        None => {
            let p = position.as_i32()?[0];
            let n_kv = usize::try_from(p)
                .ok()
                .map(|p| p + 1)
                .filter(|&n| n <= rows)
                .ok_or_else(|| Error::shape(OP, format!("position {p} is outside the cache's {rows} rows")))?;
            // The host's decode attention for those rows, its checks included.
            super::attention_decode(q, k_cache, v_cache, n_kv, scale, window, out, s)
        }
        Some(g) => gpu::launch(
            g,
            KernelCall::AttentionAt {
                q: dev(q)?,
                position: dev(position)?,
                cache,
                k: dev(k_cache)?,
                v: dev(v_cache)?,
                cache_rows: rows,
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                window,
                out: dev(out)?,
            },
        ),
    }
}
