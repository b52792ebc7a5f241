//! `strata tokenize`, `logits`, `inspect` and `synth`.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use serde_json::json;
use strata_model::gguf::GgufFile;

use super::load_model;
use crate::args::{InspectArgs, LogitsArgs, PlanArgs, SynthArgs, TokenizeArgs};
use crate::device::open_engine;
use strata_tensor::ops::CpuPath;

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let t = &model.tokenizer;
    let add_bos = if a.no_bos {
        Some(false)
    } else if a.bos {
        Some(true)
    } else {
        None
    };
    let ids = t.encode(&a.text, add_bos, !a.no_special)?;
    let pieces: Vec<String> = ids.iter().map(|&i| t.piece(i)).collect();
    if a.json {
        outln!("{}", json!({ "ids": ids, "pieces": pieces }));
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            outln!("{id:>8}  {p:?}");
        }
        eprintln!("[{} tokens]", ids.len());
    }
    Ok(())
}

/// Indexes of the k largest values, best first (ties: lower id first).
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

pub fn logits(a: LogitsArgs, cpu_path: CpuPath) -> Result<()> {
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let model = load_model(&a.model)?;
    let ids = match (&a.prompt, &a.tokens) {
        (_, Some(t)) => t.clone(),
        (Some(p), None) => model.tokenizer.encode(p, None, true)?,
        (None, None) => bail!("give --prompt TEXT or --tokens IDS"),
    };
    if ids.is_empty() {
        bail!("no tokens to score");
    }
    let mut engine = open_engine(model, &a.session, cpu_path, a.json)?;
    let model = std::sync::Arc::clone(engine.model());
    let n_vocab = model.config.n_vocab;
    let all = engine.score(&ids)?;
    let positions: Vec<_> = all
        .chunks_exact(n_vocab)
        .map(|row| {
            let best = top_k(row, a.top_k);
            (best.iter().map(|&i| i as u32).collect::<Vec<_>>(), best.iter().map(|&i| row[i]).collect::<Vec<_>>())
        })
        .collect();
    if a.json {
        let pos: Vec<_> = positions
            .iter()
            .map(|(i, l)| json!({ "ids": i, "logits": l.iter().map(|x| crate::output::json_f32(*x)).collect::<Vec<_>>() }))
            .collect();
        outln!("{}", json!({ "prompt_ids": ids, "device": engine.device().to_string(), "positions": pos }));
    } else {
        for (p, ((best, vals), id)) in positions.iter().zip(&ids).enumerate() {
            let cells: Vec<String> =
                best.iter().zip(vals).map(|(i, v)| format!("{i} {:?} {v:.3}", model.tokenizer.piece(*i))).collect();
            outln!("{p:>4} {id:>6} {:<14} → {}", format!("{:?}", model.tokenizer.piece(*id)), cells.join(" | "));
        }
    }
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    // The error names the file already ("cannot read X: No such file or directory").
    let file = GgufFile::open(&a.file)?;
    let report = strata_model::inspect::inspect(&file, &a.file);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.render_table());
        match strata_model::LlamaConfig::from_gguf(&file) {
            Ok(cfg) => outln!(
                "\nmodel: {} layers, embedding {}, {} heads ({} kv), vocab {}, ffn {}",
                cfg.n_layers,
                cfg.n_embd,
                cfg.n_head,
                cfg.n_head_kv,
                cfg.n_vocab,
                cfg.n_ff
            ),
            Err(e) => outln!("\nnot runnable by strata: {e}"),
        }
    }
    Ok(())
}

pub fn synth(a: SynthArgs) -> Result<()> {
    if let Some(arch) = &a.derive {
        return derive(&a, arch);
    }
    let preset = strata_model::synth::Preset::by_name(a.preset.as_deref().unwrap_or_default())?;
    let preset = match a.layers {
        Some(n) => preset.with_layers(n)?,
        None => preset,
    };
    let dtype = strata_model::synth::parse_dtype(&a.dtype)?;
    let show = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let total = preset.file_bytes(dtype);
    let bar = if show { Some(crate::progress::bytes_bar(total, "writing")) } else { None };
    strata_model::synth::write_gguf(&preset, dtype, a.seed, &a.out, |done| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "wrote {} ({} layers, {} {}, {}) in {:.1} s",
        a.out.display(),
        preset.n_layers,
        preset.name,
        a.dtype,
        strata_tensor::fmt_bytes(std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(total)),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `strata synth --derive ARCH --from FILE`.
fn derive(a: &SynthArgs, arch: &str) -> Result<()> {
    use strata_model::derive::{DeriveArch, DeriveOptions, derive_file};
    let from = a.from.as_deref().context("--derive needs --from")?;
    let opts = DeriveOptions {
        arch: DeriveArch::parse(arch)?,
        seed: a.seed,
        bias: a.bias,
        norm_jitter: a.norm_jitter,
        window: a.window,
        n_expert: a.experts.first().copied().unwrap_or(4),
        n_expert_used: a.experts.get(1).copied().unwrap_or(2),
        expert_jitter: a.expert_jitter,
        router_amp: a.router_amp,
    };
    let started = std::time::Instant::now();
    let src = GgufFile::open(from)?;
    derive_file(&src, &opts, &a.out)?;
    eprintln!(
        "wrote {} ({} derived from {}) in {:.1} s",
        a.out.display(),
        opts.arch.label(),
        from.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn plan(a: PlanArgs, cpu_path: CpuPath) -> Result<()> {
    let model = load_model(&a.model)?;
    let mut opts = crate::device::engine_options(&model, &a.session, cpu_path)?;
    opts.offload.h2d_bytes_per_s =
        a.h2d_bandwidth.as_deref().map(strata_runtime::units::parse_rate).transpose().context("--h2d-bandwidth")?;
    // Without a GPU, --gpu-memory is the size of a hypothetical card to plan for.
    opts.offload.hypothetical_gpu = opts.gpu.memory_cap;
    opts.measure = a.measure;
    let gpu = crate::device::pick_gpu(&opts, a.json)?;
    super::warn_long_context(&model, &a.session, a.json);
    let plan = strata_model::engine::plan_for(&model, &opts, gpu.as_ref())?;
    let offload = &opts.offload;
    if a.json {
        outln!("{}", serde_json::to_string(&plan)?);
    } else {
        match &gpu {
            Some(g) => outln!("device: {}", g.info()),
            None if offload.hypothetical_gpu.is_some() => outln!("device: a hypothetical GPU (no GPU is used here)"),
            None => outln!("device: cpu only (give --gpu-memory SIZE to plan for a hypothetical GPU)"),
        }
        out!("{}", plan.render_table());
    }
    Ok(())
}
