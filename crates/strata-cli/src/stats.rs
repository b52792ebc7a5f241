//! `--stats`: per-pass timelines summarized for people (a table) and for scripts (JSON).

use std::fmt::Write;

use serde_json::{Value, json};
use strata_model::PassStats;
use strata_runtime::plan::{Placement, Plan};

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn summary(passes: &[&PassStats]) -> Value {
    let wall = passes.iter().map(|p| p.wall_s).fold(0.0, |a, b| a + b);
    let compute = passes.iter().map(|p| p.compute_s).fold(0.0, |a, b| a + b);
    let copy = passes.iter().map(|p| p.copy_s).fold(0.0, |a, b| a + b);
    let bytes: u64 = passes.iter().map(|p| p.copy_bytes).sum();
    let tokens: usize = passes.iter().map(|p| p.tokens).sum();
    let routed: u64 = passes.iter().map(|p| p.experts.routed).sum();
    let hits: u64 = passes.iter().map(|p| p.experts.hits).sum();
    json!({
        "passes": passes.len(),
        "tokens": tokens,
        "wall_s": wall,
        "compute_s": compute,
        "copy_s": copy,
        "copy_bytes": bytes,
        "wait_s": passes.iter().map(|p| p.wait_s).fold(0.0, |a, b| a + b),
        "overlap_efficiency": if wall > 0.0 { compute.max(copy) / wall } else { 0.0 },
        "copy_gb_per_s": if copy > 0.0 { bytes as f64 / copy / 1e9 } else { 0.0 },
        "tokens_per_second": if wall > 0.0 { tokens as f64 / wall } else { 0.0 },
        "expert_routed": routed,
        "expert_cache_hits": hits,
        "expert_cache_hit_rate": if routed > 0 { hits as f64 / routed as f64 } else { 0.0 },
        "cpu_expert_s": passes.iter().map(|p| p.experts.cpu_s).fold(0.0, |a, b| a + b),
        "expert_refill_bytes": passes.iter().map(|p| p.experts.refill_bytes).sum::<u64>(),
    })
}

/// `{"prefill": {...}, "decode": {...}, "last_decode_layers": [...]}`.
pub fn json(stats: &[PassStats]) -> Value {
    let prefill: Vec<&PassStats> = stats.iter().filter(|p| p.tokens > 1).collect();
    let decode: Vec<&PassStats> = stats.iter().filter(|p| p.tokens == 1).collect();
    json!({
        "prefill": summary(&prefill),
        "decode": summary(&decode),
        "last_decode": decode.last().map(|p| serde_json::to_value(p).unwrap_or(Value::Null)),
    })
}

/// A table: prefill and decode totals, then the last decoded token layer by layer. `dropped`
/// passes (the oldest, beyond what a session keeps) are not in `stats`.
pub fn render(stats: &[PassStats], dropped: usize) -> String {
    let v = json(stats);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "phase", "tokens", "wall ms", "compute", "copy", "wait", "overlap", "copy GB/s"
    );
    for phase in ["prefill", "decode"] {
        let p = &v[phase];
        let ms = |k: &str| p[k].as_f64().unwrap_or(0.0) * 1e3;
        let _ = writeln!(
            out,
            "{phase:<8} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>9.1}",
            p["tokens"],
            ms("wall_s"),
            ms("compute_s"),
            ms("copy_s"),
            ms("wait_s"),
            p["overlap_efficiency"].as_f64().unwrap_or(0.0),
            p["copy_gb_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    for phase in ["prefill", "decode"] {
        let p = &v[phase];
        let routed = p["expert_routed"].as_u64().unwrap_or(0);
        if routed > 0 {
            let _ = writeln!(
                out,
                "{phase} experts on the CPU: {routed} routed, cache hit rate {:.1}% ({} hits), CPU side {:.1} ms \
                 (of {:.1} ms wall), {:.1} MiB refilled into the caches",
                100.0 * p["expert_cache_hit_rate"].as_f64().unwrap_or(0.0),
                p["expert_cache_hits"],
                p["cpu_expert_s"].as_f64().unwrap_or(0.0) * 1e3,
                p["wall_s"].as_f64().unwrap_or(0.0) * 1e3,
                p["expert_refill_bytes"].as_u64().unwrap_or(0) as f64 / (1u64 << 20) as f64,
            );
        }
    }
    // The summary counts generated tokens; the first of them is sampled from the prompt's
    // logits, so the table shows one decode pass fewer.
    let _ = writeln!(out, "(the prefill pass gives the first generated token; each later one takes a decode pass)");
    if dropped > 0 {
        let _ = writeln!(
            out,
            "({dropped} earlier passes are not shown: a session keeps the last {})",
            strata_model::STATS_KEPT
        );
    }
    if let Some(last) = stats.iter().rev().find(|p| p.tokens == 1) {
        let _ = writeln!(out, "last decoded token, per layer (ms):");
        let _ = writeln!(out, "{:>5} {:<9} {:>8} {:>8} {:>8}", "layer", "placement", "compute", "wait", "copy");
        for l in &last.layers {
            let copy = last
                .copies
                .iter()
                .filter(|c| c.layer == Some(l.layer))
                .map(|c| c.end_s - c.start_s)
                .fold(0.0, |a, b| a + b);
            let name = match l.placement {
                Placement::Resident => "resident",
                Placement::Streamed => "streamed",
                Placement::Cpu => "cpu",
            };
            let _ = writeln!(
                out,
                "{:>5} {:<9} {:>8.3} {:>8.3} {:>8.3}",
                l.layer,
                name,
                (l.end_s - l.start_s) * 1e3,
                l.wait_s * 1e3,
                copy * 1e3
            );
        }
        let _ =
            writeln!(out, "mean layer compute {:.3} ms", mean(last.layers.iter().map(|l| (l.end_s - l.start_s) * 1e3)));
    }
    out
}

/// "predicted 29.1 tok/s decode, 141 tok/s prefill; measured 27.0 and 150 tok/s" (the prefill
/// prediction naming the prefill placement when the plan has one), with the
/// hybrid efficiency (decode tok/s ÷ the plan's hybrid bound, see `strata_runtime::plan`)
/// predicted and measured when the plan has cpu or streamed layers beside the GPU, and the
/// expert cache's predicted and measured hit rates for a mixture-of-experts plan.
pub fn predicted_vs_measured(plan: &Plan, stats: &[PassStats]) -> String {
    let v = json(stats);
    let rate = |phase: &str| v[phase]["tokens_per_second"].as_f64().unwrap_or(0.0);
    let p = &plan.predicted;
    // With a prefill placement, say which placement each prediction is for.
    let prefill_how = match &plan.prefill_placement {
        Some(pf) if plan.prefill_batch >= pf.min_tokens => format!(
            " (batch {}, {} cpu layers streamed in passes of {}+ tokens)",
            plan.prefill_batch, pf.cpu_layers_streamed, pf.min_tokens
        ),
        _ => String::new(),
    };
    let mut line = format!(
        "plan predicted {:.1} tok/s decode, {:.1} tok/s prefill{prefill_how}; measured {:.1} and {:.1} tok/s",
        p.decode_tokens_per_second,
        p.prefill_tokens_per_second,
        rate("decode"),
        rate("prefill"),
    );
    if let (Some(predicted), Some(measured)) = (p.hybrid_efficiency, p.measured_hybrid_efficiency(rate("decode"))) {
        let _ = write!(line, "; hybrid efficiency predicted {predicted:.2}, measured {measured:.2}");
    }
    if let Some(x) = &plan.experts
        && x.cached_bytes > 0
    {
        let _ = write!(
            line,
            "; expert cache hit rate predicted {:.0}%, measured {:.0}% in decode",
            100.0 * x.predicted_hit_rate,
            100.0 * v["decode"]["expert_cache_hit_rate"].as_f64().unwrap_or(0.0),
        );
    }
    line
}
