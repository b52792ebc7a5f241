//! RMS normalization (rmsnorm.cu).

use rayon::prelude::*;

use super::expect_len;
use crate::{Error, Result};

/// out = (x * (1 / sqrt(mean(x^2) + eps))) * weight, row by row (`strata_rmsnorm_f32`).
pub fn rmsnorm(x: &[f32], weight: &[f32], n_rows: usize, dim: usize, eps: f32, out: &mut [f32]) -> Result<()> {
    const OP: &str = "rmsnorm";
    expect_len(OP, "x", x.len(), n_rows.checked_mul(dim))?;
    expect_len(OP, "weight", weight.len(), Some(dim))?;
    expect_len(OP, "out", out.len(), n_rows.checked_mul(dim))?;
    if eps.is_nan() || eps < 0.0 {
        return Err(Error::invalid(OP, format!("eps must be >= 0, got {eps}")));
    }
    if dim == 0 {
        return Ok(());
    }
    let row = |(o, xr): (&mut [f32], &[f32])| {
        let mut ss = 0.0f32;
        for v in xr {
            ss += v * v;
        }
        let scale = 1.0 / (ss / dim as f32 + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(xr).zip(weight) {
            *o = (v * scale) * w;
        }
    };
    if x.len() <= SERIAL_MAX {
        // A decode step's norms (a 640-wide row, or Gemma 3's per-head Q norm of 4 × 256) take
        // a microsecond or two: on the calling thread, not split over the pool. Same rows, same
        // operations.
        out.chunks_mut(dim).zip(x.chunks(dim)).for_each(row);
    } else {
        out.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(row);
    }
    Ok(())
}

/// Most values normalized on the calling thread (below, the work is worth less than handing
/// rows to other threads).
const SERIAL_MAX: usize = 8192;
