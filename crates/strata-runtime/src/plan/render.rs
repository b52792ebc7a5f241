//! The plan as people read it: a table (one row per layer, or per run of alike layers when the
//! model has many) and a one-line summary.

use std::fmt::Write;

use super::{KvPlacement, LayerPlan, Placement, Plan};
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

/// Consecutive layers with the same placement and KV placement.
fn runs(layers: &[LayerPlan]) -> Vec<&[LayerPlan]> {
    layers.chunk_by(|a, b| a.placement == b.placement && a.kv_placement == b.kv_placement).collect()
}

impl Plan {
    /// One line: counts, slots, GPU use, predicted speeds and where the speeds came from.
    pub fn summary_line(&self) -> String {
        let (resident, streamed, cpu) = self.counts();
        let streaming = if streamed > 0 {
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
        format!(
            "plan: {resident} resident, {streamed} streamed{streaming}, {cpu} cpu; {gpu}; predicted {} tok/s decode, \
             {} tok/s prefill at a batch of {} ({})",
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
        let _ = writeln!(s, "{:<9} {:<9} {:>11} {:>11}  KV on", "layers", "placement", "weights", "KV cache");
        let rows: Vec<&[LayerPlan]> =
            if self.layers.len() <= ROW_PER_LAYER { self.layers.chunks(1).collect() } else { runs(&self.layers) };
        for run in rows {
            let (Some(first), Some(last)) = (run.first(), run.last()) else { continue };
            let range = if first.index == last.index {
                first.index.to_string()
            } else {
                format!("{}-{}", first.index, last.index)
            };
            let weights = run.iter().map(|l| l.weight_bytes).fold(0, u64::saturating_add);
            let kv = run.iter().map(|l| l.kv_bytes).fold(0, u64::saturating_add);
            let _ = writeln!(
                s,
                "{range:<9} {:<9} {:>11} {:>11}  {}",
                placement_name(first.placement),
                fmt_size(weights),
                fmt_size(kv),
                kv_name(first.kv_placement)
            );
        }
        let g = &self.gpu_bytes;
        if self.head_on_gpu {
            let _ = writeln!(
                s,
                "GPU memory   {} of {}: {} resident weights, {} KV cache, {} slots, {} head, {} scratch, {} CUDA \
                 context",
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
        let pinned_what = if self.staging { "pinned ring" } else { "pinned" };
        let _ = writeln!(
            s,
            "host memory  {} of {} usable: {} {pinned_what}, {} staged weights, {} cpu weights, {} KV cache, {} head \
             and scratch, {} embedding",
            fmt_size(self.host_bytes_planned),
            fmt_budget(self.host_budget_bytes),
            fmt_size(h.pinned),
            fmt_size(h.staged_weights),
            fmt_size(h.cpu_weights),
            fmt_size(h.kv),
            fmt_size(h.head_and_scratch),
            fmt_size(h.embedding),
        );
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
        let p = &self.predicted;
        let _ = writeln!(
            s,
            "predicted    {} tok/s decode (bound: {}), {} tok/s prefill (batch {})",
            fmt_tps(p.decode_tokens_per_second),
            p.bound,
            fmt_tps(p.prefill_tokens_per_second),
            self.prefill_batch
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}
