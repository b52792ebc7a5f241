//! The device side of the CUDA benches and the GPU report: uploads a case's inputs (several
//! copies of the large ones, so that back-to-back launches do not run out of L2), launches the
//! kernel, times batches of launches with CUDA events, and measures the device-to-device copy
//! bandwidth the results are compared with.

#![allow(dead_code)]

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use strata_kernels::{RopeLayout, cuda};

use super::ops::{Inputs, Op, Output};

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
}

/// The first CUDA device, or why there is none.
pub fn open() -> Result<Gpu, String> {
    // SAFETY: only tries to dlopen libcuda; cudarc would panic on first use without it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA device (no NVIDIA driver: libcuda.so could not be loaded)".into());
    }
    let ctx = match std::panic::catch_unwind(|| CudaContext::new(0)) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => return Err(format!("no CUDA device ({e})")),
        Err(_) => return Err("no CUDA device (the CUDA driver library failed to load)".into()),
    };
    // SAFETY: one stream does all the work here; no cross-stream tracking is needed.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(|e| format!("cannot create a stream: {e}"))?;
    let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
    Ok(Gpu { ctx, stream, name })
}

/// One copy of a case's device inputs.
struct Buffers {
    w: CudaSlice<u8>,
    k: CudaSlice<u8>,
    v: CudaSlice<u8>,
    x: CudaSlice<f32>,
    x2: CudaSlice<f32>,
    ids: CudaSlice<i32>,
}

/// A case ready to launch: its inputs on the device and an output buffer.
pub struct Prepared {
    pub op: Op,
    copies: Vec<Buffers>,
    out: CudaSlice<f32>,
    out_i32: CudaSlice<i32>,
    out_len: usize,
}

impl Prepared {
    pub fn copies(&self) -> usize {
        self.copies.len()
    }
}

fn nonempty<T: Clone>(v: &[T], fill: T) -> Vec<T> {
    if v.is_empty() { vec![fill] } else { v.to_vec() }
}

fn out_len(op: &Op) -> usize {
    match *op {
        Op::Dequantize { rows, cols, .. } => rows * cols,
        Op::Gather { dim, n_ids, .. } => dim * n_ids,
        Op::Matvec { rows, .. } | Op::MatvecQ8 { rows, .. } | Op::MatvecQ8Add { rows, .. } | Op::GluQ8 { rows, .. } => {
            rows
        }
        Op::RmsnormQ8 { dim, .. } => dim,
        Op::Matmul { rows, tokens, .. } | Op::MatmulTc { rows, tokens, .. } => rows * tokens,
        Op::Rmsnorm { rows, dim } => rows * dim,
        Op::Rope { tokens, heads, head_dim } => tokens * heads * head_dim,
        Op::AttentionDecode { heads, head_dim, .. } => heads * head_dim,
        Op::AttentionPrefill { heads, head_dim, tokens, .. } => tokens * heads * head_dim,
        Op::KvAppend { .. } => 0,
        Op::SiluMul { n } | Op::GeluMul { n } | Op::Add { n } | Op::Scale { n } => n,
        Op::Softmax { rows, cols } => rows * cols,
        Op::Argmax { rows, .. } => rows,
    }
}

impl Gpu {
    fn up<T: cudarc::driver::DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, String> {
        self.stream.clone_htod(v).map_err(|e| format!("upload of {} values: {e}", v.len()))
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    /// Uploads `inputs`, keeping enough copies that the large input of all copies together
    /// spans at least `rotate_bytes` (so repeated launches read DRAM, not L2).
    pub fn prepare(&self, op: Op, inputs: &Inputs, rotate_bytes: usize) -> Result<Prepared, String> {
        let big = op.big_input_bytes();
        let n = if big == 0 { 1 } else { rotate_bytes.div_ceil(big).clamp(1, 64) };
        let mut copies = Vec::with_capacity(n);
        let (k, v) = (inputs.k.bytes(), inputs.v.bytes());
        for _ in 0..n {
            copies.push(Buffers {
                w: self.up(&nonempty(&inputs.w, 0u8))?,
                k: self.up(&nonempty(&k, 0u8))?,
                v: self.up(&nonempty(&v, 0u8))?,
                x: self.up(&nonempty(&inputs.x, 0.0f32))?,
                x2: self.up(&nonempty(&inputs.x2, 0.0f32))?,
                ids: self.up(&nonempty(&inputs.ids, 0i32))?,
            });
        }
        let len = out_len(&op);
        Ok(Prepared {
            op,
            copies,
            out: self.up(&vec![f32::NAN; len.max(1)])?,
            out_i32: self.up(&vec![-1i32; len.max(1)])?,
            out_len: len,
        })
    }

    /// Enqueues one launch of the case on copy `c` of its inputs.
    pub fn launch(&self, p: &Prepared, c: usize) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let b = &p.copies[c % p.copies.len()];
        let s: cuda::Stream = self.stream.cu_stream().cast();
        let (w, k, v, x, x2, ids) =
            (self.ptr(&b.w), self.ptr(&b.k), self.ptr(&b.v), self.ptr(&b.x), self.ptr(&b.x2), self.ptr(&b.ids));
        let (out, out_i) = (self.ptr(&p.out), self.ptr(&p.out_i32));
        let scale = |hd: usize| 1.0 / (hd as f32).sqrt();
        // SAFETY: every buffer was uploaded by `prepare` with the sizes the op's shape implies,
        // and lives in `p` (or the device's lifetime) beyond the synchronization that follows.
        let r = unsafe {
            match p.op {
                Op::Dequantize { dt, rows, cols } => cuda::dequantize_rows_f32(dt, w, rows, cols, out, s),
                Op::Gather { dt, vocab, dim, n_ids } => {
                    cuda::embedding_gather_f32(dt, w, vocab, dim, ids, n_ids, out, s)
                }
                Op::Matvec { dt, rows, cols } => cuda::matvec_f32(dt, w, rows, cols, x, out, s),
                // x2 holds act_q8_bytes(dt, cols) (Op::inputs): the activations' scratch.
                Op::MatvecQ8 { dt, rows, cols } => cuda::quantize_act_q8(dt, x, cols, x2, s)
                    .and_then(|()| cuda::matvec_q8(dt, w, rows, cols, x2, out, s)),
                // v holds the residual (f32, rows), x2 the activations' scratch.
                Op::MatvecQ8Add { dt, rows, cols } => cuda::quantize_act_q8(dt, x, cols, x2, s)
                    .and_then(|()| cuda::matvec_q8_add(dt, w, rows, cols, x2, v, out, s)),
                // w holds the gate rows, then the up rows.
                Op::GluQ8 { dt, rows, cols, gelu } => {
                    let up = w + dt.matrix_bytes(rows, cols).unwrap_or(0) as u64;
                    cuda::quantize_act_q8(dt, x, cols, x2, s)
                        .and_then(|()| cuda::matvec_q8_glu(dt, w, up, rows, cols, x2, gelu, out, s))
                }
                // x2 is the norm's weight, k the activations.
                Op::RmsnormQ8 { dt, dim } => cuda::rmsnorm_quantize_q8(dt, x, x2, dim, 1e-5, out, k, s),
                Op::Matmul { dt, rows, cols, tokens } => cuda::matmul_f32(dt, w, rows, cols, x, tokens, out, s),
                Op::MatmulTc { dt, rows, cols, tokens } => cuda::matmul_tc_f32(dt, w, rows, cols, x, tokens, out, s),
                Op::Rmsnorm { rows, dim } => cuda::rmsnorm_f32(x, x2, rows, dim, 1e-5, out, s),
                Op::Rope { tokens, heads, head_dim } => {
                    // In place: copy x to out first so that repeated launches see the same data.
                    cudarc::driver::result::memcpy_dtod_async(out, x, tokens * heads * head_dim * 4, s.cast())
                        .map_err(|e| strata_kernels::Error::invalid("rope", e.to_string()))
                        .and_then(|_| {
                            cuda::rope_f32(
                                out,
                                tokens,
                                heads,
                                head_dim,
                                ids,
                                head_dim,
                                10000.0,
                                1.0,
                                None,
                                RopeLayout::Adjacent,
                                s,
                            )
                        })
                }
                Op::AttentionDecode { cache, heads, kv_heads, head_dim, n_kv } => cuda::attention_decode_f32(
                    x,
                    cache,
                    k,
                    v,
                    heads,
                    kv_heads,
                    head_dim,
                    n_kv,
                    scale(head_dim),
                    None,
                    out,
                    s,
                ),
                Op::AttentionPrefill { cache, heads, kv_heads, head_dim, tokens, kernel } => {
                    cuda::attention_prefill_f32(
                        x,
                        tokens,
                        0,
                        cache,
                        k,
                        v,
                        heads,
                        kv_heads,
                        head_dim,
                        scale(head_dim),
                        None,
                        out,
                        kernel,
                        s,
                    )
                }
                Op::KvAppend { cache, tokens, row_len } => {
                    cuda::kv_append_f32(x, tokens, row_len, ids, cache, k, 2 * tokens, s)
                }
                Op::SiluMul { n } => cuda::silu_mul_f32(x, x2, n, out, s),
                Op::GeluMul { n } => cuda::gelu_mul_f32(x, x2, n, out, s),
                Op::Add { n } => cuda::add_f32(x, x2, n, out, s),
                Op::Scale { n } => cuda::scale_f32(x, 0.5, n, out, s),
                Op::Softmax { rows, cols } => cuda::softmax_rows_f32(x, rows, cols, out, s),
                Op::Argmax { rows, cols } => cuda::argmax_rows_f32(x, rows, cols, out_i, s),
            }
        };
        r.map_err(|e| e.to_string())
    }

    /// Runs the case once on copy 0 and returns its output.
    pub fn run_once(&self, p: &Prepared) -> Result<Output, String> {
        self.launch(p, 0)?;
        self.stream.synchronize().map_err(|e| format!("kernel failed: {e}"))?;
        Ok(match p.op {
            Op::Argmax { .. } => {
                let mut v = self.stream.clone_dtoh(&p.out_i32).map_err(|e| e.to_string())?;
                v.truncate(p.out_len);
                Output::I32(v)
            }
            Op::KvAppend { cache, .. } => {
                Output::Cache(cache, self.stream.clone_dtoh(&p.copies[0].k).map_err(|e| e.to_string())?)
            }
            _ => {
                let mut v = self.stream.clone_dtoh(&p.out).map_err(|e| e.to_string())?;
                v.truncate(p.out_len);
                Output::F32(v)
            }
        })
    }

    /// Seconds per launch, one value per batch of `per_batch` back-to-back launches (rotating
    /// over the input copies), timed with CUDA events after `warmup` launches.
    pub fn time(&self, p: &Prepared, warmup: usize, per_batch: usize, batches: usize) -> Result<Vec<f64>, String> {
        for i in 0..warmup {
            self.launch(p, i)?;
        }
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut out = Vec::with_capacity(batches);
        for _ in 0..batches {
            let start = self.stream.record_event(timing).map_err(|e| e.to_string())?;
            for i in 0..per_batch {
                self.launch(p, i)?;
            }
            let end = self.stream.record_event(timing).map_err(|e| e.to_string())?;
            let ms = start.elapsed_ms(&end).map_err(|e| e.to_string())?;
            out.push(ms as f64 / 1e3 / per_batch as f64);
        }
        Ok(out)
    }

    /// Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written
    /// (median of `reps` copies of `bytes`).
    pub fn d2d_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, String> {
        let a = self.stream.alloc_zeros::<u8>(bytes).map_err(|e| e.to_string())?;
        let mut b = self.stream.alloc_zeros::<u8>(bytes).map_err(|e| e.to_string())?;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::new();
        for i in 0..reps + 2 {
            let start = self.stream.record_event(timing).map_err(|e| e.to_string())?;
            self.stream.memcpy_dtod(&a, &mut b).map_err(|e| e.to_string())?;
            let end = self.stream.record_event(timing).map_err(|e| e.to_string())?;
            let ms = start.elapsed_ms(&end).map_err(|e| e.to_string())? as f64;
            if i >= 2 {
                times.push(ms / 1e3);
            }
        }
        Ok(2.0 * bytes as f64 / median(&mut times))
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}
