//! The sampler against an independent f64 computation of the distribution it should draw
//! from: each filter alone (temperature, top-k, top-p, min-p, repetition penalty) and all of
//! them together in the sampler's order, checked by a chi-square test on many seeded draws
//! plus "a token the filters drop is never drawn"; the same seed gives the same tokens; and
//! the greedy limit (temperature 0, and a tiny temperature) picks the highest logit.
//!
//! The reference says which tokens survive each filter by comparing every token with every
//! other (how many are better, how much mass is better) instead of sorting and truncating
//! like `sample.rs`, so a mistake in one is not copied into the other.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_model::sample::argmax;
use strata_model::{Sampler, SamplerConfig};

const VOCAB: usize = 64;
const DRAWS: usize = 40_000;

/// Seeded logits, spread enough that the filters cut somewhere in the middle.
fn logits(seed: u64) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..VOCAB).map(|_| r.random_range(-4.0f32..4.0)).collect()
}

/// Only the named filter on: temperature 1, top-k 0, top-p 1, min-p 0, no penalty.
fn plain() -> SamplerConfig {
    SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 7,
    }
}

/// Softmax in f64 of `l / t` over the tokens in `keep` (0 elsewhere).
fn softmax_over(l: &[f64], keep: &[bool], t: f64) -> Vec<f64> {
    let max = l.iter().zip(keep).filter(|(_, k)| **k).map(|(v, _)| *v).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().zip(keep).map(|(v, k)| if *k { ((v - max) / t).exp() } else { 0.0 }).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// The probability of each token under `cfg` after the tokens in `recent` were accepted, in
/// f64: penalty → top-k → top-p → min-p → temperature, as `sample.rs` documents. NaN logits
/// are dropped first.
fn reference(logits: &[f32], cfg: &SamplerConfig, recent: &[u32]) -> Vec<f64> {
    let window = &recent[recent.len().saturating_sub(cfg.repeat_last_n)..];
    let penalty = cfg.repeat_penalty as f64;
    let l: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = v as f64;
            if window.contains(&(i as u32)) && penalty != 1.0 {
                if v > 0.0 { v / penalty } else { v * penalty }
            } else {
                v
            }
        })
        .collect();
    // j ranks before i: a higher logit, or the same logit and a lower id.
    let better = |j: usize, i: usize| l[j] > l[i] || (l[j] == l[i] && j < i);
    let n = l.len();
    let mut keep: Vec<bool> = l.iter().map(|v| !v.is_nan()).collect();
    if cfg.top_k > 0 {
        keep = (0..n).map(|i| keep[i] && (0..n).filter(|&j| keep[j] && better(j, i)).count() < cfg.top_k).collect();
    }
    if cfg.top_p < 1.0 {
        let p = softmax_over(&l, &keep, 1.0);
        let before: Vec<f64> =
            (0..n).map(|i| (0..n).filter(|&j| keep[j] && better(j, i)).map(|j| p[j]).sum()).collect();
        keep = (0..n).map(|i| keep[i] && before[i] < cfg.top_p as f64).collect();
    }
    if cfg.min_p > 0.0 {
        let p = softmax_over(&l, &keep, 1.0);
        let top = p.iter().copied().fold(0.0, f64::max);
        keep = (0..n).map(|i| keep[i] && p[i] >= cfg.min_p as f64 * top).collect();
    }
    softmax_over(&l, &keep, cfg.temperature as f64)
}

/// How often each token comes out of `DRAWS` draws.
fn counts(cfg: &SamplerConfig, recent: &[u32], logits: &[f32]) -> Vec<usize> {
    let mut s = Sampler::new(cfg.clone()).expect("a valid config");
    for &id in recent {
        s.accept(id);
    }
    let mut c = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        c[s.sample(logits) as usize] += 1;
    }
    c
}

/// Upper 1e-6 tail of chi-square with `df` degrees of freedom (Wilson-Hilferty; z = 4.75).
fn chi2_critical(df: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + 4.75 * a.sqrt()).powi(3)
}

/// Draws from the sampler and checks them against the reference distribution: no draw of a
/// token the reference gives probability 0, and Pearson's chi-square (bins with an expected
/// count under 5 pooled) under its 1e-6 critical value. The draws are seeded, so the outcome
/// is the same on every run; the threshold only sets how far off a distribution may be.
#[track_caller]
fn check(label: &str, cfg: &SamplerConfig, recent: &[u32], logits: &[f32]) {
    let want = reference(logits, cfg, recent);
    let got = counts(cfg, recent, logits);
    let kept = want.iter().filter(|&&p| p > 0.0).count();
    for (i, (&p, &c)) in want.iter().zip(&got).enumerate() {
        assert!(p > 0.0 || c == 0, "{label}: token {i} was drawn {c} times but the filters drop it");
    }
    let (mut stat, mut bins, mut pooled_o, mut pooled_e) = (0.0, 0usize, 0.0, 0.0);
    for (&p, &c) in want.iter().zip(&got) {
        let e = p * DRAWS as f64;
        if p == 0.0 {
            continue;
        }
        if e < 5.0 {
            pooled_o += c as f64;
            pooled_e += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            bins += 1;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e;
        bins += 1;
    }
    let df = bins.saturating_sub(1).max(1) as f64;
    let crit = chi2_critical(df);
    println!(
        "{label}: {kept} of {} tokens kept, chi-square {stat:.1} on {df} df (1e-6 critical {crit:.1})",
        want.len()
    );
    let worst = want
        .iter()
        .zip(&got)
        .enumerate()
        .map(|(i, (&p, &c))| (i, p, c as f64 / DRAWS as f64))
        .max_by(|a, b| (a.1 - a.2).abs().total_cmp(&(b.1 - b.2).abs()));
    assert!(
        stat < crit,
        "{label}: the draws do not follow the reference distribution: chi-square {stat:.1} on {df} df \
         (1e-6 critical {crit:.1}); largest gap (token, want, got) {worst:?}"
    );
}

#[test]
fn sampler_temperature_alone() {
    for (seed, t) in [(1, 1.0), (2, 0.5), (3, 2.0)] {
        let cfg = SamplerConfig { temperature: t, ..plain() };
        check(&format!("temperature {t}"), &cfg, &[], &logits(seed));
    }
}

#[test]
fn sampler_top_k_alone() {
    for (seed, k) in [(4, 1), (5, 5), (6, 20)] {
        let cfg = SamplerConfig { top_k: k, ..plain() };
        let l = logits(seed);
        assert_eq!(reference(&l, &cfg, &[]).iter().filter(|&&p| p > 0.0).count(), k, "the reference keeps k tokens");
        check(&format!("top-k {k}"), &cfg, &[], &l);
    }
}

#[test]
fn sampler_top_p_alone() {
    for (seed, p) in [(7, 0.5), (8, 0.9), (9, 0.05)] {
        let cfg = SamplerConfig { top_p: p, ..plain() };
        check(&format!("top-p {p}"), &cfg, &[], &logits(seed));
    }
}

#[test]
fn sampler_min_p_alone() {
    for (seed, m) in [(10, 0.05), (11, 0.2), (12, 0.9)] {
        let cfg = SamplerConfig { min_p: m, ..plain() };
        check(&format!("min-p {m}"), &cfg, &[], &logits(seed));
    }
}

/// The penalty divides positive logits and multiplies negative ones of the tokens among the
/// last `repeat_last_n` accepted (each once, however often it was seen); older tokens are not
/// penalized. Few tokens with logits near each other, so that every penalized token keeps a
/// large share of the draws and a wrong penalty shows.
#[test]
fn sampler_repeat_penalty_alone() {
    let l = [2.0f32, 1.5, 1.0, -0.2, -0.5, -1.0, 0.3, -2.0];
    // 1 and 3 fall out of a window of 4; 0 is seen twice in it; 4 and 5 are negative.
    let recent = [1, 3, 0, 4, 0, 5];
    for penalty in [1.5f32, 0.7] {
        let cfg = SamplerConfig { repeat_penalty: penalty, repeat_last_n: 4, ..plain() };
        check(&format!("repeat penalty {penalty}"), &cfg, &recent, &l);
    }
    // The reference does see the penalty (the check above is not comparing two plain softmaxes).
    let cfg = SamplerConfig { repeat_penalty: 1.5, repeat_last_n: 4, ..plain() };
    let (with, without) = (reference(&l, &cfg, &recent), reference(&l, &plain(), &recent));
    assert!(with[0] < without[0] && with[4] < without[4] && with[1] > without[1]);
    // And on a full vocabulary, with the penalized tokens at both ends.
    let l = logits(13);
    let best = argmax(&l);
    let worst = (0..VOCAB).min_by(|&a, &b| l[a].total_cmp(&l[b])).expect("a token") as u32;
    check("repeat penalty, 64 tokens", &cfg, &[3, 9, best, worst, best, 17], &l);
}

/// Everything on at once, in the sampler's order; the filters overlap so their order matters
/// (top-p and min-p are taken over what top-k kept, and temperature only after them).
#[test]
fn sampler_all_filters_together() {
    for seed in [14, 15, 16] {
        let l = logits(seed);
        let best = argmax(&l);
        let cfg = SamplerConfig {
            temperature: 0.8,
            top_k: 24,
            top_p: 0.9,
            min_p: 0.05,
            repeat_penalty: 1.3,
            repeat_last_n: 8,
            seed,
        };
        check(&format!("all filters, seed {seed}"), &cfg, &[best, 5, 6, 40], &l);
        check(
            &format!("llama.cpp's defaults, seed {seed}"),
            &SamplerConfig { seed, ..SamplerConfig::default() },
            &[],
            &l,
        );
    }
}

#[test]
fn sampler_same_seed_same_tokens() {
    let l = logits(17);
    let draw = |seed: u64| {
        let mut s = Sampler::new(SamplerConfig { seed, temperature: 1.5, ..plain() }).expect("config");
        (0..200).map(|_| s.sample(&l)).collect::<Vec<u32>>()
    };
    assert_eq!(draw(42), draw(42), "the same seed must give the same tokens");
    assert_ne!(draw(42), draw(43), "another seed gives other tokens (200 draws from 64 tokens)");
}

/// Temperature 0 is greedy: the highest logit after the penalty, ties to the lowest id, and
/// no generator draws (the other filters do not matter). A tiny temperature is the same in
/// the limit: every draw is the argmax.
#[test]
fn sampler_greedy_limit() {
    let mut l = logits(18);
    let best = argmax(&l) as usize;
    let top = l[best];
    // A tie for the top at a higher id than `best`, and another at a lower one.
    let (lo, hi) = ((0..best).next(), (best + 1..VOCAB).next());
    if let Some(h) = hi {
        l[h] = top;
    }
    let want_tie = lo.unwrap_or(best);
    if let Some(lo) = lo {
        l[lo] = top;
    }
    let mut greedy =
        Sampler::new(SamplerConfig { top_k: 3, top_p: 0.5, min_p: 0.5, ..SamplerConfig::greedy() }).expect("config");
    for _ in 0..10 {
        assert_eq!(greedy.sample(&l) as usize, want_tie, "temperature 0: the highest logit, ties to the lowest id");
    }
    // With a penalty, the penalized top tokens lose to the next one.
    let mut penalized = Sampler::new(SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() }).expect("config");
    let tops: Vec<u32> = (0..VOCAB).filter(|&i| l[i] == top).map(|i| i as u32).collect();
    for &t in &tops {
        penalized.accept(t);
    }
    let want = reference(&l, &SamplerConfig { repeat_penalty: 2.0, ..plain() }, &tops);
    let want_id = (0..VOCAB).max_by(|&a, &b| want[a].total_cmp(&want[b]).then(b.cmp(&a))).expect("a token");
    assert!(!tops.contains(&(want_id as u32)), "the penalty must move the top in this case");
    assert_eq!(penalized.sample(&l) as usize, want_id, "temperature 0 after the penalty");

    // Temperature 1e-3 on logits 0.5 apart (a permutation of 0, 0.5, .. 31.5): the runner-up
    // has probability e^-500.
    let l: Vec<f32> = (0..VOCAB).map(|i| ((i * 37) % VOCAB) as f32 * 0.5).collect();
    let mut cold = Sampler::new(SamplerConfig { temperature: 1e-3, ..plain() }).expect("config");
    let want = argmax(&l);
    for _ in 0..1000 {
        assert_eq!(cold.sample(&l), want, "temperature 1e-3 draws the argmax");
    }
}

/// NaN logits are dropped (never drawn, and the others keep their distribution), and an
/// all-NaN row still gives a token instead of a panic.
#[test]
fn sampler_skips_nan_logits() {
    let mut l = logits(19);
    let best = argmax(&l) as usize;
    l[best] = f32::NAN;
    l[0] = f32::NAN;
    check("NaN logits", &SamplerConfig { temperature: 2.0, ..plain() }, &[], &l);
    check("NaN logits, all filters", &SamplerConfig { seed: 3, ..SamplerConfig::default() }, &[], &l);
    let mut s = Sampler::new(plain()).expect("config");
    assert!((s.sample(&[f32::NAN; 4]) as usize) < 4);
}

/// Top-k picks its k tokens without sorting the whole vocabulary: the distribution lists the
/// same tokens in the same order as the k first of the whole vocabulary sorted by descending
/// logit, ties to the lower id, NaN dropped (computed here by sorting everything), on logits
/// with many ties (a vocabulary of 4096 over 40 distinct values) and with NaNs, signed zeros and
/// infinities, for k below,
/// at and above the number of tokens.
#[test]
fn sampler_top_k_keeps_the_sorted_prefix() {
    let mut r = ChaCha8Rng::seed_from_u64(23);
    let mut l: Vec<f32> = (0..4096).map(|_| r.random_range(0..40u32) as f32 * 0.25 - 5.0).collect();
    for i in [3, 700, 4095] {
        l[i] = f32::NAN;
    }
    // Signed zeros (the total order puts 0.0 before -0.0) and infinities among them.
    for (i, v) in [(5, 0.0), (6, -0.0), (9, 0.0), (4000, -0.0), (11, f32::INFINITY), (12, f32::NEG_INFINITY)] {
        l[i] = v;
    }
    let mut sorted: Vec<u32> = (0..l.len() as u32).filter(|&i| !l[i as usize].is_nan()).collect();
    sorted.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
    for k in [1, 2, 3, 40, 100, 4093, 4096, 5000] {
        let s = Sampler::new(SamplerConfig { top_k: k, ..plain() }).expect("config");
        let ids: Vec<u32> = s.probs(&l).iter().map(|p| p.0).collect();
        assert_eq!(ids, sorted[..k.min(sorted.len())], "top-k {k}");
    }
}

/// `argmax` (two vectorizable passes) gives the index of the plain one-pass scan it replaced:
/// on random logits with many ties, NaNs, signed zeros and infinities, lengths around the
/// lane count, and the edge cases (empty, all NaN, a NaN first).
#[test]
fn argmax_equals_the_one_pass_scan() {
    fn scan(l: &[f32]) -> u32 {
        let mut best = 0usize;
        for (i, &v) in l.iter().enumerate() {
            if v > l[best] || l[best].is_nan() {
                best = i;
            }
        }
        best as u32
    }
    let specials = [f32::NAN, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.0, -1.0];
    let mut r = ChaCha8Rng::seed_from_u64(31);
    for len in [0usize, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099] {
        for round in 0..40 {
            let l: Vec<f32> = (0..len)
                .map(|_| match round % 4 {
                    0 => r.random_range(0..5u32) as f32 - 2.0,
                    1 => specials[r.random_range(0..specials.len())],
                    2 => r.random_range(-1000.0..1000.0f32),
                    _ => {
                        if r.random_range(0..4u32) == 0 {
                            f32::NAN
                        } else {
                            r.random_range(0..3u32) as f32
                        }
                    }
                })
                .collect();
            assert_eq!(argmax(&l), scan(&l), "length {len}, round {round}: {l:?}");
        }
        let nan = vec![f32::NAN; len];
        assert_eq!(argmax(&nan), scan(&nan), "all NaN, length {len}");
        if len > 1 {
            let mut first_nan = vec![-3.0f32; len];
            first_nan[0] = f32::NAN;
            first_nan[len - 1] = -2.0;
            assert_eq!(argmax(&first_nan), (len - 1) as u32, "a NaN first, length {len}");
        }
    }
}
