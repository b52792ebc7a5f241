//! Dequantize rows and gather embedding rows (dequant.cu).

use rayon::prelude::*;

use super::{expect_len, expect_matrix};
use crate::{DType, Error, Result, quant};

/// `out[r][c]` = value of `w[r][c]` as f32 (`strata_dequantize_rows_f32`).
pub fn dequantize_rows(dtype: DType, w: &[u8], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    const OP: &str = "dequantize_rows";
    let rb = expect_matrix(OP, dtype, w, rows, cols)?;
    expect_len(OP, "out", out.len(), rows.checked_mul(cols))?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(cols).zip(w.par_chunks(rb)).try_for_each(|(o, row)| quant::dequantize_row(dtype, row, o))
}

/// `out[t][c] = table[ids[t]][c] as f32` (`strata_embedding_gather_f32`). Unlike the CUDA kernel,
/// which fills such rows with NaN, an id outside [0, n_vocab) is an error here.
pub fn embedding_gather(
    dtype: DType,
    table: &[u8],
    n_vocab: usize,
    dim: usize,
    ids: &[i32],
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "embedding_gather";
    let rb = expect_matrix(OP, dtype, table, n_vocab, dim)?;
    expect_len(OP, "out", out.len(), ids.len().checked_mul(dim))?;
    if let Some((t, &id)) = ids.iter().enumerate().find(|&(_, &id)| id < 0 || id as usize >= n_vocab) {
        return Err(Error::invalid(
            OP,
            format!("token id {id} at position {t} is outside the vocabulary of {n_vocab}"),
        ));
    }
    if dim == 0 {
        return Ok(());
    }
    out.par_chunks_mut(dim).zip(ids.par_iter()).try_for_each(|(o, &id)| {
        let at = id as usize * rb;
        quant::dequantize_row(dtype, &table[at..at + rb], o)
    })
}
