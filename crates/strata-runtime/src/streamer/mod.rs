//! Weight streaming: the weights of streamed layers live packed in host memory (pinned on a
//! GPU) and are copied into one of K device slots just before use, on a copy stream that runs
//! ahead of the compute stream by the prefetch depth d.
//!
//! Protocol (the same for every device): streamed groups are acquired in cyclic order
//! 0, 1, …, n-1, 0, 1, … (one pass per forward; weights do not depend on data, so the copies
//! for the next pass start while the current pass finishes). Copy number `seq` goes to slot
//! `seq % K` with K = d + 1; before it may overwrite the slot, the copy stream waits for the
//! compute that used the slot's previous contents (seq − K) to be done; before compute uses a
//! slot, the compute stream waits for its copy. So the copy of group i+d overlaps the compute
//! of group i.
//!
//! A pass may acquire only some of the groups ([`WeightStream::set_pass_groups`]): the session
//! streams the layers decode computes on the CPU only in prompt passes (the prefill placement),
//! so it switches between two orders through the same slots.

mod gpu;
mod host;

use strata_tensor::Tensor;

pub use gpu::GpuStreamer;
pub use host::HostStreamer;

use crate::{Error, Result};

/// One finished weight copy, times in seconds since the pass's epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CopyRecord {
    /// Index of the streamed group that was copied.
    pub group: usize,
    /// The model layer the group holds (filled in by the executor, which knows the mapping).
    pub layer: Option<usize>,
    /// Bytes copied.
    pub bytes: u64,
    /// When the copy was handed to the copy stream, where the device has a host clock (the
    /// host device; a GPU's timeline is in GPU events and has no host issue time).
    pub issued_s: Option<f64>,
    /// When the copy started.
    pub start_s: f64,
    /// When the copy finished.
    pub end_s: f64,
}

/// The reference point of a pass's timeline.
pub enum Epoch {
    /// A host clock instant (the host device).
    Host(std::time::Instant),
    /// A GPU event recorded at the start of the pass.
    Gpu(strata_tensor::Event),
}

/// Streamed weights on a compute device.
pub trait WeightStream: Send {
    /// Number of streamed groups (layers).
    fn n_groups(&self) -> usize;
    /// Slots on the device and bytes per slot.
    fn slots(&self) -> (usize, usize);
    /// The weights of group `g` on the compute device, valid until `release(g)`. Groups must
    /// be acquired in cyclic order; the call orders compute after the group's copy.
    fn acquire(&mut self, g: usize) -> Result<&[Tensor]>;
    /// Marks the compute that used group `g` as enqueued; its slot may be refilled after it.
    fn release(&mut self, g: usize) -> Result<()>;
    /// Copies that finished since the last call, relative to `epoch`. On a GPU call it after
    /// the compute stream has been synchronized.
    fn drain_records(&mut self, epoch: &Epoch) -> Result<Vec<CopyRecord>>;
    /// Waits for everything in flight and restarts the cycle at group 0 (after a pass was
    /// abandoned half way, e.g. by an error).
    fn restart(&mut self) -> Result<()>;
    /// Starts the copies of the next pass's first groups. Call it when the current pass's
    /// results are on the host: copies issued earlier would delay that download, which on a
    /// GPU queues behind the host-to-device copies in flight (measured on an H200).
    fn begin_next_pass(&mut self) -> Result<()>;
    /// Fills every free slot: issues the copies of the next groups in cyclic order as far as
    /// the slots allow (the next pass's first groups once this pass's last group has been
    /// released). The executor calls it before computing a layer on the CPU, so that the
    /// copy stream keeps running while the CPU works (hybrid decode) instead of waiting for
    /// the next `acquire`. Does nothing while a group is held.
    fn prefetch_ahead(&mut self) -> Result<()>;
    /// Sets the groups each pass acquires, in order (initially all, `0..n_groups`), and
    /// restarts the cycle at the first of them: waits for the copies in flight as
    /// [`WeightStream::restart`] does (they were for the old order).
    ///
    /// # Errors
    /// An empty list, a group out of range or listed twice; the old order is kept.
    fn set_pass_groups(&mut self, groups: &[usize]) -> Result<()>;
}

/// The cyclic copy/compute order shared by the implementations.
#[derive(Debug, Clone)]
struct Schedule {
    n_groups: usize,
    /// The groups of one pass, in acquire order (all of them unless set otherwise).
    order: Vec<usize>,
    n_slots: usize,
    depth: usize,
    next_prefetch: u64,
    next_acquire: u64,
    /// The last acquired sequence number not yet released.
    held: Option<u64>,
}

impl Schedule {
    fn new(n_groups: usize, depth: usize) -> Result<Schedule> {
        if n_groups == 0 || depth == 0 {
            return Err(Error::Stream(format!("{n_groups} streamed groups with prefetch depth {depth}")));
        }
        Ok(Schedule {
            n_groups,
            order: (0..n_groups).collect(),
            n_slots: depth + 1,
            depth,
            next_prefetch: 0,
            next_acquire: 0,
            held: None,
        })
    }

    /// Groups per pass.
    fn per_pass(&self) -> u64 {
        self.order.len() as u64
    }

    fn group(&self, seq: u64) -> usize {
        self.order[(seq % self.per_pass()) as usize]
    }

    /// Checks and sets the groups of a pass, and restarts the cycle (the caller has collected
    /// the copies in flight).
    fn set_order(&mut self, groups: &[usize]) -> Result<()> {
        let mut seen = vec![false; self.n_groups];
        for &g in groups {
            match seen.get_mut(g) {
                Some(s) if !*s => *s = true,
                Some(_) => return Err(Error::Stream(format!("group {g} is listed twice in a pass"))),
                None => return Err(Error::Stream(format!("group {g} of {} in a pass", self.n_groups))),
            }
        }
        if groups.is_empty() {
            return Err(Error::Stream("a pass must acquire at least one group".into()));
        }
        self.order = groups.to_vec();
        self.restart();
        Ok(())
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.n_slots as u64) as usize
    }

    /// The last sequence number of the pass that `seq` belongs to.
    fn pass_end(&self, seq: u64) -> u64 {
        (seq / self.per_pass() + 1) * self.per_pass() - 1
    }

    /// What to have in flight when copy `seq` is acquired: d copies beyond it, within its pass
    /// (the next pass's copies start in `begin_next_pass`).
    fn acquire_target(&self, seq: u64) -> u64 {
        (seq + self.depth as u64).min(self.pass_end(seq))
    }

    /// What to have in flight when the next pass is about to start: its first d copies (its
    /// first acquire adds the next); None in the middle of a pass.
    fn next_pass_target(&self) -> Option<u64> {
        let first = self.next_acquire;
        (self.held.is_none() && first.is_multiple_of(self.per_pass())).then(|| first + self.depth as u64 - 1)
    }

    /// What to have in flight before the compute does something other than a streamed layer:
    /// a copy in every slot, up to d beyond the next acquire (K = d + 1 copies), within the pass
    /// of the next acquire. None while a group is held (its slot is not free).
    fn ahead_target(&self) -> Option<u64> {
        let next = self.next_acquire;
        self.held.is_none().then(|| (next + self.depth as u64).min(self.pass_end(next)))
    }

    /// Sequence numbers to prefetch now so that `upto` is in flight (never more than d ahead
    /// of the next acquire, so the target slot's previous user has been released).
    fn claim_prefetch(&mut self, upto: u64) -> std::ops::Range<u64> {
        let limit = upto.min(self.next_acquire + self.depth as u64);
        let from = self.next_prefetch;
        if limit + 1 > from {
            self.next_prefetch = limit + 1;
            from..limit + 1
        } else {
            from..from
        }
    }

    /// Checks `g` is the next group in order; returns its sequence number.
    fn begin_acquire(&mut self, g: usize) -> Result<u64> {
        if self.held.is_some() {
            return Err(Error::Stream("a group was acquired before the previous one was released".into()));
        }
        let seq = self.next_acquire;
        if self.group(seq) != g {
            return Err(Error::Stream(format!(
                "group {g} requested, but the prefetch order expects group {}",
                self.group(seq)
            )));
        }
        self.held = Some(seq);
        Ok(seq)
    }

    fn release(&mut self, g: usize) -> Result<u64> {
        match self.held.take() {
            Some(seq) if self.group(seq) == g => {
                self.next_acquire = seq + 1;
                Ok(seq)
            }
            other => {
                self.held = other;
                Err(Error::Stream(format!("group {g} released but not held")))
            }
        }
    }

    fn restart(&mut self) {
        self.next_prefetch = 0;
        self.next_acquire = 0;
        self.held = None;
    }
}
