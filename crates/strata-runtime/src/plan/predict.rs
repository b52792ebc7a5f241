//! The time model of the module docs: per-layer costs, and the copy/compute pipeline simulated
//! over one token (decode) or one batch (prefill).

use super::experts::{ExpertSide, hit_rate, moe, split, touched};
use super::search::Layout;
use super::{Placement, PlanRequest};

/// Seconds each resource was busy, and the wall time, for one token or one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Timing {
    pub seconds: f64,
    pub gpu: f64,
    pub pcie: f64,
    pub cpu: f64,
}

impl Timing {
    /// What limits this timing, in the words [`super::Predicted::bound`] uses.
    pub fn bound(&self) -> &'static str {
        if self.cpu >= self.gpu && self.cpu >= self.pcie {
            "CPU"
        } else if self.pcie >= self.gpu {
            "PCIe transfer"
        } else {
            "gpu memory bandwidth"
        }
    }
}

/// Per-layer costs of one phase, in seconds per pass (a token for decode, a batch for prefill).
struct Phase {
    /// The layer on the GPU: all of it, or its attention part when its experts are on the CPU.
    gpu: Vec<f64>,
    /// The whole layer on the CPU.
    cpu: Vec<f64>,
    /// Experts on the CPU of a layer on the GPU: the cached ones on the GPU and the others on
    /// the CPU (with the activations' round trip), at the same time, after the attention part.
    /// Both 0 when the experts follow their layer.
    expert_gpu: Vec<f64>,
    expert_cpu: Vec<f64>,
    head_gpu: f64,
    head_cpu: f64,
    /// Tokens per pass: the timing is divided by it.
    tokens: f64,
}

/// Everything the simulation needs, computed once per request.
pub(super) struct Costs {
    decode: Phase,
    prefill: Phase,
    /// Pinned copy of each layer's weights.
    copy: Vec<f64>,
    /// Staged copy: memcpy into the pinned ring, then the DMA, in series (conservative).
    staged: Vec<f64>,
    /// Pinned and staged copy of the experts a resident layer streams ([`ExpertSide::Stream`]);
    /// 0 for every other layer.
    expert_copy: Vec<f64>,
    expert_staged: Vec<f64>,
    /// Reading a layer's KV cache over PCIe when it is on the host but the layer runs on the GPU.
    kv_over_pcie: Vec<f64>,
    handoff: f64,
    /// Bytes one decoded token moves for a layer that is not resident: its copy when streamed,
    /// what the CPU reads when it computes the layer.
    copied_bytes: Vec<f64>,
    cpu_read_bytes: Vec<f64>,
    /// Both bandwidths together: `cpu_bytes_per_s + h2d_bytes_per_s`.
    both_bytes_per_s: f64,
}

impl Costs {
    pub fn new(req: &PlanRequest, sides: &[ExpertSide]) -> Costs {
        let s = &req.speeds;
        let batch = req.prefill_tokens.max(1) as f64;
        let w = |i: usize| req.layers[i].weight_bytes as f64;
        let flops = |i: usize| req.layers[i].flops_per_token as f64;
        let n = req.layers.len();
        let head = req.head_bytes as f64;
        // Bytes a pass reads and flops per token of a layer computed in one place: a dense layer
        // reads all its weights; a mixture-of-experts layer its attention part and the experts
        // the pass routes to (one token: n_used of them; a batch: the distinct ones it touches).
        let read = |i: usize, tokens: f64| match moe(&req.layers[i]) {
            None => w(i),
            Some(e) => {
                let attention = (req.layers[i].weight_bytes - e.bytes.min(req.layers[i].weight_bytes)) as f64;
                attention + touched(e, tokens) * e.bytes_per_expert as f64
            }
        };
        let layer_flops = |i: usize| match moe(&req.layers[i]) {
            None => flops(i),
            Some(e) => flops(i) + e.n_expert_used as f64 * e.flops_per_token as f64,
        };
        // The attention part of a layer whose experts are on the CPU.
        let attention = |i: usize| split(&req.layers[i], sides[i]).gpu as f64;
        let experts_apart = |i: usize| moe(&req.layers[i]).is_some() && matches!(sides[i], ExpertSide::Cpu { .. });
        // Decode reads every weight once per token: memory bound on both sides.
        let decode_gpu =
            |i: usize| if experts_apart(i) { attention(i) } else { read(i, 1.0) } / s.gpu_bytes_per_s + s.layer_overhead_s;
        // Prefill reads the weights once per batch and does `batch` tokens of compute: the slower
        // of the two (a roofline), so a tiny batch is still memory bound.
        let prefill_gpu = |i: usize| {
            let (bytes, fl) =
                if experts_apart(i) { (attention(i), flops(i)) } else { (read(i, batch), layer_flops(i)) };
            (fl * batch / s.gpu_flops).max(bytes / s.gpu_bytes_per_s) + s.layer_overhead_s
        };
        // Experts on the CPU: a share `hit` of the routed experts is in the GPU cache and runs
        // there, the rest on the CPU; a round trip of the activations unless all of them hit.
        let experts = |i: usize, tokens: f64| -> (f64, f64) {
            let (Some(e), ExpertSide::Cpu { cached }) = (moe(&req.layers[i]), sides[i]) else { return (0.0, 0.0) };
            let hit = hit_rate(e, cached);
            let bytes = touched(e, tokens) * e.bytes_per_expert as f64;
            let fl = tokens * e.n_expert_used as f64 * e.flops_per_token as f64;
            let gpu = if hit > 0.0 { (hit * fl / s.gpu_flops).max(hit * bytes / s.gpu_bytes_per_s) } else { 0.0 };
            let miss = 1.0 - hit;
            let cpu = if miss > 0.0 {
                (miss * fl / s.cpu_flops).max(miss * bytes / s.cpu_bytes_per_s) + s.cpu_handoff_s
            } else {
                0.0
            };
            (gpu, cpu)
        };
        let decode = Phase {
            gpu: (0..n).map(decode_gpu).collect(),
            cpu: (0..n).map(|i| read(i, 1.0) / s.cpu_bytes_per_s).collect(),
            expert_gpu: (0..n).map(|i| experts(i, 1.0).0).collect(),
            expert_cpu: (0..n).map(|i| experts(i, 1.0).1).collect(),
            head_gpu: head / s.gpu_bytes_per_s + s.layer_overhead_s,
            head_cpu: head / s.cpu_bytes_per_s,
            tokens: 1.0,
        };
        let prefill = Phase {
            gpu: (0..n).map(prefill_gpu).collect(),
            cpu: (0..n)
                .map(|i| (layer_flops(i) * batch / s.cpu_flops).max(read(i, batch) / s.cpu_bytes_per_s))
                .collect(),
            expert_gpu: (0..n).map(|i| experts(i, batch).0).collect(),
            expert_cpu: (0..n).map(|i| experts(i, batch).1).collect(),
            head_gpu: decode.head_gpu,
            head_cpu: decode.head_cpu,
            tokens: batch,
        };
        // A streamed layer copies what it keeps on the GPU: all of it, or its attention part; a
        // resident one whose experts are streamed copies them.
        let copied = |i: usize| {
            let sp = split(&req.layers[i], sides[i]);
            (sp.gpu + sp.experts_streamed) as f64
        };
        let experts_copied = |i: usize| split(&req.layers[i], sides[i]).experts_streamed as f64;
        let staged = |bytes: f64| bytes / s.h2d_bytes_per_s + bytes / s.cpu_bytes_per_s;
        Costs {
            decode,
            prefill,
            copy: (0..n).map(|i| copied(i) / s.h2d_bytes_per_s).collect(),
            staged: (0..n).map(|i| staged(copied(i))).collect(),
            expert_copy: (0..n).map(|i| experts_copied(i) / s.h2d_bytes_per_s).collect(),
            expert_staged: (0..n).map(|i| staged(experts_copied(i))).collect(),
            kv_over_pcie: req.layers.iter().map(|l| l.kv_bytes as f64 / s.h2d_bytes_per_s).collect(),
            handoff: s.cpu_handoff_s,
            copied_bytes: (0..n).map(copied).collect(),
            cpu_read_bytes: (0..n).map(|i| read(i, 1.0)).collect(),
            both_bytes_per_s: s.cpu_bytes_per_s + s.h2d_bytes_per_s,
        }
    }

    /// The hybrid bound of `l` in seconds per decoded token: the non-resident bytes moved
    /// through both bandwidths at once, `bytes / (cpu_bytes_per_s + h2d_bytes_per_s)`, plus the
    /// resident layers' compute and the head. No plan that keeps the same layers resident can
    /// decode faster, whatever the split between streamed and cpu layers (compute of the
    /// streamed layers on the GPU is taken as free). `None` when every layer is resident or no
    /// GPU is used: there is nothing to split.
    pub fn hybrid_bound(&self, l: &Layout) -> Option<f64> {
        if !l.gpu || l.cpu + l.streamed == 0 {
            return None;
        }
        let phase = &self.decode;
        let (mut bytes, mut resident) = (0.0f64, 0.0f64);
        for (i, p) in l.placements().into_iter().enumerate() {
            match p {
                Placement::Resident => resident += phase.gpu[i] + phase.expert_gpu[i].max(phase.expert_cpu[i]),
                Placement::Streamed => bytes += self.copied_bytes[i],
                Placement::Cpu => bytes += self.cpu_read_bytes[i],
            }
        }
        Some(bytes / self.both_bytes_per_s + resident + phase.head_gpu)
    }

    /// Seconds per decoded token.
    pub fn decode(&self, l: &Layout, kv_gpu_streamed: usize, staging: bool) -> Timing {
        self.simulate(&self.decode, l, kv_gpu_streamed, staging)
    }

    /// Seconds per prompt token at the request's batch size.
    pub fn prefill(&self, l: &Layout, kv_gpu_streamed: usize, staging: bool) -> Timing {
        self.simulate(&self.prefill, l, kv_gpu_streamed, staging)
    }

    /// Seconds per prompt token at the request's batch size with explicit `placements` on the
    /// GPU (the prefill placement: the decode plan with its cpu layers streamed).
    pub fn prefill_placements(
        &self,
        placements: &[Placement],
        depth: usize,
        kv_gpu_streamed: usize,
        staging: bool,
    ) -> Timing {
        self.simulate_placements(&self.prefill, true, placements.to_vec(), depth, kv_gpu_streamed, staging)
    }

    /// One pass through the layers of `l` in order. Streamed layers, and the experts of resident
    /// layers that stream them, go through a two-stream pipeline with `depth + 1` slots, all
    /// empty when the pass starts.
    fn simulate(&self, phase: &Phase, l: &Layout, kv_gpu_streamed: usize, staging: bool) -> Timing {
        self.simulate_placements(phase, l.gpu, l.placements(), l.depth, kv_gpu_streamed, staging)
    }

    fn simulate_placements(
        &self,
        phase: &Phase,
        gpu: bool,
        placements: Vec<Placement>,
        depth: usize,
        kv_gpu_streamed: usize,
        staging: bool,
    ) -> Timing {
        let mut t = Timing::default();
        // Without a GPU nothing has to cross PCIe around a cpu layer.
        let handoff = if gpu { self.handoff } else { 0.0 };
        // The executor issues the next pass's first copies before the cpu layers that end a
        // pass (after its last streamed layer, or resident layer streaming its experts, has
        // released its slot), so in steady state the
        // copy stream starts that much before the pass does. Nothing else crosses passes: the
        // previous head, sampling and the logits' download are not counted as overlap.
        let uses_slots = |i: usize| {
            placements[i] == Placement::Streamed || (placements[i] == Placement::Resident && self.expert_copy[i] > 0.0)
        };
        let lead = match (0..placements.len()).rposition(uses_slots) {
            Some(last) => (last + 1..placements.len())
                .filter(|&i| placements[i] == Placement::Cpu)
                .map(|i| phase.cpu[i] + handoff)
                .sum(),
            None => 0.0,
        };
        let mut now = 0.0f64;
        let mut slot_free = vec![-lead; depth.max(1) + 1];
        let mut copy_done = -lead;
        // Copies issued (the slot ring), and streamed layers so far (their KV placement).
        let (mut j, mut k) = (0, 0);
        for (i, p) in placements.into_iter().enumerate() {
            match p {
                Placement::Resident if self.expert_copy[i] > 0.0 => {
                    let slot = j % slot_free.len();
                    let copy = if staging { self.expert_staged[i] } else { self.expert_copy[i] };
                    copy_done = copy_done.max(slot_free[slot]) + copy;
                    now = now.max(copy_done) + phase.gpu[i];
                    t.gpu += phase.gpu[i];
                    slot_free[slot] = now;
                    t.pcie += copy;
                    j += 1;
                }
                Placement::Resident => {
                    now += phase.gpu[i];
                    t.gpu += phase.gpu[i];
                    experts_apart(phase, i, &mut now, &mut t);
                }
                Placement::Cpu => {
                    now += phase.cpu[i] + handoff;
                    t.cpu += phase.cpu[i] + handoff;
                }
                Placement::Streamed => {
                    let slot = j % slot_free.len();
                    let copy = if staging { self.staged[i] } else { self.copy[i] };
                    // The copy stream runs ahead from the start of the pass, as far as free
                    // slots allow.
                    copy_done = copy_done.max(slot_free[slot]) + copy;
                    let kv = if k < kv_gpu_streamed { 0.0 } else { self.kv_over_pcie[i] };
                    now = now.max(copy_done) + phase.gpu[i] + kv;
                    t.gpu += phase.gpu[i];
                    experts_apart(phase, i, &mut now, &mut t);
                    slot_free[slot] = now;
                    t.pcie += copy + kv;
                    j += 1;
                    k += 1;
                }
            }
        }
        // The copies and the KV reads share one bus: the pass cannot end before it has moved
        // everything, however the two interleave.
        now = now.max(t.pcie - lead);
        if gpu {
            now += phase.head_gpu;
            t.gpu += phase.head_gpu;
        } else {
            now += phase.head_cpu;
            t.cpu += phase.head_cpu;
        }
        let per_token = |x: f64| x / phase.tokens;
        Timing { seconds: per_token(now), gpu: per_token(t.gpu), pcie: per_token(t.pcie), cpu: per_token(t.cpu) }
    }
}

/// Adds the experts of layer `i` that run apart from their layer: the cached ones on the GPU
/// and the others on the CPU side by side, after the attention part. Nothing for a layer whose
/// experts follow it (so dense plans are timed exactly as before).
fn experts_apart(phase: &Phase, i: usize, now: &mut f64, t: &mut Timing) {
    let (g, c) = (phase.expert_gpu[i], phase.expert_cpu[i]);
    if g == 0.0 && c == 0.0 {
        return;
    }
    *now += g.max(c);
    t.gpu += g;
    t.cpu += c;
}
