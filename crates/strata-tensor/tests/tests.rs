//! strata-tensor tests, one binary with a module per area:
//! - `ops`: every op through tensors, on the CPU and on CUDA (`device_test!` fans each body
//!   out to `<op>::cpu` and `<op>::cuda`), against the kernel crate's CPU reference;
//! - `fused`: the `next` kernel set's fused decode ops (composition on the host, kernels on
//!   CUDA);
//! - `graph`: CUDA graphs of the decode step: attention at a device-held position (cpu and
//!   cuda), capture and replay, captures that must fail;
//! - `paged`: paged attention for a batch of sequences of different lengths (cpu and cuda);
//! - `budget`: the memory accountant (property tests, CPU only);
//! - `device`: discovery without a driver, and CPU work without a GPU;
//! - `memory`: device, pinned and pageable buffers, copies, streams and events, budgets on a
//!   real device, and the `STRATA_NO_PINNED` fallback.

mod support;

mod budget;
mod device;
mod fused;
mod graph;
mod memory;
mod ops;
mod paged;
