//! Stand-in for the CUDA launchers in a build without the `cuda` feature: the same functions
//! and signatures as `cuda/mod.rs`, each returning [`Error::CudaNotBuilt`], so code above can
//! be written once and fall back to the CPU at run time.

#![allow(clippy::too_many_arguments, unused_variables, clippy::missing_safety_doc)]

use std::ffi::c_void;

use crate::{DType, Error, Result, RopeLayout};

/// A device address (`CUdeviceptr`).
pub type DevicePtr = u64;
/// A CUDA stream handle (`CUstream` / `cudaStream_t`); null is the legacy default stream.
pub type Stream = *mut c_void;

/// False: this build has no CUDA launchers.
pub const BUILT: bool = false;

/// Whether the CUDA weight kernels handle `dt`: without CUDA, none do.
pub fn supports(dt: DType) -> bool {
    false
}

/// The name of a CUDA status code; without CUDA only the number can be given.
pub fn status_name(code: i32) -> String {
    format!("CUDA status {code}")
}

pub unsafe fn dequantize_rows_f32(
    dt: DType,
    w: DevicePtr,
    rows: usize,
    cols: usize,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

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
    Err(Error::CudaNotBuilt)
}

pub unsafe fn matvec_f32(
    dt: DType,
    w: DevicePtr,
    rows: usize,
    cols: usize,
    x: DevicePtr,
    y: DevicePtr,
    s: Stream,
) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

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
    Err(Error::CudaNotBuilt)
}

pub unsafe fn rmsnorm_f32(
    x: DevicePtr,
    weight: DevicePtr,
    n_rows: usize,
    dim: usize,
    eps: f32,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

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
    Err(Error::CudaNotBuilt)
}

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
    Err(Error::CudaNotBuilt)
}

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
    Err(Error::CudaNotBuilt)
}

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
    Err(Error::CudaNotBuilt)
}

pub unsafe fn silu_mul_f32(gate: DevicePtr, up: DevicePtr, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

pub unsafe fn add_f32(a: DevicePtr, b: DevicePtr, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

pub unsafe fn add_bias_f32(
    x: DevicePtr,
    bias: DevicePtr,
    rows: usize,
    cols: usize,
    out: DevicePtr,
    s: Stream,
) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

pub unsafe fn scale_f32(x: DevicePtr, factor: f32, n: usize, out: DevicePtr, s: Stream) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

pub unsafe fn softmax_rows_f32(x: DevicePtr, rows: usize, cols: usize, out: DevicePtr, s: Stream) -> Result<()> {
    Err(Error::CudaNotBuilt)
}

pub unsafe fn argmax_rows_f32(x: DevicePtr, rows: usize, cols: usize, out: DevicePtr, s: Stream) -> Result<()> {
    Err(Error::CudaNotBuilt)
}
