//! Rotary position embedding (rope.cu).

use rayon::prelude::*;

use super::expect_len;
use crate::{Error, Result, RopeLayout};

/// `inv_freq[i] = base^(-2i / n_rot) / ff[i]`, computed in f64 and rounded to f32 (as rope.cu
/// does, so both sides rotate by the same angles); ff is `freq_factors` (n_rot / 2 divisors,
/// Llama 3.1-style scaling) or 1.
pub fn rope_inv_freq(freq_base: f32, n_rot: usize, freq_factors: Option<&[f32]>) -> Vec<f32> {
    (0..n_rot / 2)
        .map(|i| {
            let inv = (freq_base as f64).powf(-2.0 * i as f64 / n_rot as f64);
            (inv / freq_factors.map_or(1.0, |f| f[i] as f64)) as f32
        })
        .collect()
}

/// Rotates pairs of each head of `x[n_tokens][n_heads][head_dim]` in place by
/// `theta = (positions[t] * freq_scale) * inv_freq[i]` (`strata_rope_f32`; see
/// [`rope_inv_freq`] for `freq_factors`).
pub fn rope(
    x: &mut [f32],
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
    positions: &[i32],
    n_rot: usize,
    freq_base: f32,
    freq_scale: f32,
    freq_factors: Option<&[f32]>,
    layout: RopeLayout,
) -> Result<()> {
    const OP: &str = "rope";
    expect_len(OP, "x", x.len(), n_tokens.checked_mul(n_heads).and_then(|v| v.checked_mul(head_dim)))?;
    expect_len(OP, "positions", positions.len(), Some(n_tokens))?;
    if !n_rot.is_multiple_of(2) || n_rot > head_dim {
        return Err(Error::invalid(OP, format!("n_rot must be even and at most head_dim {head_dim}, got {n_rot}")));
    }
    if freq_base.is_nan() || freq_base <= 0.0 {
        return Err(Error::invalid(OP, format!("freq_base must be positive, got {freq_base}")));
    }
    if let Some(f) = freq_factors {
        expect_len(OP, "freq_factors", f.len(), Some(n_rot / 2))?;
    }
    if x.is_empty() || n_rot == 0 {
        return Ok(());
    }
    let inv_freq = rope_inv_freq(freq_base, n_rot, freq_factors);
    let half = n_rot / 2;
    x.par_chunks_mut(n_heads * head_dim).zip(positions.par_iter()).for_each(|(tok, &pos)| {
        for head in tok.chunks_exact_mut(head_dim) {
            for (i, &f) in inv_freq.iter().enumerate() {
                let theta = (pos as f32 * freq_scale) * f;
                let (s, c) = theta.sin_cos();
                let (a, b) = match layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::HalfSplit => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    });
    Ok(())
}
