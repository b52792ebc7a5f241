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
    /// Opens device `ordinal`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when there is no driver, no such device, or it cannot be used.
    pub fn open(ordinal: usize, options: &GpuOptions) -> Result<Gpu> {
        Err(Error::Unavailable(Unavailable::NotBuilt))
    }
    /// The device's properties, read when it was opened.
    pub fn info(&self) -> &DeviceInfo {
        match self.0 {}
    }
    /// The device-memory budget every [`DeviceBuffer`] is counted against.
    pub fn budget(&self) -> &MemoryBudget {
        match self.0 {}
    }
    /// The budget's room for new work, after returning blocks kept for reuse to the driver.
    pub fn available_memory(&self) -> u64 {
        match self.0 {}
    }
    /// The pinned host-memory budget every [`PinnedBuffer`] is counted against.
    pub fn pinned_budget(&self) -> &MemoryBudget {
        match self.0 {}
    }
    /// Free device memory now (all processes), from cuMemGetInfo.
    pub fn free_memory(&self) -> Result<u64> {
        match self.0 {}
    }
    /// Waits for all work on the device (for tools and tests; strata's own paths wait on
    /// events instead).
    pub fn synchronize(&self) -> Result<()> {
        match self.0 {}
    }
    /// A new non-blocking stream, named `name` in Nsight timelines.
    pub fn stream(&self, name: &str) -> Result<GpuStream> {
        match self.0 {}
    }
    /// Allocates `bytes` of device memory for `what`, counted against the budget.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if the budget or the device has no room (nothing leaks).
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        match self.0 {}
    }
    /// Allocates `bytes` of page-locked host memory of `kind`, counted against the pinned
    /// budget. Pinning is slow (~1-2 GB/s): allocate once at load time and reuse.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if the pinned budget or the driver refuses.
    pub fn alloc_pinned(&self, bytes: usize, kind: PinnedKind, what: &str) -> Result<PinnedBuffer> {
        match self.0 {}
    }
}

/// A CUDA stream; cannot exist in this build.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStream(Infallible);

#[allow(dead_code)]
impl GpuStream {
    /// The stream's name (as Nsight shows it).
    pub fn name(&self) -> &str {
        match self.0 {}
    }
    /// The device the stream belongs to.
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    /// Records an event (with timing) after the work enqueued so far.
    pub fn record(&self) -> Result<Event> {
        match self.0 {}
    }
    /// Makes later work on this stream wait for `event`.
    pub fn wait(&self, event: &Event) -> Result<()> {
        match self.0 {}
    }
    /// Blocks the host until this stream's work is done.
    pub fn synchronize(&self) -> Result<()> {
        match self.0 {}
    }
    /// The raw handle for kernel launches; binds the context to this thread.
    pub(crate) fn raw(&self) -> Result<strata_kernels::cuda::Stream> {
        match self.0 {}
    }
    /// Runs `f`, capturing the launches it enqueues on this stream into a CUDA graph.
    pub fn capture<R, E: From<Error>>(&self, f: impl FnOnce() -> Result<R, E>) -> Result<(R, GpuGraph), E> {
        match self.0 {}
    }
}

/// A captured CUDA graph; cannot exist in this build.
#[derive(Debug)]
pub struct GpuGraph(Infallible);

impl GpuGraph {
    /// Enqueues the captured launches on the capturing stream.
    pub fn launch(&mut self) -> Result<()> {
        match self.0 {}
    }
    /// Kernel launches captured.
    pub fn launches(&self) -> usize {
        match self.0 {}
    }
    /// The stream it was captured on and runs on.
    pub fn stream(&self) -> &GpuStream {
        match self.0 {}
    }
    /// Whether the graph reads or writes `buf`'s memory.
    pub fn holds(&self, buf: &DeviceBuffer) -> bool {
        match self.0 {}
    }
}

/// A CUDA event; cannot exist in this build.
pub struct Event(Infallible);

impl Event {
    /// Milliseconds from this event to `end` (both must have completed or will be waited for).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        match self.0 {}
    }
    /// Blocks the host until the event has completed.
    pub fn synchronize(&self) -> Result<()> {
        match self.0 {}
    }
    /// Whether the event has completed (does not block).
    pub fn is_complete(&self) -> bool {
        match self.0 {}
    }
}

/// Device memory; cannot exist in this build.
pub struct DeviceBuffer(Infallible);

#[allow(dead_code)]
impl DeviceBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self.0 {}
    }
    /// True when the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        match self.0 {}
    }
    /// The device that holds the memory.
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    /// The device address for work on `s`, after ordering `s` behind the previous user.
    /// Call [`DeviceBuffer::used_by`] once the work is enqueued.
    pub(crate) fn ptr_for(&self, s: &GpuStream) -> Result<u64> {
        match self.0 {}
    }
    pub(crate) fn used_by(&self, s: &GpuStream) {
        match self.0 {}
    }
    /// Copies host bytes into the buffer at `offset`, returning when the copy is done, so the
    /// source may be reused or freed as soon as this returns, whatever memory it is in.
    ///
    /// A `&[u8]` can point into page-locked memory (a [`PinnedBuffer::as_slice`]), and from
    /// there the driver copies truly asynchronously: returning before the copy is done would let
    /// the caller overwrite or free bytes still being read, with nothing recording the use. So
    /// this waits for the stream; for a copy that overlaps other work, use
    /// [`DeviceBuffer::upload_pinned`], which takes the [`PinnedBuffer`] itself and records the
    /// use on it (its next host access waits).
    pub fn upload(&mut self, offset: usize, src: &[u8], s: &GpuStream) -> Result<()> {
        match self.0 {}
    }
    /// Copies `src_range` of a pinned buffer into this buffer at `offset`, asynchronously.
    /// Both buffers remember the stream, so later host access to `src` waits for the copy.
    pub fn upload_pinned(
        &mut self,
        offset: usize,
        src: &PinnedBuffer,
        src_range: Range<usize>,
        s: &GpuStream,
    ) -> Result<()> {
        match self.0 {}
    }
    /// Copies bytes from `offset` into `dst`, returning when they are there.
    pub fn download(&self, offset: usize, dst: &mut [u8], s: &GpuStream) -> Result<()> {
        match self.0 {}
    }
    /// Copies from `offset` into `dst_range` of a pinned buffer, asynchronously; reading the
    /// pinned buffer on the host waits for it.
    pub fn download_pinned(
        &self,
        offset: usize,
        dst: &mut PinnedBuffer,
        dst_range: Range<usize>,
        s: &GpuStream,
    ) -> Result<()> {
        match self.0 {}
    }
    /// Copies `src_range` of another device buffer (same GPU) to `offset`.
    pub fn copy_from(
        &mut self,
        offset: usize,
        src: &DeviceBuffer,
        src_range: Range<usize>,
        s: &GpuStream,
    ) -> Result<()> {
        match self.0 {}
    }
    /// Sets every byte to `byte` (0xFF poisons f32 data with NaN).
    pub fn fill(&mut self, byte: u8, s: &GpuStream) -> Result<()> {
        match self.0 {}
    }
    /// A buffer over `range` of this one, sharing the memory (e.g. one tensor inside a
    /// streamed layer's slot). Its first user is ordered after this buffer's last user;
    /// after that, order between the two is the caller's (events), as for two buffers.
    ///
    /// # Errors
    /// If the range is outside the buffer.
    pub fn view(&self, range: Range<usize>) -> Result<DeviceBuffer> {
        match self.0 {}
    }
}

/// Pinned host memory; cannot exist in this build.
pub struct PinnedBuffer(Infallible);

impl PinnedBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self.0 {}
    }
    /// True when the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        match self.0 {}
    }
    /// Write-combined or normal pinned memory.
    pub fn kind(&self) -> PinnedKind {
        match self.0 {}
    }
    /// The device the memory was pinned for.
    pub fn gpu(&self) -> &Gpu {
        match self.0 {}
    }
    /// The bytes, after the last copy that used them is done.
    pub fn as_slice(&self) -> Result<&[u8]> {
        match self.0 {}
    }
    /// The bytes for writing, after every copy that used them is done.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        match self.0 {}
    }
}
