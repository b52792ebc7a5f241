//! Experts placed apart from their layer (the planner's "experts on the CPU", `--cpu-moe`,
//! `--n-cpu-moe N`, `--expert-cache SIZE`): the layer's attention part runs on its device (the
//! GPU or the host test device), the FFN input `h` moves to the host, the routed experts run
//! there on the memory-mapped expert tensors, and their sum moves back and is added. A layer
//! may also hold an [`ExpertCache`]: copies of its hottest experts on the device, refilled
//! between passes from the routing counts; in a pass the routed experts it holds run on the
//! device and the others on the CPU, and the two sums are added.
//!
//! On a GPU the cache is filled on the compute stream between passes (not yet on the copy
//! stream, so a refill is not hidden behind compute); on the host test device a "copy" is a
//! plain host copy counted against the device's budget.

use std::time::Instant;

use strata_runtime::plan::{ExpertPlacement, Plan};
use strata_tensor::{DType, Stream, Tensor, ops};

use crate::arch::Role;
use crate::forward::{
    ExpertRef, ExpertWeights, LayerCtx, LayerRef, Routing, attention_output_and_router, ffn_input_and_out,
    ffn_residual, layer_attention, moe_experts,
};
use crate::weights::LayerWeights;
use crate::{Error, Result};

/// Where a layer's experts run, for [`crate::Session::with_layout_experts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertExec {
    /// With the layer: on its device, from its own weights (dense layers always).
    #[default]
    WithLayer,
    /// On the CPU from the model's mapped weights while the rest of the layer runs on its
    /// device, with a device cache of the `cached` hottest experts (0: none).
    Cpu {
        /// Experts the device cache holds.
        cached: usize,
    },
    /// A resident layer's attention part stays on its device and its expert tensors are
    /// streamed through the streamer's slots each pass, like a streamed layer's weights but
    /// only the expert group (prefill, or a budget that holds attention but not experts). On
    /// a streamed or cpu layer this is [`ExpertExec::WithLayer`].
    Streamed,
}

/// The expert placement of each layer of `p` (WithLayer for dense layers and cpu layers;
/// Streamed for a resident layer whose experts the plan streams).
pub fn expert_execs_of(p: &Plan) -> Vec<ExpertExec> {
    p.layers
        .iter()
        .map(|l| match l.experts.map(|e| (e.placement, e.cached)) {
            Some((ExpertPlacement::Cpu, _)) if l.placement != strata_runtime::plan::Placement::Cpu => {
                ExpertExec::Cpu { cached: 0 }
            }
            Some((ExpertPlacement::Cached, k)) => ExpertExec::Cpu { cached: k },
            Some((ExpertPlacement::Streamed, _)) if l.placement == strata_runtime::plan::Placement::Resident => {
                ExpertExec::Streamed
            }
            _ => ExpertExec::WithLayer,
        })
        .collect()
}

/// The layer's tensors without its experts, on the stream's device (a resident layer whose
/// experts run on the CPU).
pub(crate) fn attention_part(w: &LayerWeights, s: &Stream, layer: usize) -> Result<LayerWeights> {
    let roles: Vec<Role> = w.roles().into_iter().filter(|r| !r.is_expert()).collect();
    let group = roles
        .iter()
        .map(|r| {
            let t = w.get(*r).ok_or_else(|| Error::invalid(format!("layer {layer} lacks {r:?}")))?;
            Ok(t.to_device(s, &format!("blk.{layer}.{}", r.gguf_suffix()))?)
        })
        .collect::<Result<Vec<_>>>()?;
    LayerWeights::from_group(group, &roles)
}

/// Bytes of a layer's expert tensors.
pub fn expert_bytes(w: &LayerWeights) -> u64 {
    w.roles().iter().filter(|r| r.is_expert()).filter_map(|r| w.get(*r)).map(|t| t.len_bytes() as u64).sum()
}

/// Copies of a layer's hottest experts on a device, and the routing counts that choose them.
pub(crate) struct ExpertCache {
    capacity: usize,
    /// Expert e's copy, if held.
    held: Vec<Option<ExpertWeights>>,
    /// Tokens routed to each expert since the session started.
    counts: Vec<u64>,
}

/// What the experts of one pass did, for `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ExpertPassStats {
    /// (token, expert) pairs routed in layers whose experts are on the CPU.
    pub routed: u64,
    /// Of those, the pairs whose expert was in the layer's device cache.
    pub hits: u64,
    /// Wall time of the CPU side (download of the input, CPU experts, upload of the sum).
    pub cpu_s: f64,
    /// Bytes copied into the expert caches after the pass.
    pub refill_bytes: u64,
}

impl ExpertPassStats {
    /// hits / routed (0 when nothing was routed).
    pub fn hit_rate(&self) -> f64 {
        if self.routed == 0 { 0.0 } else { self.hits as f64 / self.routed as f64 }
    }
}

impl ExpertCache {
    pub(crate) fn new(n_expert: usize, capacity: usize) -> ExpertCache {
        ExpertCache {
            capacity: capacity.min(n_expert),
            held: (0..n_expert).map(|_| None).collect(),
            counts: vec![0; n_expert],
        }
    }

    fn holds(&self, e: usize) -> bool {
        self.held.get(e).is_some_and(|w| w.is_some())
    }

    /// Refills the cache with the `capacity` experts routed to most so far (ties: the lower
    /// index), copying in those it lacks from the layer's mapped weights `host` and dropping
    /// the others. Returns the bytes copied.
    pub(crate) fn refill(&mut self, host: LayerRef<'_>, s: &Stream, layer: usize) -> Result<u64> {
        if self.capacity == 0 {
            return Ok(0);
        }
        let mut order: Vec<usize> = (0..self.counts.len()).filter(|&e| self.counts[e] > 0).collect();
        order.sort_by(|&a, &b| self.counts[b].cmp(&self.counts[a]).then(a.cmp(&b)));
        order.truncate(self.capacity);
        let mut want = vec![false; self.held.len()];
        for &e in &order {
            want[e] = true;
        }
        let (gate, up, down) = (host.req(Role::GateExps)?, host.req(Role::UpExps)?, host.req(Role::DownExps)?);
        let mut copied = 0;
        for (e, slot) in self.held.iter_mut().enumerate() {
            match (want[e], slot.is_some()) {
                (true, false) => {
                    let w = ExpertWeights::from_stacked(gate, up, down, e)?
                        .to_device(s, &format!("blk.{layer} cached expert {e}"))?;
                    copied += w.bytes();
                    *slot = Some(w);
                }
                (false, true) => *slot = None,
                _ => {}
            }
        }
        Ok(copied)
    }
}

/// One layer whose experts run on the CPU: attention and router on `s` with the attention
/// part `attn`, the routed experts the cache holds on `s`, the others on the host from
/// `host` (the model's mapped layer), then the sum and the residual on `s`.
pub(crate) fn layer_forward_cpu_experts(
    cx: &mut LayerCtx<'_>,
    attn: LayerRef<'_>,
    host: LayerRef<'_>,
    x: &mut Tensor,
    cache: &mut ExpertCache,
    stats: &mut ExpertPassStats,
) -> Result<()> {
    layer_attention(cx, attn, x)?;
    let (cfg, sc, s) = (cx.cfg, &mut *cx.sc, cx.s);
    let Some(routing) = attention_output_and_router(cfg, attn, x, sc, false, s)? else {
        return Ok(()); // a dense layer: nothing to place apart
    };
    count(cache, &routing, stats)?;
    let (h, out) = ffn_input_and_out(sc);
    let t0 = Instant::now();
    let on_host = matches!(s, Stream::Host);
    let h_host = if on_host { None } else { Some(h.to_host(s)?) };
    // The cached experts first: on a GPU they run while the CPU computes the others.
    let held = |e: usize| cache.holds(e);
    moe_experts(cfg, ExpertRef::PerExpert(&cache.held), h, &routing, &held, out, s)?;
    let mut cpu_out = Tensor::zeros(DType::F32, out.shape(), &Stream::Host, "cpu expert sum")?;
    let h_cpu = h_host.as_ref().unwrap_or(h);
    moe_experts(cfg, ExpertRef::from_layer(host)?, h_cpu, &routing, &|e| !held(e), &mut cpu_out, &Stream::Host)?;
    if on_host {
        ops::add_inplace(out, &cpu_out, s)?;
    } else {
        let back = cpu_out.to_device(s, "cpu expert sum")?;
        ops::add_inplace(out, &back, s)?;
    }
    stats.cpu_s += t0.elapsed().as_secs_f64();
    ffn_residual(attn, x, sc, cfg, s)
}

/// Adds the pass's routing to the cache's counts and the stats' hit counters.
fn count(cache: &mut ExpertCache, routing: &Routing, stats: &mut ExpertPassStats) -> Result<()> {
    for &e in &routing.experts {
        let c = cache.counts.get_mut(e).ok_or_else(|| Error::invalid(format!("routed to expert {e}")))?;
        *c += 1;
        stats.routed += 1;
        if cache.holds(e) {
            stats.hits += 1;
        }
    }
    Ok(())
}
