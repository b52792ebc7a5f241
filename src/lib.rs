//! strata-kernels: the low-level kernel crate of strata.
//!
//! Every op a llama-family decoder needs exists twice: as hand-written CUDA C (the launchers
//! declared in `kernels/strata.h`, called through [`cuda`]) and as a plain rayon CPU reference
//! ([`cpu`]) with the same semantics and argument order. The CPU reference is the oracle the
//! CUDA kernels are tested against, and the CPU path when no GPU is present.
//!
//! - [`DType`] and the quant block layouts ([`BlockQ8_0`], [`BlockQ4_0`], [`BlockQ4_1`],
//!   [`BlockQ5_0`], [`BlockQ5_1`], the K-quant super-blocks [`BlockQ2K`] … [`BlockQ6K`],
//!   [`BlockIq4Nl`], [`BlockIq4Xs`]) mirror GGUF's and the C header's;
//! - [`quant`] quantizes and dequantizes blocks (tests, synthetic models);
//! - [`check`] compares results against a reference with a named [`check::Tolerance`], and
//!   counts and reports the tests that could not run (`check::skip`);
//! - [`default_model_path`] finds the default model file (for the CLI and every test);
//! - [`cuda`] holds the `unsafe` launcher calls; built without the `cuda` feature, the same
//!   functions return [`Error::CudaNotBuilt`].

pub mod check;
pub mod cpu;
mod dtype;
mod error;
mod model_path;
pub mod quant;

#[cfg_attr(feature = "cuda", path = "cuda/mod.rs")]
#[cfg_attr(not(feature = "cuda"), path = "cuda/disabled.rs")]
pub mod cuda;

pub use dtype::{
    BlockIq4Nl, BlockIq4Xs, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, DType, IQ4_VALUES, K_SCALE_SIZE, QK, QK_K, RopeLayout,
};
pub use error::{Error, Result};
pub use model_path::{DEFAULT_MODEL, MODEL_ENV, default_model_path};
