//! Devices and what discovery reports about them.

use std::fmt;

use crate::error::Unavailable;
use crate::gpu::{self, Gpu};
use crate::{Error, Result};

/// Where a tensor lives and its ops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Properties of a CUDA device, read when it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The CUDA device ordinal.
    pub ordinal: usize,
    /// The device name, as the driver reports it.
    pub name: String,
    /// (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    /// Number of streaming multiprocessors.
    pub multiprocessors: u32,
    /// Total device memory in bytes.
    pub total_memory: u64,
    /// Free memory when the device was opened (cuMemGetInfo).
    pub free_memory: u64,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GPU {}: {} (sm_{}{}, {} SMs, {} total, {} free)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.multiprocessors,
            crate::fmt_bytes(self.total_memory),
            crate::fmt_bytes(self.free_memory)
        )
    }
}

/// Options for opening a GPU.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Cap on device memory strata may use (e.g. 6 GiB to emulate a smaller card). The budget
    /// is the smaller of this and the free memory at open time.
    pub memory_cap: Option<u64>,
    /// Cap on pinned host memory. Default: half of MemAvailable at open time.
    pub pinned_cap: Option<u64>,
}

/// The kind of page-locked host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinnedKind {
    /// Write-combined: fast for the GPU to read and the CPU to write once (weight staging);
    /// very slow for the CPU to read.
    WriteCombined,
    /// Ordinary pinned memory, for data the CPU reads back.
    Normal,
}

/// Opens CUDA device `ordinal`, or says why it cannot be used. Never panics, also without a
/// driver or without the `cuda` feature.
///
/// # Errors
/// [`Error::Unavailable`] with the reason (not built, no driver, no device, busy/failed).
pub fn open_gpu(ordinal: usize, options: &GpuOptions) -> Result<Gpu> {
    Gpu::open(ordinal, options)
}

/// How many CUDA devices the driver sees, or why none can be used.
pub fn cuda_device_count() -> Result<usize, Unavailable> {
    gpu::device_count()
}

/// Picks the device a run should use: the first GPU if one can be opened, else the CPU, with
/// the reason the GPU was not used.
pub fn discover(options: &GpuOptions) -> (Device, Option<Gpu>, Option<Unavailable>) {
    match Gpu::open(0, options) {
        Ok(g) => (Device::Cuda(0), Some(g), None),
        Err(Error::Unavailable(why)) => (Device::Cpu, None, Some(why)),
        Err(other) => (Device::Cpu, None, Some(Unavailable::Failed { ordinal: 0, reason: other.to_string() })),
    }
}

/// MemAvailable from /proc/meminfo, in bytes (None where it cannot be read).
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
