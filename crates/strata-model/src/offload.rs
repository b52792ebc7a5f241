//! From a model and a machine to a placement plan: the planner's inputs (exact sizes from the
//! file, budgets, speeds measured in well under a second or read from a cache) and the
//! session layout a plan gives.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use strata_runtime::device::Accelerator;
use strata_runtime::plan::{
    LayerSpec, Placement, Plan, PlanRequest, Policy, Rest, SpeedSource, Speeds, assumed_speeds, plan,
};
use strata_tensor::ops::{CpuPath, with_cpu_path};
use strata_tensor::{Gpu, HostBuffer, PinnedKind, Stream, Tensor, mem_available};

use crate::forward::{LayerKv, LayerRef, Scratch, layer_forward};
use crate::model::{Model, SessionOptions};
use crate::session::Layout;
use crate::{Error, Result};

/// What the user asked for (the CLI's offload flags).
#[derive(Debug, Clone, Default)]
pub struct OffloadOptions {
    pub policy: Policy,
    pub rest: Rest,
    /// Pinned host memory cap (default: half of MemAvailable).
    pub pinned_budget: Option<u64>,
    /// Assumed host→device rate for a hypothetical GPU (`strata plan --h2d-bandwidth`).
    pub h2d_bytes_per_s: Option<f64>,
    /// GPU memory of a hypothetical card when there is no GPU (`strata plan --gpu-memory`).
    pub hypothetical_gpu: Option<u64>,
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
            let params: u64 = w.tensors().iter().map(|t| t.numel() as u64).sum();
            LayerSpec { weight_bytes: w.bytes(), kv_bytes, flops_per_token: 2 * params }
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
        Some(g) => Some(g.budget().available()),
        None => o.hypothetical_gpu,
    };
    Ok(plan(&plan_request(model, session, budget, speeds, o))?)
}

/// The session layout a plan describes.
pub fn layout_of(p: &Plan) -> Layout {
    Layout { placements: p.layers.iter().map(|l| l.placement).collect(), prefetch_depth: p.prefetch_depth.max(1) }
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
    s.source = SpeedSource::Cached;
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
        layer_forward(cfg, w, &mut kv, &mut x, &pos, 0, &mut sc, s)?;
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
    let layer_bytes = model.weights.layers[0].bytes() as f64;
    let flops =
        |t: usize| 2.0 * model.weights.layers[0].tensors().iter().map(|x| x.numel() as f64).sum::<f64>() * t as f64;
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
    }
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
    let mut budget = gpu.map(|g| g.budget().available());
    for _attempt in 0..4 {
        let plan = plan(&plan_request(model, session, budget, speeds, o))?;
        match crate::Session::with_layout_progress(
            Arc::clone(model),
            acc.as_ref(),
            &layout_of(&plan),
            session,
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

/// True if any layer of the plan is not on the CPU.
pub fn uses_gpu(p: &Plan) -> bool {
    p.layers.iter().any(|l| l.placement != Placement::Cpu)
}
