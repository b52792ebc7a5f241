//! Sampling the next token from logits: greedy, or temperature with top-k, top-p (nucleus),
//! min-p and a repetition penalty, from a seeded generator (same seed, same text).
//!
//! Order, as in llama.cpp's default chain: repetition penalty → top-k → top-p → min-p →
//! temperature → draw. Temperature 0 is greedy: the highest logit after the penalty, ties to
//! the lowest id.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SamplerConfig {
    /// 0 = greedy.
    #[serde(serialize_with = "shortest_f32")]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    #[serde(serialize_with = "shortest_f32")]
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability (0 = none).
    #[serde(serialize_with = "shortest_f32")]
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this (1 = off).
    #[serde(serialize_with = "shortest_f32")]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random generator.
    pub seed: u64,
}

/// An f32 in JSON as its shortest decimal form (`0.8`), not as the f64 it widens to
/// (`0.800000011920929`), which is what serde_json prints once the value goes through
/// `to_value`.
fn shortest_f32<S: serde::Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    match x.to_string().parse::<f64>() {
        Ok(v) => s.serialize_f64(v),
        Err(_) => s.serialize_f32(*x),
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5EED,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0, no penalty).
    pub fn greedy() -> SamplerConfig {
        SamplerConfig { temperature: 0.0, repeat_penalty: 1.0, ..SamplerConfig::default() }
    }

    /// Checks the ranges.
    ///
    /// # Errors
    /// A message naming the flag and the value.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, v: f32, want: &str| Error::invalid(format!("--{flag} {v} is invalid: expected {want}"));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad("temperature", self.temperature, "a number ≥ 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top-p", self.top_p, "a number in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min-p", self.min_p, "a number in [0, 1]"));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(bad("repeat-penalty", self.repeat_penalty, "a number > 0"));
        }
        Ok(())
    }
}

/// A sampler with its generator and the recent tokens the penalty looks at.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: ChaCha8Rng,
    recent: VecDeque<u32>,
}

/// Index of the largest value (ties: the lowest index); NaN never wins (all NaN: the last
/// index; empty: 0).
///
/// Greedy decoding runs this over the whole vocabulary every token (262144 logits for Gemma
/// 3), so it is two passes that vectorize instead of one with a compare-and-branch per value:
/// the largest non-NaN value in eight lanes (`f32::max` ignores NaN), then the first index
/// holding it. The same index as the one-pass scan (`tests/sample.rs` checks it against that
/// scan with ties, NaNs, signed zeros and infinities).
pub fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 8;
    let mut lanes = [f32::NAN; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let best = lanes.iter().chain(tail).fold(f32::NAN, |m, &v| m.max(v));
    if best.is_nan() {
        // Nothing but NaN: the scan's answer, the last index.
        return logits.len().saturating_sub(1) as u32;
    }
    // -0.0 == 0.0, so among signed zeros the first one wins, as in the scan.
    logits.iter().position(|&v| v == best).unwrap_or(0) as u32
}

/// Descending logit (total order), ties to the lower id: the candidates' order.
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` (at least 1) first non-NaN `(id, logit)` pairs of `logits` in [`by_logit`]'s order,
/// in no particular order: the same set as sorting the whole vocabulary and truncating, in one
/// pass that keeps at most 2k pairs. Whenever more are kept they are cut to their k first, and
/// the k-th's logit becomes a floor: a later logit must be above it (in the total order) to
/// enter, since one equal to it has a higher id and so comes after it. Per token this compares
/// each logit with the floor, where collecting the whole vocabulary as pairs and selecting
/// from them took about 4% of a Gemma 3 decode step (262144 logits, default sampler).
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.max(1);
    let cap = k.saturating_mul(2).min(logits.len()).max(k);
    let mut kept: Vec<(u32, f32)> = Vec::with_capacity(cap + 1);
    let mut floor = f32::NEG_INFINITY;
    let mut cut = false;
    let keep_k_first = |kept: &mut Vec<(u32, f32)>| {
        kept.select_nth_unstable_by(k - 1, by_logit);
        kept.truncate(k);
        kept[k - 1].1
    };
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || (cut && l.total_cmp(&floor) != std::cmp::Ordering::Greater) {
            continue;
        }
        kept.push((i as u32, l));
        if kept.len() > cap {
            floor = keep_k_first(&mut kept);
            cut = true;
        }
    }
    if kept.len() > k {
        keep_k_first(&mut kept);
    }
    kept
}

impl Sampler {
    /// A sampler with this configuration; an error when it is invalid.
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        cfg.validate()?;
        Ok(Sampler { rng: ChaCha8Rng::seed_from_u64(cfg.seed), recent: VecDeque::new(), cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Remembers a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, id: u32) {
        if self.cfg.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.cfg.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }

    /// Picks the next token from `logits` (one value per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let probs = self.probs(logits);
        self.pick(&probs)
    }

    /// The distribution [`Sampler::sample`] draws from: every transformation of the chain
    /// (penalty, top-k, top-p, min-p, temperature) applied to `logits`, as `(id, probability)`
    /// pairs by descending probability (ties by id) that sum to 1. Greedy is the point mass on
    /// the argmax. Speculative decoding reads the target model's distribution here, so the
    /// plain and the speculative paths define it in one place.
    pub fn probs(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        // A copy only when the penalty changes some logits (it is a vocabulary's worth, per
        // token).
        let mut logits = std::borrow::Cow::Borrowed(logits);
        if self.cfg.repeat_penalty != 1.0 && !self.recent.is_empty() {
            let logits = logits.to_mut();
            let mut seen = self.recent.iter().copied().collect::<Vec<_>>();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / self.cfg.repeat_penalty } else { *l * self.cfg.repeat_penalty };
                }
            }
        }
        if self.cfg.temperature == 0.0 {
            return vec![(argmax(&logits), 1.0)];
        }
        // Candidates by descending logit (ties by id), NaN dropped: with top-k only the k
        // first (`top_k`), else all.
        let mut cand = if self.cfg.top_k > 0 {
            top_k(&logits, self.cfg.top_k)
        } else {
            logits.iter().enumerate().filter(|(_, l)| !l.is_nan()).map(|(i, &l)| (i as u32, l)).collect()
        };
        if cand.is_empty() {
            return vec![(0, 1.0)];
        }
        cand.sort_unstable_by(by_logit);
        let probs = softmax(&cand, 1.0);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    acc += p;
                    acc >= self.cfg.top_p as f64
                })
                .map_or(cand.len(), |i| i + 1);
            cand.truncate(keep.max(1));
        }
        if self.cfg.min_p > 0.0 {
            let probs = softmax(&cand, 1.0);
            let floor = probs[0] * self.cfg.min_p as f64;
            let keep = probs.iter().take_while(|&&p| p >= floor).count();
            cand.truncate(keep.max(1));
        }
        let probs = softmax(&cand, self.cfg.temperature);
        cand.iter().zip(probs).map(|(&(id, _), p)| (id, p)).collect()
    }

    /// A token from a distribution of [`Sampler::probs`]: greedy takes the first without
    /// touching the generator (as [`Sampler::sample`] always did), otherwise one draw.
    pub fn pick(&mut self, probs: &[(u32, f64)]) -> u32 {
        if self.cfg.temperature == 0.0 {
            return probs.first().map_or(0, |p| p.0);
        }
        // Unscaled, as this sampler always drew: the same seed gives the same text as before.
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for &(id, p) in probs {
            acc += p;
            if r < acc {
                return id;
            }
        }
        probs.last().map_or(0, |p| p.0)
    }

    /// One draw from `(id, weight)` pairs, weights normalised by their sum (one value from the
    /// generator). An empty or all-zero list gives the first id (or 0).
    pub fn draw(&mut self, weights: &[(u32, f64)]) -> u32 {
        let total: f64 = weights.iter().map(|w| w.1).sum();
        let r: f64 = self.rng.random::<f64>() * total;
        let mut acc = 0.0;
        for &(id, w) in weights {
            acc += w;
            if r < acc {
                return id;
            }
        }
        weights.iter().rev().find(|w| w.1 > 0.0).or(weights.first()).map_or(0, |w| w.0)
    }

    /// A uniform number in [0, 1) from the generator (speculative acceptance tests).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random()
    }

    /// A sampler with the same configuration and recent tokens and its own generator seeded
    /// with `seed` (a draft model's proposals, independent of the target's draws).
    pub fn fork(&self, seed: u64) -> Sampler {
        Sampler { cfg: self.cfg.clone(), rng: ChaCha8Rng::seed_from_u64(seed), recent: self.recent.clone() }
    }
}

/// Probabilities of sorted candidates at temperature `t` (f64, max-subtracted).
fn softmax(cand: &[(u32, f32)], t: f32) -> Vec<f64> {
    let max = cand[0].1 as f64;
    let e: Vec<f64> = cand.iter().map(|&(_, l)| ((l as f64 - max) / t as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}
