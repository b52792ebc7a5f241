//! The prefill placement: in a pass of at least [`PrefillPlacement::min_tokens`] tokens every
//! non-resident layer is streamed to the GPU, the ones decode computes on the CPU included,
//! because a batch reuses each copied weight for every token in it; decode (and any pass below
//! the threshold) keeps the decode plan's split. See the module docs, "Prefill placement".

use super::predict::Timing;
use super::search::{Candidate, Chosen, Layout, Planner};
use super::{GpuBytes, HostBytes, Placement, PlanRequest, PrefillStream};

/// Largest batch the automatic threshold looks at; above it the prefill placement is not used.
pub(super) const AUTO_LIMIT: usize = 1 << 16;

/// The prefill placement of a plan (see [`super::PrefillPlacement`]), before it is built.
#[derive(Clone, Debug)]
pub(super) struct Prefill {
    pub min_tokens: usize,
    pub from_flag: bool,
    pub placements: Vec<Placement>,
    pub cpu_layers_streamed: usize,
    pub depth: usize,
    pub slots: usize,
    pub slot_bytes: u64,
    pub extra_gpu: u64,
    pub extra_host: u64,
    pub pinned: bool,
    /// Per prompt token at the request's batch, with the prefill placement.
    pub timing: Timing,
}

/// Why a plan has no prefill placement, when the reason is worth a note.
pub(super) enum NoPrefill {
    /// Nothing to say: no GPU, no cpu layer, `off`, or a mixture-of-experts model.
    Quiet,
    /// The automatic threshold found no batch at which streaming the cpu layers pays.
    NeverFaster,
    /// The extra slots and KV scratch do not fit the GPU budget left by the decode plan.
    Gpu(u64, u64),
    /// The packed copies of the cpu layers do not fit the host memory left.
    Host(u64, u64),
}

/// The decode layout's placements with every cpu layer streamed.
fn streamed_placements(l: &Layout) -> Vec<Placement> {
    l.placements().into_iter().map(|p| if p == Placement::Cpu { Placement::Streamed } else { p }).collect()
}

/// The prefill placement for the chosen decode plan, or why there is none.
pub(super) fn prefill_placement(p: &Planner, chosen: &Chosen) -> Result<Prefill, NoPrefill> {
    let req = p.req;
    let best = &chosen.best;
    let l = best.layout;
    let dense = req.layers.iter().all(|s| s.experts.is_none());
    if req.prefill_stream == PrefillStream::Off || !l.gpu || l.cpu == 0 || !dense || req.gpu_budget.is_none() {
        return Err(NoPrefill::Quiet);
    }
    let decode = l.placements();
    let placements = streamed_placements(&l);
    let depth = l.depth.max(1);
    // Memory over the decode plan: slots for the largest streamed layer (now cpu layers too),
    // a KV cache of one layer on the GPU that a cpu layer's attention uses during the pass (its
    // own cache stays in host memory for decode), and a packed copy of the cpu layers' weights.
    let cpu_layers: Vec<usize> = (0..decode.len()).filter(|&i| decode[i] == Placement::Cpu).collect();
    let slot_bytes = placements
        .iter()
        .zip(&req.layers)
        .filter(|(p, _)| **p == Placement::Streamed)
        .map(|(_, s)| s.weight_bytes)
        .max()
        .unwrap_or(0);
    let slots = depth + 1;
    let slot_total = (slots as u128) * slot_bytes as u128;
    let kv_scratch = cpu_layers.iter().map(|&i| req.layers[i].kv_bytes).max().unwrap_or(0) as u128;
    let extra_gpu = slot_total.saturating_sub(best.acc.gpu.slots as u128) + kv_scratch;
    let b64 = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
    let gpu_left = p.gpu_budget().saturating_sub(best.acc.gpu_total);
    if extra_gpu > gpu_left {
        return Err(NoPrefill::Gpu(b64(extra_gpu), b64(gpu_left)));
    }
    let cpu_bytes: u128 = cpu_layers.iter().map(|&i| req.layers[i].weight_bytes as u128).sum();
    let host_left = p.host_budget().saturating_sub(best.acc.host_total);
    if cpu_bytes > host_left {
        return Err(NoPrefill::Host(b64(cpu_bytes), b64(host_left)));
    }
    let pinned = best.acc.pinned_total + cpu_bytes <= req.pinned_budget as u128;
    // Pageable copies are staged by the driver: the copy model's staged cost.
    let staging = best.acc.staging || !pinned;
    let streamed = placements.iter().filter(|p| **p == Placement::Streamed).count();
    let time = |costs: &super::predict::Costs, prefill_layout: bool| {
        if prefill_layout {
            costs.prefill_placements(&placements, depth, streamed, staging)
        } else {
            costs.prefill(&l, best.acc.kv_gpu_streamed, best.acc.staging)
        }
    };
    let (min_tokens, from_flag) = match req.prefill_stream {
        PrefillStream::MinTokens(n) => (n.max(1), true),
        _ => (auto_threshold(p, &time).ok_or(NoPrefill::NeverFaster)?, false),
    };
    let timing = time(&p.costs, true);
    Ok(Prefill {
        min_tokens,
        from_flag,
        cpu_layers_streamed: cpu_layers.len(),
        placements,
        depth,
        slots,
        slot_bytes,
        extra_gpu: b64(extra_gpu),
        extra_host: b64(cpu_bytes),
        pinned,
        timing,
    })
}

/// The smallest batch T ≥ 2 at which a pass with every non-resident layer streamed takes less
/// time than the same pass with the decode split (both simulated by the time model at batch T);
/// `None` when even [`AUTO_LIMIT`] tokens do not get there. Decode itself (T = 1) always keeps
/// its split. The search halves an interval: the streamed pass's copies cost the same at any
/// batch while the cpu layers' compute grows with it, so the comparison flips once.
fn auto_threshold(p: &Planner, time: &dyn Fn(&super::predict::Costs, bool) -> Timing) -> Option<usize> {
    let faster = |t: usize| {
        let req = PlanRequest { prefill_tokens: t, ..p.req.clone() };
        let costs = super::predict::Costs::new(&req, &p.sides);
        time(&costs, true).seconds < time(&costs, false).seconds
    };
    if !faster(AUTO_LIMIT) {
        return None;
    }
    if faster(2) {
        return Some(2);
    }
    let (mut lo, mut hi) = (2, AUTO_LIMIT);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if faster(mid) { hi = mid } else { lo = mid }
    }
    Some(hi)
}

/// The plan's parts with the prefill placement's memory added.
pub(super) fn add_memory(pf: &Prefill, gpu: &mut GpuBytes, host: &mut HostBytes) {
    gpu.prefill_extra = pf.extra_gpu;
    host.prefill_weights = pf.extra_host;
}

/// Whether a prompt at the request's batch uses the prefill placement.
pub(super) fn applies(pf: &Prefill, req: &PlanRequest) -> bool {
    req.prefill_tokens.max(1) >= pf.min_tokens
}

/// The candidate's prefill timing a prompt at the request's batch gets.
pub(super) fn prompt_timing(pf: Option<&Prefill>, req: &PlanRequest, c: &Candidate) -> Timing {
    match pf {
        Some(pf) if applies(pf, req) => pf.timing,
        _ => c.prefill,
    }
}
