//! Choosing the device and opening a session on it, saying why when the GPU is not used.

use anyhow::{Context, Result, bail};
use strata_model::{KvType, Model, Session, SessionOptions};
use strata_runtime::device::Accelerator;
use strata_tensor::{Gpu, GpuOptions, discover};

use crate::args::{DeviceArg, KvArg, SessionArgs};

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
    let memory_cap =
        a.gpu_memory.as_deref().map(strata_runtime::units::parse_size).transpose().context("--gpu-memory")?;
    Ok(GpuOptions { memory_cap, ..GpuOptions::default() })
}

/// Opens a session on the device `a.device` asks for. In `auto`, a GPU that is missing or too
/// small means the CPU, with the reason logged to stderr.
pub fn open_session<'m>(model: &'m Model, a: &SessionArgs, quiet: bool) -> Result<Session<'m>> {
    let opts = session_options(a);
    let note = |msg: String| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    if a.device == DeviceArg::Cpu {
        return Ok(Session::new(model, None, &opts)?);
    }
    let (_, gpu, why) = discover(&gpu_options(a)?);
    let gpu: Gpu = match (gpu, a.device) {
        (Some(g), _) => g,
        (None, DeviceArg::Cuda) => {
            bail!("--device cuda: {}", why.map_or_else(|| "no GPU".to_string(), |w| w.to_string()))
        }
        (None, _) => {
            note(format!("device: cpu ({})", why.map_or_else(|| "no GPU".to_string(), |w| w.to_string())));
            return Ok(Session::new(model, None, &opts)?);
        }
    };
    let acc = Accelerator::Gpu(gpu.clone());
    match Session::new(model, Some(&acc), &opts) {
        Ok(s) => {
            note(format!("device: {}", gpu.info()));
            Ok(s)
        }
        Err(e) if a.device == DeviceArg::Auto => {
            note(format!("device: cpu (the model does not fit on {}: {e})", gpu.info().name));
            Ok(Session::new(model, None, &opts)?)
        }
        Err(e) => Err(e).context(format!("--device cuda on {}", gpu.info().name)),
    }
}
