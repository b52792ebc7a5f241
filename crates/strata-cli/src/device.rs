//! Choosing the device, planning the layers and opening a session, saying why when the GPU
//! is not used.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use strata_model::offload::OffloadOptions;
use strata_model::{DeviceChoice, Engine, EngineOptions, KvType, Model, SessionOptions};
use strata_runtime::plan::{CpuExperts, ExpertPolicy, Policy, PrefillStream, Rest};
use strata_runtime::units::parse_size;
use strata_tensor::ops::CpuPath;
use strata_tensor::{Gpu, GpuOptions};

use crate::args::{DeviceArg, KvArg, OffloadArg, SessionArgs};

pub fn session_options(a: &SessionArgs) -> SessionOptions {
    SessionOptions {
        context: a.context.unwrap_or(0),
        kv_type: match a.kv_type {
            KvArg::F16 => KvType::F16,
            KvArg::F32 => KvType::F32,
        },
        batch: a.batch,
        // Set from the plan (its prefill placement) when the session is opened.
        prefill_stream_min: None,
    }
}

pub fn gpu_options(a: &SessionArgs) -> Result<GpuOptions> {
    let memory_cap = a.gpu_memory.as_deref().map(parse_size).transpose().context("--gpu-memory")?;
    let pinned_cap = a.offload.pinned_memory.as_deref().map(parse_size).transpose().context("--pinned-memory")?;
    Ok(GpuOptions { memory_cap, pinned_cap })
}

pub fn offload_options(a: &SessionArgs) -> Result<OffloadOptions> {
    let o = &a.offload;
    let stream = o.stream || o.offload == OffloadArg::Stream;
    let cpu = o.cpu_layers || o.offload == OffloadArg::Cpu;
    if stream && cpu {
        bail!("--stream and --cpu-layers (or --offload stream/cpu) contradict each other");
    }
    let (policy, rest) = match o.gpu_layers {
        Some(n) => (
            Policy::GpuLayers(n),
            if stream {
                Rest::Streamed
            } else if cpu {
                Rest::Cpu
            } else {
                Rest::Auto
            },
        ),
        None if stream => (Policy::AllStreamed, Rest::Auto),
        None if cpu => (Policy::AllCpu, Rest::Auto),
        None => (Policy::Auto, Rest::Auto),
    };
    let cpu_experts = match (o.cpu_moe, o.n_cpu_moe) {
        (true, _) => CpuExperts::All,
        (false, Some(n)) => CpuExperts::First(n),
        (false, None) => CpuExperts::Auto,
    };
    let cache_bytes = o.expert_cache.as_deref().map(parse_size).transpose().context("--expert-cache")?;
    Ok(OffloadOptions {
        policy,
        rest,
        pinned_budget: o.pinned_memory.as_deref().map(parse_size).transpose().context("--pinned-memory")?,
        experts: ExpertPolicy { cpu: cpu_experts, cache_bytes },
        prefill_stream: o
            .prefill_stream_min
            .as_deref()
            .map(str::parse::<PrefillStream>)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--prefill-stream-min {e}"))?
            .unwrap_or_default(),
        ..OffloadOptions::default()
    })
}

/// The engine options these flags ask for (the model path is the loaded model's).
pub fn engine_options(model: &Model, a: &SessionArgs, cpu_path: CpuPath) -> Result<EngineOptions> {
    let mut o = EngineOptions::new(&model.path);
    o.device = match a.device {
        DeviceArg::Auto => DeviceChoice::Auto,
        DeviceArg::Cpu => DeviceChoice::Cpu,
        DeviceArg::Cuda => DeviceChoice::Cuda,
    };
    o.gpu = gpu_options(a)?;
    o.offload = offload_options(a)?;
    o.session = session_options(a);
    o.cpu_path = cpu_path;
    Ok(o)
}

/// The GPU to use, or None with the reason printed (auto) / an error (cuda).
pub fn pick_gpu(opts: &EngineOptions, quiet: bool) -> Result<Option<Gpu>> {
    match strata_model::engine::pick_gpu(opts)? {
        Ok(g) => Ok(Some(g)),
        Err(why) => {
            if !quiet && opts.device != DeviceChoice::Cpu {
                eprintln!("device: cpu; {why}");
            }
            Ok(None)
        }
    }
}

/// Opens an engine on `model`: on the CPU, or on the GPU with the layers placed by the plan
/// (re-planned with less memory if loading runs out of it in auto mode). Prints the device
/// and the plan's summary line.
pub fn open_engine(model: Model, a: &SessionArgs, cpu_path: CpuPath, quiet: bool) -> Result<Engine> {
    let opts = engine_options(&model, a, cpu_path)?;
    crate::commands::warn_long_context(&model, a, quiet);
    let path = model.path.clone();
    // A bar for loading and pinning big models, on a terminal only.
    let bar = std::cell::RefCell::new(None::<indicatif::ProgressBar>);
    let show = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |done: u64, total: u64| {
        if !show || total < (256 << 20) {
            return;
        }
        let mut b = bar.borrow_mut();
        let b = b.get_or_insert_with(|| crate::progress::bytes_bar(total, "loading weights"));
        b.set_position(done);
    };
    let opened = Engine::with_model(Arc::new(model), &opts, &progress);
    if let Some(b) = bar.borrow_mut().take() {
        b.finish_and_clear();
    }
    let engine = opened.with_context(|| format!("opening {}", path.display()))?;
    if !quiet {
        if let Some(why) = engine.device_note() {
            eprintln!("device: cpu; {why}");
        }
        if let (Some(gpu), Some(plan)) = (engine.gpu(), engine.plan()) {
            eprintln!("device: {}", gpu.info());
            eprintln!("{}", plan.summary_line());
            for w in &plan.warnings {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use strata_model::engine::cpu_reason;
    use strata_tensor::Unavailable;

    #[test]
    fn cpu_device_lines() {
        assert_eq!(cpu_reason(Some(&Unavailable::NotBuilt), false), "no GPU");
        assert!(cpu_reason(Some(&Unavailable::NotBuilt), true).contains("--features cuda"));
        assert_eq!(cpu_reason(Some(&Unavailable::NoDriver), false), "no NVIDIA driver");
        let none = cpu_reason(Some(&Unavailable::NoDevice { ordinal: 0, count: 0 }), true);
        assert!(none.matches('(').count() <= 1, "{none}");
    }
}
