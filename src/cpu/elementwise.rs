//! SwiGLU, GELU-gated products (GeGLU), residual add, scale, softmax and argmax (elementwise.cu, softmax.cu).

use rayon::prelude::*;

use super::expect_len;
use crate::Result;

const MIN_LEN: usize = 4096;

/// `out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]` (`strata_silu_mul_f32`).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    expect_len("silu_mul", "up", up.len(), Some(gate.len()))?;
    expect_len("silu_mul", "out", out.len(), Some(gate.len()))?;
    out.par_iter_mut().zip(gate.par_iter().zip(up)).with_min_len(MIN_LEN).for_each(|(o, (&g, &u))| {
        *o = (g / (1.0 + (-g).exp())) * u;
    });
    Ok(())
}

/// √(2/π), the constant of GELU's tanh approximation.
pub const GELU_SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of GELU's tanh approximation.
pub const GELU_COEF_A: f32 = 0.044_715;

/// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`):
/// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// `out[i] = gelu_tanh(gate[i]) * up[i]` (`strata_gelu_mul_f32`): the gated FFN of Gemma.
pub fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    expect_len("gelu_mul", "up", up.len(), Some(gate.len()))?;
    expect_len("gelu_mul", "out", out.len(), Some(gate.len()))?;
    out.par_iter_mut().zip(gate.par_iter().zip(up)).with_min_len(MIN_LEN).for_each(|(o, (&g, &u))| {
        *o = gelu_tanh(g) * u;
    });
    Ok(())
}

/// `out[i] = a[i] + b[i]` (`strata_add_f32`).
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<()> {
    expect_len("add", "b", b.len(), Some(a.len()))?;
    expect_len("add", "out", out.len(), Some(a.len()))?;
    out.par_iter_mut().zip(a.par_iter().zip(b)).with_min_len(MIN_LEN).for_each(|(o, (x, y))| *o = x + y);
    Ok(())
}

/// `out[r][c] = x[r][c] + bias[c]` for x `[rows, cols]` (`strata_add_bias_f32`): a bias
/// broadcast over tokens.
pub fn add_bias(x: &[f32], bias: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    expect_len("add_bias", "x", x.len(), rows.checked_mul(cols))?;
    expect_len("add_bias", "bias", bias.len(), Some(cols))?;
    expect_len("add_bias", "out", out.len(), rows.checked_mul(cols))?;
    if cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, xr)| {
        for ((o, &v), &b) in o.iter_mut().zip(xr).zip(bias) {
            *o = v + b;
        }
    });
    Ok(())
}

/// `out[i] = x[i] * s` (`strata_scale_f32`).
pub fn scale(x: &[f32], s: f32, out: &mut [f32]) -> Result<()> {
    expect_len("scale", "out", out.len(), Some(x.len()))?;
    out.par_iter_mut().zip(x).with_min_len(MIN_LEN).for_each(|(o, v)| *o = v * s);
    Ok(())
}

/// Row-wise softmax: out = exp(x - max) / sum (`strata_softmax_rows_f32`).
pub fn softmax_rows(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    expect_len("softmax_rows", "x", x.len(), rows.checked_mul(cols))?;
    expect_len("softmax_rows", "out", out.len(), rows.checked_mul(cols))?;
    if cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, xr)| {
        let m = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut s = 0.0f32;
        for &v in xr {
            s += (v - m).exp();
        }
        for (o, &v) in o.iter_mut().zip(xr) {
            *o = (v - m).exp() / s;
        }
    });
    Ok(())
}

/// `out[r]` = the smallest index of the largest non-NaN value of row r, 0 if the row is all
/// NaN or empty (`strata_argmax_rows_f32`).
pub fn argmax_rows(x: &[f32], rows: usize, cols: usize, out: &mut [i32]) -> Result<()> {
    expect_len("argmax_rows", "x", x.len(), rows.checked_mul(cols))?;
    expect_len("argmax_rows", "out", out.len(), Some(rows))?;
    if cols > i32::MAX as usize {
        return Err(crate::Error::invalid("argmax_rows", format!("{cols} columns do not fit an i32 index")));
    }
    if cols == 0 {
        out.fill(0);
        return Ok(());
    }
    out.par_iter_mut().zip(x.par_chunks(cols)).for_each(|(o, xr)| {
        let mut best: Option<(usize, f32)> = None;
        for (i, &v) in xr.iter().enumerate() {
            if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        *o = best.map_or(0, |(i, _)| i as i32);
    });
    Ok(())
}

/// `out[rows[i]][c] += weights[i] * src[i][c]` for src `[n, cols]` and out `[out_rows, cols]`
/// (`strata_scatter_add_scaled_f32`): one expert's outputs added into the rows of the tokens
/// routed to it.
///
/// # Errors
/// A row outside 0..out_rows, a repeated row (the CUDA kernel adds without atomics), or
/// lengths that disagree.
pub fn scatter_add_scaled(
    src: &[f32],
    rows: &[i32],
    weights: &[f32],
    cols: usize,
    out: &mut [f32],
    out_rows: usize,
) -> Result<()> {
    const OP: &str = "scatter_add_scaled";
    let n = rows.len();
    expect_len(OP, "src", src.len(), n.checked_mul(cols))?;
    expect_len(OP, "weights", weights.len(), Some(n))?;
    expect_len(OP, "out", out.len(), out_rows.checked_mul(cols))?;
    let mut seen = vec![false; out_rows];
    for &r in rows {
        match usize::try_from(r).ok().filter(|&r| r < out_rows) {
            Some(r) if !seen[r] => seen[r] = true,
            Some(_) => return Err(crate::Error::invalid(OP, format!("row {r} appears twice"))),
            None => return Err(crate::Error::invalid(OP, format!("row {r} is outside 0..{out_rows}"))),
        }
    }
    if cols == 0 {
        return Ok(());
    }
    for ((&r, &w), s) in rows.iter().zip(weights).zip(src.chunks_exact(cols)) {
        let o = &mut out[r as usize * cols..(r as usize + 1) * cols];
        for (o, &v) in o.iter_mut().zip(s) {
            *o += w * v;
        }
    }
    Ok(())
}
