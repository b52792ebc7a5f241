//! Stand-in for the CUDA module in a build without the `cuda` feature: the same types and
//! signatures, none of which can be constructed ([`Gpu::open`] says why), so code above is
//! written once and takes the CPU path at run time.

#![allow(clippy::missing_errors_doc, unused_variables)]

use std::convert::Infallible;
use std::ops::Range;

use crate::device::{DeviceInfo, GpuOptions, PinnedKind};
use crate::error::Unavailable;
use crate::{Error, MemoryBudget, Result};

/// Kernel launches; unreachable without a stream.
pub(crate) fn launch(s: &GpuStream, call: crate::kernel_call::KernelCall<'_>) -> Result<()> {
    match s.0 {}
}

/// Without `cuda` there are no devices.
pub fn device_count() -> Result<usize, Unavailable> {
    Err(Unavailable::NotBuilt)
}

/// An opened CUDA device; cannot exist in this build.
#[derive(Debug, Clone)]
pub struct Gpu(Infallible);

impl Gpu {
    pub fn open(ordinal: usize, options: &GpuOptions) -> Result<Gpu> {
        Err(Error::Unavailable(Unavailable::NotBuilt))
    }
    pub fn info(&self) -> &DeviceInfo {
        match self.0 {}
    }
    pub fn budget(&self) -> &MemoryBudget {
        match self.0 {}
    }
    pub fn pinned_budget(&self) -> &MemoryBudget {
        match self.0 {}
    }
    pub fn free_memory(&self) -> Result<u64> {
        match self.0 {}
    }
    pub fn synchronize(&self) -> Result<()> {
        match self.0 {}
    }
    pub fn stream(&self, name: &str) -> Result<GpuStream> {
        match self.0 {}
    }
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        match self.0 {}
    }
    pub fn alloc_pinned(&self, bytes: usize, kind: PinnedKind, what: &str) -> Result<PinnedBuffer> {
        match self.0 {}
    }
}

/// A CUDA stream; cannot exist in this build.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStream(Infallible);

#[allow(dead_code)]
impl GpuStream {
    pub fn name(&self) -> &str {
        match self.0 {}
    }
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    pub fn record(&self) -> Result<Event> {
        match self.0 {}
    }
    pub fn wait(&self, event: &Event) -> Result<()> {
        match self.0 {}
    }
    pub fn synchronize(&self) -> Result<()> {
        match self.0 {}
    }
    pub(crate) fn raw(&self) -> Result<strata_kernels::cuda::Stream> {
        match self.0 {}
    }
}

/// A CUDA event; cannot exist in this build.
pub struct Event(Infallible);

impl Event {
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        match self.0 {}
    }
    pub fn synchronize(&self) -> Result<()> {
        match self.0 {}
    }
    pub fn is_complete(&self) -> bool {
        match self.0 {}
    }
}

/// Device memory; cannot exist in this build.
pub struct DeviceBuffer(Infallible);

#[allow(dead_code)]
impl DeviceBuffer {
    pub fn len(&self) -> usize {
        match self.0 {}
    }
    pub fn is_empty(&self) -> bool {
        match self.0 {}
    }
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    pub(crate) fn ptr_for(&self, s: &GpuStream) -> Result<u64> {
        match self.0 {}
    }
    pub(crate) fn used_by(&self, s: &GpuStream) {
        match self.0 {}
    }
    pub fn upload(&mut self, offset: usize, src: &[u8], s: &GpuStream) -> Result<()> {
        match self.0 {}
    }
    pub fn upload_pinned(
        &mut self,
        offset: usize,
        src: &PinnedBuffer,
        src_range: Range<usize>,
        s: &GpuStream,
    ) -> Result<()> {
        match self.0 {}
    }
    pub fn download(&self, offset: usize, dst: &mut [u8], s: &GpuStream) -> Result<()> {
        match self.0 {}
    }
    pub fn download_pinned(
        &self,
        offset: usize,
        dst: &mut PinnedBuffer,
        dst_range: Range<usize>,
        s: &GpuStream,
    ) -> Result<()> {
        match self.0 {}
    }
    pub fn copy_from(
        &mut self,
        offset: usize,
        src: &DeviceBuffer,
        src_range: Range<usize>,
        s: &GpuStream,
    ) -> Result<()> {
        match self.0 {}
    }
    pub fn fill(&mut self, byte: u8, s: &GpuStream) -> Result<()> {
        match self.0 {}
    }
    pub fn view(&self, range: Range<usize>) -> Result<DeviceBuffer> {
        match self.0 {}
    }
}

/// Pinned host memory; cannot exist in this build.
pub struct PinnedBuffer(Infallible);

impl PinnedBuffer {
    pub fn len(&self) -> usize {
        match self.0 {}
    }
    pub fn is_empty(&self) -> bool {
        match self.0 {}
    }
    pub fn kind(&self) -> PinnedKind {
        match self.0 {}
    }
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    pub fn as_slice(&self) -> Result<&[u8]> {
        match self.0 {}
    }
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        match self.0 {}
    }
}
