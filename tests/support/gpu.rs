//! The CUDA backend of the tests: device memory through cudarc, kernels through
//! `strata_kernels::cuda`. Outputs are pre-filled with NaN (or -1 for indices) so that an
//! element a kernel forgot to write fails the comparison.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use half::f16;
use strata_kernels::{DType, RopeLayout, cuda};

use super::backend::{Backend, Cache};

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

static DEVICE: OnceLock<Result<Gpu, String>> = OnceLock::new();

/// The first CUDA device, or why there is none (no driver, no device, ...).
pub fn device() -> Result<&'static Gpu, String> {
    DEVICE.get_or_init(open).as_ref().map_err(Clone::clone)
}

fn open() -> Result<Gpu, String> {
    // SAFETY: only tries to dlopen libcuda; cudarc would panic on first use without it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(strata_kernels::check::NO_DRIVER.into());
    }
    let ctx = match std::panic::catch_unwind(|| CudaContext::new(0)) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => return Err(strata_kernels::check::no_cuda_device(&e)),
        Err(_) => return Err(strata_kernels::check::no_cuda_device(&"the CUDA driver library failed to load")),
    };
    // One stream for everything, synchronized after each op: no cross-stream tracking needed.
    // SAFETY: no other stream touches these allocations.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(|e| format!("cannot create a CUDA stream ({e})"))?;
    Ok(Gpu { ctx, stream })
}

impl Gpu {
    fn up<T: DeviceRepr>(&self, v: &[T]) -> CudaSlice<T> {
        self.stream.clone_htod(v).unwrap_or_else(|e| panic!("upload of {} values: {e}", v.len()))
    }

    fn poisoned(&self, n: usize) -> CudaSlice<f32> {
        self.up(&vec![f32::NAN; n.max(1)])
    }

    fn down<T: DeviceRepr + Default + Clone>(&self, s: &CudaSlice<T>, n: usize) -> Vec<T> {
        self.stream.synchronize().unwrap_or_else(|e| panic!("kernel failed: {e}"));
        let mut v = self.stream.clone_dtoh(s).unwrap_or_else(|e| panic!("download: {e}"));
        v.truncate(n);
        v
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    fn raw_stream(&self) -> cuda::Stream {
        self.ctx.bind_to_thread().unwrap_or_else(|e| panic!("cannot bind the CUDA context: {e}"));
        self.stream.cu_stream().cast()
    }

    fn cache_up(&self, c: &Cache) -> CacheBuf {
        match c {
            Cache::F32(v) => CacheBuf::F32(self.up(v)),
            Cache::F16(v) => CacheBuf::F16(self.up(&v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>())),
        }
    }

    fn cache_ptr(&self, c: &CacheBuf) -> u64 {
        match c {
            CacheBuf::F32(s) => self.ptr(s),
            CacheBuf::F16(s) => self.ptr(s),
        }
    }
}

enum CacheBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
}

fn ok(op: &str, r: strata_kernels::Result<()>) {
    r.unwrap_or_else(|e| panic!("cuda {op}: {e}"));
}

impl Backend for Gpu {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn dequantize_rows(&self, dt: DType, w: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let (w_d, out) = (self.up(w), self.poisoned(rows * cols));
        // SAFETY: w_d holds the whole matrix and out rows*cols f32, both alive until `down`.
        ok("dequantize_rows", unsafe {
            cuda::dequantize_rows_f32(dt, self.ptr(&w_d), rows, cols, self.ptr(&out), self.raw_stream())
        });
        self.down(&out, rows * cols)
    }

    fn embedding_gather(&self, dt: DType, table: &[u8], n_vocab: usize, dim: usize, ids: &[i32]) -> Vec<f32> {
        let (t_d, ids_d, out) = (self.up(table), self.up(ids), self.poisoned(ids.len() * dim));
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("embedding_gather", unsafe {
            cuda::embedding_gather_f32(
                dt,
                self.ptr(&t_d),
                n_vocab,
                dim,
                self.ptr(&ids_d),
                ids.len(),
                self.ptr(&out),
                self.raw_stream(),
            )
        });
        self.down(&out, ids.len() * dim)
    }

    fn matvec(&self, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
        let (w_d, x_d, y) = (self.up(w), self.up(x), self.poisoned(rows));
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("matvec", unsafe {
            cuda::matvec_f32(dt, self.ptr(&w_d), rows, cols, self.ptr(&x_d), self.ptr(&y), self.raw_stream())
        });
        self.down(&y, rows)
    }

    fn matmul(&self, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n_tokens: usize) -> Vec<f32> {
        let (w_d, x_d, y) = (self.up(w), self.up(x), self.poisoned(rows * n_tokens));
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("matmul", unsafe {
            cuda::matmul_f32(dt, self.ptr(&w_d), rows, cols, self.ptr(&x_d), n_tokens, self.ptr(&y), self.raw_stream())
        });
        self.down(&y, rows * n_tokens)
    }

    fn rmsnorm(&self, x: &[f32], weight: &[f32], n_rows: usize, dim: usize, eps: f32) -> Vec<f32> {
        let (x_d, w_d, out) = (self.up(x), self.up(weight), self.poisoned(x.len()));
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("rmsnorm", unsafe {
            cuda::rmsnorm_f32(self.ptr(&x_d), self.ptr(&w_d), n_rows, dim, eps, self.ptr(&out), self.raw_stream())
        });
        self.down(&out, x.len())
    }

    fn rope(
        &self,
        x: &[f32],
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[i32],
        n_rot: usize,
        freq_base: f32,
        freq_scale: f32,
        freq_factors: Option<&[f32]>,
        layout: RopeLayout,
    ) -> Vec<f32> {
        let (x_d, p_d) = (self.up(x), self.up(positions));
        let f_d = freq_factors.map(|f| self.up(f));
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("rope", unsafe {
            cuda::rope_f32(
                self.ptr(&x_d),
                n_tokens,
                n_heads,
                head_dim,
                self.ptr(&p_d),
                n_rot,
                freq_base,
                freq_scale,
                f_d.as_ref().map(|f| self.ptr(f)),
                layout,
                self.raw_stream(),
            )
        });
        self.down(&x_d, x.len())
    }

    fn attention_decode(
        &self,
        q: &[f32],
        k: &Cache,
        v: &Cache,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        n_kv: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        let (q_d, k_d, v_d, out) = (self.up(q), self.cache_up(k), self.cache_up(v), self.poisoned(q.len()));
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("attention_decode", unsafe {
            cuda::attention_decode_f32(
                self.ptr(&q_d),
                k.dtype(),
                self.cache_ptr(&k_d),
                self.cache_ptr(&v_d),
                n_heads,
                n_kv_heads,
                head_dim,
                n_kv,
                scale,
                window,
                self.ptr(&out),
                self.raw_stream(),
            )
        });
        self.down(&out, q.len())
    }

    fn attention_prefill(
        &self,
        q: &[f32],
        n_tokens: usize,
        pos0: usize,
        k: &Cache,
        v: &Cache,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        let (q_d, k_d, v_d, out) = (self.up(q), self.cache_up(k), self.cache_up(v), self.poisoned(q.len()));
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("attention_prefill", unsafe {
            cuda::attention_prefill_f32(
                self.ptr(&q_d),
                n_tokens,
                pos0,
                k.dtype(),
                self.cache_ptr(&k_d),
                self.cache_ptr(&v_d),
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                window,
                self.ptr(&out),
                cuda::PrefillKernel::Proven,
                self.raw_stream(),
            )
        });
        self.down(&out, q.len())
    }

    fn kv_append(&self, src: &[f32], n_tokens: usize, row_len: usize, positions: &[i32], cache: &Cache) -> Cache {
        let (s_d, p_d, c_d) = (self.up(src), self.up(positions), self.cache_up(cache));
        let rows = cache.to_f32().len() / row_len.max(1);
        // SAFETY: buffers sized by the shapes above, alive until `down`.
        ok("kv_append", unsafe {
            cuda::kv_append_f32(
                self.ptr(&s_d),
                n_tokens,
                row_len,
                self.ptr(&p_d),
                cache.dtype(),
                self.cache_ptr(&c_d),
                rows,
                self.raw_stream(),
            )
        });
        let n = cache.to_f32().len();
        match c_d {
            CacheBuf::F32(s) => Cache::F32(self.down(&s, n)),
            CacheBuf::F16(s) => Cache::F16(self.down(&s, n).into_iter().map(f16::from_bits).collect()),
        }
    }

    fn silu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let (g, u, out) = (self.up(gate), self.up(up), self.poisoned(gate.len()));
        // SAFETY: three buffers of gate.len() f32, alive until `down`.
        ok("silu_mul", unsafe {
            cuda::silu_mul_f32(self.ptr(&g), self.ptr(&u), gate.len(), self.ptr(&out), self.raw_stream())
        });
        self.down(&out, gate.len())
    }

    fn gelu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let (g, u, out) = (self.up(gate), self.up(up), self.poisoned(gate.len()));
        // SAFETY: three buffers of gate.len() f32, alive until `down`.
        ok("gelu_mul", unsafe {
            cuda::gelu_mul_f32(self.ptr(&g), self.ptr(&u), gate.len(), self.ptr(&out), self.raw_stream())
        });
        self.down(&out, gate.len())
    }

    fn add(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let (a_d, b_d, out) = (self.up(a), self.up(b), self.poisoned(a.len()));
        // SAFETY: three buffers of a.len() f32, alive until `down`.
        ok("add", unsafe { cuda::add_f32(self.ptr(&a_d), self.ptr(&b_d), a.len(), self.ptr(&out), self.raw_stream()) });
        self.down(&out, a.len())
    }

    fn add_bias(&self, x: &[f32], bias: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let (x_d, b_d, out) = (self.up(x), self.up(bias), self.poisoned(x.len()));
        // SAFETY: x and out hold rows*cols f32, b_d cols f32, alive until `down`.
        ok("add_bias", unsafe {
            cuda::add_bias_f32(self.ptr(&x_d), self.ptr(&b_d), rows, cols, self.ptr(&out), self.raw_stream())
        });
        self.down(&out, x.len())
    }

    fn scale(&self, x: &[f32], s: f32) -> Vec<f32> {
        let (x_d, out) = (self.up(x), self.poisoned(x.len()));
        // SAFETY: two buffers of x.len() f32, alive until `down`.
        ok("scale", unsafe { cuda::scale_f32(self.ptr(&x_d), s, x.len(), self.ptr(&out), self.raw_stream()) });
        self.down(&out, x.len())
    }

    fn softmax_rows(&self, x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let (x_d, out) = (self.up(x), self.poisoned(x.len()));
        // SAFETY: two buffers of rows*cols f32, alive until `down`.
        ok("softmax_rows", unsafe {
            cuda::softmax_rows_f32(self.ptr(&x_d), rows, cols, self.ptr(&out), self.raw_stream())
        });
        self.down(&out, x.len())
    }

    fn argmax_rows(&self, x: &[f32], rows: usize, cols: usize) -> Vec<i32> {
        let (x_d, out) = (self.up(x), self.up(&vec![-1i32; rows.max(1)]));
        // SAFETY: x_d holds rows*cols f32 and out rows i32, alive until `down`.
        ok("argmax_rows", unsafe {
            cuda::argmax_rows_f32(self.ptr(&x_d), rows, cols, self.ptr(&out), self.raw_stream())
        });
        self.down(&out, rows)
    }
}
