//! CUDA through cudarc: opening a device, streams, events, device memory, pinned host memory
//! and copies. The `unsafe` code of strata lives here, in the launcher calls of `launch.rs`,
//! in the kernel crate (FFI bindings and the SIMD CPU kernels of `src/cpu/fast`), and in
//! strata-model's file mappings (mmap of model files, `posix_fallocate`); strata-runtime and
//! strata-cli `#![forbid(unsafe_code)]`. Everything above this module uses its safe types.
//!
//! Memory is allocated with the driver API directly (cuMemAlloc / cuMemHostAlloc) so that every
//! allocation is first reserved against a [`MemoryBudget`] and an out-of-memory from the
//! driver becomes the same typed, recoverable error.
//!
//! Ordering across streams: each buffer remembers the stream that last used it. When another
//! stream uses it, that stream first waits on an event recorded on the previous one; when the
//! host reads or frees it, it waits for that stream's work. So a weight slot filled on the copy
//! stream is read by the compute stream only after the copy, and refilled only after the
//! compute, with no global synchronize.
//!
//! Reuse of temporaries (the `next` kernel set, `STRATA_GPU_KERNELS=next`, read when the device
//! is opened): a freed allocation goes back to the device's [`Pool`] instead of to the driver,
//! so a pass's activations, which have the same sizes token after token, are allocated once
//! per session instead of once per op (cuMemAlloc, and cuMemFree, which synchronizes the whole
//! device). Freeing then waits for nothing on the host: each view's last user records an event,
//! and the block's next owner orders its first stream after those events. The pooled blocks stay
//! counted against the budget; an allocation the budget or the driver refuses empties the pool
//! and is tried once more, so the pool never turns into an out-of-memory error.
//!
//! No lock per buffer per launch: a launch orders its stream after each buffer's last user and
//! records itself as the new one. The common case, a buffer used again by the stream that used
//! it last (every buffer of a decode step), reads one atomic per step ([`LastUse`],
//! [`Allocation`]'s pending flag) where it took three mutexes. Locks remain where streams change
//! hands, on allocation and free, and on the stream's scratch for the launches that use it: two
//! kernels enqueued by one launch (quantize then multiply, partials then combine) share it, and
//! another thread launching on the same stream between them would overwrite it (the test
//! binaries share one stream across threads), so its uncontended mutex stays. A CUDA graph
//! replay takes none of these.
//!
//! CUDA graphs ([`GpuStream::capture`], `graph.rs`): the launches of a closure are captured
//! once and replayed; see that module for what a replay relies on.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError, result};

mod graph;
mod launch;
pub use graph::GpuGraph;
pub(crate) use launch::launch;

use crate::device::{DeviceInfo, GpuOptions, PinnedKind};
use crate::error::Unavailable;
use crate::{Error, MemoryBudget, Reservation, Result};

fn driver(what: impl Into<String>, e: DriverError) -> Error {
    let code = e.error_name().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        return Error::OutOfMemory {
            what: what.into(),
            budget: "device (driver)".into(),
            requested: 0,
            cap: 0,
            in_use: 0,
            peak: 0,
        };
    }
    Error::Driver { what: what.into(), code }
}

fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda; cudarc panics on first use when it is missing.
    unsafe { sys::is_culib_present() }
}

/// How many CUDA devices the driver sees.
pub fn device_count() -> Result<usize, Unavailable> {
    if !driver_present() {
        return Err(Unavailable::NoDriver);
    }
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) => Ok(n.max(0) as usize),
        Ok(Err(e)) if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => Ok(0),
        Ok(Err(e)) => Err(Unavailable::Failed { ordinal: 0, reason: format!("{e:?}") }),
        Err(_) => Err(Unavailable::NoDriver),
    }
}

struct GpuInner {
    ctx: Arc<CudaContext>,
    info: DeviceInfo,
    budget: MemoryBudget,
    pinned: MemoryBudget,
    /// Freed blocks kept for reuse; `None` with the proven kernel set (every free goes to the
    /// driver, as before).
    pool: Option<Pool>,
}

/// Freed device blocks of one GPU, by exact size (see the module doc).
struct Pool {
    free: Mutex<Vec<Pooled>>,
}

/// At most this many freed blocks are kept; the oldest goes to the driver beyond it.
const POOL_BLOCKS: usize = 512;

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A kept block of exactly `bytes`, if any (the most recently freed: likeliest in cache).
    fn take(&self, bytes: usize) -> Option<Pooled> {
        let mut free = self.lock();
        let i = free.iter().rposition(|p| p.bytes == bytes)?;
        Some(free.remove(i))
    }

    fn put(&self, p: Pooled) {
        let evicted = {
            let mut free = self.lock();
            free.push(p);
            (free.len() > POOL_BLOCKS).then(|| free.remove(0))
        };
        // Freed outside the lock (it may wait for its last users).
        evicted.into_iter().for_each(Pooled::release);
    }

    /// Returns every kept block to the driver; true if there was any.
    fn trim(&self) -> bool {
        let all = std::mem::take(&mut *self.lock());
        let any = !all.is_empty();
        all.into_iter().for_each(Pooled::release);
        any
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.trim();
    }
}

/// A freed block waiting for reuse: its reservation is still held, and `after` are the events
/// its last users recorded (its next owner's first stream waits for them).
struct Pooled {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    res: Reservation,
    after: Vec<Event>,
    ctx: Arc<CudaContext>,
}

impl Pooled {
    /// Back to the driver (its reservation with it): its last users must be done first. A
    /// failed wait or free leaks the block rather than crash.
    fn release(self) {
        if self.after.iter().all(|e| e.synchronize().is_ok()) && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by cuMemAlloc in this context; no work pending on it (waited
            // above); owned by this entry alone (taken out of the pool), freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// An opened CUDA device (cheap to clone): its primary context, properties and budgets.
#[derive(Clone)]
pub struct Gpu(Arc<GpuInner>);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.0.info.name)
    }
}

impl Gpu {
    /// Opens device `ordinal`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when there is no driver, no such device, or it cannot be used.
    pub fn open(ordinal: usize, options: &GpuOptions) -> Result<Gpu> {
        let count = device_count().map_err(Error::Unavailable)?;
        if ordinal >= count {
            return Err(Error::Unavailable(Unavailable::NoDevice { ordinal, count }));
        }
        let fail = |reason: String| Error::Unavailable(Unavailable::Failed { ordinal, reason });
        let ctx = match std::panic::catch_unwind(|| CudaContext::new(ordinal)) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if e.0 == sys::cudaError_enum::CUDA_ERROR_DEVICE_UNAVAILABLE => {
                return Err(fail("busy (another process holds it in exclusive mode)".into()));
            }
            Ok(Err(e)) => return Err(fail(format!("{e:?}"))),
            Err(_) => return Err(fail("the CUDA driver failed while creating a context".into())),
        };
        // strata tracks cross-stream order itself (see the module doc).
        // SAFETY: no cudarc-managed allocation of this context relies on its event tracking:
        // strata allocates through the driver API below.
        unsafe { ctx.disable_event_tracking() };
        let attr = |a| ctx.attribute(a).map_err(|e| fail(format!("{e:?}")));
        let (free, total) = ctx.mem_get_info().map_err(|e| fail(format!("{e:?}")))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
            compute_capability: (
                attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            multiprocessors: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(0) as u32,
            total_memory: total as u64,
            free_memory: free as u64,
        };
        let cap = options.memory_cap.map_or(free as u64, |c| c.min(free as u64));
        let pinned_cap =
            options.pinned_cap.unwrap_or_else(|| crate::device::mem_available().map_or(8 << 30, |a| a / 2));
        let pool = matches!(crate::ops::gpu_kernels(), Ok(crate::ops::GpuKernels::Next))
            .then(|| Pool { free: Mutex::new(Vec::new()) });
        Ok(Gpu(Arc::new(GpuInner {
            ctx,
            budget: MemoryBudget::new(&format!("GPU {ordinal}"), cap),
            pinned: MemoryBudget::new("pinned host", pinned_cap),
            info,
            pool,
        })))
    }

    /// The device's properties, read when it was opened.
    pub fn info(&self) -> &DeviceInfo {
        &self.0.info
    }

    /// The device-memory budget every [`DeviceBuffer`] is counted against.
    pub fn budget(&self) -> &MemoryBudget {
        &self.0.budget
    }

    /// The budget's room for new work (what a plan may use): blocks the `next` kernel set
    /// keeps for reuse are returned to the driver first, so a session planned after another
    /// one sees the memory that one freed.
    pub fn available_memory(&self) -> u64 {
        if let Some(pool) = &self.0.pool {
            pool.trim();
        }
        self.0.budget.available()
    }

    /// The pinned host-memory budget every [`PinnedBuffer`] is counted against.
    pub fn pinned_budget(&self) -> &MemoryBudget {
        &self.0.pinned
    }

    fn bind(&self) -> Result<()> {
        self.0.ctx.bind_to_thread().map_err(|e| driver("binding the CUDA context", e))
    }

    /// Free device memory now (all processes), from cuMemGetInfo.
    pub fn free_memory(&self) -> Result<u64> {
        self.0.ctx.mem_get_info().map(|(f, _)| f as u64).map_err(|e| driver("cuMemGetInfo", e))
    }

    /// Waits for all work on the device (for tools and tests; strata's own paths wait on
    /// events instead).
    pub fn synchronize(&self) -> Result<()> {
        self.0.ctx.synchronize().map_err(|e| driver("synchronizing the device", e))
    }

    /// A new non-blocking stream, named `name` in Nsight timelines.
    pub fn stream(&self, name: &str) -> Result<GpuStream> {
        let s = self.0.ctx.new_stream().map_err(|e| driver(format!("creating stream `{name}`"), e))?;
        crate::nvtx::name_stream(s.cu_stream().cast(), name);
        Ok(GpuStream(Arc::new(StreamInner {
            gpu: self.clone(),
            s,
            name: name.to_string(),
            scratch: StreamScratch::default(),
        })))
    }

    /// Allocates `bytes` of device memory for `what`, counted against the budget (with the
    /// `next` kernel set, a kept block of the same size when there is one: see the module doc).
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if the budget or the device has no room (nothing leaks).
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        graph::refuse_in_capture(what)?;
        let Some(pool) = &self.0.pool else { return self.alloc_new(bytes, what) };
        if bytes > 0
            && let Some(Pooled { ptr, res, after, .. }) = pool.take(bytes)
        {
            return Ok(self.buffer(ptr, bytes, res, after));
        }
        match self.alloc_new(bytes, what) {
            Err(Error::OutOfMemory { .. }) if pool.trim() => self.alloc_new(bytes, what),
            r => r,
        }
    }

    fn alloc_new(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        let res = self.0.budget.reserve(bytes as u64, what)?;
        self.bind()?;
        let ptr = if bytes == 0 {
            0
        } else {
            // SAFETY: plain allocation in the bound context; freed exactly once (Allocation's
            // or Pooled's Drop).
            unsafe { result::malloc_sync(bytes) }.map_err(|e| oom_detail(driver(what, e), &res))?
        };
        Ok(self.buffer(ptr, bytes, res, Vec::new()))
    }

    fn buffer(&self, ptr: sys::CUdeviceptr, bytes: usize, res: Reservation, after: Vec<Event>) -> DeviceBuffer {
        let pending = AtomicBool::new(!after.is_empty());
        let alloc =
            Arc::new(Allocation { ptr, bytes, gpu: self.clone(), res: Some(res), after: Mutex::new(after), pending });
        DeviceBuffer { alloc, offset: 0, bytes, gpu: self.clone(), last: LastUse::default() }
    }

    /// Allocates `bytes` of page-locked host memory of `kind`, counted against the pinned
    /// budget. Pinning is slow (~1-2 GB/s): allocate once at load time and reuse.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if the pinned budget or the driver refuses.
    pub fn alloc_pinned(&self, bytes: usize, kind: PinnedKind, what: &str) -> Result<PinnedBuffer> {
        graph::refuse_in_capture(what)?;
        let res = self.0.pinned.reserve(bytes as u64, what)?;
        self.bind()?;
        let flags = match kind {
            PinnedKind::WriteCombined => sys::CU_MEMHOSTALLOC_WRITECOMBINED | sys::CU_MEMHOSTALLOC_PORTABLE,
            PinnedKind::Normal => sys::CU_MEMHOSTALLOC_PORTABLE,
        };
        let ptr = if bytes == 0 {
            std::ptr::null_mut()
        } else {
            // SAFETY: plain allocation; freed exactly once in Drop.
            unsafe { result::malloc_host(bytes, flags) }.map_err(|e| oom_detail(driver(what, e), &res))? as *mut u8
        };
        Ok(PinnedBuffer { ptr, bytes, kind, gpu: self.clone(), last: LastUse::default(), _res: res })
    }
}

/// Fills the budget numbers into an out-of-memory error the driver reported.
fn oom_detail(e: Error, res: &Reservation) -> Error {
    match e {
        Error::OutOfMemory { what, .. } => {
            let b = res.budget();
            Error::OutOfMemory {
                what: format!("{what} (the device itself is out of memory: another process may hold it)"),
                budget: b.name().to_string(),
                requested: res.bytes(),
                cap: b.cap(),
                in_use: b.used() - res.bytes(),
                peak: b.peak(),
            }
        }
        e => e,
    }
}

struct StreamInner {
    gpu: Gpu,
    s: Arc<CudaStream>,
    name: String,
    /// Scratch memory for work on this stream only (the `next` matvec's 8-bit activations,
    /// the flash-decoding partials).
    scratch: StreamScratch,
}

/// A stream's scratch: allocated at first use, grown (at least doubled) when too small, so a
/// pass allocates nothing once the first has run. A grown scratch keeps its earlier blocks
/// until the stream is dropped (at most as many bytes again as the current one), so an address
/// handed out stays valid for the stream's life: a captured CUDA graph that holds the stream
/// may keep using it, and growing never waits for the stream. Never marked as used by the
/// stream (its users are ordered by the stream itself), which would make the stream own
/// itself.
#[derive(Default)]
struct StreamScratch {
    /// Every block the stream has had, the current (largest) last; held by a launch that uses
    /// it (see the module doc).
    blocks: Mutex<Vec<DeviceBuffer>>,
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        // The scratch's users are this stream's kernels: let them finish before it is freed.
        let held = self.scratch.blocks.get_mut().map(|b| !b.is_empty()).unwrap_or(true);
        if held {
            let _ = self.s.synchronize();
        }
    }
}

/// A non-blocking CUDA stream (cheap to clone).
#[derive(Clone)]
pub struct GpuStream(Arc<StreamInner>);

impl std::fmt::Debug for GpuStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuStream({})", self.0.name)
    }
}

impl PartialEq for GpuStream {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl GpuStream {
    /// An identity for [`LastUse`]: the stream's address, unique while it is alive (and a
    /// `LastUse` that holds the id holds the stream).
    fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// The stream's name (as Nsight shows it).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The device the stream belongs to.
    pub fn gpu(&self) -> &Gpu {
        &self.0.gpu
    }

    /// Records an event (with timing) after the work enqueued so far.
    pub fn record(&self) -> Result<Event> {
        let e = self
            .0
            .s
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver("recording an event", e))?;
        Ok(Event(e))
    }

    /// Makes later work on this stream wait for `event`.
    pub fn wait(&self, event: &Event) -> Result<()> {
        self.0.s.wait(&event.0).map_err(|e| driver(format!("stream `{}` waiting on an event", self.0.name), e))
    }

    /// Blocks the host until this stream's work is done.
    pub fn synchronize(&self) -> Result<()> {
        self.0.s.synchronize().map_err(|e| driver(format!("synchronizing stream `{}`", self.0.name), e))
    }

    /// At least `bytes` of this stream's scratch memory (16-byte aligned; counted against the
    /// budget). Only work enqueued on this stream may use it; the address stays valid while
    /// the stream lives (see [`StreamScratch`]).
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the scratch has to grow and the budget has no room.
    pub(crate) fn scratch(&self, bytes: usize) -> Result<Scratch<'_>> {
        /// The smallest scratch: the activations of a 64k-column matvec, so that it never grows
        /// for ordinary shapes.
        const MIN: usize = 96 << 10;
        let mut blocks = self.0.scratch.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let len = blocks.last().map_or(0, DeviceBuffer::len);
        if len < bytes.max(1) {
            let size = bytes.max(MIN).max(2 * len).next_multiple_of(4096);
            let b = self.0.gpu.alloc(size, &format!("scratch of stream `{}`", self.0.name))?;
            // A block from the pool: this stream waits for its previous owner's users once.
            b.ptr_for(self)?;
            blocks.push(b);
        }
        match blocks.last() {
            Some(b) => Ok(Scratch { ptr: b.alloc.ptr + b.offset as u64, _blocks: blocks }),
            None => Err(Error::shape("scratch", "no scratch buffer")),
        }
    }

    /// The raw handle for kernel launches; binds the context to this thread.
    pub(crate) fn raw(&self) -> Result<strata_kernels::cuda::Stream> {
        self.0.gpu.bind()?;
        Ok(self.0.s.cu_stream().cast())
    }
}

/// A stream's scratch memory, held (no other thread can take it) while this lives; the memory
/// itself stays allocated while the stream lives.
pub(crate) struct Scratch<'a> {
    /// Its device address.
    pub(crate) ptr: u64,
    _blocks: std::sync::MutexGuard<'a, Vec<DeviceBuffer>>,
}

/// A CUDA event recorded on a stream.
pub struct Event(CudaEvent);

impl Event {
    /// Milliseconds from this event to `end` (both must have completed or will be waited for).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        self.0.elapsed_ms(&end.0).map_err(|e| driver("reading event times", e))
    }

    /// Blocks the host until the event has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.0.synchronize().map_err(|e| driver("waiting for an event", e))
    }

    /// Whether the event has completed (does not block).
    pub fn is_complete(&self) -> bool {
        self.0.is_complete()
    }
}

/// The stream that last used a buffer (see the module doc). `id` mirrors the stream held (its
/// [`GpuStream::id`], 0 for none) and changes only under the lock, with it; so the common case,
/// a buffer used again by the stream that used it last, reads one atomic and takes no lock.
#[derive(Default)]
struct LastUse {
    id: AtomicUsize,
    stream: Mutex<Option<GpuStream>>,
}

impl LastUse {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<GpuStream>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tracker starting at `s` as the last user.
    fn from_stream(s: Option<GpuStream>) -> LastUse {
        let id = s.as_ref().map_or(0, GpuStream::id);
        LastUse { id: AtomicUsize::new(id), stream: Mutex::new(s) }
    }

    /// Orders `s` after the previous user's work.
    fn before(&self, s: &GpuStream) -> Result<()> {
        if self.id.load(Ordering::Acquire) == s.id() {
            return Ok(());
        }
        let prev = self.lock().clone();
        if let Some(prev) = prev
            && prev != *s
        {
            s.wait(&prev.record()?)?;
        }
        Ok(())
    }

    fn after(&self, s: &GpuStream) {
        if self.id.load(Ordering::Acquire) == s.id() {
            return;
        }
        let mut last = self.lock();
        *last = Some(s.clone());
        self.id.store(s.id(), Ordering::Release);
    }

    /// Blocks the host until the last user's work is done.
    fn host_wait(&self) -> Result<()> {
        let prev = {
            let mut last = self.lock();
            self.id.store(0, Ordering::Release);
            last.take()
        };
        if let Some(prev) = prev {
            prev.record()?.synchronize()?;
        }
        Ok(())
    }
}

/// One cuMemAlloc block, freed (or, with a pool, kept for reuse) when the last buffer viewing
/// it is dropped.
struct Allocation {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    gpu: Gpu,
    /// Taken by the pool when the block is kept.
    res: Option<Reservation>,
    /// With a pool: events the block's first stream must wait for (its previous owner's last
    /// users, until the first use; then the views' last users, recorded as they drop).
    after: Mutex<Vec<Event>>,
    /// Whether `after` may hold events: set under its lock when one is pushed, cleared under
    /// it when they are taken; a launch reads only this when there are none.
    pending: AtomicBool,
}

impl Allocation {
    fn after(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.after.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The events a new user must wait for (once), taken.
    fn take_pending(&self) -> Vec<Event> {
        if !self.pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut after = self.after();
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *after)
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        let after = std::mem::take(&mut *self.after());
        if let Some(pool) = &self.gpu.0.pool
            && let Some(res) = self.res.take()
        {
            let ctx = self.gpu.0.ctx.clone();
            pool.put(Pooled { ptr: self.ptr, bytes: self.bytes, res, after, ctx });
            return;
        }
        // Without a pool every view waited for its own last use when it was dropped. Errors
        // cannot be returned from drop; a failed wait or free leaks the block rather than crash.
        if after.iter().all(|e| e.synchronize().is_ok()) && self.gpu.bind().is_ok() {
            // SAFETY: allocated by cuMemAlloc in this context, freed once (last Arc), no work
            // pending on any view.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Device memory counted against its GPU's budget: a whole allocation or a view of part of
/// one ([`DeviceBuffer::view`]); the memory is freed (after its last use) when the last
/// buffer over it is dropped.
pub struct DeviceBuffer {
    alloc: Arc<Allocation>,
    offset: usize,
    bytes: usize,
    gpu: Gpu,
    last: LastUse,
}

fn check_range(what: &str, r: &Range<usize>, len: usize) -> Result<()> {
    if r.start > r.end || r.end > len {
        return Err(Error::shape("copy", format!("{what} range {}..{} is outside its {len} bytes", r.start, r.end)));
    }
    Ok(())
}

impl DeviceBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// True when the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The device that holds the memory.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The device address for work on `s`, after ordering `s` behind the previous user.
    /// Call [`DeviceBuffer::used_by`] once the work is enqueued.
    pub(crate) fn ptr_for(&self, s: &GpuStream) -> Result<u64> {
        // A reused block: its previous owner's last users first (once).
        let pending = self.alloc.take_pending();
        for e in &pending {
            s.wait(e)?;
        }
        self.last.before(s)?;
        Ok(self.alloc.ptr + self.offset as u64)
    }

    /// A buffer over `range` of this one, sharing the memory (e.g. one tensor inside a
    /// streamed layer's slot). Its first user is ordered after this buffer's last user;
    /// after that, order between the two is the caller's (events), as for two buffers.
    ///
    /// # Errors
    /// If the range is outside the buffer.
    pub fn view(&self, range: Range<usize>) -> Result<DeviceBuffer> {
        check_range("view", &range, self.bytes)?;
        let last = LastUse::from_stream(self.last.lock().clone());
        Ok(DeviceBuffer {
            alloc: self.alloc.clone(),
            offset: self.offset + range.start,
            bytes: range.len(),
            gpu: self.gpu.clone(),
            last,
        })
    }

    pub(crate) fn used_by(&self, s: &GpuStream) {
        self.last.after(s);
    }

    fn same_gpu(&self, s: &GpuStream) -> Result<()> {
        if !Arc::ptr_eq(&self.gpu.0, &s.gpu().0) {
            return Err(Error::Device { op: "copy", what: "buffer and stream belong to different GPUs".into() });
        }
        Ok(())
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
        check_range("destination", &(offset..offset + src.len()), self.bytes)?;
        self.same_gpu(s)?;
        if src.is_empty() {
            return Ok(());
        }
        let (dst, raw) = (self.ptr_for(s)? + offset as u64, s.raw()?);
        // SAFETY: dst..dst+len lies inside this live allocation (checked above); src is a live
        // host slice borrowed until this function returns, which is after the copy (below).
        unsafe { result::memcpy_htod_async(dst, src, raw.cast()) }.map_err(|e| driver("host-to-device copy", e))?;
        self.used_by(s);
        // Pageable memory is staged by the driver before the call returns, page-locked memory is
        // not: wait for the copy either way, so `src` is free when the borrow ends.
        s.synchronize()
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
        check_range("source", &src_range, src.bytes)?;
        check_range("destination", &(offset..offset + src_range.len()), self.bytes)?;
        self.same_gpu(s)?;
        if src_range.is_empty() {
            return Ok(());
        }
        src.last.before(s)?;
        let (dst, raw) = (self.ptr_for(s)? + offset as u64, s.raw()?);
        // SAFETY: both ranges are inside live allocations (checked above); the pinned source
        // stays alive and unaliased for writing until its LastUse is waited for (as_mut_slice
        // and Drop wait for it).
        let src_slice = unsafe { std::slice::from_raw_parts(src.ptr.add(src_range.start), src_range.len()) };
        // SAFETY: see above; page-locked memory makes the copy truly asynchronous.
        unsafe { result::memcpy_htod_async(dst, src_slice, raw.cast()) }
            .map_err(|e| driver("pinned host-to-device copy", e))?;
        src.last.after(s);
        self.used_by(s);
        Ok(())
    }

    /// Copies bytes from `offset` into `dst`, returning when they are there.
    pub fn download(&self, offset: usize, dst: &mut [u8], s: &GpuStream) -> Result<()> {
        check_range("source", &(offset..offset + dst.len()), self.bytes)?;
        self.same_gpu(s)?;
        if dst.is_empty() {
            return Ok(());
        }
        let (src, raw) = (self.ptr_for(s)? + offset as u64, s.raw()?);
        // SAFETY: src range inside this live allocation; dst is a live exclusive host slice.
        unsafe { result::memcpy_dtoh_async(dst, src, raw.cast()) }.map_err(|e| driver("device-to-host copy", e))?;
        self.used_by(s);
        // A pageable destination is written synchronously by the driver, but a caller's slice
        // may be pinned memory; wait so the data is there either way.
        s.synchronize()
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
        check_range("destination", &dst_range, dst.bytes)?;
        check_range("source", &(offset..offset + dst_range.len()), self.bytes)?;
        self.same_gpu(s)?;
        if dst_range.is_empty() {
            return Ok(());
        }
        dst.last.before(s)?;
        let (src, raw) = (self.ptr_for(s)? + offset as u64, s.raw()?);
        // SAFETY: ranges checked; the destination is borrowed mutably here and host reads of it
        // wait on its LastUse.
        let dst_slice = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(dst_range.start), dst_range.len()) };
        // SAFETY: see above.
        unsafe { result::memcpy_dtoh_async(dst_slice, src, raw.cast()) }
            .map_err(|e| driver("device-to-pinned copy", e))?;
        dst.last.after(s);
        self.used_by(s);
        Ok(())
    }

    /// Copies `src_range` of another device buffer (same GPU) to `offset`.
    pub fn copy_from(
        &mut self,
        offset: usize,
        src: &DeviceBuffer,
        src_range: Range<usize>,
        s: &GpuStream,
    ) -> Result<()> {
        check_range("source", &src_range, src.bytes)?;
        check_range("destination", &(offset..offset + src_range.len()), self.bytes)?;
        self.same_gpu(s)?;
        src.same_gpu(s)?;
        if src_range.is_empty() {
            return Ok(());
        }
        let from = src.ptr_for(s)? + src_range.start as u64;
        let (to, raw) = (self.ptr_for(s)? + offset as u64, s.raw()?);
        // SAFETY: both ranges inside live allocations of the same context.
        unsafe { result::memcpy_dtod_async(to, from, src_range.len(), raw.cast()) }
            .map_err(|e| driver("device-to-device copy", e))?;
        src.used_by(s);
        self.used_by(s);
        Ok(())
    }

    /// Sets every byte to `byte` (0xFF poisons f32 data with NaN).
    pub fn fill(&mut self, byte: u8, s: &GpuStream) -> Result<()> {
        self.same_gpu(s)?;
        if self.bytes == 0 {
            return Ok(());
        }
        let (ptr, raw) = (self.ptr_for(s)?, s.raw()?);
        // SAFETY: the whole live allocation.
        unsafe { result::memset_d8_async(ptr, byte, self.bytes, raw.cast()) }.map_err(|e| driver("memset", e))?;
        self.used_by(s);
        Ok(())
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Work still reading or writing this memory must finish before it can be freed or
        // reused by another view's owner. With a pool the host does not wait: the last user
        // records an event that the block's next owner's stream waits for.
        if self.gpu.0.pool.is_some() {
            let prev = self.last.lock().take();
            match prev.map(|s| s.record()) {
                Some(Ok(e)) => {
                    let mut after = self.alloc.after();
                    after.push(e);
                    self.alloc.pending.store(true, Ordering::Release);
                }
                Some(Err(_)) => {
                    // No event: wait here instead (the proven path).
                    let _ = self.gpu.synchronize();
                }
                None => {}
            }
            return;
        }
        let _ = self.last.host_wait();
    }
}

/// Page-locked host memory counted against the pinned budget. Host access waits for the last
/// copy that used it.
pub struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
    kind: PinnedKind,
    gpu: Gpu,
    last: LastUse,
    _res: Reservation,
}

// SAFETY: the buffer owns its allocation exclusively; shared access is read-only (&self) and
// mutation needs &mut self, as for a Vec<u8>.
unsafe impl Send for PinnedBuffer {}
// SAFETY: see above.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// True when the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Write-combined or normal pinned memory.
    pub fn kind(&self) -> PinnedKind {
        self.kind
    }

    /// The device the memory was pinned for.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The bytes, after the last copy that used them is done.
    pub fn as_slice(&self) -> Result<&[u8]> {
        self.last.host_wait()?;
        if self.bytes == 0 {
            return Ok(&[]);
        }
        // SAFETY: ptr is a live allocation of `bytes` bytes; no copy is in flight (waited above)
        // and new copies into it need &mut self.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) })
    }

    /// The bytes for writing, after every copy that used them is done.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        self.last.host_wait()?;
        if self.bytes == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as above, and &mut self makes this the only reference.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) })
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.ptr.is_null() {
            return;
        }
        let _ = self.last.host_wait();
        if self.gpu.bind().is_ok() {
            // SAFETY: allocated by cuMemHostAlloc, freed once, no copy pending.
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}
