//! Host staging memory: pinned (write-combined or normal) when possible, pageable otherwise.
//!
//! Pinned memory is what lets host-to-device copies run asynchronously at full PCIe speed, but
//! pinning is slow and takes RAM from the system, so it is counted against the GPU's pinned
//! budget. When pinning is disabled (`STRATA_NO_PINNED=1`), over budget, or refused by the
//! driver, [`HostBuffer::alloc`] falls back to pageable memory and logs a line saying so;
//! [`HostBuffer::memory`] tells which one a buffer got.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::device::PinnedKind;
use crate::gpu::{DeviceBuffer, Gpu, GpuStream, PinnedBuffer};
use crate::{Error, Result};

/// What kind of memory a [`HostBuffer`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMemory {
    /// Page-locked memory of this kind (fast, asynchronous copies).
    Pinned(PinnedKind),
    /// Ordinary pageable memory (the fallback; copies go through the driver's staging).
    Pageable,
}

enum Inner {
    Pinned(PinnedBuffer),
    Pageable(Vec<u8>),
}

/// Host memory for copies to and from a GPU.
pub struct HostBuffer(Inner);

/// True when `STRATA_NO_PINNED` is set to anything but `0` or empty.
pub fn pinning_disabled() -> bool {
    std::env::var("STRATA_NO_PINNED").is_ok_and(|v| !v.is_empty() && v != "0")
}

static SAID_DISABLED: AtomicBool = AtomicBool::new(false);

impl HostBuffer {
    /// Pageable memory of `bytes` zeros.
    pub fn pageable(bytes: usize) -> HostBuffer {
        HostBuffer(Inner::Pageable(vec![0; bytes]))
    }

    /// `bytes` of host memory for `what`: pinned of `kind` on `gpu` when possible, else
    /// pageable (logged). Without a GPU it is always pageable.
    ///
    /// # Errors
    /// Only driver failures other than running out of pinned memory.
    pub fn alloc(gpu: Option<&Gpu>, bytes: usize, kind: PinnedKind, what: &str) -> Result<HostBuffer> {
        let Some(gpu) = gpu else { return Ok(HostBuffer::pageable(bytes)) };
        if pinning_disabled() {
            if !SAID_DISABLED.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "pinned memory disabled (STRATA_NO_PINNED): host-device copies use pageable memory and are slower"
                );
            }
            return Ok(HostBuffer::pageable(bytes));
        }
        match gpu.alloc_pinned(bytes, kind, what) {
            Ok(p) => Ok(HostBuffer(Inner::Pinned(p))),
            Err(e @ Error::OutOfMemory { .. }) => {
                log::warn!("{e}; using pageable memory for {what} instead (slower copies)");
                Ok(HostBuffer::pageable(bytes))
            }
            Err(e) => Err(e),
        }
    }

    /// What kind of memory the buffer holds.
    pub fn memory(&self) -> HostMemory {
        match &self.0 {
            Inner::Pinned(p) => HostMemory::Pinned(p.kind()),
            Inner::Pageable(_) => HostMemory::Pageable,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Pinned(p) => p.len(),
            Inner::Pageable(v) => v.len(),
        }
    }

    /// True when the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, once every copy that used them is done.
    pub fn as_slice(&self) -> Result<&[u8]> {
        match &self.0 {
            Inner::Pinned(p) => p.as_slice(),
            Inner::Pageable(v) => Ok(v),
        }
    }

    /// The bytes for writing, once every copy that used them is done.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        match &mut self.0 {
            Inner::Pinned(p) => p.as_mut_slice(),
            Inner::Pageable(v) => Ok(v),
        }
    }

    /// Copies `range` of this buffer to `dst` at `dst_offset` on stream `s`: asynchronous from
    /// pinned memory, staged by the driver from pageable memory.
    pub fn copy_to_device(
        &self,
        range: Range<usize>,
        dst: &mut DeviceBuffer,
        dst_offset: usize,
        s: &GpuStream,
    ) -> Result<()> {
        match &self.0 {
            Inner::Pinned(p) => dst.upload_pinned(dst_offset, p, range, s),
            Inner::Pageable(v) => {
                let src = v.get(range.clone()).ok_or_else(|| {
                    Error::shape(
                        "copy",
                        format!(
                            "range {}..{} is outside the {} bytes of the host buffer",
                            range.start,
                            range.end,
                            v.len()
                        ),
                    )
                })?;
                dst.upload(dst_offset, src, s)
            }
        }
    }

    /// Copies from `src` at `src_offset` into `range` of this buffer on stream `s`.
    pub fn copy_from_device(
        &mut self,
        range: Range<usize>,
        src: &DeviceBuffer,
        src_offset: usize,
        s: &GpuStream,
    ) -> Result<()> {
        match &mut self.0 {
            Inner::Pinned(p) => src.download_pinned(src_offset, p, range, s),
            Inner::Pageable(v) => {
                let len = v.len();
                let dst = v.get_mut(range.clone()).ok_or_else(|| {
                    Error::shape(
                        "copy",
                        format!("range {}..{} is outside the {len} bytes of the host buffer", range.start, range.end),
                    )
                })?;
                src.download(src_offset, dst, s)
            }
        }
    }
}
