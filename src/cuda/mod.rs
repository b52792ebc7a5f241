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

/// A sliding window as the launchers take it: 0 for none; `Some(0)` (a window that sees
/// nothing) is refused.
fn window_arg(op: &'static str, window: Option<usize>) -> Result<i64> {
    match window {
        None => Ok(0),
        Some(0) => Err(Error::invalid(op, "a sliding window must hold at least 1 position (None: no window)")),
        Some(w) => i64_of(op, "window", w),
    }
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

/// Bytes of the 8-bit activation buffer of the "next" matvec for `cols` columns of `dt`; None
/// if `dt` is not quantized or `cols` is not a whole number of its activation blocks (32
/// values, 256 for the K-quants and IQ4_XS).
pub fn act_q8_bytes(dt: DType, cols: usize) -> Option<usize> {
    let c = i64::try_from(cols).ok()?;
    // SAFETY: a pure function of its arguments.
    let n = unsafe { ffi::strata_act_q8_bytes(dtype(dt), c) };
    usize::try_from(n).ok()
}

/// Bytes of scratch [`attention_decode_split_f32`] needs; None for arguments it refuses.
pub fn attention_split_bytes(n_heads: usize, head_dim: usize, n_kv: usize, window: Option<usize>) -> Option<usize> {
    let w = match window {
        None => 0,
        Some(0) => return None,
        Some(w) => i64::try_from(w).ok()?,
    };
    let (h, d, n) = (i64::try_from(n_heads).ok()?, i64::try_from(head_dim).ok()?, i64::try_from(n_kv).ok()?);
    // SAFETY: a pure function of its arguments.
    usize::try_from(unsafe { ffi::strata_attention_split_bytes(h, d, n, w) }).ok()
}

/// The "next" matvec's activation quantization run on the host (the kernels' own per-block
/// code, compiled for the CPU): for tests on machines without a GPU.
///
/// # Errors
/// If `dt` is not quantized, `cols` is not whole blocks, or a length does not fit.
pub fn quantize_act_q8_host(dt: DType, x: &[f32], cols: usize, act: &mut [u8]) -> Result<()> {
    const OP: &str = "quantize_act_q8_host";
    let need = act_q8_bytes(dt, cols)
        .ok_or_else(|| Error::invalid(OP, format!("{cols} columns of {dt:?} have no 8-bit activation layout")))?;
    if x.len() != cols || act.len() != need {
        return Err(Error::invalid(
            OP,
            format!("x has {} values and act {} bytes; need {cols} and {need}", x.len(), act.len()),
        ));
    }
    let c = i64_of(OP, "cols", cols)?;
    // SAFETY: x holds cols f32 and act the layout's bytes (checked above); host memory only.
    check(OP, unsafe { ffi::strata_quantize_act_q8_host(dtype(dt), x.as_ptr(), c, act.as_mut_ptr().cast()) })
}

/// The "next" matvec run on the host with its kernels' per-chunk code (dp4a emulated): for
/// tests on machines without a GPU. `act` comes from [`quantize_act_q8_host`].
///
/// # Errors
/// If `dt` is not quantized, or a length does not fit the shape.
pub fn matvec_q8_host(dt: DType, w: &[u8], rows: usize, cols: usize, act: &[u8], y: &mut [f32]) -> Result<()> {
    const OP: &str = "matvec_q8_host";
    let need = act_q8_bytes(dt, cols)
        .ok_or_else(|| Error::invalid(OP, format!("{cols} columns of {dt:?} have no 8-bit activation layout")))?;
    let wbytes = dt.matrix_bytes(rows, cols)?;
    if w.len() != wbytes || act.len() != need || y.len() != rows {
        return Err(Error::invalid(
            OP,
            format!(
                "w {} bytes, act {}, y {}: the shape needs {wbytes}, {need} and {rows}",
                w.len(),
                act.len(),
                y.len()
            ),
        ));
    }
    let (r, c) = (i64_of(OP, "rows", rows)?, i64_of(OP, "cols", cols)?);
    // SAFETY: every buffer holds what the shape needs (checked above); host memory only.
    check(OP, unsafe {
        ffi::strata_matvec_q8_host(dtype(dt), w.as_ptr().cast(), r, c, act.as_ptr().cast(), y.as_mut_ptr())
    })
}

/// Defines the launchers listed in `launchers.rs` as written (this build has CUDA). The
/// build without CUDA expands the same list to stubs (`disabled.rs`), so a launcher is
/// declared once.
macro_rules! launchers {
    ($($(#[$meta:meta])* pub unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> Result<()> $body:block)*) => {
        $($(#[$meta])* pub unsafe fn $name($($arg: $ty),*) -> Result<()> $body)*
    };
}

#[path = "launchers.rs"]
mod launchers;
pub use launchers::*;
