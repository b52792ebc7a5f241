//! The rayon CPU reference of every op.
//!
//! Plain, readable code with the same semantics and argument order as the CUDA launchers in
//! `kernels/strata.h` (lengths are implied by slices where the C side passes a count, and
//! outputs never alias inputs). It is the oracle the CUDA kernels are tested against and the
//! CPU path the runtime uses when no GPU is present. Work is split over rows (and over
//! tokens or heads) with rayon; sums are plain sequential f32 loops, so results are
//! deterministic for a given input whatever the thread count.
//!
//! Every function checks its arguments first and returns [`crate::Error::InvalidArgument`]
//! (never panics) when a length or value does not fit.

// The signatures mirror the C launchers, which take many scalars.
#![allow(clippy::too_many_arguments)]

mod attention;
mod dequant;
mod elementwise;
pub mod fast;
mod matvec;
mod norm;
mod paged;
mod rope;
pub mod team;

pub(crate) use attention::check_attention;
pub use attention::{CacheMut, CacheRef, attention_decode, attention_prefill, first_visible, kv_append};
pub use dequant::{dequantize_rows, embedding_gather};
pub use elementwise::{
    GELU_COEF_A, GELU_SQRT_2_OVER_PI, add, add_bias, argmax_rows, gelu_mul, gelu_tanh, scale, scatter_add_scaled,
    silu_mul, softmax_rows,
};
pub use matvec::{matmul, matvec};
pub use norm::rmsnorm;
pub use paged::{PagedShape, paged_attention};
pub use rope::{rope, rope_inv_freq};

use crate::{DType, Error, Result};

/// Checks that a slice has exactly the length the op's shape implies.
pub(crate) fn expect_len(op: &'static str, what: &str, got: usize, want: Option<usize>) -> Result<()> {
    match want {
        Some(w) if w == got => Ok(()),
        Some(w) => Err(Error::invalid(op, format!("{what} has {got} elements, the shape needs {w}"))),
        None => Err(Error::invalid(op, format!("the size of {what} overflows usize"))),
    }
}

/// Checks a weight matrix: `w` must hold `rows` rows of `cols` values of `dtype`.
/// Returns the row size in bytes.
pub(crate) fn expect_matrix(op: &'static str, dtype: DType, w: &[u8], rows: usize, cols: usize) -> Result<usize> {
    let rb = dtype.row_bytes(cols).map_err(|_| {
        Error::invalid(
            op,
            format!("{dtype} rows need a multiple of {} values, got cols = {cols}", dtype.block_values()),
        )
    })?;
    expect_len(op, "the weight buffer (bytes)", w.len(), rb.checked_mul(rows))?;
    Ok(rb)
}

/// Calls `f(start, values)` for each block of a row of `cols` values (32 or 256 values for
/// quantized types; chunks of 32 for plain floats, the last one possibly shorter), decoding one
/// block at a time into a stack buffer.
pub(crate) fn for_each_chunk(dtype: DType, row: &[u8], cols: usize, mut f: impl FnMut(usize, &[f32])) {
    let mut buf = [0.0f32; crate::QK_K];
    let per = dtype.block_bytes();
    let chunk = if dtype.is_quantized() { dtype.block_values() } else { crate::QK };
    let mut start = 0;
    while start < cols {
        let n = chunk.min(cols - start);
        let bytes =
            if dtype.is_quantized() { &row[start / chunk * per..][..per] } else { &row[start * per..][..n * per] };
        // Lengths were validated by the caller (expect_matrix), so this cannot fail.
        if crate::quant::dequantize_row(dtype, bytes, &mut buf[..n]).is_ok() {
            f(start, &buf[..n]);
        }
        start += n;
    }
}
