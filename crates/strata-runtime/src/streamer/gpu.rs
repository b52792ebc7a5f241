//! Weight streaming to a CUDA device: packed layers in pinned host memory (pageable when
//! pinning is refused; the copies are then staged by the driver and overlap less), K device
//! slots, a copy stream named `copy`, and events in both directions.

use strata_tensor::{DeviceBuffer, Event, Gpu, GpuStream, HostBuffer, PinnedKind, Tensor, nvtx};

use super::{CopyRecord, Epoch, Schedule, WeightStream};
use crate::pack::GroupLayout;
use crate::{Error, Result};

struct Slot {
    buf: DeviceBuffer,
    /// Views of `buf` for the layout they were built for.
    layout: Option<GroupLayout>,
    views: Vec<Tensor>,
    /// Recorded on the copy stream when the slot's current contents have arrived.
    copied: Option<Event>,
    /// Recorded on the compute stream after the last compute that read the slot.
    released: Option<Event>,
}

/// Streams packed layers into device slots (see the module doc of `streamer`).
pub struct GpuStreamer {
    compute: GpuStream,
    copy: GpuStream,
    groups: Vec<(GroupLayout, HostBuffer)>,
    /// NVTX names of the copies ("copy layer 17").
    labels: Vec<String>,
    slots: Vec<Slot>,
    sched: Schedule,
    pending: Vec<(usize, u64, Event, Event)>,
}

impl GpuStreamer {
    /// Takes packed `groups` (see [`GpuStreamer::pack`]) labelled by the layer each holds, and
    /// allocates d + 1 slots of the largest group on `gpu`.
    ///
    /// # Errors
    /// Out of device memory for the slots (typed; nothing stays allocated).
    pub fn new(
        gpu: &Gpu,
        compute: &GpuStream,
        groups: Vec<(GroupLayout, HostBuffer)>,
        layers: &[usize],
        depth: usize,
    ) -> Result<GpuStreamer> {
        let labels = (0..groups.len()).map(|g| format!("copy layer {}", layers.get(g).copied().unwrap_or(g))).collect();
        let sched = Schedule::new(groups.len(), depth)?;
        let slot_bytes = groups.iter().map(|(l, _)| l.bytes).max().unwrap_or(0);
        let copy = gpu.stream("copy")?;
        let mut slots = Vec::with_capacity(sched.n_slots);
        for i in 0..sched.n_slots {
            let buf = gpu.alloc(slot_bytes, &format!("weight slot {i}"))?;
            slots.push(Slot { buf, layout: None, views: Vec::new(), copied: None, released: None });
        }
        let mut s = GpuStreamer { compute: compute.clone(), copy, groups, labels, slots, sched, pending: Vec::new() };
        // Views of every slot for the first layout, built before any copy so that they carry
        // no stream history (llama layers all share one layout).
        if let Some((layout, _)) = s.groups.first() {
            let layout = layout.clone();
            for slot in &mut s.slots {
                build_views(slot, &layout)?;
            }
        }
        Ok(s)
    }

    /// Packs host tensors into a pinned (or pageable) host buffer for `GpuStreamer::new`.
    /// Pinning is slow (~1-2 GB/s): this is load-time work.
    pub fn pack(gpu: &Gpu, tensors: &[&Tensor], what: &str) -> Result<(GroupLayout, HostBuffer)> {
        let layout = GroupLayout::of(tensors);
        let mut host = HostBuffer::alloc(Some(gpu), layout.bytes, PinnedKind::WriteCombined, what)?;
        layout.pack(tensors, host.as_mut_slice()?)?;
        Ok((layout, host))
    }

    fn prefetch(&mut self, upto: u64) -> Result<()> {
        for seq in self.sched.claim_prefetch(upto) {
            let g = self.sched.group(seq);
            let k = self.sched.slot(seq);
            let slot = &mut self.slots[k];
            let _r = nvtx::range(&self.labels[g]);
            if let Some(released) = slot.released.take() {
                self.copy.wait(&released)?;
            }
            let (layout, host) = &self.groups[g];
            let start = self.copy.record()?;
            host.copy_to_device(0..layout.bytes, &mut slot.buf, 0, &self.copy)?;
            let end = self.copy.record()?;
            // A second event at the same point for the compute stream to wait on; the pair
            // above stays with the timeline.
            slot.copied = Some(self.copy.record()?);
            self.pending.push((g, layout.bytes as u64, start, end));
        }
        Ok(())
    }
}

fn build_views(slot: &mut Slot, layout: &GroupLayout) -> Result<()> {
    slot.views.clear();
    for p in &layout.tensors {
        let view = slot.buf.view(p.offset..p.offset + p.len)?;
        slot.views.push(Tensor::from_device(p.dtype, &p.shape, view)?);
    }
    slot.layout = Some(layout.clone());
    Ok(())
}

impl WeightStream for GpuStreamer {
    fn n_groups(&self) -> usize {
        self.groups.len()
    }

    fn slots(&self) -> (usize, usize) {
        (self.slots.len(), self.slots.first().map_or(0, |s| s.buf.len()))
    }

    fn acquire(&mut self, g: usize) -> Result<&[Tensor]> {
        let seq = self.sched.begin_acquire(g)?;
        self.prefetch(self.sched.acquire_target(seq))?;
        let k = self.sched.slot(seq);
        let slot = &mut self.slots[k];
        let end = slot.copied.as_ref().ok_or_else(|| Error::Stream(format!("slot {k} was never filled")))?;
        self.compute.wait(end)?;
        let layout = &self.groups[g].0;
        if slot.layout.as_ref() != Some(layout) {
            build_views(slot, layout)?;
        }
        Ok(&self.slots[k].views)
    }

    fn release(&mut self, g: usize) -> Result<()> {
        let seq = self.sched.release(g)?;
        let k = self.sched.slot(seq);
        self.slots[k].released = Some(self.compute.record()?);
        Ok(())
    }

    fn drain_records(&mut self, epoch: &Epoch) -> Result<Vec<CopyRecord>> {
        let Epoch::Gpu(e0) = epoch else {
            return Err(Error::Stream("a GPU timeline needs a GPU epoch".into()));
        };
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for (group, bytes, start, end) in self.pending.drain(..) {
            if !end.is_complete() {
                keep.push((group, bytes, start, end));
                continue;
            }
            let s = e0.elapsed_ms(&start)? as f64 / 1e3;
            let e = e0.elapsed_ms(&end)? as f64 / 1e3;
            out.push(CopyRecord { group, layer: None, bytes, issued_s: None, start_s: s, end_s: e });
        }
        self.pending = keep;
        Ok(out)
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
        self.copy.synchronize()?;
        self.compute.synchronize()?;
        self.pending.clear();
        for slot in &mut self.slots {
            slot.copied = None;
            slot.released = None;
        }
        self.sched.restart();
        Ok(())
    }
}
