//! Safe kernel launches: every buffer is checked to hold at least the bytes the dimensions
//! imply before the `unsafe` launcher call, so no combination of arguments can make a kernel
//! touch memory outside its buffers.

use strata_kernels::cuda;

use super::{DeviceBuffer, GpuStream};
use crate::kernel_call::KernelCall;
use crate::{Error, Result};

/// `n` elements of `size` bytes, or None on overflow.
fn bytes(n: usize, size: usize) -> Option<usize> {
    n.checked_mul(size)
}

fn prod(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Checks that `buf` holds at least `need` bytes.
fn fits(op: &'static str, what: &str, buf: &DeviceBuffer, need: Option<usize>) -> Result<()> {
    match need {
        Some(n) if n <= buf.len() => Ok(()),
        Some(n) => Err(Error::shape(op, format!("{what} buffer has {} bytes, the launch needs {n}", buf.len()))),
        None => Err(Error::shape(op, format!("the size of {what} overflows usize"))),
    }
}

/// Enqueues `call` on `s` after the previous users of its buffers.
pub(crate) fn launch(s: &GpuStream, call: KernelCall<'_>) -> Result<()> {
    use KernelCall as K;
    let op = call.name();
    let mut bufs: Vec<&DeviceBuffer> = Vec::with_capacity(4);
    // 1. Check every buffer against the dimensions.
    match &call {
        K::Dequantize { dt, w, rows, cols, out } => {
            fits(op, "weight", w, dt.matrix_bytes(*rows, *cols).ok())?;
            fits(op, "output", out, prod(&[*rows, *cols, 4]))?;
            bufs.extend([*w, *out]);
        }
        K::Gather { dt, table, n_vocab, dim, ids, n_ids, out } => {
            fits(op, "table", table, dt.matrix_bytes(*n_vocab, *dim).ok())?;
            fits(op, "ids", ids, bytes(*n_ids, 4))?;
            fits(op, "output", out, prod(&[*n_ids, *dim, 4]))?;
            bufs.extend([*table, *ids, *out]);
        }
        // The fused residual add reads and writes the same buffers as the plain matvec.
        K::Matvec { dt, w, rows, cols, x, y } | K::MatvecAdd { dt, w, rows, cols, x, y } => {
            fits(op, "weight", w, dt.matrix_bytes(*rows, *cols).ok())?;
            fits(op, "x", x, bytes(*cols, 4))?;
            fits(op, "y", y, bytes(*rows, 4))?;
            bufs.extend([*w, *x, *y]);
        }
        K::Matmul { dt, w, rows, cols, x, n_tokens, y } => {
            fits(op, "weight", w, dt.matrix_bytes(*rows, *cols).ok())?;
            fits(op, "x", x, prod(&[*n_tokens, *cols, 4]))?;
            fits(op, "y", y, prod(&[*n_tokens, *rows, 4]))?;
            bufs.extend([*w, *x, *y]);
        }
        K::Rmsnorm { x, weight, n_rows, dim, out, .. } => {
            fits(op, "x", x, prod(&[*n_rows, *dim, 4]))?;
            fits(op, "weight", weight, bytes(*dim, 4))?;
            fits(op, "output", out, prod(&[*n_rows, *dim, 4]))?;
            bufs.extend([*x, *weight, *out]);
        }
        K::RmsnormQ8 { dt, x, weight, dim, out, act, .. } => {
            fits(op, "x", x, bytes(*dim, 4))?;
            fits(op, "weight", weight, bytes(*dim, 4))?;
            fits(op, "output", out, bytes(*dim, 4))?;
            fits(op, "activations", act, cuda::act_q8_bytes(*dt, *dim))?;
            bufs.extend([*x, *weight, *out, *act]);
        }
        K::MatvecQ8 { dt, w, rows, cols, act, y } => {
            fits(op, "weight", w, dt.matrix_bytes(*rows, *cols).ok())?;
            fits(op, "activations", act, cuda::act_q8_bytes(*dt, *cols))?;
            fits(op, "y", y, bytes(*rows, 4))?;
            bufs.extend([*w, *act, *y]);
        }
        K::GluQ8 { dt, gate, up, rows, cols, act, out, .. } => {
            fits(op, "gate weight", gate, dt.matrix_bytes(*rows, *cols).ok())?;
            fits(op, "up weight", up, dt.matrix_bytes(*rows, *cols).ok())?;
            fits(op, "activations", act, cuda::act_q8_bytes(*dt, *cols))?;
            fits(op, "output", out, bytes(*rows, 4))?;
            bufs.extend([*gate, *up, *act, *out]);
        }
        K::Rope { x, n_tokens, n_heads, head_dim, positions, n_rot, freq_factors, .. } => {
            fits(op, "x", x, prod(&[*n_tokens, *n_heads, *head_dim, 4]))?;
            fits(op, "positions", positions, bytes(*n_tokens, 4))?;
            bufs.extend([*x, *positions]);
            if let Some(f) = freq_factors {
                fits(op, "freq_factors", f, bytes(*n_rot / 2, 4))?;
                bufs.push(*f);
            }
        }
        K::Attention { q, n_tokens, pos0, cache, k, v, n_heads, n_kv_heads, head_dim, out, .. } => {
            fits(op, "q", q, prod(&[*n_tokens, *n_heads, *head_dim, 4]))?;
            fits(op, "output", out, prod(&[*n_tokens, *n_heads, *head_dim, 4]))?;
            let rows = pos0.checked_add(*n_tokens);
            let need = rows.and_then(|r| prod(&[r, *n_kv_heads, *head_dim, cache.block_bytes()]));
            fits(op, "K cache", k, need)?;
            fits(op, "V cache", v, need)?;
            bufs.extend([*q, *k, *v, *out]);
        }
        K::AttentionAt { q, position, cache, k, v, cache_rows, n_heads, n_kv_heads, head_dim, out, .. } => {
            fits(op, "q", q, prod(&[*n_heads, *head_dim, 4]))?;
            fits(op, "output", out, prod(&[*n_heads, *head_dim, 4]))?;
            fits(op, "position", position, bytes(1, 4))?;
            let need = prod(&[*cache_rows, *n_kv_heads, *head_dim, cache.block_bytes()]);
            fits(op, "K cache", k, need)?;
            fits(op, "V cache", v, need)?;
            bufs.extend([*q, *position, *k, *v, *out]);
        }
        K::PagedAttention {
            q, shape, positions, table_start, tables, n_table, cache, k, v, cache_rows, out, ..
        } => {
            let qn = prod(&[shape.n_rows, shape.n_heads, shape.head_dim, 4]);
            fits(op, "q", q, qn)?;
            fits(op, "output", out, qn)?;
            fits(op, "positions", positions, bytes(shape.n_rows, 4))?;
            fits(op, "table_start", table_start, bytes(shape.n_rows, 4))?;
            fits(op, "tables", tables, bytes(*n_table, 4))?;
            let need = prod(&[*cache_rows, shape.n_kv_heads, shape.head_dim, cache.block_bytes()]);
            fits(op, "K cache", k, need)?;
            fits(op, "V cache", v, need)?;
            bufs.extend([*q, *positions, *table_start, *tables, *k, *v, *out]);
        }
        K::KvAppend { src, n_tokens, row_len, positions, cache_dt, cache, cache_rows } => {
            fits(op, "source", src, prod(&[*n_tokens, *row_len, 4]))?;
            fits(op, "positions", positions, bytes(*n_tokens, 4))?;
            fits(op, "cache", cache, prod(&[*cache_rows, *row_len, cache_dt.block_bytes()]))?;
            bufs.extend([*src, *positions, *cache]);
        }
        K::SiluMul { gate: a, up: b, n, out } | K::GeluMul { gate: a, up: b, n, out } | K::Add { a, b, n, out } => {
            fits(op, "input", a, bytes(*n, 4))?;
            fits(op, "input", b, bytes(*n, 4))?;
            fits(op, "output", out, bytes(*n, 4))?;
            bufs.extend([*a, *b, *out]);
        }
        K::Scale { x, n, out, .. } => {
            fits(op, "input", x, bytes(*n, 4))?;
            fits(op, "output", out, bytes(*n, 4))?;
            bufs.extend([*x, *out]);
        }
        K::AddBias { x, bias, rows, cols, out } => {
            fits(op, "input", x, prod(&[*rows, *cols, 4]))?;
            fits(op, "bias", bias, bytes(*cols, 4))?;
            fits(op, "output", out, prod(&[*rows, *cols, 4]))?;
            bufs.extend([*x, *bias, *out]);
        }
        K::ScatterAddScaled { src, rows, weights, n, cols, out_rows, out } => {
            fits(op, "src", src, prod(&[*n, *cols, 4]))?;
            fits(op, "rows", rows, bytes(*n, 4))?;
            fits(op, "weights", weights, bytes(*n, 4))?;
            fits(op, "output", out, prod(&[*out_rows, *cols, 4]))?;
            bufs.extend([*src, *rows, *weights, *out]);
        }
        K::Softmax { x, rows, cols, out } => {
            fits(op, "input", x, prod(&[*rows, *cols, 4]))?;
            fits(op, "output", out, prod(&[*rows, *cols, 4]))?;
            bufs.extend([*x, *out]);
        }
        K::Argmax { x, rows, cols, out } => {
            fits(op, "input", x, prod(&[*rows, *cols, 4]))?;
            fits(op, "output", out, bytes(*rows, 4))?;
            bufs.extend([*x, *out]);
        }
    }
    for b in &bufs {
        if !std::sync::Arc::ptr_eq(&b.gpu().0, &s.gpu().0) {
            return Err(Error::Device { op, what: format!("a buffer is on another GPU than stream `{}`", s.name()) });
        }
    }
    // Inside a graph capture on this thread the graph keeps each buffer (see graph.rs).
    super::graph::note_launch(s, &bufs)?;
    // 2. Order the stream after each buffer's previous user, then launch.
    let mut ptr = Vec::with_capacity(bufs.len());
    for b in &bufs {
        ptr.push(b.ptr_for(s)?);
    }
    // The `next` kernel set runs quantized decode matvecs on 8-bit activations and decode
    // attention as flash-decoding, both with scratch memory of the stream, prefill matmuls on
    // TF32 tensor cores and prefill attention on f16 tensor cores (`attention_mma.cu`, which
    // sends f32 caches and other head sizes to its CUDA-core tiled kernel); every other launch
    // is the proven kernel's.
    let next = match &call {
        K::Matvec { .. } | K::Attention { .. } | K::Matmul { .. } => {
            crate::ops::gpu_kernels()? == crate::ops::GpuKernels::Next
        }
        _ => false,
    };
    // The fused decode ops (`ops::fused`) are the `next` set's by construction: `ops` issues
    // them only for it.
    let scratch_bytes = match &call {
        K::Matvec { dt, cols, .. } if next => cuda::act_q8_bytes(*dt, *cols),
        K::MatvecAdd { dt, cols, .. } => cuda::act_q8_bytes(*dt, *cols),
        K::Attention { n_tokens: 1, pos0, n_heads, head_dim, window, .. } if next => {
            cuda::attention_split_bytes(*n_heads, *head_dim, pos0 + 1, *window)
        }
        // Partials for every split the cache can have: the live ones are known on the device.
        K::AttentionAt { n_heads, head_dim, cache_rows, window, .. } => {
            Some(cuda::attention_split_bytes(*n_heads, *head_dim, *cache_rows, *window).ok_or_else(|| {
                Error::shape(op, format!("no flash-decoding layout for {n_heads} heads of {head_dim} values"))
            })?)
        }
        _ => None,
    };
    let scratch = scratch_bytes.map(|bytes| s.scratch(bytes)).transpose()?;
    let raw = s.raw()?;
    let _range = crate::nvtx::range(match (&call, &scratch) {
        (K::Matvec { .. }, Some(_)) => "matvec_q8",
        (K::Attention { .. }, Some(_)) => "attention_decode_split",
        (K::AttentionAt { .. }, _) => "attention_decode_split_at",
        (K::Attention { n_tokens, .. }, None) if next && *n_tokens > 1 => "attention_prefill_mma",
        (K::Matmul { .. }, _) if next => "matmul_tc",
        _ => op,
    });
    // SAFETY: every pointer is the start of a live DeviceBuffer of this stream's GPU holding
    // at least the bytes the dimensions imply (checked in step 1); the buffers outlive the
    // kernel because dropping one waits for the last stream that used it (marked below).
    let r = unsafe {
        match call {
            K::Dequantize { dt, rows, cols, .. } => cuda::dequantize_rows_f32(dt, ptr[0], rows, cols, ptr[1], raw),
            K::Gather { dt, n_vocab, dim, n_ids, .. } => {
                cuda::embedding_gather_f32(dt, ptr[0], n_vocab, dim, ptr[1], n_ids, ptr[2], raw)
            }
            K::Matvec { dt, rows, cols, .. } => match &scratch {
                // `act` is this stream's scratch of at least act_q8_bytes(dt, cols), used only
                // by these two launches on this stream.
                Some(act) => cuda::quantize_act_q8(dt, ptr[1], cols, act.ptr, raw)
                    .and_then(|()| cuda::matvec_q8(dt, ptr[0], rows, cols, act.ptr, ptr[2], raw)),
                None => cuda::matvec_f32(dt, ptr[0], rows, cols, ptr[1], ptr[2], raw),
            },
            K::Matmul { dt, rows, cols, n_tokens, .. } if next => {
                cuda::matmul_tc_f32(dt, ptr[0], rows, cols, ptr[1], n_tokens, ptr[2], raw)
            }
            K::Matmul { dt, rows, cols, n_tokens, .. } => {
                cuda::matmul_f32(dt, ptr[0], rows, cols, ptr[1], n_tokens, ptr[2], raw)
            }
            K::Rmsnorm { n_rows, dim, eps, .. } => cuda::rmsnorm_f32(ptr[0], ptr[1], n_rows, dim, eps, ptr[2], raw),
            K::RmsnormQ8 { dt, dim, eps, .. } => {
                cuda::rmsnorm_quantize_q8(dt, ptr[0], ptr[1], dim, eps, ptr[2], ptr[3], raw)
            }
            K::MatvecQ8 { dt, rows, cols, .. } => cuda::matvec_q8(dt, ptr[0], rows, cols, ptr[1], ptr[2], raw),
            K::MatvecAdd { dt, rows, cols, .. } => match &scratch {
                // `act` is this stream's scratch of at least act_q8_bytes(dt, cols), used only
                // by these two launches on this stream; y is both the residual and the output.
                Some(act) => cuda::quantize_act_q8(dt, ptr[1], cols, act.ptr, raw)
                    .and_then(|()| cuda::matvec_q8_add(dt, ptr[0], rows, cols, act.ptr, ptr[2], ptr[2], raw)),
                None => Err(strata_kernels::Error::invalid(
                    "matvec_add",
                    format!("{dt} weights of {cols} columns have no 8-bit activation layout"),
                )),
            },
            K::GluQ8 { dt, rows, cols, gelu, .. } => {
                cuda::matvec_q8_glu(dt, ptr[0], ptr[1], rows, cols, ptr[2], gelu, ptr[3], raw)
            }
            K::Rope { n_tokens, n_heads, head_dim, n_rot, freq_base, freq_scale, layout, .. } => {
                // ptr[2], when present, is freq_factors (pushed last above).
                let ff = ptr.get(2).copied();
                cuda::rope_f32(
                    ptr[0], n_tokens, n_heads, head_dim, ptr[1], n_rot, freq_base, freq_scale, ff, layout, raw,
                )
            }
            K::Attention { n_tokens: 1, pos0, cache, n_heads, n_kv_heads, head_dim, scale, window, .. } => {
                let (q, k, v, out, n_ctx) = (ptr[0], ptr[1], ptr[2], ptr[3], pos0 + 1);
                match &scratch {
                    // `part` is this stream's scratch of attention_split_bytes(..) bytes.
                    Some(part) => cuda::attention_decode_split_f32(
                        q, cache, k, v, n_heads, n_kv_heads, head_dim, n_ctx, scale, window, part.ptr, out, raw,
                    ),
                    None => cuda::attention_decode_f32(
                        q, cache, k, v, n_heads, n_kv_heads, head_dim, n_ctx, scale, window, out, raw,
                    ),
                }
            }
            K::Attention { n_tokens, pos0, cache, n_heads, n_kv_heads, head_dim, scale, window, .. } => {
                let kernel = if next { cuda::PrefillKernel::Mma } else { cuda::PrefillKernel::Proven };
                cuda::attention_prefill_f32(
                    ptr[0], n_tokens, pos0, cache, ptr[1], ptr[2], n_heads, n_kv_heads, head_dim, scale, window,
                    ptr[3], kernel, raw,
                )
            }
            K::AttentionAt { cache, cache_rows, n_heads, n_kv_heads, head_dim, scale, window, .. } => match &scratch {
                // `part` is this stream's scratch of attention_split_bytes(.., cache_rows, ..)
                // bytes (step 1 refused the launch without one).
                Some(part) => cuda::attention_decode_split_at_f32(
                    ptr[0], cache, ptr[2], ptr[3], n_heads, n_kv_heads, head_dim, ptr[1], cache_rows, scale, window,
                    part.ptr, ptr[4], raw,
                ),
                None => Err(strata_kernels::Error::invalid("attention_decode_at", "no scratch for the partials")),
            },
            K::PagedAttention { shape, n_table, cache, cache_rows, scale, window, .. } => cuda::paged_attention_f32(
                ptr[0], shape, ptr[1], ptr[2], ptr[3], n_table, cache, ptr[4], ptr[5], cache_rows, scale, window,
                ptr[6], raw,
            ),
            K::KvAppend { n_tokens, row_len, cache_dt, cache_rows, .. } => {
                cuda::kv_append_f32(ptr[0], n_tokens, row_len, ptr[1], cache_dt, ptr[2], cache_rows, raw)
            }
            K::SiluMul { n, .. } => cuda::silu_mul_f32(ptr[0], ptr[1], n, ptr[2], raw),
            K::GeluMul { n, .. } => cuda::gelu_mul_f32(ptr[0], ptr[1], n, ptr[2], raw),
            K::Add { n, .. } => cuda::add_f32(ptr[0], ptr[1], n, ptr[2], raw),
            K::AddBias { rows, cols, .. } => cuda::add_bias_f32(ptr[0], ptr[1], rows, cols, ptr[2], raw),
            K::Scale { factor, n, .. } => cuda::scale_f32(ptr[0], factor, n, ptr[1], raw),
            K::ScatterAddScaled { n, cols, out_rows, .. } => {
                cuda::scatter_add_scaled_f32(ptr[0], ptr[1], ptr[2], n, cols, out_rows, ptr[3], raw)
            }
            K::Softmax { rows, cols, .. } => cuda::softmax_rows_f32(ptr[0], rows, cols, ptr[1], raw),
            K::Argmax { rows, cols, .. } => cuda::argmax_rows_f32(ptr[0], rows, cols, ptr[1], raw),
        }
    };
    for b in &bufs {
        b.used_by(s);
    }
    r.map_err(Error::from)
}
