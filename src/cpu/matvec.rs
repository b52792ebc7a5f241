//! Matrix-vector (decode) and matrix-matrix (prefill) products with any weight type
//! (matvec.cu, matmul.cu).

use rayon::prelude::*;

use super::{expect_len, expect_matrix, for_each_chunk};
use crate::{DType, Result};

/// Dot product of one weight row with x, accumulated in f32 in order.
fn dot_row(dtype: DType, row: &[u8], cols: usize, x: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for_each_chunk(dtype, row, cols, |start, w| {
        for (wi, xi) in w.iter().zip(&x[start..]) {
            acc += wi * xi;
        }
    });
    acc
}

/// `y[r] = sum_c w[r][c] * x[c]` (`strata_matvec_f32`).
pub fn matvec(dtype: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "matvec";
    let rb = expect_matrix(OP, dtype, w, rows, cols)?;
    expect_len(OP, "x", x.len(), Some(cols))?;
    expect_len(OP, "y", y.len(), Some(rows))?;
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    y.par_iter_mut().zip(w.par_chunks(rb)).with_min_len(16).for_each(|(yr, row)| *yr = dot_row(dtype, row, cols, x));
    Ok(())
}

/// Rows of W per rayon task in [`matmul`]: they are decoded once and reused for every token.
const MATMUL_ROWS_PER_TASK: usize = 16;

/// `y[t][r] = sum_c x[t][c] * w[r][c]`, i.e. `Y = X W^T` (`strata_matmul_f32`).
pub fn matmul(
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "matmul";
    let rb = expect_matrix(OP, dtype, w, rows, cols)?;
    expect_len(OP, "x", x.len(), n_tokens.checked_mul(cols))?;
    expect_len(OP, "y", y.len(), n_tokens.checked_mul(rows))?;
    if rows == 0 || n_tokens == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    // Each task decodes a few rows of W once, then computes them for every token; the
    // results come back as [row][token] and are scattered into Y's [token][row] layout.
    let parts: Vec<Vec<f32>> = w
        .par_chunks(rb * MATMUL_ROWS_PER_TASK)
        .map(|block| {
            let n = block.len() / rb;
            let mut decoded = vec![0.0f32; n * cols];
            for (d, row) in decoded.chunks_exact_mut(cols).zip(block.chunks_exact(rb)) {
                for_each_chunk(dtype, row, cols, |start, v| d[start..start + v.len()].copy_from_slice(v));
            }
            let mut out = vec![0.0f32; n * n_tokens];
            for (r, wr) in decoded.chunks_exact(cols).enumerate() {
                for (t, xt) in x.chunks_exact(cols).enumerate() {
                    let mut acc = 0.0f32;
                    for (a, b) in wr.iter().zip(xt) {
                        acc += a * b;
                    }
                    out[r * n_tokens + t] = acc;
                }
            }
            out
        })
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let r0 = i * MATMUL_ROWS_PER_TASK;
        for (r, vals) in part.chunks_exact(n_tokens).enumerate() {
            for (t, &v) in vals.iter().enumerate() {
                y[t * rows + r0 + r] = v;
            }
        }
    }
    Ok(())
}
