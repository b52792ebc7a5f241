//! The time model of the module docs: per-layer costs, and the copy/compute pipeline simulated
//! over one token (decode) or one batch (prefill).

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
    gpu: Vec<f64>,
    cpu: Vec<f64>,
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
    /// Reading a layer's KV cache over PCIe when it is on the host but the layer runs on the GPU.
    kv_over_pcie: Vec<f64>,
    handoff: f64,
}

impl Costs {
    pub fn new(req: &PlanRequest) -> Costs {
        let s = &req.speeds;
        let batch = req.prefill_tokens.max(1) as f64;
        let w = |i: usize| req.layers[i].weight_bytes as f64;
        let flops = |i: usize| req.layers[i].flops_per_token as f64;
        let n = req.layers.len();
        let head = req.head_bytes as f64;
        // Decode reads every weight once per token: memory bound on both sides.
        let decode = Phase {
            gpu: (0..n).map(|i| w(i) / s.gpu_bytes_per_s + s.layer_overhead_s).collect(),
            cpu: (0..n).map(|i| w(i) / s.cpu_bytes_per_s).collect(),
            head_gpu: head / s.gpu_bytes_per_s + s.layer_overhead_s,
            head_cpu: head / s.cpu_bytes_per_s,
            tokens: 1.0,
        };
        // Prefill reads the weights once per batch and does `batch` tokens of compute: the slower
        // of the two (a roofline), so a tiny batch is still memory bound.
        let prefill = Phase {
            gpu: (0..n)
                .map(|i| (flops(i) * batch / s.gpu_flops).max(w(i) / s.gpu_bytes_per_s) + s.layer_overhead_s)
                .collect(),
            cpu: (0..n).map(|i| (flops(i) * batch / s.cpu_flops).max(w(i) / s.cpu_bytes_per_s)).collect(),
            head_gpu: decode.head_gpu,
            head_cpu: decode.head_cpu,
            tokens: batch,
        };
        Costs {
            decode,
            prefill,
            copy: (0..n).map(|i| w(i) / s.h2d_bytes_per_s).collect(),
            staged: (0..n).map(|i| w(i) / s.h2d_bytes_per_s + w(i) / s.cpu_bytes_per_s).collect(),
            kv_over_pcie: req.layers.iter().map(|l| l.kv_bytes as f64 / s.h2d_bytes_per_s).collect(),
            handoff: s.cpu_handoff_s,
        }
    }

    /// Seconds per decoded token.
    pub fn decode(&self, l: &Layout, kv_gpu_streamed: usize, staging: bool) -> Timing {
        self.simulate(&self.decode, l, kv_gpu_streamed, staging)
    }

    /// Seconds per prompt token at the request's batch size.
    pub fn prefill(&self, l: &Layout, kv_gpu_streamed: usize, staging: bool) -> Timing {
        self.simulate(&self.prefill, l, kv_gpu_streamed, staging)
    }

    /// One pass through the layers of `l` in order. Streamed layers go through a two-stream
    /// pipeline with `depth + 1` slots, all empty when the pass starts.
    fn simulate(&self, phase: &Phase, l: &Layout, kv_gpu_streamed: usize, staging: bool) -> Timing {
        let mut t = Timing::default();
        // Without a GPU nothing has to cross PCIe around a cpu layer.
        let handoff = if l.gpu { self.handoff } else { 0.0 };
        let mut now = 0.0f64;
        let mut slot_free = vec![0.0f64; l.depth + 1];
        let mut copy_done = 0.0f64;
        let mut j = 0;
        for (i, p) in l.placements().into_iter().enumerate() {
            match p {
                Placement::Resident => {
                    now += phase.gpu[i];
                    t.gpu += phase.gpu[i];
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
                    let kv = if j < kv_gpu_streamed { 0.0 } else { self.kv_over_pcie[i] };
                    now = now.max(copy_done) + phase.gpu[i] + kv;
                    slot_free[slot] = now;
                    t.gpu += phase.gpu[i];
                    t.pcie += copy + kv;
                    j += 1;
                }
            }
        }
        // The copies and the KV reads share one bus: the pass cannot end before it has moved
        // everything, however the two interleave.
        now = now.max(t.pcie);
        if l.gpu {
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
