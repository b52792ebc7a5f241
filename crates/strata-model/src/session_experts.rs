//! Experts placed apart from their layer (the planner's "experts on the CPU", `--cpu-moe`,
//! `--n-cpu-moe N`, `--expert-cache SIZE`): the layer's attention part runs on its device (the
//! GPU or the host test device), the FFN input `h` moves to the host, the routed experts run
//! there on the memory-mapped expert tensors, and their sum moves back and is added. A layer
//! may also hold an `ExpertCache`: copies of its hottest experts on the device, refilled
//! between passes from the routing counts; in a pass the routed experts it holds run on the
//! device and the others on the CPU, and the two sums are added.
//!
//! The routing counts decay with a half-life of [`COUNT_HALF_LIFE_TOKENS`] tokens, so the cache
//! follows a conversation whose routing shifts instead of keeping the experts of its first
//! prompt. On a GPU the cache is refilled between passes on a copy stream of its own, and the
//! compute stream waits for an event recorded after the copies, so compute never reads a
//! half-written expert while the copies overlap the end of the pass; on the host test device a
//! "copy" is a plain host copy (done before the call returns, so ordered by construction)
//! counted against the device's budget.

use std::time::Instant;

use strata_runtime::plan::{ExpertPlacement, Plan};
use strata_tensor::{DType, Stream, Tensor, ops};

use crate::arch::Role;
use crate::forward::{
    ExpertRef, ExpertWeights, LayerCtx, LayerRef, Routing, Scratch, attention_output_and_router, ffn_input_and_out,
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

/// Tokens after which a routing count has lost half its weight: the expert cache ranks experts
/// by counts that decay exponentially with this half-life, so a shift in routing moves the
/// cache within about a half-life (a prompt's worth of tokens) whatever came before.
pub const COUNT_HALF_LIFE_TOKENS: f64 = 64.0;

/// Copies of a layer's hottest experts on a device, and the routing counts that choose them.
pub(crate) struct ExpertCache {
    capacity: usize,
    /// Expert e's copy, if held.
    held: Vec<Option<ExpertWeights>>,
    /// Tokens routed to each expert, decayed with a half-life of [`COUNT_HALF_LIFE_TOKENS`].
    counts: Vec<f64>,
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
            counts: vec![0.0; n_expert],
        }
    }

    fn holds(&self, e: usize) -> bool {
        self.held.get(e).is_some_and(|w| w.is_some())
    }

    /// Refills the cache with the `capacity` experts of the highest decayed routing counts
    /// (ties: the lower index), copying in those it lacks from the layer's mapped weights
    /// `host` and dropping the others. The copies run on `copy` when given (a GPU stream beside
    /// the compute stream `s`, which then waits for them), on `s` otherwise. Returns the bytes
    /// copied.
    pub(crate) fn refill(
        &mut self,
        host: LayerRef<'_>,
        s: &Stream,
        copy: Option<&Stream>,
        layer: usize,
    ) -> Result<u64> {
        if self.capacity == 0 {
            return Ok(0);
        }
        let mut order: Vec<usize> = (0..self.counts.len()).filter(|&e| self.counts[e] > 0.0).collect();
        order.sort_by(|&a, &b| self.counts[b].total_cmp(&self.counts[a]).then(a.cmp(&b)));
        order.truncate(self.capacity);
        let mut want = vec![false; self.held.len()];
        for &e in &order {
            want[e] = true;
        }
        let (gate, up, down) = (host.req(Role::GateExps)?, host.req(Role::UpExps)?, host.req(Role::DownExps)?);
        let up_stream = copy.unwrap_or(s);
        let mut copied = 0;
        for (e, slot) in self.held.iter_mut().enumerate() {
            match (want[e], slot.is_some()) {
                (true, false) => {
                    let w = ExpertWeights::from_stacked(gate, up, down, e)?
                        .to_device(up_stream, &format!("blk.{layer} cached expert {e}"))?;
                    copied += w.bytes();
                    *slot = Some(w);
                }
                (false, true) => *slot = None,
                _ => {}
            }
        }
        // The next pass's compute (on `s`) must not read an expert before its copy is done.
        if copied > 0
            && let (Stream::Gpu(c), Stream::Gpu(g)) = (up_stream, s)
            && c != g
        {
            g.wait(&c.record()?)?;
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
    experts_apart(cfg, &routing, sc, ApartExperts { host, cache, stats }, s)?;
    ffn_residual(attn, x, sc, cfg, s)
}

/// Where a layer's experts run when they are apart from it, for a caller that runs the rest of
/// the layer itself (the batch scheduler): the model's mapped layer, the device cache and the
/// pass's counters.
pub(crate) struct ApartExperts<'a> {
    /// The model's mapped layer (its expert tensors run on the host).
    pub host: LayerRef<'a>,
    /// The layer's device cache of hot experts.
    pub cache: &'a mut ExpertCache,
    /// The pass's counters.
    pub stats: &'a mut ExpertPassStats,
}

/// The routed experts of a layer placed apart, after [`attention_output_and_router`] left the
/// FFN input in the scratch: counts the routing, runs the cached experts on `s` and the others
/// on the host, and leaves their sum in the scratch for [`ffn_residual`].
pub(crate) fn experts_apart(
    cfg: &crate::config::LlamaConfig,
    routing: &Routing,
    sc: &mut Scratch,
    apart: ApartExperts<'_>,
    s: &Stream,
) -> Result<()> {
    let ApartExperts { host, cache, stats } = apart;
    count(cache, routing, stats)?;
    let (h, out) = ffn_input_and_out(sc);
    let t0 = Instant::now();
    let on_host = matches!(s, Stream::Host);
    let h_host = if on_host { None } else { Some(h.to_host(s)?) };
    // The cached experts first: on a GPU they run while the CPU computes the others.
    let held = |e: usize| cache.holds(e);
    moe_experts(cfg, ExpertRef::PerExpert(&cache.held), h, routing, &held, out, s)?;
    let mut cpu_out = Tensor::zeros(DType::F32, out.shape(), &Stream::Host, "cpu expert sum")?;
    let h_cpu = h_host.as_ref().unwrap_or(h);
    moe_experts(cfg, ExpertRef::from_layer(host)?, h_cpu, routing, &|e| !held(e), &mut cpu_out, &Stream::Host)?;
    if on_host {
        ops::add_inplace(out, &cpu_out, s)?;
    } else {
        let back = cpu_out.to_device(s, "cpu expert sum")?;
        ops::add_inplace(out, &back, s)?;
    }
    stats.cpu_s += t0.elapsed().as_secs_f64();
    Ok(())
}

/// Decays the cache's counts by the pass's tokens, adds the pass's routing to them and to the
/// stats' hit counters.
fn count(cache: &mut ExpertCache, routing: &Routing, stats: &mut ExpertPassStats) -> Result<()> {
    let decay = 0.5f64.powf(routing.n_tokens() as f64 / COUNT_HALF_LIFE_TOKENS);
    cache.counts.iter_mut().for_each(|c| *c *= decay);
    for &e in &routing.experts {
        let c = cache.counts.get_mut(e).ok_or_else(|| Error::invalid(format!("routed to expert {e}")))?;
        *c += 1.0;
        stats.routed += 1;
        if cache.holds(e) {
            stats.hits += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::N_ROLES;

    const N: usize = 8;

    /// Stacked f32 experts [N, 2, 4] / [N, 4, 2]: only their shapes matter to the cache.
    fn stacked() -> (Tensor, Tensor, Tensor) {
        let t = |shape: [usize; 3]| Tensor::from_f32(&shape, vec![0.5; shape.iter().product()]).expect("tensor");
        (t([N, 2, 4]), t([N, 2, 4]), t([N, 4, 2]))
    }

    fn held(cache: &ExpertCache) -> Vec<usize> {
        (0..N).filter(|&e| cache.holds(e)).collect()
    }

    /// One decode pass routed to `experts` (one token).
    fn pass(cache: &mut ExpertCache, experts: [usize; 2], stats: &mut ExpertPassStats) {
        let routing = Routing { n_expert: N, k: 2, experts: experts.to_vec(), weights: vec![0.5, 0.5] };
        count(cache, &routing, stats).expect("count");
    }

    /// After 100 tokens routed to experts 0 and 1, the routing shifts to 5 and 6: with decayed
    /// counts the cache of 2 holds 5 and 6 within a half-life (with d = 2^(-1/h) the old count
    /// is (1 - d^100)/(1 - d)·d^k after k new tokens and the new one (1 - d^k)/(1 - d); they
    /// cross where d^k = 1/(2 - d^100): k = 47 for h = 64), long before the 101 tokens undecayed
    /// counts would need, and the hits follow.
    #[test]
    fn the_cache_follows_a_shift_in_routing() {
        let (gate, up, down) = stacked();
        let mut table = [None; N_ROLES];
        table[Role::GateExps.index()] = Some(&gate);
        table[Role::UpExps.index()] = Some(&up);
        table[Role::DownExps.index()] = Some(&down);
        let host = LayerRef::from_table(table);
        let mut cache = ExpertCache::new(N, 2);
        let mut stats = ExpertPassStats::default();
        for _ in 0..100 {
            pass(&mut cache, [0, 1], &mut stats);
            cache.refill(host, &Stream::Host, None, 0).expect("refill");
        }
        assert_eq!(held(&cache), [0, 1]);
        let mut switched: Option<usize> = None;
        for k in 1..=100 {
            pass(&mut cache, [5, 6], &mut stats);
            cache.refill(host, &Stream::Host, None, 0).expect("refill");
            if switched.is_none() && held(&cache) == [5, 6] {
                switched = Some(k);
            }
        }
        let k = switched.expect("the cache never took the new experts");
        let h = COUNT_HALF_LIFE_TOKENS;
        // The first k where the new count passes the old: d^k < 1/(2 - d^100), d^k = 2^(-k/h).
        let want = (-(1.0 / (2.0 - 0.5f64.powf(100.0 / h))).log2() * h).ceil() as usize;
        assert!(k.abs_diff(want) <= 1, "switched after {k} tokens, the arithmetic says {want}");
        assert!(k < 100, "decay must beat plain counts (101 tokens)");
        // The last pass hit both experts.
        let before = stats;
        pass(&mut cache, [5, 6], &mut stats);
        assert_eq!((stats.routed - before.routed, stats.hits - before.hits), (2, 2));
    }
}
