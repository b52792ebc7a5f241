//! The CUDA launchers, called through the bindgen FFI of `kernels/strata.h`.
//!
//! Three layers, as in cudarc: the raw bindings (`ffi`, private) → these thin `unsafe`
//! functions, which check what they can on the host and turn a launcher's status into a
//! [`Result`] → the safe owning types of `strata-tensor`, which are the only public door for
//! the rest of strata. Device pointers are plain `u64` addresses (`CUdeviceptr`) so that they
//! cannot be confused with host pointers; streams are `CUstream` handles (null means the legacy
//! default stream). The launchers use the CUDA runtime linked statically, which works on the
//! device's primary context, the same one cudarc uses.
//!
//! All functions only enqueue work: errors found at run time inside a kernel surface at the
//! next synchronization, as with any CUDA launch.

// The signatures mirror the C launchers, which take many scalars.
#![allow(clippy::too_many_arguments)]

use std::ffi::{CStr, c_void};

use crate::{DType, Error, Result, RopeLayout};

#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, unsafe_op_in_unsafe_fn)]
#[allow(clippy::all)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/strata_bindings.rs"));
}

/// A device address (`CUdeviceptr`).
pub type DevicePtr = u64;
/// A CUDA stream handle (`CUstream` / `cudaStream_t`); null is the legacy default stream.
pub type Stream = *mut c_void;

/// True: this build has the CUDA launchers (the feature-off build returns false).
pub const BUILT: bool = true;

/// The bindgen structs must match the Rust mirrors in `dtype.rs` field by field.
// bindgen picks the C enum's integer type per platform, so the casts are not always no-ops.
#[allow(clippy::unnecessary_cast)]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<ffi::strata_block_q8_0>() == size_of::<crate::BlockQ8_0>());
    assert!(align_of::<ffi::strata_block_q8_0>() == align_of::<crate::BlockQ8_0>());
    assert!(offset_of!(ffi::strata_block_q8_0, qs) == offset_of!(crate::BlockQ8_0, qs));
    assert!(size_of::<ffi::strata_block_q4_0>() == size_of::<crate::BlockQ4_0>());
    assert!(align_of::<ffi::strata_block_q4_0>() == align_of::<crate::BlockQ4_0>());
    assert!(offset_of!(ffi::strata_block_q4_0, qs) == offset_of!(crate::BlockQ4_0, qs));
    assert!(size_of::<ffi::strata_block_q4_1>() == size_of::<crate::BlockQ4_1>());
    assert!(align_of::<ffi::strata_block_q4_1>() == align_of::<crate::BlockQ4_1>());
    assert!(offset_of!(ffi::strata_block_q4_1, m) == offset_of!(crate::BlockQ4_1, m));
    assert!(offset_of!(ffi::strata_block_q4_1, qs) == offset_of!(crate::BlockQ4_1, qs));
    assert!(size_of::<ffi::strata_block_q5_0>() == size_of::<crate::BlockQ5_0>());
    assert!(align_of::<ffi::strata_block_q5_0>() == align_of::<crate::BlockQ5_0>());
    assert!(offset_of!(ffi::strata_block_q5_0, qh) == offset_of!(crate::BlockQ5_0, qh));
    assert!(offset_of!(ffi::strata_block_q5_0, qs) == offset_of!(crate::BlockQ5_0, qs));
    assert!(size_of::<ffi::strata_block_q5_1>() == size_of::<crate::BlockQ5_1>());
    assert!(align_of::<ffi::strata_block_q5_1>() == align_of::<crate::BlockQ5_1>());
    assert!(offset_of!(ffi::strata_block_q5_1, m) == offset_of!(crate::BlockQ5_1, m));
    assert!(offset_of!(ffi::strata_block_q5_1, qh) == offset_of!(crate::BlockQ5_1, qh));
    assert!(offset_of!(ffi::strata_block_q5_1, qs) == offset_of!(crate::BlockQ5_1, qs));
    assert!(size_of::<ffi::strata_block_q2_k>() == size_of::<crate::BlockQ2K>());
    assert!(align_of::<ffi::strata_block_q2_k>() == align_of::<crate::BlockQ2K>());
    assert!(offset_of!(ffi::strata_block_q2_k, qs) == offset_of!(crate::BlockQ2K, qs));
    assert!(offset_of!(ffi::strata_block_q2_k, d) == offset_of!(crate::BlockQ2K, d));
    assert!(offset_of!(ffi::strata_block_q2_k, dmin) == offset_of!(crate::BlockQ2K, dmin));
    assert!(size_of::<ffi::strata_block_q3_k>() == size_of::<crate::BlockQ3K>());
    assert!(align_of::<ffi::strata_block_q3_k>() == align_of::<crate::BlockQ3K>());
    assert!(offset_of!(ffi::strata_block_q3_k, qs) == offset_of!(crate::BlockQ3K, qs));
    assert!(offset_of!(ffi::strata_block_q3_k, scales) == offset_of!(crate::BlockQ3K, scales));
    assert!(offset_of!(ffi::strata_block_q3_k, d) == offset_of!(crate::BlockQ3K, d));
    assert!(size_of::<ffi::strata_block_q4_k>() == size_of::<crate::BlockQ4K>());
    assert!(align_of::<ffi::strata_block_q4_k>() == align_of::<crate::BlockQ4K>());
    assert!(offset_of!(ffi::strata_block_q4_k, dmin) == offset_of!(crate::BlockQ4K, dmin));
    assert!(offset_of!(ffi::strata_block_q4_k, scales) == offset_of!(crate::BlockQ4K, scales));
    assert!(offset_of!(ffi::strata_block_q4_k, qs) == offset_of!(crate::BlockQ4K, qs));
    assert!(size_of::<ffi::strata_block_q5_k>() == size_of::<crate::BlockQ5K>());
    assert!(align_of::<ffi::strata_block_q5_k>() == align_of::<crate::BlockQ5K>());
    assert!(offset_of!(ffi::strata_block_q5_k, dmin) == offset_of!(crate::BlockQ5K, dmin));
    assert!(offset_of!(ffi::strata_block_q5_k, scales) == offset_of!(crate::BlockQ5K, scales));
    assert!(offset_of!(ffi::strata_block_q5_k, qh) == offset_of!(crate::BlockQ5K, qh));
    assert!(offset_of!(ffi::strata_block_q5_k, qs) == offset_of!(crate::BlockQ5K, qs));
    assert!(size_of::<ffi::strata_block_q6_k>() == size_of::<crate::BlockQ6K>());
    assert!(align_of::<ffi::strata_block_q6_k>() == align_of::<crate::BlockQ6K>());
    assert!(offset_of!(ffi::strata_block_q6_k, qh) == offset_of!(crate::BlockQ6K, qh));
    assert!(offset_of!(ffi::strata_block_q6_k, scales) == offset_of!(crate::BlockQ6K, scales));
    assert!(offset_of!(ffi::strata_block_q6_k, d) == offset_of!(crate::BlockQ6K, d));
    assert!(size_of::<ffi::strata_block_iq4_nl>() == size_of::<crate::BlockIq4Nl>());
    assert!(align_of::<ffi::strata_block_iq4_nl>() == align_of::<crate::BlockIq4Nl>());
    assert!(offset_of!(ffi::strata_block_iq4_nl, qs) == offset_of!(crate::BlockIq4Nl, qs));
    assert!(size_of::<ffi::strata_block_iq4_xs>() == size_of::<crate::BlockIq4Xs>());
    assert!(align_of::<ffi::strata_block_iq4_xs>() == align_of::<crate::BlockIq4Xs>());
    assert!(offset_of!(ffi::strata_block_iq4_xs, scales_h) == offset_of!(crate::BlockIq4Xs, scales_h));
    assert!(offset_of!(ffi::strata_block_iq4_xs, scales_l) == offset_of!(crate::BlockIq4Xs, scales_l));
    assert!(offset_of!(ffi::strata_block_iq4_xs, qs) == offset_of!(crate::BlockIq4Xs, qs));
    assert!(ffi::STRATA_QK as usize == crate::QK);
    assert!(ffi::STRATA_QK_K as usize == crate::QK_K);
    assert!(ffi::STRATA_K_SCALE_SIZE as usize == crate::K_SCALE_SIZE);
    assert!(ffi::STRATA_DTYPE_Q5_0 as u32 == DType::Q5_0 as u32);
    assert!(ffi::STRATA_DTYPE_Q5_1 as u32 == DType::Q5_1 as u32);
    assert!(ffi::STRATA_DTYPE_Q2_K as u32 == DType::Q2_K as u32);
    assert!(ffi::STRATA_DTYPE_Q3_K as u32 == DType::Q3_K as u32);
    assert!(ffi::STRATA_DTYPE_Q4_K as u32 == DType::Q4_K as u32);
    assert!(ffi::STRATA_DTYPE_Q5_K as u32 == DType::Q5_K as u32);
    assert!(ffi::STRATA_DTYPE_Q6_K as u32 == DType::Q6_K as u32);
    assert!(ffi::STRATA_DTYPE_IQ4_NL as u32 == DType::IQ4_NL as u32);
    assert!(ffi::STRATA_DTYPE_IQ4_XS as u32 == DType::IQ4_XS as u32);
    assert!(ffi::STRATA_DTYPE_F32 as u32 == DType::F32 as u32);
    assert!(ffi::STRATA_DTYPE_F16 as u32 == DType::F16 as u32);
    assert!(ffi::STRATA_DTYPE_BF16 as u32 == DType::BF16 as u32);
    assert!(ffi::STRATA_DTYPE_Q8_0 as u32 == DType::Q8_0 as u32);
    assert!(ffi::STRATA_DTYPE_Q4_0 as u32 == DType::Q4_0 as u32);
    assert!(ffi::STRATA_DTYPE_Q4_1 as u32 == DType::Q4_1 as u32);
    assert!(ffi::STRATA_ROPE_ADJACENT as u32 == RopeLayout::Adjacent as u32);
    assert!(ffi::STRATA_ROPE_HALF_SPLIT as u32 == RopeLayout::HalfSplit as u32);
};

fn dtype(t: DType) -> ffi::strata_dtype {
    t as ffi::strata_dtype
}

/// Whether the CUDA weight kernels (dequantize, embedding gather, matvec, matmul) handle
/// `dt`. Every weight type has them; a type added to [`DType`] without kernels must be left
/// out here so that it fails with a typed error instead of reaching a launcher.
pub fn supports(dt: DType) -> bool {
    match dt {
        DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => true,
        DType::Q5_0 | DType::Q5_1 | DType::IQ4_NL => true,
        DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::IQ4_XS => true,
    }
}

/// [`Error::UnsupportedDtype`] for a weight type without CUDA kernels, before anything is
/// launched.
fn weight_dtype(op: &'static str, dt: DType) -> Result<ffi::strata_dtype> {
    if supports(dt) {
        Ok(dtype(dt))
    } else {
        Err(Error::UnsupportedDtype { op, dtype: dt, expected: "a type with CUDA kernels (cuda::supports)" })
    }
}

fn rope_layout(l: RopeLayout) -> ffi::strata_rope_layout {
    l as ffi::strata_rope_layout
}

fn i64_of(op: &'static str, what: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit an i64")))
}

fn ptr<T>(p: DevicePtr) -> *const T {
    p as usize as *const T
}

fn ptr_mut<T>(p: DevicePtr) -> *mut T {
    p as usize as *mut T
}

fn stream(s: Stream) -> ffi::cudaStream_t {
    s.cast()
}

fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return "unknown".into();
    }
    // SAFETY: cudaGetErrorName/String return pointers to static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Turns a launcher status into a Result.
fn check(op: &'static str, status: ffi::strata_status) -> Result<()> {
    if status == ffi::STRATA_OK as ffi::strata_status {
        return Ok(());
    }
    // SAFETY: both functions accept any status value and return static strings.
    let (name, description) = unsafe { (ffi::strata_status_name(status), ffi::strata_status_string(status)) };
    Err(Error::Cuda { op, code: status, name: cstr(name), description: cstr(description) })
}

/// The name of a CUDA status code (e.g. `cudaErrorInsufficientDriver` for 35).
pub fn status_name(code: i32) -> String {
    // SAFETY: accepts any value, returns a static string.
    cstr(unsafe { ffi::strata_status_name(code) })
}

/// Dequantizes `rows` rows of `cols` values of `dt` at `w` into f32 at `out`.
///
/// # Safety
/// `w` must address `rows * dt.row_bytes(cols)` readable bytes and `out` `rows * cols` f32 of
/// writable device memory in the current context, both alive until the work on `stream`
/// completes; `stream` must be a live stream of that context (or null).
///
/// # Errors
/// Argument errors (sizes, dtype) and the launch status.
pub unsafe fn dequantize_rows_f32(
    dt: DType,
    w: DevicePtr,
    rows: usize,
    cols: usize,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "dequantize_rows";
    let wt = weight_dtype(OP, dt)?;
    let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe { ffi::strata_dequantize_rows_f32(wt, ptr(w), r, c, ptr_mut(out), stream(s)) })
}

/// Gathers rows `ids[t]` of a `n_vocab` x `dim` table into f32 at `out` (`n_ids` rows).
///
/// # Safety
/// `table` must address `n_vocab * dt.row_bytes(dim)` bytes, `ids` `n_ids` i32 and `out`
/// `n_ids * dim` f32 of device memory, alive until the work on stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn embedding_gather_f32(
    dt: DType,
    table: DevicePtr,
    n_vocab: usize,
    dim: usize,
    ids: DevicePtr,
    n_ids: usize,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "embedding_gather";
    let wt = weight_dtype(OP, dt)?;
    let (v, d, n) = (i64_of(OP, "n_vocab", n_vocab)?, i64_of(OP, "dim", dim)?, i64_of(OP, "n_ids", n_ids)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe { ffi::strata_embedding_gather_f32(wt, ptr(table), v, d, ptr(ids), n, ptr_mut(out), stream(s)) })
}

/// y = W x for a `rows` x `cols` matrix of `dt`.
///
/// # Safety
/// `w` must address `rows * dt.row_bytes(cols)` bytes, `x` `cols` f32 and `y` `rows` f32 of
/// device memory, alive until the work on stream `s` completes; `y` must not overlap `x`.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn matvec_f32(
    dt: DType,
    w: DevicePtr,
    rows: usize,
    cols: usize,
    x: DevicePtr,
    y: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "matvec";
    let wt = weight_dtype(OP, dt)?;
    let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe { ffi::strata_matvec_f32(wt, ptr(w), r, c, ptr(x), ptr_mut(y), stream(s)) })
}

/// Y = X W^T for `n_tokens` rows of X.
///
/// # Safety
/// `w` must address `rows * dt.row_bytes(cols)` bytes, `x` `n_tokens * cols` f32 and `y`
/// `n_tokens * rows` f32 of device memory, alive until the work on stream `s` completes;
/// `y` must not overlap `x`.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn matmul_f32(
    dt: DType,
    w: DevicePtr,
    rows: usize,
    cols: usize,
    x: DevicePtr,
    n_tokens: usize,
    y: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "matmul";
    let wt = weight_dtype(OP, dt)?;
    let (r, c, t) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?, i64_of(OP, "n_tokens", n_tokens)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe { ffi::strata_matmul_f32(wt, ptr(w), r, c, ptr(x), t, ptr_mut(y), stream(s)) })
}

/// RMS norm of `n_rows` rows of `dim` values (`out` may equal `x`).
///
/// # Safety
/// `x` and `out` must address `n_rows * dim` f32 and `weight` `dim` f32 of device memory,
/// alive until the work on stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn rmsnorm_f32(
    x: DevicePtr,
    weight: DevicePtr,
    n_rows: usize,
    dim: usize,
    eps: f32,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "rmsnorm";
    let (n, d) = (i64_of(OP, "n_rows", n_rows)?, i64_of(OP, "dim", dim)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe { ffi::strata_rmsnorm_f32(ptr(x), ptr(weight), n, d, eps, ptr_mut(out), stream(s)) })
}

/// RoPE in place on x[n_tokens][n_heads][head_dim].
///
/// # Safety
/// `x` must address `n_tokens * n_heads * head_dim` f32, `positions` `n_tokens` i32 and
/// `freq_factors`, if given, `n_rot / 2` f32 of device memory, alive until the work on stream
/// `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn rope_f32(
    x: DevicePtr,
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
    positions: DevicePtr,
    n_rot: usize,
    freq_base: f32,
    freq_scale: f32,
    freq_factors: Option<DevicePtr>,
    layout: RopeLayout,
    s: Stream,
) -> Result<()> {
    const OP: &str = "rope";
    let (t, h, d, r) = (
        i64_of(OP, "n_tokens", n_tokens)?,
        i64_of(OP, "n_heads", n_heads)?,
        i64_of(OP, "head_dim", head_dim)?,
        i64_of(OP, "n_rot", n_rot)?,
    );
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe {
        ffi::strata_rope_f32(
            ptr_mut(x),
            t,
            h,
            d,
            ptr(positions),
            r,
            freq_base,
            freq_scale,
            freq_factors.map_or(std::ptr::null(), ptr),
            rope_layout(layout),
            stream(s),
        )
    })
}

/// Decode attention over cache rows 0..n_kv.
///
/// # Safety
/// `q` and `out` must address `n_heads * head_dim` f32; `k_cache` and `v_cache` at least
/// `n_kv * n_kv_heads * head_dim` elements of `cache` type; all device memory alive until the
/// work on stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn attention_decode_f32(
    q: DevicePtr,
    cache: DType,
    k_cache: DevicePtr,
    v_cache: DevicePtr,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    n_kv: usize,
    scale: f32,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "attention_decode";
    let (h, kvh, d, n) = (
        i64_of(OP, "n_heads", n_heads)?,
        i64_of(OP, "n_kv_heads", n_kv_heads)?,
        i64_of(OP, "head_dim", head_dim)?,
        i64_of(OP, "n_kv", n_kv)?,
    );
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe {
        ffi::strata_attention_decode_f32(
            ptr(q),
            dtype(cache),
            ptr(k_cache),
            ptr(v_cache),
            h,
            kvh,
            d,
            n,
            scale,
            ptr_mut(out),
            stream(s),
        )
    })
}

/// Prefill attention: token t attends cache rows 0..=pos0+t.
///
/// # Safety
/// `q` and `out` must address `n_tokens * n_heads * head_dim` f32; `k_cache` and `v_cache` at
/// least `(pos0 + n_tokens) * n_kv_heads * head_dim` elements of `cache` type; all device
/// memory alive until the work on stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn attention_prefill_f32(
    q: DevicePtr,
    n_tokens: usize,
    pos0: usize,
    cache: DType,
    k_cache: DevicePtr,
    v_cache: DevicePtr,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "attention_prefill";
    let (t, p, h, kvh, d) = (
        i64_of(OP, "n_tokens", n_tokens)?,
        i64_of(OP, "pos0", pos0)?,
        i64_of(OP, "n_heads", n_heads)?,
        i64_of(OP, "n_kv_heads", n_kv_heads)?,
        i64_of(OP, "head_dim", head_dim)?,
    );
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe {
        ffi::strata_attention_prefill_f32(
            ptr(q),
            t,
            p,
            dtype(cache),
            ptr(k_cache),
            ptr(v_cache),
            h,
            kvh,
            d,
            scale,
            ptr_mut(out),
            stream(s),
        )
    })
}

/// Writes `n_tokens` rows of `row_len` f32 into cache rows `positions[t]`, converted to `cache`.
///
/// # Safety
/// `src` must address `n_tokens * row_len` f32, `positions` `n_tokens` i32 and `cache_ptr`
/// `cache_rows * row_len` elements of `cache` type of device memory, alive until the work on
/// stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn kv_append_f32(
    src: DevicePtr,
    n_tokens: usize,
    row_len: usize,
    positions: DevicePtr,
    cache: DType,
    cache_ptr: DevicePtr,
    cache_rows: usize,
    s: Stream,
) -> Result<()> {
    const OP: &str = "kv_append";
    let (t, r, c) =
        (i64_of(OP, "n_tokens", n_tokens)?, i64_of(OP, "row_len", row_len)?, i64_of(OP, "cache_rows", cache_rows)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe {
        ffi::strata_kv_append_f32(ptr(src), t, r, ptr(positions), dtype(cache), ptr_mut(cache_ptr), c, stream(s))
    })
}

/// out = silu(gate) * up over `n` values (`out` may equal either input).
///
/// # Safety
/// All three must address `n` f32 of device memory, alive until the work on stream `s`
/// completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn silu_mul_f32(gate: DevicePtr, up: DevicePtr, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
    let n = i64_of("silu_mul", "n", n)?;
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check("silu_mul", unsafe { ffi::strata_silu_mul_f32(ptr(gate), ptr(up), n, ptr_mut(out), stream(s)) })
}

/// out[r][c] = x[r][c] + bias[c] for x [rows, cols] (`out` may equal `x`).
///
/// # Safety
/// `x` and `out` must address rows × cols f32 and `bias` cols f32 of device memory, alive
/// until the work on stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn add_bias_f32(
    x: DevicePtr,
    bias: DevicePtr,
    rows: usize,
    cols: usize,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    const OP: &str = "add_bias";
    let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check(OP, unsafe { ffi::strata_add_bias_f32(ptr(x), ptr(bias), r, c, ptr_mut(out), stream(s)) })
}

/// out = a + b over `n` values (`out` may equal either input).
///
/// # Safety
/// All three must address `n` f32 of device memory, alive until the work on stream `s`
/// completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn add_f32(a: DevicePtr, b: DevicePtr, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
    let n = i64_of("add", "n", n)?;
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check("add", unsafe { ffi::strata_add_f32(ptr(a), ptr(b), n, ptr_mut(out), stream(s)) })
}

/// out = x * factor over `n` values (`out` may equal `x`).
///
/// # Safety
/// Both must address `n` f32 of device memory, alive until the work on stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn scale_f32(x: DevicePtr, factor: f32, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
    let n = i64_of("scale", "n", n)?;
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check("scale", unsafe { ffi::strata_scale_f32(ptr(x), factor, n, ptr_mut(out), stream(s)) })
}

/// Row-wise softmax of x[rows][cols] (`out` may equal `x`).
///
/// # Safety
/// Both must address `rows * cols` f32 of device memory, alive until the work on stream `s`
/// completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn softmax_rows_f32(x: DevicePtr, rows: usize, cols: usize, out: DevicePtr, s: Stream) -> Result<()> {
    let (r, c) = (i64_of("softmax_rows", "rows", rows)?, i64_of("softmax_rows", "cols", cols)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check("softmax_rows", unsafe { ffi::strata_softmax_rows_f32(ptr(x), r, c, ptr_mut(out), stream(s)) })
}

/// Row-wise argmax of x[rows][cols] into `rows` i32.
///
/// # Safety
/// `x` must address `rows * cols` f32 and `out` `rows` i32 of device memory, alive until the
/// work on stream `s` completes.
///
/// # Errors
/// Argument errors and the launch status.
pub unsafe fn argmax_rows_f32(x: DevicePtr, rows: usize, cols: usize, out: DevicePtr, s: Stream) -> Result<()> {
    let (r, c) = (i64_of("argmax_rows", "rows", rows)?, i64_of("argmax_rows", "cols", cols)?);
    // SAFETY: the caller guarantees the buffers and stream (see # Safety).
    check("argmax_rows", unsafe { ffi::strata_argmax_rows_f32(ptr(x), r, c, ptr_mut(out), stream(s)) })
}
