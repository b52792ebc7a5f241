//! strata-tensor: the only safe door to the GPU for the rest of strata.
//!
//! - [`open_gpu`] / [`discover`] find a CUDA device or say why there is none (built without
//!   `cuda`, no NVIDIA driver, no device, busy/failed); never a panic.
//! - Every device allocation goes through a [`MemoryBudget`] (the free memory, or a lower cap
//!   to emulate a smaller card); going over is a recoverable [`Error::OutOfMemory`].
//! - [`DeviceBuffer`], [`PinnedBuffer`] (write-combined or normal) and [`HostBuffer`] (pinned,
//!   or pageable as the fallback) carry the stream that last used them, so cross-stream order
//!   and host reads need no global synchronize.
//! - [`GpuStream`] / [`Event`]: non-blocking streams, events, timing; [`GpuGraph`]: a CUDA
//!   graph captured from a stream's launches and replayed.
//! - [`Tensor`]: dtype, shape, storage on the host (owned, or a shared view such as a memory
//!   map) or on a GPU; [`ops`] dispatches every kernel-crate op to the CPU reference or CUDA.
//! - [`nvtx`]: ranges and stream names for Nsight.
//! - [`hostmem`]: the host memory this process may still take (MemAvailable, the cgroup limit,
//!   `ulimit -v`), for refusing a plan before allocating it.
//!
//! CUDA is reached through `cudarc` (the driver is loaded at run time, so a `cuda` build starts
//! on machines without one) and through the kernel crate's launchers.

#![warn(missing_docs)]

mod budget;
mod device;
mod dtype;
mod error;
#[cfg_attr(feature = "cuda", path = "gpu/mod.rs")]
#[cfg_attr(not(feature = "cuda"), path = "gpu/disabled.rs")]
mod gpu;
mod host;
pub mod hostmem;
mod kernel_call;
pub mod nvtx;
pub mod ops;
mod tensor;

pub use budget::{MemoryBudget, Reservation};
pub use device::{Device, DeviceInfo, GpuOptions, PinnedKind, cuda_device_count, discover, mem_available, open_gpu};
pub use dtype::DType;
pub use error::{Error, Result, Unavailable, fmt_bytes};
pub use gpu::{DeviceBuffer, Event, Gpu, GpuGraph, GpuStream, PinnedBuffer};
pub use host::{HostBuffer, HostMemory, pinning_disabled};
pub use strata_kernels::RopeLayout;
pub use tensor::{HostData, SharedBytes, Storage, Stream, Tensor};
