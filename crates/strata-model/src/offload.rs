//! From a model and a machine to a placement plan: the planner's inputs (exact sizes from the
//! file, budgets, speeds measured in well under a second or read from a cache) and the
//! session layout a plan gives.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use strata_runtime::device::Accelerator;
use strata_runtime::plan::{
    ExpertPolicy, ExpertSpec, LayerSpec, Placement, Plan, PlanRequest, Policy, PrefillStream, Rest, SpeedSource,
    Speeds, assumed_speeds, plan,
};
use strata_tensor::hostmem::HostLimits;
use strata_tensor::ops::{CpuPath, with_cpu_path};
use strata_tensor::{Gpu, HostBuffer, PinnedKind, Stream, Tensor, fmt_bytes, mem_available};

use crate::forward::{LayerCtx, LayerKv, LayerRef, Scratch, layer_forward};
use crate::model::{Model, SessionOptions};
use crate::session::Layout;
use crate::{Error, Result};

/// What the user asked for (the CLI's offload flags).
#[derive(Debug, Clone, Default)]
pub struct OffloadOptions {
    /// How layers are chosen to be resident on the GPU.
    pub policy: Policy,
    /// Where the layers that are not resident run: streamed to the GPU or on the CPU.
    pub rest: Rest,
    /// Pinned host memory cap (default: half of MemAvailable).
    pub pinned_budget: Option<u64>,
    /// Assumed host→device rate for a hypothetical GPU (`strata plan --h2d-bandwidth`).
    pub h2d_bytes_per_s: Option<f64>,
    /// GPU memory of a hypothetical card when there is no GPU (`strata plan --gpu-memory`).
    pub hypothetical_gpu: Option<u64>,
    /// Where the experts of a mixture-of-experts model go (`--cpu-moe`, `--n-cpu-moe N`,
    /// `--expert-cache SIZE`); a dense model ignores it and its plan says so.
    pub experts: ExpertPolicy,
    /// When a prompt pass streams the layers decode computes on the CPU
    /// (`--prefill-stream-min`).
    pub prefill_stream: PrefillStream,
}

/// Memory the CUDA context and the driver take that cuMemGetInfo still shows as free.
const CONTEXT_OVERHEAD: u64 = 256 << 20;
/// RAM left free so nothing swaps.
const HOST_MARGIN: u64 = 1 << 30;

/// The planner's input for `model` on this machine.
pub fn plan_request(
    model: &Model,
    session: &SessionOptions,
    gpu_budget: Option<u64>,
    speeds: Speeds,
    o: &OffloadOptions,
) -> PlanRequest {
    let cfg = &model.config;
    let context = session.context_for(cfg);
    let kv_bytes = cfg.kv_bytes_per_layer(context, session.kv_type.bytes());
    let layers = model
        .weights
        .layers
        .iter()
        .map(|w| {
            // A mixture-of-experts layer's experts are described apart: their flops are per
            // routed expert, the layer's are its attention part's and the router's.
            let roles = w.roles();
            let params = |expert: bool| -> u64 {
                roles
                    .iter()
                    .filter(|r| r.is_expert() == expert)
                    .filter_map(|r| w.get(*r))
                    .map(|t| t.numel() as u64)
                    .sum()
            };
            let bytes = crate::session_experts::expert_bytes(w);
            let experts = (cfg.is_moe() && bytes > 0).then(|| {
                let n = cfg.n_expert.max(1) as u64;
                ExpertSpec {
                    bytes,
                    n_expert: cfg.n_expert,
                    n_expert_used: cfg.n_expert_used,
                    bytes_per_expert: bytes / n,
                    flops_per_token: 2 * params(true) / n,
                }
            });
            LayerSpec { weight_bytes: w.bytes(), kv_bytes, flops_per_token: 2 * params(false), experts }
        })
        .collect();
    let host_available = mem_available().unwrap_or(8 << 30);
    let mut speeds = speeds;
    if let Some(r) = o.h2d_bytes_per_s {
        speeds.h2d_bytes_per_s = r;
    }
    PlanRequest {
        layers,
        head_bytes: model.weights.head.bytes(),
        embedding_bytes: model.weights.embedding.len_bytes() as u64,
        scratch_bytes: Scratch::bytes(cfg, session.batch.min(context)) + 4 * (session.batch * cfg.n_vocab) as u64,
        context_overhead_bytes: if gpu_budget.is_some() { CONTEXT_OVERHEAD } else { 0 },
        gpu_budget,
        host_available,
        host_margin: HOST_MARGIN.min(host_available / 4),
        pinned_budget: o.pinned_budget.unwrap_or(host_available / 2),
        weights_mapped: true,
        speeds,
        policy: o.policy,
        rest: o.rest,
        prefill_tokens: session.batch.max(1),
        max_prefetch_depth: 2,
        context,
        experts: o.experts,
        prefill_stream: o.prefill_stream,
    }
}

/// The plan for `model`: on `gpu` (its budget), on a hypothetical card, or CPU only.
///
/// # Errors
/// An explicit request that cannot fit, with the numbers and the flag to change.
pub fn make_plan(
    model: &Model,
    session: &SessionOptions,
    gpu: Option<&Gpu>,
    speeds: Speeds,
    o: &OffloadOptions,
) -> Result<Plan> {
    let budget = match gpu {
        Some(g) => Some(g.available_memory()),
        None => o.hypothetical_gpu,
    };
    Ok(plan(&plan_request(model, session, budget, speeds, o))?)
}

/// The session layout a plan describes.
pub fn layout_of(p: &Plan) -> Layout {
    Layout { placements: p.layers.iter().map(|l| l.placement).collect(), prefetch_depth: p.prefetch_depth.max(1) }
}

/// `session` with the plan's prefill placement: passes from its threshold on stream the cpu
/// layers (none without a prefill placement).
pub fn session_options_of(p: &Plan, session: &SessionOptions) -> SessionOptions {
    SessionOptions { prefill_stream_min: p.prefill_placement.as_ref().map(|pf| pf.min_tokens), ..session.clone() }
}

fn cache_path(gpu: Option<&Gpu>, cpu_path: CpuPath) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let name = gpu.map_or_else(|| "cpu".to_string(), |g| g.info().name.replace(|c: char| !c.is_alphanumeric(), "_"));
    // The CPU layer speed depends on the CPU kernels (the reference is ~5x slower than the
    // vectorized paths), so each path keeps its own measurement.
    let path = format!("{cpu_path:?}").to_lowercase();
    Some(base.join("strata").join(format!("speeds-{name}-{path}.json")))
}

/// Speeds measured earlier on this machine (and this GPU) with the CPU kernels of `cpu_path`,
/// if any.
pub fn cached_speeds(gpu: Option<&Gpu>, cpu_path: CpuPath) -> Option<Speeds> {
    let text = std::fs::read_to_string(cache_path(gpu, cpu_path)?).ok()?;
    let mut s: Speeds = serde_json::from_str(&text).ok()?;
    // What was measured is now cached; what was assumed (the GPU side of a measurement on a
    // machine without a GPU) stays assumed.
    let cached = |src| if src == SpeedSource::Assumed { src } else { SpeedSource::Cached };
    s.source = cached(s.source);
    s.gpu_source = cached(s.gpu_source);
    Some(s)
}

fn store_speeds(gpu: Option<&Gpu>, cpu_path: CpuPath, s: &Speeds) {
    if let Some(p) = cache_path(gpu, cpu_path) {
        let _ = p.parent().map(std::fs::create_dir_all);
        if let Ok(text) = serde_json::to_string_pretty(s) {
            let _ = std::fs::write(p, text);
        }
    }
}

/// Seconds per run of `f`, the best of `reps` after one warm-up.
fn best_of(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Times layer weights `w` (on `s`'s device) of `model` for T tokens on stream `s`.
fn time_layer(model: &Model, w: LayerRef<'_>, s: &Stream, t: usize, reps: usize) -> Result<f64> {
    let cfg = &model.config;
    let mut kv = LayerKv::new(cfg, t, crate::KvType::F16.dtype(), s, 0)?;
    let mut sc = Scratch::new(cfg, t, s)?;
    let mut x = Tensor::from_f32(&[t, cfg.n_embd], vec![0.01; t * cfg.n_embd])?.to_device(s, "x")?;
    let pos = Tensor::from_i32(&[t], (0..t as i32).collect())?.to_device(s, "positions")?;
    best_of(reps, || {
        let mut cx = LayerCtx { cfg, layer: 0, kv: &mut kv, positions: &pos, pos0: 0, sc: &mut sc, s };
        layer_forward(&mut cx, w, &mut x)?;
        s.synchronize()?;
        Ok(())
    })
}

/// Measures this machine in well under a second: a pinned host→device copy and one layer of
/// `model` for 1 and 8 tokens on the CPU (with the kernels of `cpu_path`), for 1 and 128 on
/// the GPU. The result is cached per GPU and CPU path.
///
/// # Errors
/// Device failures (out of memory for the probe buffers is reported as such).
pub fn measure_speeds(model: &Model, gpu: Option<&Gpu>, cpu_path: CpuPath) -> Result<Speeds> {
    let s = with_cpu_path(cpu_path, || measure(model, gpu))?;
    store_speeds(gpu, cpu_path, &s);
    Ok(s)
}

fn measure(model: &Model, gpu: Option<&Gpu>) -> Result<Speeds> {
    let mut s = assumed_speeds();
    let w0 = &model.weights.layers[0];
    // What one token through the probe layer reads and computes: all of a dense layer, the
    // attention part and the routed experts of a mixture-of-experts layer (the others are
    // not touched, so counting them would overstate the rates).
    let experts = crate::session_experts::expert_bytes(w0) as f64;
    let routed = if model.config.is_moe() && experts > 0.0 {
        model.config.n_expert_used as f64 / model.config.n_expert.max(1) as f64
    } else {
        1.0
    };
    let layer_bytes = w0.bytes() as f64 - experts * (1.0 - routed);
    let numel = |expert: bool| -> f64 {
        w0.roles().iter().filter(|r| r.is_expert() == expert).filter_map(|r| w0.get(*r)).map(|t| t.numel() as f64).sum()
    };
    let flops = |t: usize| 2.0 * (numel(false) + routed * numel(true)) * t as f64;
    let host = Stream::Host;
    let host_w = model.weights.layers[0].as_ref();
    s.cpu_bytes_per_s = layer_bytes / time_layer(model, host_w, &host, 1, 2)?;
    s.cpu_flops = flops(8) / time_layer(model, host_w, &host, 8, 1)?;
    if let Some(g) = gpu {
        let stream = Stream::Gpu(g.stream("probe")?);
        let Stream::Gpu(gs) = &stream else { return Err(Error::invalid("probe stream")) };
        const PROBE: usize = 64 << 20;
        let host_buf = HostBuffer::alloc(Some(g), PROBE, PinnedKind::WriteCombined, "bandwidth probe")?;
        let mut dev = g.alloc(PROBE, "bandwidth probe")?;
        let copy = best_of(3, || {
            host_buf.copy_to_device(0..PROBE, &mut dev, 0, gs)?;
            gs.synchronize()?;
            Ok(())
        })?;
        s.h2d_bytes_per_s = PROBE as f64 / copy;
        // One upload of the layer serves both probes.
        let on_gpu = model.weights.layers[0].to_device(&stream, 0)?;
        let t1 = time_layer(model, on_gpu.as_ref(), &stream, 1, 5)?;
        s.gpu_bytes_per_s = layer_bytes / t1;
        s.layer_overhead_s = 0.0;
        // A batch big enough that launch overheads do not hide the matmul rate.
        s.gpu_flops = flops(128) / time_layer(model, on_gpu.as_ref(), &stream, 128, 2)?;
        s.gpu_source = SpeedSource::Measured;
    }
    // Without a GPU only the CPU was measured; the GPU speeds stay assumed and say so.
    s.source = SpeedSource::Measured;
    Ok(s)
}

/// A plan that fits, with the session on it. In `auto`, a session whose allocation fails at
/// load time (another process took the memory) is re-planned with less GPU memory.
///
/// # Errors
/// An explicit request that does not fit, or a failure that re-planning cannot avoid.
pub fn open_planned(
    model: &Arc<Model>,
    gpu: Option<&Gpu>,
    session: &SessionOptions,
    speeds: Speeds,
    o: &OffloadOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<(Plan, crate::Session)> {
    let acc = gpu.map(|g| Accelerator::Gpu(g.clone()));
    let mut budget = gpu.map(|g| g.available_memory());
    for _attempt in 0..4 {
        let plan = plan(&plan_request(model, session, budget, speeds, o))?;
        match crate::Session::with_layout_experts(
            Arc::clone(model),
            acc.as_ref(),
            &layout_of(&plan),
            &crate::session_experts::expert_execs_of(&plan),
            &session_options_of(&plan, session),
            progress,
        ) {
            Ok(s) => return Ok((plan, s)),
            Err(e) if e.is_out_of_memory() && o.policy == Policy::Auto => {
                let shrink = plan.gpu_bytes_planned.saturating_sub(plan.gpu_bytes_planned / 4);
                log::warn!("{e}; re-planning with {} of GPU memory", strata_tensor::fmt_bytes(shrink));
                budget = Some(shrink);
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::model("the GPU keeps running out of memory while loading; lower --gpu-memory"))
}

/// Host memory a session allocates itself (the weights are memory-mapped and not counted):
/// the KV cache of the layers computed on the host, activations and logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNeed {
    /// Context length (positions).
    pub context: usize,
    /// KV cache bytes per position, over the layers whose cache is in host memory.
    pub kv_bytes_per_token: u64,
    /// Activations and logits.
    pub scratch_bytes: u64,
}

/// Left over for the rest of a session's host allocations (token lists, the sampler, staging).
const HOST_SLACK: u64 = 64 << 20;

impl HostNeed {
    /// KV cache bytes for the whole context.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes_per_token.saturating_mul(self.context as u64)
    }

    /// Bytes needed in all: KV cache, scratch and a fixed slack.
    pub fn total(&self) -> u64 {
        self.kv_bytes().saturating_add(self.scratch_bytes).saturating_add(HOST_SLACK)
    }
}

/// Refuses a session whose host memory does not fit `limits` (nothing is allocated yet): the
/// message gives the KV cache and scratch sizes, what is available and which limit binds, and
/// the longest `--context` that fits.
///
/// # Errors
/// [`Error::HostMemory`] when `need` is more than [`HostLimits::usable`]; nothing when the limits
/// cannot be read.
pub fn check_host_memory(need: &HostNeed, limits: &HostLimits) -> Result<()> {
    let Some(usable) = limits.usable() else { return Ok(()) };
    if need.total() <= usable {
        return Ok(());
    }
    let room = usable.saturating_sub(need.scratch_bytes.saturating_add(HOST_SLACK));
    let fits = room / need.kv_bytes_per_token.max(1);
    let advice = if need.kv_bytes_per_token == 0 || fits == 0 {
        "free some memory or raise the limit (no context fits in what is left)".to_string()
    } else {
        format!("lower --context (at most {fits} fits) or free some memory")
    };
    Err(Error::HostMemory(format!(
        "the KV cache for --context {} needs {} and the scratch {}, but {} of RAM is available to strata ({}); \
         {advice}",
        need.context,
        fmt_bytes(need.kv_bytes()),
        fmt_bytes(need.scratch_bytes),
        fmt_bytes(usable),
        limits.describe(),
    )))
}

/// True if any layer of the plan is not on the CPU.
pub fn uses_gpu(p: &Plan) -> bool {
    p.layers.iter().any(|l| l.placement != Placement::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// The default model's KV cache (30 layers × 3 KV heads × 64 × K and V × f16 = 23,040 bytes
    /// a position) at --context 200000 under `ulimit -v 3000000`.
    #[test]
    fn host_preflight_arithmetic() {
        let need = HostNeed { context: 200_000, kv_bytes_per_token: 23_040, scratch_bytes: 300 * MIB };
        assert_eq!(need.kv_bytes(), 4_608_000_000);
        let limits = HostLimits {
            mem_available: Some(20 * GIB),
            cgroup_limit: None,
            cgroup_used: 0,
            address_space_limit: Some(3_072_000_000),
            address_space_used: 512 * MIB,
        };
        let usable = 3_072_000_000 - 512 * MIB;
        assert_eq!(limits.usable(), Some(usable));
        let msg = check_host_memory(&need, &limits).expect_err("4.3 GiB in 2.4 GiB").to_string();
        // The longest context that fits: what is left after scratch and slack, per position.
        let fits = (usable - 300 * MIB - HOST_SLACK) / 23_040;
        assert!(msg.contains(&format!("at most {fits} fits")), "{msg}");
        assert!(msg.starts_with("the KV cache for --context 200000 needs 4.29 GiB and the scratch 300.0 MiB"), "{msg}");
        assert!(msg.contains("address-space limit 2.86 GiB") && msg.contains("cgroup limit none"), "{msg}");
        // That context does fit, one more position does not.
        let at = |context: usize| check_host_memory(&HostNeed { context, ..need }, &limits);
        assert!(at(fits as usize).is_ok());
        assert!(at(fits as usize + 1).is_err());
        // A cgroup limit binds the same way; unreadable limits refuse nothing.
        let cgroup = HostLimits { address_space_limit: None, cgroup_limit: Some(2 * GIB), cgroup_used: GIB, ..limits };
        let msg = check_host_memory(&need, &cgroup).expect_err("over the cgroup").to_string();
        assert!(msg.contains("1.00 GiB of RAM is available") && msg.contains("cgroup limit 2.00 GiB"), "{msg}");
        assert!(check_host_memory(&need, &HostLimits::default()).is_ok());
        // Scratch alone over the limit: no context helps.
        let tiny = HostLimits { mem_available: Some(100 * MIB), address_space_limit: None, ..limits };
        let msg = check_host_memory(&need, &tiny).expect_err("scratch alone").to_string();
        assert!(msg.contains("no context fits"), "{msg}");
    }
}
