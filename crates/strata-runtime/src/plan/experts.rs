//! Placement below the layer for mixture-of-experts models: which layers' experts leave their
//! layer for the CPU, how many of them a GPU cache holds, and the choice among these modes (see
//! the module docs of `plan`, "Experts").

use super::{
    CpuExperts, ExpertPlacement, ExpertPlan, ExpertPolicy, ExpertSpec, ExpertSummary, LayerPlan, Placement, PlanRequest,
};
use crate::units::fmt_size;

/// Where one layer's experts go when the layer itself is on the GPU (resident or streamed).
/// A cpu layer computes everything on the CPU whatever its side says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ExpertSide {
    /// With the layer: resident with a resident layer, streamed with a streamed one. Dense
    /// layers are always here.
    Follow,
    /// In host memory, computed on the CPU; the `cached` hottest of them also in a GPU cache.
    Cpu { cached: usize },
    /// Copied to the GPU through the streamer's slots each pass: a resident layer keeps only
    /// its attention part and streams its experts; a streamed layer streams them with itself
    /// (as [`ExpertSide::Follow`]).
    Stream,
}

/// The experts of `spec`, if it is a mixture-of-experts layer with experts to place.
pub(super) fn moe(spec: &super::LayerSpec) -> Option<&ExpertSpec> {
    spec.experts.as_ref().filter(|e| e.n_expert > 0 && e.bytes > 0)
}

/// Cached experts per layer tried by `auto`: 1, 2, 4, ... below the most experts of a layer.
fn auto_cache_sizes(req: &PlanRequest) -> Vec<usize> {
    let most = req.layers.iter().filter_map(moe).map(|e| e.n_expert).max().unwrap_or(0);
    std::iter::successors(Some(1usize), |k| k.checked_mul(2)).take_while(|&k| k < most).collect()
}

/// How many first layers the mixed modes of `auto` send their experts away: eighths of the
/// model (every count for a model of at most 8 layers), none of them 0 or `n` (the pure modes).
fn prefix_counts(n: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (1..8).map(|j| (n * j).div_ceil(8)).filter(|&k| k > 0 && k < n).collect();
    out.dedup();
    out
}

/// The mode `sides` as the flag a user would type for it, when `auto` chose a mixed mode: the
/// first k layers' experts on the CPU (`--n-cpu-moe k`) or streamed; `None` for the others.
pub(super) fn mixed_as_flag(req: &PlanRequest, sides: &[ExpertSide]) -> Option<String> {
    let moe_layers: Vec<usize> = (0..req.layers.len()).filter(|&i| moe(&req.layers[i]).is_some()).collect();
    let away = |s: &ExpertSide| !matches!(s, ExpertSide::Follow);
    let k = sides.iter().take_while(|s| away(s)).count();
    if k == 0 || sides[k..].iter().any(away) || moe_layers.iter().all(|&i| i < k) {
        return None;
    }
    match sides[0] {
        ExpertSide::Cpu { cached: 0 } => Some(format!("as --n-cpu-moe {k}")),
        ExpertSide::Stream => Some(format!("experts of the first {k} layers streamed")),
        _ => None,
    }
}

/// The expert modes the request allows, one side per layer each. A dense model, or no GPU,
/// has one mode: every side [`ExpertSide::Follow`].
pub(super) fn modes(req: &PlanRequest) -> Vec<Vec<ExpertSide>> {
    let n = req.layers.len();
    let follow = vec![ExpertSide::Follow; n];
    if req.gpu_budget.is_none() || !req.layers.iter().any(|l| moe(l).is_some()) {
        return vec![follow];
    }
    let policy = req.experts;
    let on_cpu = |i: usize| match policy.cpu {
        CpuExperts::Auto | CpuExperts::All => true,
        CpuExperts::First(k) => i < k,
    };
    let with_cache = |per_layer: &dyn Fn(&ExpertSpec) -> usize| -> Vec<ExpertSide> {
        req.layers
            .iter()
            .enumerate()
            .map(|(i, l)| match moe(l) {
                Some(e) if on_cpu(i) => ExpertSide::Cpu { cached: per_layer(e).min(e.n_expert) },
                _ => ExpertSide::Follow,
            })
            .collect()
    };
    match (policy.cpu, policy.cache_bytes) {
        (_, Some(bytes)) => {
            let layers = (0..n).filter(|&i| on_cpu(i) && moe(&req.layers[i]).is_some()).count().max(1) as u64;
            let share = bytes / layers;
            vec![with_cache(&|e| (share / e.bytes_per_expert.max(1)).min(e.n_expert as u64) as usize)]
        }
        (CpuExperts::Auto, None) => {
            let stream =
                req.layers.iter().map(|l| if moe(l).is_some() { ExpertSide::Stream } else { ExpertSide::Follow });
            let mut out = vec![follow, stream.collect(), with_cache(&|_| 0)];
            out.extend(auto_cache_sizes(req).into_iter().map(|k| with_cache(&move |_| k)));
            // Mixed modes: the experts of the first k layers away (on the CPU, as `--n-cpu-moe
            // k`, or streamed), the other layers' with them. Where most but not all experts fit
            // beside the attention parts, these keep the rest whole on the GPU: no hand-off and
            // no copy for those layers.
            for k in prefix_counts(n) {
                let first = |side: ExpertSide| -> Vec<ExpertSide> {
                    (0..n)
                        .map(|i| if i < k && moe(&req.layers[i]).is_some() { side } else { ExpertSide::Follow })
                        .collect()
                };
                out.push(first(ExpertSide::Cpu { cached: 0 }));
                out.push(first(ExpertSide::Stream));
            }
            out
        }
        (CpuExperts::All | CpuExperts::First(_), None) => vec![with_cache(&|_| 0)],
    }
}

/// Bytes of a layer on the GPU and in host memory under its side, when the layer is on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Split {
    /// Bytes a resident layer keeps on the GPU, or a streamed one copies, besides its cache.
    pub gpu: u64,
    /// Bytes of the layer's GPU expert cache.
    pub cache: u64,
    /// Expert bytes that stay in host memory (computed on the CPU).
    pub host: u64,
    /// Expert bytes copied through the slots each pass besides `gpu` ([`ExpertSide::Stream`]):
    /// a resident layer copies these, a streamed one `gpu + experts_streamed`.
    pub experts_streamed: u64,
}

/// The split of layer `spec` under `side`.
pub(super) fn split(spec: &super::LayerSpec, side: ExpertSide) -> Split {
    match (moe(spec), side) {
        (Some(e), ExpertSide::Cpu { cached }) => {
            let host = e.bytes.min(spec.weight_bytes);
            Split {
                gpu: spec.weight_bytes - host,
                cache: (cached as u64).saturating_mul(e.bytes_per_expert).min(host),
                host,
                experts_streamed: 0,
            }
        }
        (Some(e), ExpertSide::Stream) => {
            let streamed = e.bytes.min(spec.weight_bytes);
            Split { gpu: spec.weight_bytes - streamed, cache: 0, host: 0, experts_streamed: streamed }
        }
        _ => Split { gpu: spec.weight_bytes, cache: 0, host: 0, experts_streamed: 0 },
    }
}

/// Share of routed experts a cache of `cached` out of `e.n_expert` serves, assuming uniform
/// routing (the conservative guess: real routers favour some experts).
pub(super) fn hit_rate(e: &ExpertSpec, cached: usize) -> f64 {
    (cached.min(e.n_expert) as f64) / (e.n_expert.max(1) as f64)
}

/// Expected distinct experts a batch of `tokens` tokens routes to (uniform routing): every
/// expert is missed by one token with probability 1 - used/n.
pub(super) fn touched(e: &ExpertSpec, tokens: f64) -> f64 {
    let n = e.n_expert.max(1) as f64;
    let used = (e.n_expert_used as f64).min(n);
    n * (1.0 - (1.0 - used / n).powf(tokens))
}

/// The expert part of a layer's plan.
pub(super) fn layer_plan(spec: &super::LayerSpec, placement: Placement, side: ExpertSide) -> Option<ExpertPlan> {
    let e = moe(spec)?;
    let (placement, cached) = match (placement, side) {
        (Placement::Cpu, _) => (ExpertPlacement::Cpu, 0),
        (_, ExpertSide::Cpu { cached: 0 }) => (ExpertPlacement::Cpu, 0),
        (_, ExpertSide::Cpu { cached }) => (ExpertPlacement::Cached, cached),
        (Placement::Resident, ExpertSide::Follow) => (ExpertPlacement::Resident, 0),
        (_, ExpertSide::Stream) | (Placement::Streamed, ExpertSide::Follow) => (ExpertPlacement::Streamed, 0),
    };
    let cached_bytes = split(spec, ExpertSide::Cpu { cached }).cache;
    Some(ExpertPlan { placement, bytes: e.bytes, cached, n_expert: e.n_expert, cached_bytes })
}

/// What was asked of the experts, as the user would have typed it.
pub(super) fn policy_flag(p: &ExpertPolicy) -> String {
    let mut parts = match p.cpu {
        CpuExperts::Auto => vec![],
        CpuExperts::All => vec!["--cpu-moe".to_string()],
        CpuExperts::First(k) => vec![format!("--n-cpu-moe {k}")],
    };
    if let Some(b) = p.cache_bytes {
        parts.push(format!("--expert-cache {}", fmt_size(b)));
    }
    if parts.is_empty() { "auto".to_string() } else { parts.join(" ") }
}

/// The plan's expert summary; `None` for a dense model.
pub(super) fn summary(req: &PlanRequest, layers: &[LayerPlan], sides: &[ExpertSide]) -> Option<ExpertSummary> {
    if !req.layers.iter().any(|l| moe(l).is_some()) {
        return None;
    }
    let mut s = ExpertSummary {
        resident_bytes: 0,
        streamed_bytes: 0,
        cached_bytes: 0,
        cpu_bytes: 0,
        active_bytes_per_token: 0,
        predicted_hit_rate: 0.0,
        policy: match mixed_as_flag(req, sides) {
            Some(mixed) if req.experts == ExpertPolicy::default() => format!("auto ({mixed})"),
            _ => policy_flag(&req.experts),
        },
    };
    let (mut hits, mut cached_layers) = (0.0, 0usize);
    for (spec, lp) in req.layers.iter().zip(layers) {
        let (Some(e), Some(x)) = (moe(spec), lp.experts) else { continue };
        s.active_bytes_per_token = s.active_bytes_per_token.saturating_add(e.active_bytes());
        match x.placement {
            ExpertPlacement::Resident => s.resident_bytes = s.resident_bytes.saturating_add(x.bytes),
            ExpertPlacement::Streamed => s.streamed_bytes = s.streamed_bytes.saturating_add(x.bytes),
            ExpertPlacement::Cpu => s.cpu_bytes = s.cpu_bytes.saturating_add(x.bytes),
            ExpertPlacement::Cached => {
                s.cpu_bytes = s.cpu_bytes.saturating_add(x.bytes);
                s.cached_bytes = s.cached_bytes.saturating_add(x.cached_bytes);
                hits += hit_rate(e, x.cached);
                cached_layers += 1;
            }
        }
    }
    if cached_layers > 0 {
        s.predicted_hit_rate = hits / cached_layers as f64;
    }
    Some(s)
}

/// Notes on expert flags that do nothing for this model or machine, or a cache too small to
/// hold an expert.
pub(super) fn warnings(req: &PlanRequest, sides: &[ExpertSide]) -> Vec<String> {
    let asked = req.experts != ExpertPolicy::default();
    if !asked {
        return Vec::new();
    }
    let flag = policy_flag(&req.experts);
    let moe_layers: Vec<usize> = (0..req.layers.len()).filter(|&i| moe(&req.layers[i]).is_some()).collect();
    if moe_layers.is_empty() {
        return vec![format!("{flag}: the model has no experts (a dense model), so this has no effect")];
    }
    if req.gpu_budget.is_none() {
        return vec![format!("{flag}: there is no GPU, so every expert runs on the CPU anyway")];
    }
    let mut out = Vec::new();
    if let CpuExperts::First(k) = req.experts.cpu
        && k > req.layers.len()
    {
        out.push(format!(
            "--n-cpu-moe {k} is more than the model's {} layers: the experts of every layer are on the CPU",
            req.layers.len()
        ));
    }
    if let Some(bytes) = req.experts.cache_bytes {
        let cpu_layers = sides.iter().filter(|s| matches!(s, ExpertSide::Cpu { .. })).count();
        let empty = sides.contains(&ExpertSide::Cpu { cached: 0 });
        if cpu_layers > 0 && empty {
            let one = moe_layers.iter().filter_map(|&i| moe(&req.layers[i])).map(|e| e.bytes_per_expert).max();
            out.push(format!(
                "--expert-cache {} is less than one expert ({}) for each of the {cpu_layers} layers whose experts \
                 are on the CPU: those layers cache none",
                fmt_size(bytes),
                fmt_size(one.unwrap_or(0)),
            ));
        }
    }
    out
}
