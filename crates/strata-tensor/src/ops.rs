//! One function per kernel-crate op. Each checks shapes, dtypes and devices (typed errors,
//! never undefined behaviour), then runs the CPU reference for host tensors or enqueues the
//! CUDA kernel on the given stream for device tensors. Every tensor of a call must live on the
//! stream's device.
//!
//! On the host, three ops have faster kernels than the reference (`strata_kernels::cpu`),
//! chosen per thread by [`CpuPath`] ([`with_cpu_path`]):
//! - [`CpuPath::Exact`] (the default): matvec and matmul with quantized weights (every
//!   quantized type) on SIMD kernels with f32 activations (`cpu::fast::matmul_f32`), and vectorized
//!   attention; both compute the reference's products and differ only in the order of f32
//!   sums (`Tolerance::F32_ACCUMULATION`), so a model's tokens are the reference's.
//! - [`CpuPath::Fast`]: the products with activations rounded to 8-bit blocks like llama.cpp's
//!   and integer SIMD dot products (`cpu::fast::matmul`; `Tolerance::Q8_ACTIVATIONS`); faster,
//!   and tokens can differ where two candidates are nearly tied. Every quantized type has
//!   8-bit kernels (the K-quants and IQ4_XS with 256-value activation blocks, `Q8_K`-style).
//! - [`CpuPath::Reference`]: the reference itself, to tell a model bug from a kernel one.
//!   Setting the environment variable `STRATA_CPU_REFERENCE=1` (read once, at the first such
//!   call) forces it for the whole process.
//!
//! Other weight types and all other ops always run the reference.
//!
//! Two differences from the kernels' CPU reference, both on bad indices that the host cannot
//! see without a synchronize: on a GPU an out-of-range token id gathers a NaN row and an
//! out-of-range cache position is skipped, where the CPU returns an error.

#![allow(clippy::too_many_arguments)]

mod decode_at;
mod fused;
mod paged;

pub use decode_at::attention_decode_at;
pub use fused::{Glu, QuantizedActs, glu_fuses, matvec_add, matvec_glu, matvec_quantized, rmsnorm_quantize};
pub use paged::{PagedIndex, paged_attention};

use strata_kernels::RopeLayout;
use strata_kernels::cpu::{self, CacheMut, CacheRef};

use crate::gpu::{self, DeviceBuffer};
use crate::kernel_call::KernelCall;
use crate::tensor::{Storage, Stream};
use crate::{DType, Error, Result, Tensor};

/// The environment variable that forces the CPU reference for host matvec, matmul and
/// attention.
pub const CPU_REFERENCE_ENV: &str = "STRATA_CPU_REFERENCE";

/// Which kernels host matvec, matmul and attention run (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuPath {
    /// The kernel crate's reference: column-order f32 sums.
    Reference,
    /// SIMD kernels with f32 activations: the reference's products, summed in another order.
    #[default]
    Exact,
    /// SIMD kernels with 8-bit activations (llama.cpp's rounding).
    Fast,
}

/// Whether `STRATA_CPU_REFERENCE` asks for the reference (any value but empty or `0`), read
/// once: a process does not switch paths halfway through a generation.
pub fn cpu_reference_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var(CPU_REFERENCE_ENV).is_ok_and(|v| !v.is_empty() && v != "0"))
}

thread_local! {
    /// Set by [`with_cpu_path`] on the thread that issues the ops.
    static PATH_HERE: std::cell::Cell<CpuPath> = const { std::cell::Cell::new(CpuPath::Exact) };
}

/// Runs `f` with the host ops this thread issues on `path`: for choosing the kernels of a
/// run, or comparing paths in one process (tests), without an environment variable that every
/// thread would see. The ops run on the calling thread (a forward pass issues them from the
/// thread that calls it); `STRATA_CPU_REFERENCE=1` still wins.
pub fn with_cpu_path<R>(path: CpuPath, f: impl FnOnce() -> R) -> R {
    /// Restores the previous setting even if `f` panics.
    struct Restore(CpuPath);
    impl Drop for Restore {
        fn drop(&mut self) {
            PATH_HERE.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(PATH_HERE.with(|r| r.replace(path)));
    f()
}

/// [`with_cpu_path`] with [`CpuPath::Reference`].
pub fn with_cpu_reference<R>(f: impl FnOnce() -> R) -> R {
    with_cpu_path(CpuPath::Reference, f)
}

/// The path host ops issued now on this thread take.
pub fn cpu_path() -> CpuPath {
    if cpu_reference_forced() { CpuPath::Reference } else { PATH_HERE.with(|r| r.get()) }
}

/// The path a host matvec/matmul with weights of `dt` takes (plain float weights have only
/// the reference).
/// The CPU kernels for products with weights of `dt`: the chosen path where it handles `dt`;
/// the `exact` (f32-activation) kernels where `fast` was chosen but has no 8-bit kernels for
/// `dt` (none today: `cpu::fast::supports_8bit` holds for every quantized type); the reference
/// for plain floats.
fn product_path(dt: strata_kernels::DType) -> CpuPath {
    match cpu_path() {
        _ if !cpu::fast::supports(dt) => CpuPath::Reference,
        CpuPath::Fast if !cpu::fast::supports_8bit(dt) => CpuPath::Exact,
        p => p,
    }
}

/// The environment variable that picks the GPU kernel set: `proven` (the default) or `next`.
pub const GPU_KERNELS_ENV: &str = "STRATA_GPU_KERNELS";

/// Which CUDA kernels device ops run. The `next` set is written for llama.cpp's speed and
/// beyond (today: the decode matvec with 8-bit activations and `dp4a` integer dot products,
/// `kernels/matvec_q8.cu`, and flash-decoding attention, `kernels/attention_split.cu`); it
/// replaces the `proven` kernels only after a GPU run shows it correct and faster
/// (docs/gpu-results.md), and until then it is opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuKernels {
    /// The kernels every GPU run so far has validated.
    #[default]
    Proven,
    /// The kernels under validation: quantized decode matvecs on 8-bit activations (the CPU
    /// fast path's rounding, so they compare with it up to the order of f32 sums) and decode
    /// attention split over the cached positions.
    Next,
}

impl GpuKernels {
    /// Parses `proven` or `next`.
    ///
    /// # Errors
    /// Any other value, with the accepted ones named.
    pub fn parse(v: &str) -> Result<GpuKernels> {
        match v {
            "proven" => Ok(GpuKernels::Proven),
            "next" => Ok(GpuKernels::Next),
            other => Err(Error::Kernel(strata_kernels::Error::invalid(
                "gpu kernels",
                format!("{GPU_KERNELS_ENV}={other:?} is not a kernel set (use `proven` or `next`)"),
            ))),
        }
    }
}

thread_local! {
    /// Set by [`with_gpu_kernels`] on the thread that issues the ops.
    static GPU_KERNELS_HERE: std::cell::Cell<Option<GpuKernels>> = const { std::cell::Cell::new(None) };
}

/// The kernel set device ops issued now on this thread run: [`with_gpu_kernels`]'s, else
/// `STRATA_GPU_KERNELS` (read once), else [`GpuKernels::Proven`].
///
/// # Errors
/// If `STRATA_GPU_KERNELS` holds something other than `proven` or `next`.
pub fn gpu_kernels() -> Result<GpuKernels> {
    static ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(k) = GPU_KERNELS_HERE.with(|c| c.get()) {
        return Ok(k);
    }
    match ENV.get_or_init(|| std::env::var(GPU_KERNELS_ENV).ok().filter(|v| !v.is_empty())) {
        Some(v) => GpuKernels::parse(v),
        None => Ok(GpuKernels::Proven),
    }
}

/// Runs `f` with the device ops this thread issues on kernel set `k` (tests compare the two
/// sets in one process; the environment variable would switch every thread).
pub fn with_gpu_kernels<R>(k: GpuKernels, f: impl FnOnce() -> R) -> R {
    /// Restores the previous setting even if `f` panics.
    struct Restore(Option<GpuKernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            GPU_KERNELS_HERE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(GPU_KERNELS_HERE.with(|c| c.replace(Some(k))));
    f()
}

fn check_devices(op: &'static str, s: &Stream, ts: &[&Tensor]) -> Result<()> {
    let want = s.device();
    for t in ts {
        if t.device() != want {
            return Err(Error::Device { op, what: format!("a {t:?} is not on {want}, where this stream runs") });
        }
    }
    Ok(())
}

fn expect_dtype(op: &'static str, name: &str, t: &Tensor, want: &[DType], expected: &'static str) -> Result<()> {
    if !want.contains(&t.dtype()) {
        return Err(Error::Dtype { op, dtype: format!("{name} {}", t.dtype()), expected });
    }
    Ok(())
}

fn expect_shape(op: &'static str, name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape() != want {
        return Err(Error::shape(op, format!("{name} has shape {:?}, expected {want:?}", t.shape())));
    }
    Ok(())
}

/// (rows, cols) of a rank-2 tensor.
fn dims2(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((r, c)),
        ref s => Err(Error::shape(op, format!("{name} must be 2-D [rows, cols], got {s:?}"))),
    }
}

fn dims3(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.shape() {
        [a, b, c] => Ok((a, b, c)),
        ref s => Err(Error::shape(op, format!("{name} must be 3-D, got {s:?}"))),
    }
}

fn weight_type(op: &'static str, w: &Tensor) -> Result<strata_kernels::DType> {
    w.dtype().weight().ok_or_else(|| Error::Dtype { op, dtype: w.dtype().to_string(), expected: "a weight type" })
}

fn dev(t: &Tensor) -> Result<&DeviceBuffer> {
    match t.storage() {
        Storage::Cuda(b) => Ok(b),
        Storage::Host(_) => Err(Error::Device { op: "launch", what: "expected a device tensor".into() }),
    }
}

fn gpu_stream(s: &Stream) -> Option<&gpu::GpuStream> {
    match s {
        Stream::Gpu(g) => Some(g),
        Stream::Host => None,
    }
}

fn cache_ref(t: &Tensor) -> Result<CacheRef<'_>> {
    Ok(match t.dtype() {
        DType::F16 => CacheRef::F16(t.as_f16()?),
        _ => CacheRef::F32(t.as_f32()?),
    })
}

fn f32_out(op: &'static str, t: &Tensor) -> Result<()> {
    expect_dtype(op, "output", t, &[DType::F32], "f32")
}

/// `out[r][c] = w[r][c] as f32`; w is `[rows, cols]` of any weight type, out `[rows, cols]` f32.
pub fn dequantize_rows(w: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "dequantize_rows";
    check_devices(OP, s, &[w, out])?;
    let dt = weight_type(OP, w)?;
    let (rows, cols) = dims2(OP, "w", w)?;
    f32_out(OP, out)?;
    expect_shape(OP, "out", out, &[rows, cols])?;
    match gpu_stream(s) {
        None => Ok(cpu::dequantize_rows(dt, w.host_bytes()?, rows, cols, out.as_f32_mut()?)?),
        Some(g) => gpu::launch(g, KernelCall::Dequantize { dt, w: dev(w)?, rows, cols, out: dev(out)? }),
    }
}

/// `out[t] = table[ids[t]] as f32`; table `[n_vocab, dim]`, ids `[n]` i32, out `[n, dim]` f32.
pub fn embedding_gather(table: &Tensor, ids: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "embedding_gather";
    check_devices(OP, s, &[table, ids, out])?;
    let dt = weight_type(OP, table)?;
    let (n_vocab, dim) = dims2(OP, "table", table)?;
    expect_dtype(OP, "ids", ids, &[DType::I32], "i32")?;
    let n_ids = ids.numel();
    f32_out(OP, out)?;
    expect_shape(OP, "out", out, &[n_ids, dim])?;
    match gpu_stream(s) {
        None => Ok(cpu::embedding_gather(dt, table.host_bytes()?, n_vocab, dim, ids.as_i32()?, out.as_f32_mut()?)?),
        Some(g) => gpu::launch(
            g,
            KernelCall::Gather { dt, table: dev(table)?, n_vocab, dim, ids: dev(ids)?, n_ids, out: dev(out)? },
        ),
    }
}

/// The checks of a matrix-vector product y = W x (or y += W x) named `op`: one device, a weight
/// type, w [rows, cols], x with cols f32 values, y with rows f32 values. Returns (type, rows,
/// cols).
pub(crate) fn check_matvec(
    op: &'static str,
    w: &Tensor,
    x: &Tensor,
    y: &Tensor,
    s: &Stream,
) -> Result<(strata_kernels::DType, usize, usize)> {
    check_devices(op, s, &[w, x, y])?;
    let dt = weight_type(op, w)?;
    let (rows, cols) = dims2(op, "w", w)?;
    expect_dtype(op, "x", x, &[DType::F32], "f32")?;
    f32_out(op, y)?;
    if x.numel() != cols || y.numel() != rows {
        return Err(Error::shape(
            op,
            format!(
                "w {:?} needs x of {cols} and y of {rows} values, got {:?} and {:?}",
                w.shape(),
                x.shape(),
                y.shape()
            ),
        ));
    }
    Ok((dt, rows, cols))
}

/// y = W x; w [rows, cols], x with cols f32 values, y with rows f32 values.
pub fn matvec(w: &Tensor, x: &Tensor, y: &mut Tensor, s: &Stream) -> Result<()> {
    let (dt, rows, cols) = check_matvec("matvec", w, x, y, s)?;
    match gpu_stream(s) {
        None => {
            let f = match product_path(dt) {
                CpuPath::Reference => cpu::matvec,
                CpuPath::Exact => cpu::fast::matvec_f32,
                CpuPath::Fast => cpu::fast::matvec,
            };
            Ok(f(dt, w.host_bytes()?, rows, cols, x.as_f32()?, y.as_f32_mut()?)?)
        }
        Some(g) => gpu::launch(g, KernelCall::Matvec { dt, w: dev(w)?, rows, cols, x: dev(x)?, y: dev(y)? }),
    }
}

/// Y = X W^T; w [rows, cols], x [n_tokens, cols], y [n_tokens, rows].
pub fn matmul(w: &Tensor, x: &Tensor, y: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "matmul";
    check_devices(OP, s, &[w, x, y])?;
    let dt = weight_type(OP, w)?;
    let (rows, cols) = dims2(OP, "w", w)?;
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    let (n_tokens, xc) = dims2(OP, "x", x)?;
    if xc != cols {
        return Err(Error::shape(OP, format!("x has {xc} columns, w has {cols}")));
    }
    f32_out(OP, y)?;
    expect_shape(OP, "y", y, &[n_tokens, rows])?;
    match gpu_stream(s) {
        None => {
            let f = match product_path(dt) {
                CpuPath::Reference => cpu::matmul,
                CpuPath::Exact => cpu::fast::matmul_f32,
                // Prefill on AVX-512: the f32 panels are faster than the 8-bit tiles there.
                CpuPath::Fast if cpu::fast::prefill_prefers_f32(dt, n_tokens) => cpu::fast::matmul_f32,
                CpuPath::Fast => cpu::fast::matmul,
            };
            Ok(f(dt, w.host_bytes()?, rows, cols, x.as_f32()?, n_tokens, y.as_f32_mut()?)?)
        }
        Some(g) => gpu::launch(g, KernelCall::Matmul { dt, w: dev(w)?, rows, cols, x: dev(x)?, n_tokens, y: dev(y)? }),
    }
}

/// RMS norm of each row of x `[.., dim]` with weight `[dim]` f32 into out (same shape).
pub fn rmsnorm(x: &Tensor, weight: &Tensor, eps: f32, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "rmsnorm";
    check_devices(OP, s, &[x, weight, out])?;
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    expect_dtype(OP, "weight", weight, &[DType::F32], "f32")?;
    f32_out(OP, out)?;
    let dim = *x.shape().last().ok_or_else(|| Error::shape(OP, "x has no dimensions"))?;
    expect_shape(OP, "weight", weight, &[dim])?;
    expect_shape(OP, "out", out, x.shape())?;
    let n_rows = x.numel().checked_div(dim).unwrap_or(0);
    match gpu_stream(s) {
        None => Ok(cpu::rmsnorm(x.as_f32()?, weight.as_f32()?, n_rows, dim, eps, out.as_f32_mut()?)?),
        Some(g) => {
            gpu::launch(g, KernelCall::Rmsnorm { x: dev(x)?, weight: dev(weight)?, n_rows, dim, eps, out: dev(out)? })
        }
    }
}

/// RoPE in place on x `[n_tokens, n_heads, head_dim]` f32 at positions `[n_tokens]` i32;
/// `freq_factors` [n_rot / 2] f32, if given, divides each frequency (Llama 3.1-style scaling).
pub fn rope(
    x: &mut Tensor,
    positions: &Tensor,
    n_rot: usize,
    freq_base: f32,
    freq_scale: f32,
    freq_factors: Option<&Tensor>,
    layout: RopeLayout,
    s: &Stream,
) -> Result<()> {
    const OP: &str = "rope";
    check_devices(OP, s, &[x, positions])?;
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    expect_dtype(OP, "positions", positions, &[DType::I32], "i32")?;
    let (n_tokens, n_heads, head_dim) = dims3(OP, "x", x)?;
    expect_shape(OP, "positions", positions, &[n_tokens])?;
    if !n_rot.is_multiple_of(2) || n_rot > head_dim {
        return Err(Error::shape(OP, format!("n_rot must be even and at most head_dim {head_dim}, got {n_rot}")));
    }
    if let Some(f) = freq_factors {
        check_devices(OP, s, &[f])?;
        expect_dtype(OP, "freq_factors", f, &[DType::F32], "f32")?;
        expect_shape(OP, "freq_factors", f, &[n_rot / 2])?;
    }
    match gpu_stream(s) {
        None => Ok(cpu::rope(
            x.as_f32_mut()?,
            n_tokens,
            n_heads,
            head_dim,
            positions.as_i32()?,
            n_rot,
            freq_base,
            freq_scale,
            freq_factors.map(Tensor::as_f32).transpose()?,
            layout,
        )?),
        Some(g) => gpu::launch(
            g,
            KernelCall::Rope {
                x: dev(x)?,
                n_tokens,
                n_heads,
                head_dim,
                positions: dev(positions)?,
                n_rot,
                freq_base,
                freq_scale,
                freq_factors: freq_factors.map(dev).transpose()?,
                layout,
            },
        ),
    }
}

/// Checks caches [rows, n_kv_heads, head_dim] of f32/f16 against q's head count; returns
/// (cache dtype, rows, n_kv_heads).
fn check_caches(
    op: &'static str,
    k: &Tensor,
    v: &Tensor,
    n_heads: usize,
    head_dim: usize,
) -> Result<(strata_kernels::DType, usize, usize)> {
    expect_dtype(op, "K cache", k, &[DType::F32, DType::F16], "f32 or f16")?;
    if v.dtype() != k.dtype() || v.shape() != k.shape() {
        return Err(Error::shape(
            op,
            format!("K cache {} {:?} and V cache {} {:?} differ", k.dtype(), k.shape(), v.dtype(), v.shape()),
        ));
    }
    let (rows, n_kv_heads, d) = dims3(op, "K cache", k)?;
    if d != head_dim || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::shape(
            op,
            format!("cache {:?} does not fit {n_heads} query heads of {head_dim}", k.shape()),
        ));
    }
    let dt = if k.dtype() == DType::F16 { strata_kernels::DType::F16 } else { strata_kernels::DType::F32 };
    Ok((dt, rows, n_kv_heads))
}

/// What [`check_queries`] found: q [n_tokens, n_heads, head_dim] over caches of `cache_rows`
/// rows of `n_kv_heads` heads.
struct QueryShape {
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
    cache: strata_kernels::DType,
    cache_rows: usize,
    n_kv_heads: usize,
}

/// The checks every multi-row attention op makes: all tensors (and `extra`) on `s`'s device,
/// q f32 [n_tokens, n_heads, head_dim], out f32 shaped like q, caches that fit q's heads, a
/// window that sees something.
fn check_queries(
    op: &'static str,
    s: &Stream,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    extra: &[&Tensor],
    window: Option<usize>,
    out: &Tensor,
) -> Result<QueryShape> {
    let mut all = vec![q, k_cache, v_cache, out];
    all.extend_from_slice(extra);
    check_devices(op, s, &all)?;
    expect_dtype(op, "q", q, &[DType::F32], "f32")?;
    let (n_tokens, n_heads, head_dim) = dims3(op, "q", q)?;
    f32_out(op, out)?;
    expect_shape(op, "out", out, q.shape())?;
    let (cache, cache_rows, n_kv_heads) = check_caches(op, k_cache, v_cache, n_heads, head_dim)?;
    check_window(op, window)?;
    Ok(QueryShape { n_tokens, n_heads, head_dim, cache, cache_rows, n_kv_heads })
}

/// Decode attention: q [n_heads, head_dim] (the query at position n_kv - 1) over cache rows
/// 0..n_kv, or with a sliding window only the last `window` of them (llama.cpp's standard
/// window: a key at k is masked for a query at p when p - k >= window); out like q.
pub fn attention_decode(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    n_kv: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut Tensor,
    s: &Stream,
) -> Result<()> {
    const OP: &str = "attention_decode";
    check_devices(OP, s, &[q, k_cache, v_cache, out])?;
    expect_dtype(OP, "q", q, &[DType::F32], "f32")?;
    let (n_heads, head_dim) = dims2(OP, "q", q)?;
    f32_out(OP, out)?;
    expect_shape(OP, "out", out, q.shape())?;
    let (cache, rows, n_kv_heads) = check_caches(OP, k_cache, v_cache, n_heads, head_dim)?;
    if n_kv == 0 || n_kv > rows {
        return Err(Error::shape(OP, format!("n_kv must be in 1..={rows} (the cache rows), got {n_kv}")));
    }
    check_window(OP, window)?;
    match gpu_stream(s) {
        None => {
            Ok((if cpu_path() == CpuPath::Reference { cpu::attention_decode } else { cpu::fast::attention_decode })(
                q.as_f32()?,
                cache_ref(k_cache)?,
                cache_ref(v_cache)?,
                n_heads,
                n_kv_heads,
                head_dim,
                n_kv,
                scale,
                window,
                out.as_f32_mut()?,
            )?)
        }
        Some(g) => gpu::launch(
            g,
            KernelCall::Attention {
                q: dev(q)?,
                n_tokens: 1,
                pos0: n_kv - 1,
                cache,
                k: dev(k_cache)?,
                v: dev(v_cache)?,
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                window,
                out: dev(out)?,
            },
        ),
    }
}

/// Prefill attention: q [n_tokens, n_heads, head_dim], token t at position p = pos0 + t attends
/// rows 0..=p, or with a sliding window only the last `window` of them (rows p+1-window..=p);
/// out like q.
pub fn attention_prefill(
    q: &Tensor,
    pos0: usize,
    k_cache: &Tensor,
    v_cache: &Tensor,
    scale: f32,
    window: Option<usize>,
    out: &mut Tensor,
    s: &Stream,
) -> Result<()> {
    const OP: &str = "attention_prefill";
    let QueryShape { n_tokens, n_heads, head_dim, cache, cache_rows: rows, n_kv_heads } =
        check_queries(OP, s, q, k_cache, v_cache, &[], window, out)?;
    if pos0.checked_add(n_tokens).is_none_or(|end| end > rows) {
        return Err(Error::shape(
            OP,
            format!("positions {pos0}..{} exceed the cache of {rows} rows", pos0.saturating_add(n_tokens)),
        ));
    }
    match gpu_stream(s) {
        None => {
            Ok((if cpu_path() == CpuPath::Reference { cpu::attention_prefill } else { cpu::fast::attention_prefill })(
                q.as_f32()?,
                n_tokens,
                pos0,
                cache_ref(k_cache)?,
                cache_ref(v_cache)?,
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                window,
                out.as_f32_mut()?,
            )?)
        }
        Some(g) => gpu::launch(
            g,
            KernelCall::Attention {
                q: dev(q)?,
                n_tokens,
                pos0,
                cache,
                k: dev(k_cache)?,
                v: dev(v_cache)?,
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                window,
                out: dev(out)?,
            },
        ),
    }
}

/// A sliding window must see at least the query's own position.
fn check_window(op: &'static str, window: Option<usize>) -> Result<()> {
    if window == Some(0) {
        return Err(Error::shape(op, "a sliding window of 0 positions sees nothing (None: no window)"));
    }
    Ok(())
}

/// Writes src `[n_tokens, ..]` f32 into cache rows `positions[t]` (cache `[rows, ..]` f32/f16 with
/// the same row size), converting to the cache type.
pub fn kv_append(src: &Tensor, positions: &Tensor, cache: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "kv_append";
    check_devices(OP, s, &[src, positions, cache])?;
    expect_dtype(OP, "src", src, &[DType::F32], "f32")?;
    expect_dtype(OP, "positions", positions, &[DType::I32], "i32")?;
    expect_dtype(OP, "cache", cache, &[DType::F32, DType::F16], "f32 or f16")?;
    let n_tokens = *src.shape().first().ok_or_else(|| Error::shape(OP, "src has no dimensions"))?;
    let cache_rows = *cache.shape().first().ok_or_else(|| Error::shape(OP, "cache has no dimensions"))?;
    let row_len = src.numel().checked_div(n_tokens).unwrap_or(0);
    if src.shape()[1..].iter().product::<usize>() != cache.shape()[1..].iter().product::<usize>() {
        return Err(Error::shape(
            OP,
            format!("src rows {:?} do not match cache rows {:?}", &src.shape()[1..], &cache.shape()[1..]),
        ));
    }
    expect_shape(OP, "positions", positions, &[n_tokens])?;
    let cache_dt = if cache.dtype() == DType::F16 { strata_kernels::DType::F16 } else { strata_kernels::DType::F32 };
    match gpu_stream(s) {
        None => {
            let c = match cache.dtype() {
                DType::F16 => CacheMut::F16(cache.as_f16_mut()?),
                _ => CacheMut::F32(cache.as_f32_mut()?),
            };
            Ok(cpu::kv_append(src.as_f32()?, n_tokens, row_len, positions.as_i32()?, c, cache_rows)?)
        }
        Some(g) => gpu::launch(
            g,
            KernelCall::KvAppend {
                src: dev(src)?,
                n_tokens,
                row_len,
                positions: dev(positions)?,
                cache_dt,
                cache: dev(cache)?,
                cache_rows,
            },
        ),
    }
}

fn same_f32(op: &'static str, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<usize> {
    for (name, t) in [("a", a), ("b", b), ("out", out)] {
        expect_dtype(op, name, t, &[DType::F32], "f32")?;
    }
    if a.shape() != b.shape() || a.shape() != out.shape() {
        return Err(Error::shape(op, format!("shapes {:?}, {:?} and {:?} differ", a.shape(), b.shape(), out.shape())));
    }
    Ok(a.numel())
}

/// out = silu(gate) * up, elementwise (all f32, same shape).
pub fn silu_mul(gate: &Tensor, up: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "silu_mul";
    check_devices(OP, s, &[gate, up, out])?;
    let n = same_f32(OP, gate, up, out)?;
    match gpu_stream(s) {
        None => {
            // The vectorized SiLU on the exact and fast paths (`cpu::fast::silu_mul`: within
            // 3e-7 of float64, as the reference's libm `expf`, without a call per value).
            let f = if cpu_path() == CpuPath::Reference { cpu::silu_mul } else { cpu::fast::silu_mul };
            Ok(f(gate.as_f32()?, up.as_f32()?, out.as_f32_mut()?)?)
        }
        Some(g) => gpu::launch(g, KernelCall::SiluMul { gate: dev(gate)?, up: dev(up)?, n, out: dev(out)? }),
    }
}

/// out = gelu_tanh(gate) * up, elementwise (all f32, same shape): Gemma's GeGLU FFN, GELU
/// with its tanh approximation.
pub fn gelu_mul(gate: &Tensor, up: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "gelu_mul";
    check_devices(OP, s, &[gate, up, out])?;
    let n = same_f32(OP, gate, up, out)?;
    match gpu_stream(s) {
        None => {
            // The vectorized GELU on the exact and fast paths (`cpu::fast::gelu_mul`: within
            // 2e-5 of float64, closer than the reference's libm `tanhf`).
            let f = if cpu_path() == CpuPath::Reference { cpu::gelu_mul } else { cpu::fast::gelu_mul };
            Ok(f(gate.as_f32()?, up.as_f32()?, out.as_f32_mut()?)?)
        }
        Some(g) => gpu::launch(g, KernelCall::GeluMul { gate: dev(gate)?, up: dev(up)?, n, out: dev(out)? }),
    }
}

/// out = a + b, elementwise.
pub fn add(a: &Tensor, b: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "add";
    check_devices(OP, s, &[a, b, out])?;
    let n = same_f32(OP, a, b, out)?;
    match gpu_stream(s) {
        None => Ok(cpu::add(a.as_f32()?, b.as_f32()?, out.as_f32_mut()?)?),
        Some(g) => gpu::launch(g, KernelCall::Add { a: dev(a)?, b: dev(b)?, n, out: dev(out)? }),
    }
}

/// acc += b (the residual add), elementwise.
pub fn add_inplace(acc: &mut Tensor, b: &Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "add";
    check_devices(OP, s, &[acc, b])?;
    let n = same_f32(OP, acc, b, acc)?;
    match gpu_stream(s) {
        None => {
            let a = acc.as_f32()?.to_vec();
            Ok(cpu::add(&a, b.as_f32()?, acc.as_f32_mut()?)?)
        }
        Some(g) => gpu::launch(g, KernelCall::Add { a: dev(acc)?, b: dev(b)?, n, out: dev(acc)? }),
    }
}

/// `x[t][c] += bias[c]` for x `[T, C]` (f32) and bias `[C]` (f32): a bias broadcast over tokens.
pub fn add_bias_inplace(x: &mut Tensor, bias: &Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "add_bias";
    check_devices(OP, s, &[x, bias])?;
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    expect_dtype(OP, "bias", bias, &[DType::F32], "f32")?;
    let (rows, cols) = dims2(OP, "x", x)?;
    if bias.numel() != cols {
        return Err(Error::shape(OP, format!("bias has {} values, x has {cols} columns", bias.numel())));
    }
    match gpu_stream(s) {
        None => {
            let a = x.as_f32()?.to_vec();
            Ok(cpu::add_bias(&a, bias.as_f32()?, rows, cols, x.as_f32_mut()?)?)
        }
        Some(g) => gpu::launch(g, KernelCall::AddBias { x: dev(x)?, bias: dev(bias)?, rows, cols, out: dev(x)? }),
    }
}

/// out = x * factor, elementwise.
pub fn scale(x: &Tensor, factor: f32, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "scale";
    check_devices(OP, s, &[x, out])?;
    let n = same_f32(OP, x, x, out)?;
    match gpu_stream(s) {
        None => Ok(cpu::scale(x.as_f32()?, factor, out.as_f32_mut()?)?),
        Some(g) => gpu::launch(g, KernelCall::Scale { x: dev(x)?, factor, n, out: dev(out)? }),
    }
}

/// `out[rows[i]] += weights[i] * src[i]` for src `[n, cols]`, rows `[n]` i32 (distinct), weights `[n]`
/// f32 and out `[out_rows, cols]` (all f32 but rows): the combine step of a mixture-of-experts
/// FFN, one expert's outputs added into the rows of the tokens routed to it.
///
/// # Errors
/// Shapes, types or devices that disagree; on the host also a repeated row or one outside
/// `out` (on a GPU such a row is skipped, since checking it would need a synchronize).
pub fn scatter_add_scaled(src: &Tensor, rows: &Tensor, weights: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "scatter_add_scaled";
    check_devices(OP, s, &[src, rows, weights, out])?;
    expect_dtype(OP, "src", src, &[DType::F32], "f32")?;
    expect_dtype(OP, "rows", rows, &[DType::I32], "i32")?;
    expect_dtype(OP, "weights", weights, &[DType::F32], "f32")?;
    f32_out(OP, out)?;
    let (n, cols) = dims2(OP, "src", src)?;
    let (out_rows, out_cols) = dims2(OP, "out", out)?;
    if out_cols != cols {
        return Err(Error::shape(OP, format!("src has {cols} columns, out has {out_cols}")));
    }
    expect_shape(OP, "rows", rows, &[n])?;
    expect_shape(OP, "weights", weights, &[n])?;
    match gpu_stream(s) {
        None => Ok(cpu::scatter_add_scaled(
            src.as_f32()?,
            rows.as_i32()?,
            weights.as_f32()?,
            cols,
            out.as_f32_mut()?,
            out_rows,
        )?),
        Some(g) => gpu::launch(
            g,
            KernelCall::ScatterAddScaled {
                src: dev(src)?,
                rows: dev(rows)?,
                weights: dev(weights)?,
                n,
                cols,
                out_rows,
                out: dev(out)?,
            },
        ),
    }
}

/// Row-wise softmax of x [rows, cols] into out (same shape).
pub fn softmax_rows(x: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "softmax_rows";
    check_devices(OP, s, &[x, out])?;
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    let (rows, cols) = dims2(OP, "x", x)?;
    f32_out(OP, out)?;
    expect_shape(OP, "out", out, &[rows, cols])?;
    match gpu_stream(s) {
        None => Ok(cpu::softmax_rows(x.as_f32()?, rows, cols, out.as_f32_mut()?)?),
        Some(g) => gpu::launch(g, KernelCall::Softmax { x: dev(x)?, rows, cols, out: dev(out)? }),
    }
}

/// `out[r]` = index of the largest value of row r of x `[rows, cols]`; out `[rows]` i32.
pub fn argmax_rows(x: &Tensor, out: &mut Tensor, s: &Stream) -> Result<()> {
    const OP: &str = "argmax_rows";
    check_devices(OP, s, &[x, out])?;
    expect_dtype(OP, "x", x, &[DType::F32], "f32")?;
    let (rows, cols) = dims2(OP, "x", x)?;
    expect_dtype(OP, "out", out, &[DType::I32], "i32")?;
    expect_shape(OP, "out", out, &[rows])?;
    match gpu_stream(s) {
        None => Ok(cpu::argmax_rows(x.as_f32()?, rows, cols, out.as_i32_mut()?)?),
        Some(g) => gpu::launch(g, KernelCall::Argmax { x: dev(x)?, rows, cols, out: dev(out)? }),
    }
}
