//! Memory accounting of a layout, the candidate layouts a policy allows, and the choice among
//! them (see the module docs of `plan`).

use super::experts::{self, ExpertSide};
use super::predict::{Costs, Timing};
use super::{
    GpuBytes, HostBytes, KvPlacement, LayerPlan, Placement, Plan, PlanError, PlanRequest, Policy, Predicted,
    PrefillPlacement, Rest, prefill,
};
use crate::units::fmt_size;

/// Above this many layers the resident and streamed counts are tried in steps, to keep the
/// O(n³) search to a few tens of millions of steps.
const FULL_SEARCH_LAYERS: usize = 256;
/// Deeper prefetch than this only costs memory: the copy stream is a single queue.
const DEPTH_LIMIT: usize = 8;
/// The fastest time a plan reports, so that rates stay finite for degenerate (all-zero) models.
const MIN_SECONDS: f64 = 1e-9;

/// Counts of each placement. In band order: resident `0..resident`, cpu
/// `resident..resident + cpu`, streamed the last `streamed`. Interleaved (`interleave`, only
/// for models whose layers all have the same size, so every byte sum is the same as in band
/// order): the streamed layers spread evenly among the GPU layers, so that each copy hides
/// behind the resident layers before it instead of waiting for slots at the end of the pass
/// (measured on an H200: 27 resident + 5 streamed 7B layers as bands reached an overlap of
/// only 0.76), and the cpu layers last. Hybrid (`mix`, when both cpu and streamed layers are
/// placed): the resident band first, then the streamed layers spread evenly among the cpu
/// layers, so that the copies of the next streamed layers run while the CPU computes (see
/// [`Mix`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    /// The GPU is used (the head is on it). `false` means every layer is cpu.
    pub gpu: bool,
    pub resident: usize,
    pub cpu: usize,
    pub streamed: usize,
    /// Prefetch depth: 0 exactly when nothing is streamed.
    pub depth: usize,
    pub interleave: bool,
    /// How cpu and streamed layers are ordered after the resident band.
    pub mix: Mix,
}

/// The order of the cpu and streamed layers of a hybrid layout. The band of `cpu + streamed`
/// layers after the resident ones is cut into `streamed` equal stretches, each holding one
/// streamed layer and the cpu layers around it. Each cpu stretch then covers the copy of a
/// later streamed layer (the executor issues copies before every cpu layer as far as free
/// slots allow), so the CPU's memory bus and the copy engine work at the same time instead of
/// taking turns, as they do in band order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mix {
    /// Resident, then cpu, then streamed (or `interleave`).
    Bands,
    /// Each stretch starts with its streamed layer: the pass ends with cpu layers, during
    /// which the copies of the next token's first streamed layers run.
    StreamedFirst,
    /// Each stretch ends with its streamed layer: the first copies hide behind the first cpu
    /// layers of the same pass.
    CpuFirst,
}

impl Layout {
    /// The placement of each layer, in layer order.
    pub fn placements(&self) -> Vec<Placement> {
        let (r, q, m) = (self.resident, self.cpu, self.streamed);
        if self.mix != Mix::Bands && q > 0 && m > 0 {
            let g = q + m;
            let mut v = vec![Placement::Resident; r];
            let mut band = vec![Placement::Cpu; g];
            for k in 0..m {
                let at = match self.mix {
                    Mix::StreamedFirst => k * g / m,
                    _ => (k + 1) * g / m - 1,
                };
                band[at] = Placement::Streamed;
            }
            v.extend(band);
            return v;
        }
        if !self.interleave || m == 0 || r == 0 {
            let mut v = vec![Placement::Resident; r];
            v.extend(std::iter::repeat_n(Placement::Cpu, q));
            v.extend(std::iter::repeat_n(Placement::Streamed, m));
            return v;
        }
        let g = r + m;
        let mut v = vec![Placement::Resident; g];
        // The k-th streamed layer ends the k-th of m equal stretches of the GPU layers.
        for k in 0..m {
            v[(k + 1) * g / m - 1] = Placement::Streamed;
        }
        v.extend(std::iter::repeat_n(Placement::Cpu, q));
        v
    }
}

/// The memory a layout takes. Sums are u128 so that no request can overflow them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Accounting {
    pub gpu_total: u128,
    pub host_total: u128,
    pub gpu: GpuBytes,
    pub host: HostBytes,
    /// The first this-many streamed layers keep their KV cache on the GPU.
    pub kv_gpu_streamed: usize,
    pub staging: bool,
    pub slots: usize,
    pub slot_bytes: u64,
    pub streamed_weights: u128,
    /// Pinned bytes before saturating into `host.pinned`.
    pub pinned_total: u128,
}

/// A layout that fits, with its accounting and timings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate {
    pub layout: Layout,
    pub acc: Accounting,
    pub decode: Timing,
    pub prefill: Timing,
}

/// The chosen candidate, and the candidate with the same resident set that prefill prefers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chosen {
    pub best: Candidate,
    pub best_prefill_same_resident: Candidate,
}

/// Checks the numbers the search divides by or relies on.
pub(super) fn validate(req: &PlanRequest) -> Result<(), PlanError> {
    if req.layers.is_empty() {
        return Err(PlanError::NoLayers);
    }
    let s = &req.speeds;
    let mut rates = vec![("cpu_bytes_per_s", s.cpu_bytes_per_s), ("cpu_flops", s.cpu_flops)];
    let mut costs = vec![];
    if req.gpu_budget.is_some() {
        rates.extend([
            ("h2d_bytes_per_s", s.h2d_bytes_per_s),
            ("gpu_bytes_per_s", s.gpu_bytes_per_s),
            ("gpu_flops", s.gpu_flops),
        ]);
        costs.extend([("layer_overhead_s", s.layer_overhead_s), ("cpu_handoff_s", s.cpu_handoff_s)]);
    }
    // Bounds that keep every predicted time finite for any sizes (u64::MAX bytes / 1 B/s is
    // still a finite f64); real measurements are many orders of magnitude inside them.
    for (name, value) in rates {
        if !(value.is_finite() && value >= 1.0) {
            return Err(PlanError::BadSpeed { name, value, rule: "of at least 1 per second" });
        }
    }
    for (name, value) in costs {
        if !(value.is_finite() && (0.0..=60.0).contains(&value)) {
            return Err(PlanError::BadSpeed { name, value, rule: "of seconds between 0 and 60" });
        }
    }
    let needs_gpu = match req.policy {
        Policy::AllStreamed => true,
        Policy::GpuLayers(n) => n > 0 || req.rest == Rest::Streamed,
        Policy::Auto | Policy::AllCpu => false,
    };
    if needs_gpu && req.gpu_budget.is_none() {
        return Err(PlanError::NoGpu { flag: policy_flag(req.policy, req.rest) });
    }
    Ok(())
}

/// What was asked, as the user would have typed it.
pub(super) fn policy_flag(policy: Policy, rest: Rest) -> String {
    match (policy, rest) {
        (Policy::Auto, _) => "auto".to_string(),
        (Policy::GpuLayers(n), Rest::Auto) => format!("--gpu-layers {n}"),
        (Policy::GpuLayers(n), Rest::Streamed) => format!("--gpu-layers {n} --stream"),
        (Policy::GpuLayers(n), Rest::Cpu) => format!("--gpu-layers {n} --cpu-layers"),
        (Policy::AllStreamed, _) => "--stream".to_string(),
        (Policy::AllCpu, _) => "--cpu-layers".to_string(),
    }
}

/// Prefix sums over the layers, and the largest weight of every suffix (the slot size when the
/// streamed band starts there). `sides` says where each layer's experts go when the layer is on
/// the GPU; a layer on the GPU keeps (or streams) `on_gpu` bytes, its GPU expert cache holds
/// `cache` bytes and `host_experts` stay in host memory.
pub(super) struct Planner<'a> {
    pub req: &'a PlanRequest,
    pub costs: Costs,
    pub sides: Vec<ExpertSide>,
    weights: Vec<u128>,
    on_gpu: Vec<u128>,
    cache: Vec<u128>,
    host_experts: Vec<u128>,
    /// Expert bytes each layer copies through the slots besides `on_gpu` ([`ExpertSide::Stream`]).
    experts_streamed: Vec<u128>,
    kv: Vec<u128>,
    /// Every layer has the same sizes (so interleaving keeps the band order's byte sums).
    uniform: bool,
}

impl<'a> Planner<'a> {
    /// The planner of `req` with the experts of each layer on the GPU placed as `sides` says.
    pub fn with_sides(req: &'a PlanRequest, sides: Vec<ExpertSide>) -> Planner<'a> {
        let splits: Vec<experts::Split> = req.layers.iter().zip(&sides).map(|(l, s)| experts::split(l, *s)).collect();
        let prefix = |v: &mut dyn Iterator<Item = u64>| {
            std::iter::once(0u128)
                .chain(v.scan(0u128, move |sum, x| {
                    *sum += x as u128;
                    Some(*sum)
                }))
                .collect::<Vec<_>>()
        };
        let first = req.layers.first().zip(splits.first());
        let uniform = req.layers.iter().zip(&splits).all(|(l, sp)| {
            first.is_some_and(|(f, fs)| l.weight_bytes == f.weight_bytes && l.kv_bytes == f.kv_bytes && sp == fs)
        });
        Planner {
            req,
            costs: Costs::new(req, &sides),
            weights: prefix(&mut req.layers.iter().map(|l| l.weight_bytes)),
            on_gpu: prefix(&mut splits.iter().map(|s| s.gpu)),
            cache: prefix(&mut splits.iter().map(|s| s.cache)),
            host_experts: prefix(&mut splits.iter().map(|s| s.host)),
            experts_streamed: prefix(&mut splits.iter().map(|s| s.experts_streamed)),
            kv: prefix(&mut req.layers.iter().map(|l| l.kv_bytes)),
            uniform,
            sides,
        }
    }

    fn n(&self) -> usize {
        self.req.layers.len()
    }

    pub fn gpu_budget(&self) -> u128 {
        self.req.gpu_budget.unwrap_or(0) as u128
    }

    pub fn host_budget(&self) -> u128 {
        self.req.host_available.saturating_sub(self.req.host_margin) as u128
    }

    /// Context overhead + scratch + head: what the GPU holds before any layer.
    pub fn gpu_fixed(&self) -> u128 {
        let r = self.req;
        r.context_overhead_bytes as u128 + r.scratch_bytes as u128 + r.head_bytes as u128
    }

    /// The memory `l` takes. Streamed layers are computed on the GPU, so their KV caches live
    /// there too (the executor has no path for attention over a host cache from the GPU).
    /// Summed layer by layer over the layout's placements, so any order is counted exactly.
    pub fn account(&self, l: &Layout) -> Accounting {
        let req = self.req;
        let one = |v: &[u128], i: usize| v[i + 1] - v[i];
        let (mut resident_w, mut resident_kv, mut streamed_kv_gpu, mut streamed_weights) = (0u128, 0u128, 0u128, 0);
        let (mut expert_cache, mut cpu_experts, mut cpu_w, mut host_kv) = (0u128, 0u128, 0u128, 0u128);
        // Resident layers that stream their experts use the slots too.
        let mut resident_experts_streamed = 0u128;
        let mut slot_bytes = 0u64;
        let b64 = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
        for (i, p) in l.placements().into_iter().enumerate() {
            match p {
                Placement::Resident => {
                    resident_w += one(&self.on_gpu, i);
                    resident_kv += one(&self.kv, i);
                    let e = one(&self.experts_streamed, i);
                    resident_experts_streamed += e;
                    slot_bytes = slot_bytes.max(b64(e));
                }
                Placement::Streamed => {
                    let w = one(&self.on_gpu, i) + one(&self.experts_streamed, i);
                    streamed_weights += w;
                    streamed_kv_gpu += one(&self.kv, i);
                    slot_bytes = slot_bytes.max(b64(w));
                }
                Placement::Cpu => {
                    cpu_w += one(&self.weights, i);
                    host_kv += one(&self.kv, i);
                }
            }
            // Expert caches and experts left on the host, of the layers on the GPU.
            if p != Placement::Cpu {
                expert_cache += one(&self.cache, i);
                cpu_experts += one(&self.host_experts, i);
            }
        }
        let streams = l.streamed > 0 || resident_experts_streamed > 0;
        if !streams {
            slot_bytes = 0;
        }
        streamed_weights += resident_experts_streamed;
        let slots = if streams { l.depth.max(1) + 1 } else { 0 };
        let slot_total = slots as u128 * slot_bytes as u128;
        let fixed = if l.gpu { self.gpu_fixed() } else { 0 };
        let base = fixed + resident_w + resident_kv + slot_total + expert_cache;
        let kv_gpu_streamed = l.streamed;
        let gpu_total = base + streamed_kv_gpu;

        let staging = streams && streamed_weights > req.pinned_budget as u128;
        let pinned = if staging { slot_total } else { streamed_weights };
        let staged = if staging { streamed_weights } else { 0 };
        let head_and_scratch = if l.gpu { 0 } else { req.head_bytes as u128 + req.scratch_bytes as u128 };
        let embedding = if req.weights_mapped { 0 } else { req.embedding_bytes as u128 };
        let host_total = pinned + staged + cpu_w + host_kv + head_and_scratch + embedding + cpu_experts;

        let b = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
        Accounting {
            gpu_total,
            host_total,
            gpu: GpuBytes {
                context_overhead: if l.gpu { req.context_overhead_bytes } else { 0 },
                scratch: if l.gpu { req.scratch_bytes } else { 0 },
                head: if l.gpu { req.head_bytes } else { 0 },
                resident_weights: b(resident_w),
                kv: b(resident_kv + streamed_kv_gpu),
                slots: b(slot_total),
                expert_cache: b(expert_cache),
                prefill_extra: 0,
            },
            host: HostBytes {
                pinned: b(pinned),
                staged_weights: b(staged),
                cpu_weights: b(cpu_w),
                kv: b(host_kv),
                head_and_scratch: b(head_and_scratch),
                embedding: b(embedding),
                cpu_experts: b(cpu_experts),
                prefill_weights: 0,
            },
            kv_gpu_streamed,
            staging,
            slots,
            slot_bytes,
            streamed_weights,
            pinned_total: pinned,
        }
    }

    /// The timings of `l`, or which budget it misses.
    pub fn evaluate(&self, l: &Layout) -> Outcome {
        let acc = self.account(l);
        if acc.gpu_total > self.gpu_budget() {
            return Outcome::Misses(Misfit::Gpu, acc);
        }
        if acc.staging && acc.pinned_total > self.req.pinned_budget as u128 {
            return Outcome::Misses(Misfit::Pinned, acc);
        }
        if acc.host_total > self.host_budget() {
            return Outcome::Misses(Misfit::Host, acc);
        }
        let decode = self.costs.decode(l, acc.kv_gpu_streamed, acc.staging);
        let prefill = self.costs.prefill(l, acc.kv_gpu_streamed, acc.staging);
        Outcome::Fits(Candidate { layout: *l, acc, decode, prefill })
    }

    /// Every layout `policy` allows, in the order ties are broken: more resident layers first,
    /// then more streamed, then shallower prefetch.
    fn candidates(&self, policy: Policy) -> Vec<Layout> {
        let n = self.n();
        let step = n.div_ceil(FULL_SEARCH_LAYERS).max(1);
        let depth = self.req.max_prefetch_depth.clamp(1, DEPTH_LIMIT);
        let gpu = self.req.gpu_budget.is_some();
        let no_gpu =
            Layout { gpu: false, resident: 0, cpu: n, streamed: 0, depth: 0, interleave: false, mix: Mix::Bands };
        // Interleaving keeps every byte sum of the band order only when all layers are alike;
        // `--gpu-layers N` promises the first N layers resident.
        let interleave = self.uniform && !matches!(policy, Policy::GpuLayers(_));
        // Resident layers that stream their experts need a prefetch depth even with no
        // streamed layer.
        let experts_stream = self.sides.contains(&ExpertSide::Stream);
        let mut out = Vec::new();
        let mut push = |r: usize, m: usize| {
            let depths = if m == 0 && !(experts_stream && r > 0) { 0..=0 } else { 1..=depth };
            for d in depths {
                let l = Layout {
                    gpu: true,
                    resident: r,
                    cpu: n - r - m,
                    streamed: m,
                    depth: d,
                    interleave,
                    mix: Mix::Bands,
                };
                out.push(l);
                // Hybrid orders after the band order, so that a tie keeps the bands.
                if l.cpu > 0 && m > 0 {
                    for mix in [Mix::CpuFirst, Mix::StreamedFirst] {
                        out.push(Layout { interleave: false, mix, ..l });
                    }
                }
            }
        };
        match policy {
            Policy::Auto if gpu => {
                for r in counts(n, step) {
                    for m in counts(n - r, step) {
                        push(r, m);
                    }
                }
            }
            Policy::GpuLayers(k) if gpu => {
                let r = k.min(n);
                match self.req.rest {
                    Rest::Auto => counts(n - r, step).for_each(|m| push(r, m)),
                    Rest::Streamed => push(r, n - r),
                    Rest::Cpu => push(r, 0),
                }
            }
            Policy::AllStreamed if gpu => counts(n, step).for_each(|r| push(r, n - r)),
            Policy::AllCpu if gpu => counts(n, step).for_each(|r| push(r, 0)),
            _ => {}
        }
        // Leaving the GPU unused is always allowed unless the policy puts something on it.
        let gpu_optional = match policy {
            Policy::Auto | Policy::AllCpu => true,
            Policy::GpuLayers(k) => k == 0 && self.req.rest != Rest::Streamed,
            Policy::AllStreamed => false,
        };
        if gpu_optional {
            out.push(no_gpu);
        }
        out
    }

    /// The fastest layout `policy` allows that fits, or why none does.
    pub fn choose(&self, policy: Policy) -> Result<Chosen, PlanError> {
        let mut best: Option<Candidate> = None;
        let mut best_prefill: Vec<Option<Candidate>> = vec![None; self.n() + 2];
        let mut closest: [Option<(u128, Layout, Accounting)>; 3] = [None; 3];
        for layout in self.candidates(policy) {
            let c = match self.evaluate(&layout) {
                Outcome::Fits(c) => c,
                Outcome::Misses(misfit, acc) => {
                    let need = match misfit {
                        Misfit::Gpu => acc.gpu_total,
                        Misfit::Pinned => acc.pinned_total,
                        Misfit::Host => acc.host_total,
                    };
                    let slot = &mut closest[misfit as usize];
                    if slot.as_ref().is_none_or(|(best_need, _, _)| need < *best_need) {
                        *slot = Some((need, layout, acc));
                    }
                    continue;
                }
            };
            if best.as_ref().is_none_or(|b| faster(&c.decode, &c.prefill, &b.decode, &b.prefill)) {
                best = Some(c);
            }
            let key = if layout.gpu { layout.resident } else { self.n() + 1 };
            if best_prefill[key].as_ref().is_none_or(|b| faster(&c.prefill, &c.decode, &b.prefill, &b.decode)) {
                best_prefill[key] = Some(c);
            }
        }
        match best {
            Some(best) => {
                let key = if best.layout.gpu { best.layout.resident } else { self.n() + 1 };
                let best_prefill_same_resident = best_prefill[key].unwrap_or(best);
                Ok(Chosen { best, best_prefill_same_resident })
            }
            None => Err(self.misfit_error(policy, closest)),
        }
    }

    /// The error for the layout that came closest, preferring the one that got furthest (past
    /// the GPU check to the pinned check, past that to the host check).
    fn misfit_error(&self, policy: Policy, closest: [Option<(u128, Layout, Accounting)>; 3]) -> PlanError {
        let req = self.req;
        let flag = match policy {
            Policy::Auto => "the model".to_string(),
            _ => policy_flag(policy, req.rest),
        };
        let b = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
        if let Some((need, l, acc)) = closest[Misfit::Host as usize] {
            let hint = match policy {
                Policy::AllCpu => "let layers stream instead (--stream), or use a shorter context or a smaller model",
                Policy::GpuLayers(_) => "raise --gpu-layers, or use a shorter context or a smaller model",
                _ => "use a shorter context or a smaller model, or give strata more GPU memory (--gpu-memory)",
            };
            return PlanError::HostMemory {
                flag,
                need: b(need),
                parts: host_parts(&l, &acc),
                available: req.host_available,
                margin: req.host_margin,
                hint,
            };
        }
        if let Some((need, _, acc)) = closest[Misfit::Pinned as usize] {
            return PlanError::PinnedMemory {
                flag,
                need: b(need),
                slots: acc.slots,
                slot: acc.slot_bytes,
                budget: req.pinned_budget,
                hint: "compute the other layers on the CPU (--cpu-layers)",
            };
        }
        // Every candidate uses the GPU here (the GPU-free layout always fits the GPU budget), so
        // a GPU misfit was recorded; the fallback only guards against a future change.
        let (need, l, acc) = closest[Misfit::Gpu as usize].unwrap_or_else(|| {
            let l = Layout {
                gpu: true,
                resident: 0,
                cpu: self.n(),
                streamed: 0,
                depth: 0,
                interleave: false,
                mix: Mix::Bands,
            };
            let acc = self.account(&l);
            (acc.gpu_total, l, acc)
        });
        let hint = match (policy, req.rest) {
            (Policy::GpuLayers(_), Rest::Streamed) => "lower --gpu-layers, raise --gpu-memory, or drop --stream",
            (Policy::GpuLayers(_), _) => "lower --gpu-layers or raise --gpu-memory",
            (Policy::AllStreamed, _) => "raise --gpu-memory or compute the layers on the CPU (--cpu-layers)",
            _ => "raise --gpu-memory",
        };
        PlanError::GpuMemory {
            flag,
            need: b(need),
            parts: gpu_parts(&l, &acc),
            budget: req.gpu_budget.unwrap_or(0),
            hint,
        }
    }

    /// The plan of a chosen candidate.
    pub fn build(&self, chosen: &Chosen, warnings: Vec<String>, pf: Option<prefill::Prefill>) -> Plan {
        let req = self.req;
        let c = &chosen.best;
        let l = &c.layout;
        let placements = l.placements();
        let layers: Vec<LayerPlan> = req
            .layers
            .iter()
            .zip(placements)
            .zip(&self.sides)
            .enumerate()
            .map(|(index, ((spec, placement), side))| {
                // Streamed layers are computed on the GPU and keep their KV cache there.
                let kv_placement = if placement == Placement::Cpu { KvPlacement::Host } else { KvPlacement::Gpu };
                LayerPlan {
                    index,
                    placement,
                    weight_bytes: spec.weight_bytes,
                    kv_bytes: spec.kv_bytes,
                    kv_placement,
                    experts: experts::layer_plan(spec, placement, *side),
                }
            })
            .collect();
        let expert_summary = experts::summary(req, &layers, &self.sides);
        let decode_s = c.decode.seconds.max(MIN_SECONDS);
        let prefill_s = prefill::prompt_timing(pf.as_ref(), req, c).seconds.max(MIN_SECONDS);
        let (mut gpu_bytes, mut host_bytes) = (c.acc.gpu, c.acc.host);
        if let Some(pf) = &pf {
            prefill::add_memory(pf, &mut gpu_bytes, &mut host_bytes);
        }
        let prefill_placement = pf.map(|pf| PrefillPlacement {
            min_tokens: pf.min_tokens,
            threshold_from: if pf.from_flag { "--prefill-stream-min" } else { "auto" }.to_string(),
            cpu_layers_streamed: pf.cpu_layers_streamed,
            slots: pf.slots,
            slot_bytes: pf.slot_bytes,
            prefetch_depth: pf.depth,
            extra_gpu_bytes: pf.extra_gpu,
            extra_host_bytes: pf.extra_host,
            pinned: pf.pinned,
            tokens_per_second: 1.0 / pf.timing.seconds.max(MIN_SECONDS),
            decode_placement_tokens_per_second: 1.0 / c.prefill.seconds.max(MIN_SECONDS),
            placements: pf.placements,
        });
        let bound_s = self.costs.hybrid_bound(l).map(|b| b.max(MIN_SECONDS));
        Plan {
            layers,
            gpu_budget_bytes: req.gpu_budget.unwrap_or(0),
            gpu_bytes_planned: gpu_bytes.total(),
            gpu_bytes,
            host_pinned_bytes_planned: c.acc.host.pinned,
            host_budget_bytes: req.host_available.saturating_sub(req.host_margin),
            host_bytes_planned: host_bytes.total(),
            host_bytes,
            head_on_gpu: l.gpu,
            slots: c.acc.slots,
            slot_bytes: c.acc.slot_bytes,
            prefetch_depth: l.depth,
            staging: c.acc.staging,
            predicted: Predicted {
                decode_tokens_per_second: 1.0 / decode_s,
                prefill_tokens_per_second: 1.0 / prefill_s,
                decode_seconds_per_token: decode_s,
                prefill_seconds_per_token: prefill_s,
                bound: c.decode.bound().to_string(),
                hybrid_bound_tokens_per_second: bound_s.map(|b| 1.0 / b),
                hybrid_efficiency: bound_s.map(|b| b / decode_s),
            },
            prefill_batch: req.prefill_tokens.max(1),
            speeds_source: req.speeds.source_for(req.gpu_budget.is_some()),
            cpu_speeds_source: req.speeds.source,
            gpu_speeds_source: req.speeds.gpu_source,
            speeds: req.speeds,
            warnings,
            policy: policy_flag(req.policy, req.rest),
            experts: expert_summary,
            prefill_placement,
        }
    }
}

/// A layout that fits, or the budget it misses and what it would take.
pub(super) enum Outcome {
    Fits(Candidate),
    Misses(Misfit, Accounting),
}

/// Which budget a layout missed; the index into `closest` in [`Planner::choose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Misfit {
    Gpu = 0,
    Pinned = 1,
    Host = 2,
}

/// Ties on the first time are broken by the second.
fn faster(a: &Timing, a2: &Timing, b: &Timing, b2: &Timing) -> bool {
    a.seconds < b.seconds || (a.seconds == b.seconds && a2.seconds < b2.seconds)
}

/// `hi, hi - step, ..., 0`, always with both ends: the all-or-nothing layouts must be tried.
fn counts(hi: usize, step: usize) -> impl Iterator<Item = usize> {
    (0..=hi).rev().step_by(step).chain((!hi.is_multiple_of(step)).then_some(0))
}

/// "3.62 GiB for 30 resident layers' weights, ..." for a GPU memory error.
fn gpu_parts(l: &Layout, acc: &Accounting) -> String {
    let g = &acc.gpu;
    let mut parts = Vec::new();
    if l.resident > 0 {
        parts.push(format!("{} for {} resident layers' weights", fmt_size(g.resident_weights), l.resident));
    }
    if g.kv > 0 {
        parts.push(format!("{} of KV cache", fmt_size(g.kv)));
    }
    if acc.slots > 0 {
        parts.push(format!("{} for {} streaming slots of {}", fmt_size(g.slots), acc.slots, fmt_size(acc.slot_bytes)));
    }
    if g.expert_cache > 0 {
        parts.push(format!("{} for GPU expert caches", fmt_size(g.expert_cache)));
    }
    parts.push(format!(
        "{} for the output head, scratch and CUDA context",
        fmt_size(g.head + g.scratch + g.context_overhead)
    ));
    parts.join(", ")
}

/// "2.10 GiB pinned for 12 streamed layers, ..." for a host memory error.
fn host_parts(l: &Layout, acc: &Accounting) -> String {
    let h = &acc.host;
    let mut parts = Vec::new();
    if l.streamed > 0 {
        if acc.staging {
            parts.push(format!(
                "{} pinned ring and {} of pageable weights for {} streamed layers",
                fmt_size(h.pinned),
                fmt_size(h.staged_weights),
                l.streamed
            ));
        } else {
            parts.push(format!("{} pinned for {} streamed layers", fmt_size(h.pinned), l.streamed));
        }
    }
    if l.cpu > 0 {
        parts.push(format!("{} of weights for {} cpu layers", fmt_size(h.cpu_weights), l.cpu));
    }
    if h.cpu_experts > 0 {
        parts.push(format!("{} of experts computed on the CPU", fmt_size(h.cpu_experts)));
    }
    if h.kv > 0 {
        parts.push(format!("{} of KV cache", fmt_size(h.kv)));
    }
    if h.head_and_scratch > 0 {
        parts.push(format!("{} for the output head and scratch", fmt_size(h.head_and_scratch)));
    }
    if h.embedding > 0 {
        parts.push(format!("{} for the embedding table", fmt_size(h.embedding)));
    }
    if parts.is_empty() {
        parts.push("nothing but the margin".to_string());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{LayerSpec, assumed_speeds};

    /// At the same split (4 resident, 8 cpu, 4 streamed, prefetch 1), spreading the streamed
    /// layers among the cpu layers lets the copies run while the CPU computes: faster than the
    /// bands, where the copies beyond the first slots wait for the cpu band to end. Both
    /// hybrid orders count the same memory as the bands.
    #[test]
    fn hybrid_order_beats_bands_at_the_same_split() {
        let layer =
            LayerSpec { weight_bytes: 100 << 20, kv_bytes: 1 << 20, flops_per_token: 400_000_000, experts: None };
        let mut speeds = assumed_speeds();
        speeds.h2d_bytes_per_s = 20e9;
        speeds.cpu_bytes_per_s = 20e9;
        let req = PlanRequest {
            layers: vec![layer; 16],
            gpu_budget: Some(64 << 30),
            host_available: 64 << 30,
            pinned_budget: 32 << 30,
            speeds,
            ..PlanRequest::default()
        };
        let p = Planner::with_sides(&req, vec![ExpertSide::Follow; 16]);
        let bands =
            Layout { gpu: true, resident: 4, cpu: 8, streamed: 4, depth: 1, interleave: false, mix: Mix::Bands };
        let decode = |l: &Layout| match p.evaluate(l) {
            Outcome::Fits(c) => (c.decode.seconds, c.acc.gpu_total, c.acc.host_total),
            Outcome::Misses(..) => panic!("{l:?} does not fit"),
        };
        let (band_s, gpu, host) = decode(&bands);
        for mix in [Mix::CpuFirst, Mix::StreamedFirst] {
            let l = Layout { mix, ..bands };
            let placements = l.placements();
            assert_eq!(placements.iter().filter(|x| **x == Placement::Streamed).count(), 4, "{placements:?}");
            let (s, g, h) = decode(&l);
            assert!(s < 0.9 * band_s, "{mix:?}: {s} vs bands {band_s}");
            assert_eq!((g, h), (gpu, host), "{mix:?}");
        }
        // The order each mix gives.
        use Placement::{Cpu as C, Resident as R, Streamed as S};
        let first = Layout { mix: Mix::StreamedFirst, ..bands }.placements();
        assert_eq!(first, [R, R, R, R, S, C, C, S, C, C, S, C, C, S, C, C]);
        let last = Layout { mix: Mix::CpuFirst, ..bands }.placements();
        assert_eq!(last, [R, R, R, R, C, C, S, C, C, S, C, C, S, C, C, S]);
    }
}
