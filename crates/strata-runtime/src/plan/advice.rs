//! The plan's warnings: plain words about what limits it and what the user might change.

use super::predict::Timing;
use super::prefill::{self, NoPrefill, Prefill};
use super::render::fmt_tps;
use super::search::{Candidate, Chosen, Layout, Misfit, Outcome, Planner, policy_flag};
use super::{Policy, Rest, SpeedSource};
use crate::units::fmt_size;

/// An alternative is worth mentioning as better when it is at least this much faster.
const WORTHWHILE: f64 = 1.1;

/// "1 layer", "12 layers".
fn layers(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn tps(t: &Timing) -> f64 {
    1.0 / t.seconds.max(1e-9)
}

/// Every warning for the chosen plan, most important first.
pub(super) fn warnings(p: &Planner, chosen: &Chosen, pf: Option<&Prefill>) -> Vec<String> {
    let req = p.req;
    let best = &chosen.best;
    let l = best.layout;
    let n = req.layers.len();
    let mut out = Vec::new();

    match req.gpu_budget {
        None => out.push("no GPU: every layer runs on the CPU".to_string()),
        Some(budget) if !l.gpu => {
            let fixed = p.gpu_fixed();
            if fixed > budget as u128 {
                out.push(format!(
                    "the GPU budget of {} cannot hold the output head, scratch and CUDA context ({}): every layer \
                     runs on the CPU; raise --gpu-memory to use the GPU",
                    fmt_size(budget),
                    fmt_size(u64::try_from(fixed).unwrap_or(u64::MAX))
                ));
            } else {
                out.push(
                    "every layer runs on the CPU: no plan that uses the GPU fits the memory budgets and is predicted \
                     to be faster"
                        .to_string(),
                );
            }
        }
        Some(_) => {}
    }
    if let Policy::GpuLayers(k) = req.policy
        && k > n
    {
        out.push(format!("--gpu-layers {k} is more than the model's {n} layers: all {n} are resident"));
    }
    let gpu_planned = req.gpu_budget.is_some();
    match (req.speeds.source, gpu_planned && req.speeds.gpu_source == SpeedSource::Assumed) {
        (SpeedSource::Assumed, true) => out.push(
            "speeds are assumed, not measured: the predicted tok/s are rough guesses; `strata plan --measure` on the \
             machine with the GPU measures them"
                .to_string(),
        ),
        (SpeedSource::Assumed, false) => out.push(
            "CPU speeds are assumed, not measured: the predicted tok/s are rough guesses; `strata plan --measure` \
             measures them (a second or so)"
                .to_string(),
        ),
        (_, true) => out.push(
            "GPU speeds are assumed (calibrated from strata's kernels on an H200), not measured: the GPU's predicted \
             tok/s are rough guesses; `strata plan --measure` on the machine with the GPU measures them"
                .to_string(),
        ),
        _ => {}
    }
    if let Some(text) = kv_advice(p, best) {
        out.push(text);
    }
    if best.acc.staging {
        out.push(format!(
            "pinned memory budget {} < {} of streamed weights: staging through a pinned ring of {} (slower)",
            fmt_size(req.pinned_budget),
            fmt_size(u64::try_from(best.acc.streamed_weights).unwrap_or(u64::MAX)),
            fmt_size(best.acc.host.pinned),
        ));
    }
    let host_kv_streamed = l.streamed - best.acc.kv_gpu_streamed.min(l.streamed);
    if host_kv_streamed > 0 {
        let bytes: u64 = req.layers[n - host_kv_streamed..].iter().map(|s| s.kv_bytes).fold(0, u64::saturating_add);
        if bytes > 0 {
            out.push(format!(
                "the KV cache of {} ({}) does not fit on the GPU: it stays in host memory and attention reads it \
                 over PCIe every token",
                layers(host_kv_streamed, "streamed layer"),
                fmt_size(bytes)
            ));
        }
    }
    let suggested_better = match bound_advice(p, best) {
        Some((text, better)) => {
            out.push(text);
            better
        }
        None => false,
    };
    if let Some(text) = prefill_advice(p, chosen, pf) {
        out.push(text);
    }
    if req.policy != Policy::Auto
        && !suggested_better
        && let Ok(auto) = p.choose(Policy::Auto)
        && tps(&auto.best.decode) >= WORTHWHILE * tps(&best.decode)
    {
        let flag = policy_flag(req.policy, req.rest);
        out.push(format!(
            "{flag} is predicted at {} tok/s decode; the automatic plan (without {flag}) would reach about {} tok/s",
            fmt_tps(tps(&best.decode)),
            fmt_tps(tps(&auto.best.decode)),
        ));
    }
    out
}

/// When decode is transfer-bound, what computing the streamed layers on the CPU would give;
/// when it is CPU-bound, what streaming the cpu layers would give. Returns the text and whether
/// the alternative is better.
fn bound_advice(p: &Planner, best: &Candidate) -> Option<(String, bool)> {
    let l = best.layout;
    let now = tps(&best.decode);
    let bound = best.decode.bound();
    if l.streamed > 0 && bound == "PCIe transfer" {
        let head = format!(
            "{} stream over PCIe: decode is transfer-bound at about {} tok/s",
            layers(l.streamed, "layer"),
            fmt_tps(now)
        );
        let alt = Layout { cpu: l.cpu + l.streamed, streamed: 0, depth: 0, ..l };
        return Some(match p.evaluate(&alt) {
            Outcome::Fits(c) => compare(head, "computing them on the CPU", now, tps(&c.decode), "--cpu-layers"),
            Outcome::Misses(Misfit::Host, acc) => (
                format!(
                    "{head}; computing them on the CPU would need {} of host memory, {} is usable",
                    fmt_size(u64::try_from(acc.host_total).unwrap_or(u64::MAX)),
                    fmt_size(u64::try_from(p.host_budget()).unwrap_or(u64::MAX)),
                ),
                false,
            ),
            Outcome::Misses(..) => (head, false),
        });
    }
    if l.gpu && l.cpu > 0 && bound == "CPU" {
        let head =
            format!("{} run on the CPU: decode is CPU-bound at about {} tok/s", layers(l.cpu, "layer"), fmt_tps(now));
        let depths = 1..=p.req.max_prefetch_depth.clamp(1, 8);
        let alt = depths
            .filter_map(|depth| match p.evaluate(&Layout { cpu: 0, streamed: l.cpu + l.streamed, depth, ..l }) {
                Outcome::Fits(c) => Some(c),
                Outcome::Misses(..) => None,
            })
            .map(|c| tps(&c.decode))
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
        return Some(match alt {
            Some(alt) => compare(head, "streaming them to the GPU", now, alt, "--stream"),
            None => (head, false),
        });
    }
    None
}

/// "{head}; {what} would be about X tok/s ({flag})", or "... would be slower (about X tok/s)".
fn compare(head: String, what: &str, now: f64, alt: f64, flag: &str) -> (String, bool) {
    if alt >= WORTHWHILE * now {
        (format!("{head}; {what} would be about {} tok/s ({flag})", fmt_tps(alt)), true)
    } else if alt > now {
        (format!("{head}; {what} would be about the same ({} tok/s)", fmt_tps(alt)), false)
    } else {
        (format!("{head}; {what} would be slower (about {} tok/s)", fmt_tps(alt)), false)
    }
}

/// When the planner chose the streamed/cpu split for decode and prefill would prefer another
/// that the prefill placement (which streams every non-resident layer) does not already beat.
fn prefill_advice(p: &Planner, chosen: &Chosen, pf: Option<&Prefill>) -> Option<String> {
    let split_is_ours = matches!((p.req.policy, p.req.rest), (Policy::Auto, _) | (Policy::GpuLayers(_), Rest::Auto));
    let (best, alt) = (&chosen.best, &chosen.best_prefill_same_resident);
    if !split_is_ours || alt.layout.streamed == best.layout.streamed {
        return None;
    }
    let now = tps(&prefill::prompt_timing(pf, p.req, best));
    let better = tps(&alt.prefill);
    let flag = if alt.layout.cpu == 0 { " (--stream)" } else { "" };
    (better >= WORTHWHILE * now).then(|| {
        format!(
            "prefill would be faster with {} streamed and {} cpu layers{flag}: about {} instead of {} tok/s at a batch \
             of {}, for {} instead of {} tok/s decode; the plan is chosen for decode speed",
            alt.layout.streamed,
            alt.layout.cpu,
            fmt_tps(better),
            fmt_tps(now),
            p.req.prefill_tokens.max(1),
            fmt_tps(tps(&alt.decode)),
            fmt_tps(tps(&best.decode)),
        )
    })
}

/// When the KV cache is what keeps layers off the GPU: how many more would be resident without
/// it, and the longest `--context` that keeps them all (llama.cpp's `--fit` shrinks the context
/// itself; strata says what to change). Only with a known context and the automatic policy.
fn kv_advice(p: &Planner, best: &Candidate) -> Option<String> {
    let req = p.req;
    let n = req.layers.len();
    let l = best.layout;
    let kv_on_gpu = best.acc.gpu.kv;
    if req.context == 0 || req.policy != Policy::Auto || !l.gpu || l.resident >= n || kv_on_gpu == 0 || n > 256 {
        return None;
    }
    // The resident layers of the automatic plan at another context (KV scales with it).
    let resident_at = |context: usize| -> Option<(usize, f64)> {
        let mut r = req.clone();
        for s in &mut r.layers {
            s.kv_bytes = (u128::from(s.kv_bytes) * context as u128 / req.context as u128) as u64;
        }
        let c = Planner::with_sides(&r, p.sides.clone()).choose(Policy::Auto).ok()?.best;
        Some((c.layout.resident, tps(&c.decode)))
    };
    let (most, _) = resident_at(0)?;
    if most <= l.resident {
        return None;
    }
    // The longest context that keeps `most` layers resident: binary search (resident counts
    // only grow as the context shrinks).
    let (mut lo, mut hi) = (0usize, req.context);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match resident_at(mid) {
            Some((r, _)) if r >= most => lo = mid,
            _ => hi = mid,
        }
    }
    let what = format!(
        "the KV cache for --context {} takes {} of GPU memory and leaves room for {} of {n} resident layers",
        req.context,
        fmt_size(kv_on_gpu),
        l.resident
    );
    let fix = if lo == 0 {
        format!("{most} would be resident without it")
    } else {
        let all = if most == n { "all".to_string() } else { most.to_string() };
        let mut options = Vec::new();
        // A milder change first, when it already helps.
        let half = req.context / 2;
        if let Some((r, t)) = resident_at(half)
            && half > lo
            && r > l.resident
        {
            options.push(format!("at --context {half} {r} would be resident (about {} tok/s decode)", fmt_tps(t)));
        }
        let t = resident_at(lo).map_or(0.0, |(_, t)| t);
        options.push(format!("at --context {lo} or less {all} would be (about {} tok/s)", fmt_tps(t)));
        format!("{}, instead of {} tok/s now", options.join("; "), fmt_tps(tps(&best.decode)))
    };
    Some(format!("{what}; {fix}"))
}

/// Why a plan with cpu layers beside the GPU has no prefill placement, when that is news.
pub(super) fn prefill_placement_note(pf: &Result<Prefill, NoPrefill>) -> Option<String> {
    let what = "prompt passes run the cpu layers on the CPU as decode does";
    match pf {
        Ok(_) | Err(NoPrefill::Quiet) => None,
        Err(NoPrefill::NeverFaster) => Some(format!(
            "{what}: streaming them is not predicted faster at any batch up to {} tokens (--prefill-stream-min N \
             forces it)",
            prefill::AUTO_LIMIT
        )),
        Err(NoPrefill::Gpu(need, left)) => Some(format!(
            "{what}: streaming them needs {} more GPU memory (slots and one layer's KV cache), {} is left; raise \
             --gpu-memory",
            fmt_size(*need),
            fmt_size(*left)
        )),
        Err(NoPrefill::Host(need, left)) => Some(format!(
            "{what}: streaming them needs a {} packed copy in host memory, {} is left",
            fmt_size(*need),
            fmt_size(*left)
        )),
    }
}
