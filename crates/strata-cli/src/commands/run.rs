//! `strata run` and `strata chat`.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use strata_model::chat::{ChatMessage, ChatTemplate};
use strata_model::{Engine, GenerateOptions, Generation, Model, Session};
use strata_tensor::ops::CpuPath;

use super::{load_model, open_draft, sampler_config, speculative, speculative_line};
use crate::args::{ChatArgs, RunArgs, SampleArgs, SpecArgs};
use crate::device::open_engine;

fn generate_options(a: &SampleArgs, spec: &SpecArgs) -> Result<GenerateOptions> {
    Ok(GenerateOptions {
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        sampler: sampler_config(a),
        speculative: speculative(spec)?,
    })
}

fn special(model: &Model, id: Option<u32>) -> String {
    id.map(|i| model.tokenizer.token_text(i).unwrap_or_default().to_string()).unwrap_or_default()
}

pub(super) fn render(model: &Model, messages: &[ChatMessage]) -> Result<String> {
    let t = &model.tokenizer;
    let fallback;
    let template = match &model.chat_template {
        Some(t) => t,
        None => {
            let name;
            (fallback, name) = ChatTemplate::fallback_for(&model.config.arch);
            log::warn!("the model has no chat template; using {name}");
            &fallback
        }
    };
    Ok(template.render(messages, true, &special(model, t.bos()), &special(model, t.eos()))?)
}

fn summary(g: &Generation, device: &str, seed: u64, greedy: bool) -> String {
    let t = &g.timings;
    format!(
        "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, device {device}{}]",
        t.prompt_tokens,
        t.prompt_tokens_per_second,
        t.generated_tokens,
        t.generation_tokens_per_second,
        if greedy { String::new() } else { format!(", seed {seed}") }
    )
}

pub fn run(a: RunArgs, cpu_path: CpuPath) -> Result<()> {
    let opts = generate_options(&a.sample, &a.spec)?;
    let mut engine = open_engine(load_model(&a.model)?, &a.session, cpu_path, a.json)?;
    open_draft(&mut engine, &a.spec)?;
    let model = std::sync::Arc::clone(engine.model());
    let prompt_text = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage { role: "system".into(), content: s.clone() });
        }
        msgs.push(ChatMessage { role: "user".into(), content: a.prompt.clone() });
        render(&model, &msgs)?
    } else {
        a.prompt.clone()
    };
    let ids = model.tokenizer.encode(&prompt_text, None, a.chat)?;
    if a.warmup
        && let Some(&first) = ids.first()
    {
        engine.forward(&[first], false)?;
        engine.reset();
        engine.with_session(Session::take_stats);
    }
    let device = engine.device().to_string();
    let stdout = std::io::stdout();
    let g = if a.json {
        engine.generate_ids(&ids, &opts, |_| {})?
    } else {
        let mut out = stdout.lock();
        let g = engine.generate_ids(&ids, &opts, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        let _ = writeln!(out);
        g
    };
    if a.json {
        let mut v = serde_json::to_value(&g)?;
        v["device"] = serde_json::Value::String(device);
        v["model"] = serde_json::Value::String(model.path.display().to_string());
        v["sampler"] = serde_json::to_value(&opts.sampler)?;
        v["plan"] = serde_json::to_value(engine.plan())?;
        let stats = engine.with_session(Session::take_stats);
        v["stats"] = crate::stats::json(&stats);
        // Measured decode tok/s over the plan's hybrid bound (null without cpu/streamed layers).
        let decode = v["stats"]["decode"]["tokens_per_second"].as_f64().unwrap_or(0.0);
        v["stats"]["decode"]["hybrid_efficiency"] =
            serde_json::to_value(engine.plan().and_then(|p| p.predicted.measured_hybrid_efficiency(decode)))?;
        outln!("{}", serde_json::to_string(&v)?);
    } else {
        eprintln!("{}", summary(&g, &device, opts.sampler.seed, opts.sampler.temperature == 0.0));
        if a.stats {
            let (dropped, stats) = engine.with_session(|s| (s.stats_dropped(), s.take_stats()));
            eprint!("{}", crate::stats::render(&stats, dropped));
            if let Some(p) = engine.plan() {
                eprintln!("{}", crate::stats::predicted_vs_measured(p, &stats));
            }
            if let Some(s) = &g.speculative {
                eprintln!("{}", speculative_line(s));
            }
        }
    }
    Ok(())
}

/// Feeds the rendered conversation to the session, reusing the cached prefix.
fn sync_prompt(engine: &mut Engine, cached: &mut Vec<u32>, full: &[u32]) -> Vec<u32> {
    let common = cached.iter().zip(full).take_while(|(a, b)| a == b).count();
    // Keep at least one token to run, so the step has logits to sample from.
    let keep = common.min(full.len().saturating_sub(1));
    engine.with_session(|s| s.truncate(keep));
    cached.truncate(keep);
    full[keep..].to_vec()
}

pub fn chat(a: ChatArgs, cpu_path: CpuPath) -> Result<()> {
    let opts = generate_options(&a.sample, &a.spec)?;
    let mut engine = open_engine(load_model(&a.model)?, &a.session, cpu_path, false)?;
    open_draft(&mut engine, &a.spec)?;
    let model = std::sync::Arc::clone(engine.model());
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage { role: "system".into(), content: s.clone() });
    }
    let mut cached: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!("chatting with {} (empty line or Ctrl-D to end)", model.path.display());
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).context("reading stdin")? == 0 || line.trim().is_empty() {
            break;
        }
        messages.push(ChatMessage { role: "user".into(), content: line.trim_end().to_string() });
        let full = model.tokenizer.encode(&render(&model, &messages)?, None, true)?;
        let new = sync_prompt(&mut engine, &mut cached, &full);
        let g = engine.generate_ids(&new, &opts, |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        })?;
        outln!();
        cached.extend_from_slice(&new);
        cached.extend_from_slice(&g.generated_ids);
        // The last generated token was sampled but not run through the model.
        let n_past = engine.session().n_past();
        if n_past < cached.len() {
            cached.truncate(n_past);
        }
        messages.push(ChatMessage { role: "assistant".into(), content: g.text.trim().to_string() });
        eprintln!("{}", summary(&g, &engine.device().to_string(), opts.sampler.seed, opts.sampler.temperature == 0.0));
    }
    Ok(())
}
