//! The host "device": weight streaming with a worker thread standing in for the copy stream
//! and the caller's thread for the compute stream, slots counted against a [`MemoryBudget`].
//! Tests run the real protocol on the CPU with it, and its timeline is real wall-clock time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_tensor::{MemoryBudget, Reservation, SharedBytes, Tensor};

use super::{CopyRecord, Epoch, Schedule, WeightStream};
use crate::pack::GroupLayout;
use crate::{Error, Result};

struct Job {
    seq: u64,
    group: usize,
    mem: Vec<u8>,
    issued: Instant,
}

struct Done {
    seq: u64,
    group: usize,
    mem: Vec<u8>,
    issued: Instant,
    start: Instant,
    end: Instant,
}

struct Slot {
    /// The memory while no copy or compute holds it.
    idle: Option<Vec<u8>>,
    /// The memory while compute reads it (the views share it).
    in_use: Option<Arc<Vec<u8>>>,
    views: Vec<Tensor>,
    _res: Reservation,
}

/// Streams packed layers through a copy thread into host "device" slots.
pub struct HostStreamer {
    layouts: Vec<GroupLayout>,
    slots: Vec<Slot>,
    sched: Schedule,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    arrived: HashMap<u64, Done>,
    records: Vec<(usize, u64, [Instant; 3])>,
    /// Time compute spent waiting for copies, per acquire, since the last drain.
    pub waits: Vec<(usize, Duration)>,
    worker: Option<JoinHandle<()>>,
}

impl HostStreamer {
    /// Packs the groups (host memory standing in for pinned memory) and reserves d + 1 slots
    /// of the largest group against `budget`. `copy_delay` slows each copy down by the given
    /// time per MiB, to emulate a slow bus in tests.
    ///
    /// # Errors
    /// The slots do not fit the budget.
    pub fn new(
        budget: &MemoryBudget,
        groups: Vec<(GroupLayout, Vec<&Tensor>)>,
        depth: usize,
        copy_delay_per_mib: Duration,
    ) -> Result<HostStreamer> {
        let sched = Schedule::new(groups.len(), depth)?;
        let slot_bytes = groups.iter().map(|(l, _)| l.bytes).max().unwrap_or(0);
        let mut slots = Vec::with_capacity(sched.n_slots);
        for i in 0..sched.n_slots {
            let res = budget.reserve(slot_bytes as u64, &format!("weight slot {i}"))?;
            slots.push(Slot { idle: Some(vec![0; slot_bytes]), in_use: None, views: Vec::new(), _res: res });
        }
        let mut packed = Vec::with_capacity(groups.len());
        let mut layouts = Vec::with_capacity(groups.len());
        for (layout, tensors) in &groups {
            let mut bytes = vec![0u8; layout.bytes];
            layout.pack(tensors, &mut bytes)?;
            packed.push(bytes);
            layouts.push(layout.clone());
        }
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, done) = channel::<Done>();
        let worker = std::thread::Builder::new()
            .name("copy".into())
            .spawn(move || copy_worker(packed, job_rx, done_tx, copy_delay_per_mib))
            .map_err(|e| Error::Stream(format!("cannot start the copy thread: {e}")))?;
        Ok(HostStreamer {
            layouts,
            slots,
            sched,
            jobs: Some(jobs),
            done,
            arrived: HashMap::new(),
            records: Vec::new(),
            waits: Vec::new(),
            worker: Some(worker),
        })
    }

    fn prefetch(&mut self, upto: u64) -> Result<()> {
        for seq in self.sched.claim_prefetch(upto) {
            let k = self.sched.slot(seq);
            let mem = self.slots[k]
                .idle
                .take()
                .ok_or_else(|| Error::Stream(format!("slot {k} is still in use when copy {seq} needs it")))?;
            let job = Job { seq, group: self.sched.group(seq), mem, issued: Instant::now() };
            self.jobs
                .as_ref()
                .and_then(|j| j.send(job).ok())
                .ok_or_else(|| Error::Stream("the copy thread has stopped".into()))?;
        }
        Ok(())
    }

    /// Blocks until copy `seq` has arrived.
    fn wait_for(&mut self, seq: u64) -> Result<Done> {
        loop {
            if let Some(d) = self.arrived.remove(&seq) {
                return Ok(d);
            }
            let d = self.done.recv().map_err(|_| Error::Stream("the copy thread has stopped".into()))?;
            self.arrived.insert(d.seq, d);
        }
    }
}

fn copy_worker(packed: Vec<Vec<u8>>, jobs: Receiver<Job>, done: Sender<Done>, delay_per_mib: Duration) {
    for Job { seq, group, mut mem, issued } in jobs {
        let _r = strata_tensor::nvtx::range(&format!("copy group {group}"));
        let start = Instant::now();
        let src = &packed[group];
        mem[..src.len()].copy_from_slice(src);
        if !delay_per_mib.is_zero() {
            std::thread::sleep(delay_per_mib.mul_f64(src.len() as f64 / (1 << 20) as f64));
        }
        let end = Instant::now();
        if done.send(Done { seq, group, mem, issued, start, end }).is_err() {
            return;
        }
    }
}

impl WeightStream for HostStreamer {
    fn n_groups(&self) -> usize {
        self.layouts.len()
    }

    fn slots(&self) -> (usize, usize) {
        (self.slots.len(), self.layouts.iter().map(|l| l.bytes).max().unwrap_or(0))
    }

    fn acquire(&mut self, g: usize) -> Result<&[Tensor]> {
        let seq = self.sched.begin_acquire(g)?;
        self.prefetch(self.sched.acquire_target(seq))?;
        let t0 = Instant::now();
        let d = self.wait_for(seq)?;
        self.waits.push((g, t0.elapsed()));
        self.records.push((d.group, self.layouts[g].bytes as u64, [d.issued, d.start, d.end]));
        let k = self.sched.slot(seq);
        let mem = Arc::new(d.mem);
        let shared: SharedBytes = mem.clone();
        // The slot holds the memory before the views are built, so that if building them
        // fails the group is still held: `release` or `restart` returns the memory (instead of
        // it being dropped and `restart` waiting for a copy that already arrived).
        let slot = &mut self.slots[k];
        slot.in_use = Some(mem);
        slot.views = self.layouts[g]
            .tensors
            .iter()
            .map(|p| Tensor::from_shared(p.dtype, &p.shape, shared.clone(), p.offset))
            .collect::<strata_tensor::Result<Vec<_>>>()?;
        Ok(&slot.views)
    }

    fn release(&mut self, g: usize) -> Result<()> {
        let seq = self.sched.release(g)?;
        let k = self.sched.slot(seq);
        let slot = &mut self.slots[k];
        slot.views.clear();
        let mem = slot.in_use.take().ok_or_else(|| Error::Stream(format!("slot {k} released twice")))?;
        slot.idle =
            Some(Arc::try_unwrap(mem).map_err(|_| Error::Stream(format!("slot {k} still has users after release")))?);
        Ok(())
    }

    fn drain_records(&mut self, epoch: &Epoch) -> Result<Vec<CopyRecord>> {
        let Epoch::Host(t0) = epoch else {
            return Err(Error::Stream("a host timeline needs a host epoch".into()));
        };
        let secs = |t: Instant| {
            if t >= *t0 { (t - *t0).as_secs_f64() } else { -(*t0 - t).as_secs_f64() }
        };
        Ok(self
            .records
            .drain(..)
            .map(|(group, bytes, [i, s, e])| CopyRecord {
                group,
                layer: None,
                bytes,
                issued_s: Some(secs(i)),
                start_s: secs(s),
                end_s: secs(e),
            })
            .collect())
    }

    fn begin_next_pass(&mut self) -> Result<()> {
        match self.sched.next_pass_target() {
            Some(upto) => self.prefetch(upto),
            None => Ok(()),
        }
    }

    fn prefetch_ahead(&mut self) -> Result<()> {
        match self.sched.ahead_target() {
            Some(upto) => self.prefetch(upto),
            None => Ok(()),
        }
    }

    fn set_pass_groups(&mut self, groups: &[usize]) -> Result<()> {
        self.restart()?;
        self.sched.set_order(groups)
    }

    fn restart(&mut self) -> Result<()> {
        // Collect every copy in flight and return all memory to the slots. A group acquired and
        // not released (its pass failed) has already arrived: its memory is in its slot.
        if let Some(held) = self.sched.held.take() {
            self.sched.next_acquire = held + 1;
        }
        while self.sched.next_prefetch > self.sched.next_acquire {
            let seq = self.sched.next_acquire;
            let d = self.wait_for(seq)?;
            self.slots[self.sched.slot(seq)].idle = Some(d.mem);
            self.sched.next_acquire += 1;
        }
        for slot in &mut self.slots {
            slot.views.clear();
            if let Some(mem) = slot.in_use.take() {
                slot.idle = Some(Arc::try_unwrap(mem).map_err(|_| Error::Stream("a slot still has users".into()))?);
            }
        }
        self.arrived.clear();
        self.sched.restart();
        Ok(())
    }
}

impl Drop for HostStreamer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use strata_tensor::{MemoryBudget, Stream, Tensor};

    use super::*;
    use crate::pack::GroupLayout;

    fn streamer(budget: &MemoryBudget, weights: &[Tensor]) -> HostStreamer {
        let groups = weights.iter().map(|w| (GroupLayout::of(&[w]), vec![w])).collect::<Vec<_>>();
        HostStreamer::new(budget, groups, 1, Duration::ZERO).expect("streamer")
    }

    /// A pass that fails while a group is held (here: the caller never releases it) must not
    /// leave `restart` waiting for a copy that has already arrived, nor lose the slot's memory.
    /// Run on a thread so a regression fails the test instead of hanging it.
    #[test]
    fn restart_after_a_failed_pass_returns_every_slot() {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let budget = MemoryBudget::new("test", 1 << 20);
            let weights: Vec<Tensor> = (0..3)
                .map(|i| Tensor::from_f32(&[4], vec![i as f32; 4]))
                .collect::<strata_tensor::Result<_>>()
                .expect("weights");
            let mut s = streamer(&budget, &weights);
            let run = |s: &mut HostStreamer, release_last: bool| -> Result<Vec<f32>> {
                let mut seen = Vec::new();
                for g in 0..3 {
                    let first = s.acquire(g)?[0].to_vec_f32(&Stream::Host)?[0];
                    seen.push(first);
                    if g < 2 || release_last {
                        s.release(g)?;
                    }
                }
                Ok(seen)
            };
            // Acquire group 0 and stop (a failed layer): no release.
            let held = s.acquire(0).map(|_| ());
            let after = s.restart().and_then(|()| run(&mut s, true));
            // And a failure at the end of a pass, with the next pass's copies in flight.
            let again = run(&mut s, false).and_then(|_| s.restart()).and_then(|()| run(&mut s, true));
            let _ = tx.send((held, after, again));
        });
        let (held, after, again) = rx.recv_timeout(Duration::from_secs(60)).expect("restart hung");
        held.expect("acquire");
        assert_eq!(after.expect("a pass after restart"), vec![0.0, 1.0, 2.0]);
        assert_eq!(again.expect("a pass after the second restart"), vec![0.0, 1.0, 2.0]);
    }
}
