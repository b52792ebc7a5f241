//! A naive f64 oracle for every op, written independently of the crate's code: element by
//! element, straight from the definitions in kernels/strata.h and the GGUF block layouts.
//! Only where an op's definition itself fixes f32 rounding (RoPE's angle) does it follow it.

#![allow(clippy::too_many_arguments)]

use half::f16;
use strata_kernels::{DType, RopeLayout};

fn f16_at(b: &[u8], at: usize) -> f64 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f64()
}

/// Value (row, col) of a `cols`-wide matrix of type `dt`, as defined by GGUF.
pub fn weight(dt: DType, w: &[u8], cols: usize, row: usize, col: usize) -> f64 {
    match dt {
        DType::F32 => {
            let at = (row * cols + col) * 4;
            f32::from_le_bytes([w[at], w[at + 1], w[at + 2], w[at + 3]]) as f64
        }
        DType::F16 => f16_at(w, (row * cols + col) * 2),
        DType::BF16 => {
            let at = (row * cols + col) * 2;
            f32::from_bits((u16::from_le_bytes([w[at], w[at + 1]]) as u32) << 16) as f64
        }
        DType::Q8_0 => {
            let block = row * (cols / 32) + col / 32;
            let at = block * 34;
            f16_at(w, at) * (w[at + 2 + col % 32] as i8) as f64
        }
        DType::Q4_0 | DType::Q4_1 => {
            let (size, qs_at) = if dt == DType::Q4_0 { (18, 2) } else { (20, 4) };
            let block = row * (cols / 32) + col / 32;
            let at = block * size;
            let j = col % 32;
            let byte = w[at + qs_at + j % 16];
            let q = if j < 16 { byte & 0x0F } else { byte >> 4 } as f64;
            if dt == DType::Q4_0 { (q - 8.0) * f16_at(w, at) } else { q * f16_at(w, at) + f16_at(w, at + 2) }
        }
        // The other block types: the reference dequantizer's f32 value, which tests/dequant.rs
        // holds bit for bit to gguf-py's (an independent implementation), widened exactly.
        _ => {
            let (bv, bb) = (dt.block_values(), dt.block_bytes());
            let block = row * (cols / bv) + col / bv;
            let mut values = vec![0.0f32; bv];
            strata_kernels::quant::dequantize_row(dt, &w[block * bb..][..bb], &mut values).expect("one block");
            values[col % bv] as f64
        }
    }
}

pub fn dequantize(dt: DType, w: &[u8], rows: usize, cols: usize) -> Vec<f64> {
    if dt.block_values() > 1 && !matches!(dt, DType::Q8_0 | DType::Q4_0 | DType::Q4_1) {
        // As `weight`'s last arm, a row at a time rather than a block per value.
        let rb = dt.row_bytes(cols).expect("whole blocks");
        let mut row = vec![0.0f32; cols];
        return (0..rows)
            .flat_map(|r| {
                strata_kernels::quant::dequantize_row(dt, &w[r * rb..][..rb], &mut row).expect("one row");
                row.iter().map(|&v| v as f64).collect::<Vec<_>>()
            })
            .collect();
    }
    (0..rows * cols).map(|i| weight(dt, w, cols, i / cols, i % cols)).collect()
}

pub fn matmul(dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n_tokens: usize) -> Vec<f64> {
    let wd = dequantize(dt, w, rows, cols);
    let mut y = vec![0.0; n_tokens * rows];
    for t in 0..n_tokens {
        for r in 0..rows {
            y[t * rows + r] = (0..cols).map(|c| wd[r * cols + c] * x[t * cols + c] as f64).sum();
        }
    }
    y
}

pub fn rmsnorm(x: &[f32], weight: &[f32], dim: usize, eps: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let s = 1.0 / (ms + eps as f64).sqrt();
        out.extend(row.iter().zip(weight).map(|(&v, &w)| v as f64 * s * w as f64));
    }
    out
}

pub fn rope(
    x: &[f32],
    n_heads: usize,
    head_dim: usize,
    positions: &[i32],
    n_rot: usize,
    freq_base: f32,
    freq_scale: f32,
    freq_factors: Option<&[f32]>,
    layout: RopeLayout,
) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..n_heads {
            let base = (t * n_heads + h) * head_dim;
            for i in 0..n_rot / 2 {
                // The op defines the angle in f32: inv_freq rounded once, then (pos*scale)*inv_freq.
                let ff = freq_factors.map_or(1.0, |f| f[i] as f64);
                let inv_freq = ((freq_base as f64).powf(-2.0 * i as f64 / n_rot as f64) / ff) as f32;
                let theta = ((pos as f32 * freq_scale) * inv_freq) as f64;
                let (a, b) = match layout {
                    RopeLayout::Adjacent => (base + 2 * i, base + 2 * i + 1),
                    RopeLayout::HalfSplit => (base + i, base + i + n_rot / 2),
                };
                let (x0, x1) = (x[a] as f64, x[b] as f64);
                out[a] = x0 * theta.cos() - x1 * theta.sin();
                out[b] = x0 * theta.sin() + x1 * theta.cos();
            }
        }
    }
    out
}

/// Causal GQA attention; `k` and `v` are the caches already widened to f32.
pub fn attention(
    q: &[f32],
    n_tokens: usize,
    pos0: usize,
    k: &[f32],
    v: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f64> {
    let group = n_heads / n_kv_heads;
    let row = n_kv_heads * head_dim;
    let mut out = vec![0.0; n_tokens * n_heads * head_dim];
    for t in 0..n_tokens {
        for h in 0..n_heads {
            let qh = &q[(t * n_heads + h) * head_dim..][..head_dim];
            let kv = (h / group) * head_dim;
            let pos = pos0 + t;
            // llama.cpp's causal + standard sliding-window mask: key p is hidden from the
            // query at pos when p > pos or pos - p >= window.
            let seen: Vec<usize> = (0..=pos).filter(|&p| window.is_none_or(|w| pos - p < w)).collect();
            let scores: Vec<f64> = seen
                .iter()
                .map(|&p| {
                    let dot: f64 = (0..head_dim).map(|d| qh[d] as f64 * k[p * row + kv + d] as f64).sum();
                    dot * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for d in 0..head_dim {
                let acc: f64 = seen.iter().zip(&e).map(|(&p, &ep)| ep * v[p * row + kv + d] as f64).sum();
                out[(t * n_heads + h) * head_dim + d] = acc / l;
            }
        }
    }
    out
}

pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64).collect()
}

/// GELU (tanh approximation) of gate times up, in f64.
pub fn gelu_mul(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = g as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            0.5 * g * (1.0 + inner.tanh()) * u as f64
        })
        .collect()
}

pub fn softmax_rows(x: &[f32], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        out.extend(row.iter().map(|&v| (v as f64 - m).exp() / s));
    }
    out
}

pub fn argmax_rows(x: &[f32], cols: usize) -> Vec<i32> {
    x.chunks(cols)
        .map(|row| {
            let mut best: Option<usize> = None;
            for (i, v) in row.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                if best.is_none_or(|b| *v > row[b]) {
                    best = Some(i);
                }
            }
            best.unwrap_or(0) as i32
        })
        .collect()
}
