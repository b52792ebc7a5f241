//! CUDA graphs (issue 13 §4): the kernel launches a closure enqueues on one stream are
//! captured once ([`GpuStream::capture`]) and replayed with one `cuGraphLaunch`
//! ([`GpuGraph::launch`]), which saves the host's per-launch work (argument checks, ordering,
//! the launch calls) for every replay.
//!
//! A replay runs the captured kernels with the captured arguments: the same device addresses
//! and the same scalars. What that relies on:
//! - every buffer a captured launch used stays allocated: the graph holds a view of each (so
//!   neither a free nor the pool can hand the memory to someone else while it lives), and the
//!   stream's scratch keeps every block it ever had while the stream lives (the graph holds
//!   the stream);
//! - nothing is allocated during capture ([`refuse_in_capture`]: an allocation inside the
//!   closure is an error, so the capture fails instead of baking in an address that is freed
//!   after it), and every launch in it is on the capturing stream;
//! - what changes per replay is data in device memory that the caller rewrites before each
//!   launch (the decode step's input activations and position), never a launch argument: the
//!   caller keeps those buffers, and the captured launches read them where they were;
//! - the captured buffers are used on other streams only as ordinary buffers: a replay orders
//!   the stream after each held view's last user and records itself as the new one, as a
//!   launch does.
//!
//! A failure anywhere (begin, a launch the driver refuses in capture, an allocation, end,
//! instantiate) ends the capture and returns the error; the caller runs the plain launches.

use std::cell::RefCell;

use cudarc::driver::CudaGraph;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use super::{DeviceBuffer, GpuStream, driver};
use crate::{Error, Result};

/// A capture in progress on this thread: the stream and a view of each buffer used so far.
struct Capturing {
    stream: usize,
    held: Vec<DeviceBuffer>,
    launches: usize,
}

thread_local! {
    static CAPTURE: RefCell<Option<Capturing>> = const { RefCell::new(None) };
}

/// An error if this thread is capturing a graph: an allocation there would bake an address
/// into the graph that is freed (or reused) after the capture.
pub(crate) fn refuse_in_capture(what: &str) -> Result<()> {
    if CAPTURE.with(|c| c.borrow().is_some()) {
        return Err(Error::Device {
            op: "graph capture",
            what: format!("{what}: no device memory may be allocated while a CUDA graph is captured"),
        });
    }
    Ok(())
}

/// Called by every launch before it is enqueued: inside a capture on this thread, the launch
/// must be on the capturing stream, and the graph keeps a view of each of its buffers.
pub(crate) fn note_launch(s: &GpuStream, bufs: &[&DeviceBuffer]) -> Result<()> {
    CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let Some(cap) = c.as_mut() else { return Ok(()) };
        if cap.stream != s.id() {
            return Err(Error::Device {
                op: "graph capture",
                what: format!("a launch on stream `{}` while another stream is captured", s.name()),
            });
        }
        cap.launches += 1;
        for b in bufs {
            if !cap.held.iter().any(|h| same_memory(h, b)) {
                cap.held.push(b.view(0..b.len())?);
            }
        }
        Ok(())
    })
}

fn same_memory(a: &DeviceBuffer, b: &DeviceBuffer) -> bool {
    std::sync::Arc::ptr_eq(&a.alloc, &b.alloc) && a.offset == b.offset && a.bytes == b.bytes
}

/// Ends the capture and clears this thread's state however the closure returned (a panic
/// included), so the stream is never left capturing.
struct EndGuard<'a> {
    stream: &'a GpuStream,
    ended: bool,
}

impl EndGuard<'_> {
    fn end(&mut self) -> (Option<Capturing>, Result<Option<CudaGraph>>) {
        self.ended = true;
        let cap = CAPTURE.with(|c| c.borrow_mut().take());
        let graph = self
            .stream
            .0
            .s
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| driver("ending a CUDA graph capture and instantiating the graph", e));
        (cap, graph)
    }
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.end();
        }
    }
}

impl GpuStream {
    /// Runs `f`, capturing the kernel launches it enqueues on this stream into a CUDA graph
    /// instead of running them (nothing runs until [`GpuGraph::launch`]). `f` must not read
    /// results back, synchronize, allocate device memory or launch on another stream: each
    /// is an error (the driver's or [`refuse_in_capture`]'s).
    ///
    /// # Errors
    /// `f`'s error (of any type a strata-tensor error converts into), or the driver's when it
    /// refuses the capture or the graph; in every case the capture has ended and the stream is
    /// usable for plain launches.
    pub fn capture<R, E: From<Error>>(&self, f: impl FnOnce() -> Result<R, E>) -> Result<(R, GpuGraph), E> {
        let busy = CAPTURE.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_some() {
                return true;
            }
            *c = Some(Capturing { stream: self.id(), held: Vec::new(), launches: 0 });
            false
        });
        if busy {
            return Err(Error::Device { op: "graph capture", what: "a capture is already in progress".into() }.into());
        }
        // Thread-local mode: this thread may not call what would break the capture (a
        // synchronize, a free); other threads (a streamer's) are not affected.
        if let Err(e) = self.0.s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) {
            CAPTURE.with(|c| c.borrow_mut().take());
            return Err(driver("beginning a CUDA graph capture", e).into());
        }
        let mut guard = EndGuard { stream: self, ended: false };
        let r = f();
        let (cap, graph) = guard.end();
        let r = r?;
        let cap =
            cap.ok_or_else(|| Error::Device { op: "graph capture", what: "the capture state was lost".into() })?;
        match graph? {
            Some(exec) => Ok((r, GpuGraph { exec, stream: self.clone(), held: cap.held, launches: cap.launches })),
            None => Err(Error::Device { op: "graph capture", what: "the driver returned no graph".into() }.into()),
        }
    }
}

/// An instantiated CUDA graph of launches on one stream, with the buffers they use (see the
/// module doc).
pub struct GpuGraph {
    exec: CudaGraph,
    stream: GpuStream,
    held: Vec<DeviceBuffer>,
    launches: usize,
}

// SAFETY: the CUDA graph handles are not internally synchronized (cudarc's `CudaGraph` is
// therefore neither Send nor Sync); a `GpuGraph` only touches them in `launch(&mut self)` and
// in drop, which need exclusive access, so moving it to another thread is sound. It is not
// Sync.
unsafe impl Send for GpuGraph {}

impl std::fmt::Debug for GpuGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuGraph({} launches on `{}`, {} buffers)", self.launches, self.stream.name(), self.held.len())
    }
}

impl GpuGraph {
    /// Enqueues the captured launches on the capturing stream, after each held buffer's last
    /// user (another stream's work is waited for, as by a plain launch).
    ///
    /// # Errors
    /// The driver's, when it refuses the launch or an ordering event.
    pub fn launch(&mut self) -> Result<()> {
        let s = &self.stream;
        for b in &self.held {
            b.ptr_for(s)?;
        }
        s.raw()?;
        self.exec.launch().map_err(|e| driver(format!("launching a CUDA graph on stream `{}`", s.name()), e))?;
        for b in &self.held {
            b.used_by(s);
        }
        Ok(())
    }

    /// Kernel launches captured (a launcher may enqueue more than one kernel).
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// The stream it was captured on and runs on.
    pub fn stream(&self) -> &GpuStream {
        &self.stream
    }

    /// Whether the graph reads or writes `buf`'s memory (the caller's fixed inputs).
    pub fn holds(&self, buf: &DeviceBuffer) -> bool {
        self.held.iter().any(|h| same_memory(h, buf))
    }
}
