//! The plan as people read it: a table (one row per layer, or per run of alike layers when the
//! model has many) and a one-line summary.

use std::fmt::Write;

use super::{ExpertPlacement, ExpertPlan, KvPlacement, LayerPlan, Placement, Plan};
use crate::units::fmt_size;

/// Up to this many layers the table has one row per layer; above, one row per run.
const ROW_PER_LAYER: usize = 16;

/// Tokens per second the way the plan prints them: `850`, `14.2`, `0.35`.
pub(super) fn fmt_tps(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn placement_name(p: Placement) -> &'static str {
    match p {
        Placement::Resident => "resident",
        Placement::Streamed => "streamed",
        Placement::Cpu => "cpu",
    }
}

fn kv_name(k: KvPlacement) -> &'static str {
    match k {
        KvPlacement::Gpu => "gpu",
        KvPlacement::Host => "host",
    }
}

/// "speeds measured here", or per side when a GPU (real or hypothetical) is planned for and the
/// two sides differ: "cpu speeds measured here, gpu speeds assumed".
fn sources(p: &Plan) -> String {
    if p.gpu_budget_bytes == 0 || p.cpu_speeds_source == p.gpu_speeds_source {
        format!("speeds {}", p.speeds_source.describe())
    } else {
        format!("cpu speeds {}, gpu speeds {}", p.cpu_speeds_source.describe(), p.gpu_speeds_source.describe())
    }
}

/// A budget; `u64::MAX` is how callers say "no cap".
fn fmt_budget(b: u64) -> String {
    if b == u64::MAX { "no cap".to_string() } else { fmt_size(b) }
}

/// `used/cap unit` with the unit of `cap`: "5.8/6.0 GiB", "700/1024 MiB", "5.0 GiB (no cap)".
fn fmt_pair(used: u64, cap: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if cap == u64::MAX {
        format!("{} (no cap)", fmt_size(used))
    } else if cap as f64 >= GIB {
        format!("{:.1}/{:.1} GiB", used as f64 / GIB, cap as f64 / GIB)
    } else {
        format!("{:.0}/{:.0} MiB", used as f64 / MIB, cap as f64 / MIB)
    }
}

/// Consecutive layers with the same placement, KV placement and expert placement.
fn runs(layers: &[LayerPlan]) -> Vec<&[LayerPlan]> {
    let experts = |l: &LayerPlan| l.experts.map(|e| (e.placement, e.cached));
    layers
        .chunk_by(|a, b| a.placement == b.placement && a.kv_placement == b.kv_placement && experts(a) == experts(b))
        .collect()
}

/// The experts column: "resident", "streamed", "cpu", "cached 16/128", or "-" for a dense layer.
fn experts_name(e: Option<ExpertPlan>) -> String {
    match e {
        None => "-".to_string(),
        Some(e) => match e.placement {
            ExpertPlacement::Resident => "resident".to_string(),
            ExpertPlacement::Streamed => "streamed".to_string(),
            ExpertPlacement::Cpu => "cpu".to_string(),
            ExpertPlacement::Cached => format!("cached {}/{}", e.cached, e.n_expert),
        },
    }
}

/// Where the hybrid band starts: the first non-resident layer, when the cpu and streamed layers
/// after it alternate (the cpu layers are not one run). `None` for any other plan.
fn hybrid_start(layers: &[LayerPlan]) -> Option<usize> {
    let start = layers.iter().position(|l| l.placement != Placement::Resident)?;
    let band = &layers[start..];
    let cpu_runs = band
        .chunk_by(|a, b| a.placement == b.placement)
        .filter(|r| r.first().is_some_and(|l| l.placement == Placement::Cpu))
        .count();
    let only_band = band.iter().all(|l| l.placement != Placement::Resident);
    (only_band && cpu_runs > 1).then_some(start)
}

impl Plan {
    /// One line: counts, slots, GPU use, predicted speeds and where the speeds came from.
    pub fn summary_line(&self) -> String {
        let (resident, streamed, cpu) = self.counts();
        // Resident layers that stream their experts use the slots too.
        let streaming = if streamed > 0 || self.slots > 0 {
            let staged = if self.staging { ", staged" } else { "" };
            format!(" ({} slots, prefetch {}{staged})", self.slots, self.prefetch_depth)
        } else {
            String::new()
        };
        let gpu = if self.gpu_budget_bytes == 0 && !self.head_on_gpu {
            "GPU none".to_string()
        } else if !self.head_on_gpu {
            "GPU unused".to_string()
        } else {
            format!("GPU {}", fmt_pair(self.gpu_bytes_planned, self.gpu_budget_bytes))
        };
        let resident_streaming_experts = self
            .layers
            .iter()
            .filter(|l| {
                l.placement == Placement::Resident
                    && l.experts.is_some_and(|e| e.placement == ExpertPlacement::Streamed)
            })
            .count();
        let experts = match &self.experts {
            Some(x) if x.cached_bytes > 0 => {
                format!("; experts {} on the CPU, {} cached", fmt_size(x.cpu_bytes), fmt_size(x.cached_bytes))
            }
            Some(x) if x.cpu_bytes > 0 => format!("; experts {} on the CPU", fmt_size(x.cpu_bytes)),
            Some(_) if resident_streaming_experts > 0 => {
                format!("; experts of {resident_streaming_experts} resident layers streamed")
            }
            Some(_) => "; experts with their layers".to_string(),
            None => String::new(),
        };
        format!(
            "plan: {resident} resident, {streamed} streamed{streaming}, {cpu} cpu{experts}; {gpu}; predicted {} tok/s \
             decode, {} tok/s prefill at a batch of {} ({})",
            fmt_tps(self.predicted.decode_tokens_per_second),
            fmt_tps(self.predicted.prefill_tokens_per_second),
            self.prefill_batch,
            sources(self),
        )
    }

    /// The layer table, the GPU and host memory lines, the prediction and the warnings.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(s, "plan ({}; {})", self.policy, sources(self));
        // Dense plans print as they always have; a mixture-of-experts plan adds a column.
        let moe = self.experts.is_some();
        let experts_head = if moe { "  experts" } else { "" };
        let _ =
            writeln!(s, "{:<9} {:<9} {:>11} {:>11}  KV on{experts_head}", "layers", "placement", "weights", "KV cache");
        let mut rows: Vec<&[LayerPlan]> =
            if self.layers.len() <= ROW_PER_LAYER { self.layers.chunks(1).collect() } else { runs(&self.layers) };
        // A hybrid band (streamed layers spread among cpu layers) of many layers is one row, and
        // a line after the table names its streamed layers.
        let mut hybrid_band: Option<usize> = None;
        if rows.len() > ROW_PER_LAYER / 2
            && let Some(start) = hybrid_start(&self.layers)
            && let Some(k) = rows.iter().position(|r| r.first().is_some_and(|l| l.index == start))
        {
            rows.truncate(k);
            rows.push(&self.layers[start..]);
            hybrid_band = Some(start);
        }
        for run in rows {
            let (Some(first), Some(last)) = (run.first(), run.last()) else { continue };
            if hybrid_band == Some(first.index) {
                let (cpu, streamed) = run.iter().fold((0, 0), |(c, st), l| match l.placement {
                    Placement::Cpu => (c + 1, st),
                    _ => (c, st + 1),
                });
                let weights = run.iter().map(|l| l.weight_bytes).fold(0, u64::saturating_add);
                let kv = run.iter().map(|l| l.kv_bytes).fold(0, u64::saturating_add);
                let range = format!("{}-{}", first.index, last.index);
                let _ = writeln!(
                    s,
                    "{range:<9} {:<9} {:>11} {:>11}  host (cpu), gpu (streamed): {cpu} cpu, {streamed} streamed",
                    "hybrid",
                    fmt_size(weights),
                    fmt_size(kv),
                );
                continue;
            }
            let range = if first.index == last.index {
                first.index.to_string()
            } else {
                format!("{}-{}", first.index, last.index)
            };
            let weights = run.iter().map(|l| l.weight_bytes).fold(0, u64::saturating_add);
            let kv = run.iter().map(|l| l.kv_bytes).fold(0, u64::saturating_add);
            let kv_on = kv_name(first.kv_placement);
            let kv_on = if moe { format!("{kv_on:<5}  {}", experts_name(first.experts)) } else { kv_on.to_string() };
            let _ = writeln!(
                s,
                "{range:<9} {:<9} {:>11} {:>11}  {kv_on}",
                placement_name(first.placement),
                fmt_size(weights),
                fmt_size(kv),
            );
        }
        let g = &self.gpu_bytes;
        let cache =
            if g.expert_cache > 0 { format!(", {} expert cache", fmt_size(g.expert_cache)) } else { String::new() };
        if self.head_on_gpu {
            let _ = writeln!(
                s,
                "GPU memory   {} of {}: {} resident weights, {} KV cache, {} slots, {} head, {} scratch, {} CUDA \
                 context{cache}",
                fmt_size(self.gpu_bytes_planned),
                fmt_budget(self.gpu_budget_bytes),
                fmt_size(g.resident_weights),
                fmt_size(g.kv),
                fmt_size(g.slots),
                fmt_size(g.head),
                fmt_size(g.scratch),
                fmt_size(g.context_overhead),
            );
        } else if self.gpu_budget_bytes > 0 {
            let _ = writeln!(s, "GPU memory   unused (budget {})", fmt_budget(self.gpu_budget_bytes));
        } else {
            let _ = writeln!(s, "GPU memory   no GPU");
        }
        let h = &self.host_bytes;
        let cpu_experts =
            if h.cpu_experts > 0 { format!(", {} cpu experts", fmt_size(h.cpu_experts)) } else { String::new() };
        let pinned_what = if self.staging { "pinned ring" } else { "pinned" };
        let _ = writeln!(
            s,
            "host memory  {} of {} usable: {} {pinned_what}, {} staged weights, {} cpu weights, {} KV cache, {} head \
             and scratch, {} embedding{cpu_experts}",
            fmt_size(self.host_bytes_planned),
            fmt_budget(self.host_budget_bytes),
            fmt_size(h.pinned),
            fmt_size(h.staged_weights),
            fmt_size(h.cpu_weights),
            fmt_size(h.kv),
            fmt_size(h.head_and_scratch),
            fmt_size(h.embedding),
        );
        if let Some(start) = hybrid_band {
            let at: Vec<String> = self.layers[start..]
                .iter()
                .filter(|l| l.placement == Placement::Streamed)
                .map(|l| l.index.to_string())
                .collect();
            let _ = writeln!(s, "hybrid band  streamed layers {} among cpu layers", at.join(", "));
        }
        if self.slots > 0 {
            let _ = writeln!(
                s,
                "streaming    {} slots of {}, prefetch depth {}{}",
                self.slots,
                fmt_size(self.slot_bytes),
                self.prefetch_depth,
                if self.staging { ", staged through pinned memory" } else { ", from pinned memory" }
            );
        }
        if let Some(x) = &self.experts {
            let hit = if x.cached_bytes > 0 {
                format!(" (predicted hit rate {:.0}%)", 100.0 * x.predicted_hit_rate)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "experts      {}: {} resident, {} streamed, {} on the CPU, {} cached on the GPU{hit}; {} active per \
                 token",
                x.policy,
                fmt_size(x.resident_bytes),
                fmt_size(x.streamed_bytes),
                fmt_size(x.cpu_bytes),
                fmt_size(x.cached_bytes),
                fmt_size(x.active_bytes_per_token),
            );
        }
        let p = &self.predicted;
        let _ = writeln!(
            s,
            "predicted    {} tok/s decode (bound: {}), {} tok/s prefill (batch {})",
            fmt_tps(p.decode_tokens_per_second),
            p.bound,
            fmt_tps(p.prefill_tokens_per_second),
            self.prefill_batch
        );
        if let Some(pf) = &self.prefill_placement {
            let (resident, streamed, _) = self.counts();
            let pinned = if pf.pinned { "pinned" } else { "pageable, staged by the driver" };
            let _ = writeln!(
                s,
                "prefill      passes of {}+ tokens ({}): {resident} resident, {} streamed ({} of them cpu in \
                 decode), {} slots of {}; {} tok/s at a batch of {} ({} with the decode placement); +{} GPU, +{} \
                 host ({pinned})",
                pf.min_tokens,
                pf.threshold_from,
                streamed + pf.cpu_layers_streamed,
                pf.cpu_layers_streamed,
                pf.slots,
                fmt_size(pf.slot_bytes),
                fmt_tps(pf.tokens_per_second),
                self.prefill_batch,
                fmt_tps(pf.decode_placement_tokens_per_second),
                fmt_size(pf.extra_gpu_bytes),
                fmt_size(pf.extra_host_bytes),
            );
            let (_, _, cpu) = self.counts();
            let _ = writeln!(
                s,
                "decode       shorter passes: {resident} resident, {streamed} streamed, {cpu} cpu; {} tok/s decode",
                fmt_tps(p.decode_tokens_per_second),
            );
        }
        if let (Some(bound), Some(eff)) = (p.hybrid_bound_tokens_per_second, p.hybrid_efficiency) {
            let _ = writeln!(
                s,
                "hybrid       efficiency {eff:.2} of the {} tok/s decode the CPU and H2D bandwidths allow together",
                fmt_tps(bound),
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}
