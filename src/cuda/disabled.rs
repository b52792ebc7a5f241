//! Stand-in for the CUDA module in a build without the `cuda` feature: the same functions
//! and signatures as `cuda/mod.rs`, each returning [`crate::Error::CudaNotBuilt`], so code above can
//! be written once and fall back to the CPU at run time.

#![allow(clippy::too_many_arguments, unused_variables, clippy::missing_safety_doc)]

use std::ffi::c_void;

use crate::DType;

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

/// Bytes of the "next" matvec's activation buffer; without CUDA there is none.
pub fn act_q8_bytes(dt: DType, cols: usize) -> Option<usize> {
    None
}

/// Scratch bytes of the "next" decode attention; without CUDA there is none.
pub fn attention_split_bytes(n_heads: usize, head_dim: usize, n_kv: usize, window: Option<usize>) -> Option<usize> {
    None
}

/// The "next" matvec's host twin of the activation quantization; needs a `cuda` build.
pub fn quantize_act_q8_host(dt: DType, x: &[f32], cols: usize, act: &mut [u8]) -> crate::Result<()> {
    Err(crate::Error::CudaNotBuilt)
}

/// The "next" matvec's host twin; needs a `cuda` build.
pub fn matvec_q8_host(dt: DType, w: &[u8], rows: usize, cols: usize, act: &[u8], y: &mut [f32]) -> crate::Result<()> {
    Err(crate::Error::CudaNotBuilt)
}

/// Expands the launcher list of `launchers.rs` to stubs that return [`crate::Error::CudaNotBuilt`]
/// (their real bodies are dropped unread), with the same names, signatures and docs as in a
/// `cuda` build.
macro_rules! launchers {
    ($($(#[$meta:meta])* pub unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> Result<()> $body:block)*) => {
        $($(#[$meta])* pub unsafe fn $name($($arg: $ty),*) -> Result<()> {
            let _ = ($($arg,)*);
            Err($crate::Error::CudaNotBuilt)
        })*
    };
}

#[path = "launchers.rs"]
mod launchers;
pub use launchers::*;
