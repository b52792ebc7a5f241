//! Choosing the device, planning the layers and opening a session, saying why when the GPU
//! is not used.

use anyhow::{Context, Result, bail};
use strata_model::offload::{OffloadOptions, measure_speeds, open_planned};
use strata_model::{KvType, Model, Session, SessionOptions};
use strata_runtime::plan::{Plan, Policy, Rest, assumed_speeds};
use strata_runtime::units::parse_size;
use strata_tensor::{Gpu, GpuOptions, Unavailable, discover};

use crate::args::{DeviceArg, KvArg, OffloadArg, SessionArgs};

pub fn session_options(a: &SessionArgs) -> SessionOptions {
    SessionOptions {
        context: a.context.unwrap_or(0),
        kv_type: match a.kv_type {
            KvArg::F16 => KvType::F16,
            KvArg::F32 => KvType::F32,
        },
        batch: a.batch,
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
    Ok(OffloadOptions {
        policy,
        rest,
        pinned_budget: o.pinned_memory.as_deref().map(parse_size).transpose().context("--pinned-memory")?,
        ..OffloadOptions::default()
    })
}

/// The GPU to use, or None with the reason printed (auto) / an error (cuda).
pub fn pick_gpu(a: &SessionArgs, quiet: bool) -> Result<Option<Gpu>> {
    if a.device == DeviceArg::Cpu {
        return Ok(None);
    }
    let (_, gpu, why) = discover(&gpu_options(a)?);
    match (gpu, a.device) {
        (Some(g), _) => Ok(Some(g)),
        (None, DeviceArg::Cuda) => {
            bail!("--device cuda: {}", why.map_or_else(|| "no GPU".to_string(), |w| w.to_string()))
        }
        (None, _) => {
            if !quiet {
                eprintln!("{}", cpu_device_line(why.as_ref(), nvidia_gpu_present()));
            }
            Ok(None)
        }
    }
}

/// Whether the kernel has an NVIDIA driver loaded (a GPU a CUDA build could use).
fn nvidia_gpu_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

/// The device line when the CPU is used: why, in one clause, and rebuild advice only where a
/// CUDA build would find a GPU.
fn cpu_device_line(why: Option<&Unavailable>, nvidia: bool) -> String {
    match why {
        Some(Unavailable::NotBuilt) if nvidia => {
            "device: cpu; this build has no CUDA support, rebuild with `--features cuda` to use the NVIDIA GPU".into()
        }
        Some(Unavailable::NotBuilt) | None => "device: cpu; no GPU".into(),
        Some(Unavailable::NoDriver) => "device: cpu; no NVIDIA driver".into(),
        Some(other) => format!("device: cpu; {other}"),
    }
}

/// Opens a session: on the CPU, or on the GPU with the layers placed by the plan (re-planned
/// with less memory if loading runs out of it in auto mode). Prints the plan's summary line.
pub fn open_session<'m>(model: &'m Model, a: &SessionArgs, quiet: bool) -> Result<(Option<Plan>, Session<'m>)> {
    let opts = session_options(a);
    let offload = offload_options(a)?;
    crate::commands::warn_long_context(model, a, quiet);
    let Some(gpu) = pick_gpu(a, quiet)? else {
        if a.offload.gpu_layers.is_some_and(|n| n > 0) || a.offload.stream {
            bail!("--gpu-layers and --stream need a GPU, and none is used here (see the device line above)");
        }
        return Ok((None, Session::new(model, None, &opts)?));
    };
    let speeds = measure_speeds(model, Some(&gpu)).unwrap_or_else(|e| {
        log::warn!("measuring this machine failed ({e}); planning with assumed speeds");
        assumed_speeds()
    });
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
    let opened = open_planned(model, Some(&gpu), &opts, speeds, &offload, &progress);
    if let Some(b) = bar.borrow_mut().take() {
        b.finish_and_clear();
    }
    let (plan, session) =
        opened.with_context(|| format!("planning {} on {}", model.path.display(), gpu.info().name))?;
    if !quiet {
        eprintln!("device: {}", gpu.info());
        eprintln!("{}", plan.summary_line());
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok((Some(plan), session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_device_lines() {
        assert_eq!(cpu_device_line(Some(&Unavailable::NotBuilt), false), "device: cpu; no GPU");
        assert!(cpu_device_line(Some(&Unavailable::NotBuilt), true).contains("--features cuda"));
        assert_eq!(cpu_device_line(Some(&Unavailable::NoDriver), false), "device: cpu; no NVIDIA driver");
        let none = cpu_device_line(Some(&Unavailable::NoDevice { ordinal: 0, count: 0 }), true);
        assert_eq!(none.matches('(').count(), 1, "{none}");
    }
}
