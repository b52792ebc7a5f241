//! strata-kernels tests, in one binary (one link) with a module per area.
//!
//! - `ops`: every op, CPU reference against a naive f64 oracle and CUDA against the CPU
//!   reference, fanned out by `device_test!` into `<op>::cpu` and `<op>::cuda`;
//! - `quant`: quantization round trips and the block layouts;
//! - `dequant`: the dequantizer bit for bit against gguf-py's, on random blocks and real rows;
//! - `fast`: the fast CPU path (quantized activations, SIMD) against the reference;
//! - `fast_types`: the same for the 8-bit kernels of Q5_0, Q5_1, IQ4_NL, the K-quants, IQ4_XS;
//! - `matvec_q8`: the `next` GPU matvec's arithmetic through its host twins (no GPU needed);
//! - `attention_mma`: a host model of the `next` tensor-core prefill attention's tiles and
//!   fragments against the CPU reference (no GPU needed);
//! - `model`: the dequantizer against known values of the real default model.
//!
//! CUDA tests that cannot run print `skipped: ...` and pass; the binary prints how many were
//! skipped and why when it exits.

mod support;

mod attention_mma;
mod dequant;
mod fast;
mod fast_types;
mod matvec_q8;
mod model;
mod ops;
mod oracle;
mod quant;
mod team;
