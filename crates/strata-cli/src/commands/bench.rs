//! `strata bench`: prompt-processing and generation speed, llama-bench style.
//!
//! Both tests run on the session `run` would open (same plan, same kernels). Before them one
//! untimed one-token pass reads the weights into the caches and sets up the buffers, so that
//! no repetition pays for it. The prompt test times one forward pass of N random token ids from
//! an empty context (the logits of the last one included, as a real prompt needs them); the
//! generation test times N one-token passes after a one-token prompt, each taking the argmax of
//! the previous logits, as greedy decoding does. With `--lookup` or `--draft-model` the
//! generation test decodes the same greedy tokens speculatively (the library's loop, from the
//! same one-token prompt) and reports the drafting counts of its last repetition.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use strata_model::sample::argmax;
use strata_model::{Engine, GenerateOptions, SamplerConfig, Speculative, SpeculativeStats};

use super::{load_model, open_draft, speculative, speculative_line};
use crate::args::BenchArgs;
use crate::device::open_engine;
use strata_tensor::ops::CpuPath;

/// One test's results: tokens per second of each repetition.
struct Test {
    name: String,
    tokens: usize,
    rates: Vec<f64>,
}

impl Test {
    fn median(&self) -> f64 {
        let mut v = self.rates.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
}

/// `n` token ids spread over the vocabulary (a fixed linear congruential sequence: the same
/// ids in every run, no tokenizer involved).
fn token_ids(n: usize, n_vocab: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % n_vocab as u64) as u32
        })
        .collect()
}

fn prompt_test(s: &mut Engine, ids: &[u32], reps: u64) -> Result<Test> {
    let mut rates = Vec::new();
    for _ in 0..reps {
        s.reset();
        let t = Instant::now();
        s.forward(ids, false)?;
        rates.push(ids.len() as f64 / t.elapsed().as_secs_f64());
    }
    Ok(Test { name: format!("pp{}", ids.len()), tokens: ids.len(), rates })
}

fn generation_test(s: &mut Engine, first: u32, n: usize, reps: u64) -> Result<Test> {
    let mut rates = Vec::new();
    for _ in 0..reps {
        s.reset();
        let mut tok = argmax(&s.forward(&[first], false)?) as u32;
        let t = Instant::now();
        for _ in 0..n {
            tok = argmax(&s.forward(&[tok], false)?) as u32;
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(Test { name: format!("tg{n}"), tokens: n, rates })
}

/// The generation test decoded speculatively: greedy, `n` tokens after the same one-token
/// prompt, timed from the prompt's logits to the last token (as `generation_test`).
fn speculative_test(
    s: &mut Engine,
    first: u32,
    n: usize,
    reps: u64,
    spec: &Speculative,
) -> Result<(Test, SpeculativeStats)> {
    let opts = GenerateOptions {
        max_tokens: n,
        ignore_eos: true,
        sampler: SamplerConfig::greedy(),
        speculative: Some(spec.clone()),
        ..GenerateOptions::default()
    };
    let mut rates = Vec::new();
    let mut last = SpeculativeStats::default();
    for _ in 0..reps {
        s.reset();
        let g = s.generate_ids(&[first], &opts, |_| {})?;
        rates.push(g.timings.generation_tokens_per_second);
        last = g.speculative.unwrap_or_default();
    }
    Ok((Test { name: format!("tg{n}+{}", last.drafter.replace(' ', "")), tokens: n, rates }, last))
}

pub fn bench(a: BenchArgs, cpu_path: CpuPath) -> Result<()> {
    let spec = speculative(&a.spec)?;
    let mut s = open_engine(load_model(&a.model)?, &a.session, cpu_path, a.json)?;
    open_draft(&mut s, &a.spec)?;
    let model = std::sync::Arc::clone(s.model());
    let (p, n) = (a.prompt_tokens, a.gen_tokens);
    let need = p.max(n + 1);
    if need > s.session().context() {
        anyhow::bail!(
            "the tests need {need} positions but the context holds {}; raise --context or lower -p / -n",
            s.session().context()
        );
    }
    let ids = token_ids(need, model.config.n_vocab);
    // Warm-up: weights into the caches, buffers allocated, kernels loaded.
    s.forward(&ids[..1], false)?;
    let mut tests = Vec::new();
    if p > 0 {
        tests.push(prompt_test(&mut s, &ids[..p], a.reps)?);
    }
    let mut spec_stats = None;
    if n > 0 {
        tests.push(generation_test(&mut s, ids[0], n, a.reps)?);
        if let Some(spec) = &spec {
            let (t, st) = speculative_test(&mut s, ids[0], n, a.reps, spec)?;
            tests.push(t);
            spec_stats = Some(st);
        }
    }
    s.with_session(strata_model::Session::take_stats);
    let kernels = format!("{:?}", s.cpu_path()).to_lowercase();
    let threads = rayon::current_num_threads();
    let device = s.device().to_string();
    if a.json {
        let tests: Vec<_> = tests
            .iter()
            .map(|t| {
                json!({"name": t.name, "tokens": t.tokens, "tokens_per_second": t.median(),
                       "repetitions_tokens_per_second": t.rates})
            })
            .collect();
        outln!(
            "{}",
            json!({"model": model.path.display().to_string(), "device": device, "cpu_kernels": kernels,
                   "threads": threads, "plan": s.plan(), "tests": tests, "speculative": spec_stats})
        );
        return Ok(());
    }
    outln!(
        "model {} ({} layers), device {device}, {kernels} CPU kernels, {threads} threads",
        model.path.display(),
        model.config.n_layers
    );
    let w = tests.iter().map(|t| t.name.len()).max().unwrap_or(0).max(8);
    outln!("{:<w$} {:>12}  repetitions (tok/s)", "test", "tok/s");
    for t in &tests {
        let reps: Vec<String> = t.rates.iter().map(|r| format!("{r:.1}")).collect();
        outln!("{:<w$} {:>12.1}  {}", t.name, t.median(), reps.join(" "));
    }
    if let Some(st) = &spec_stats {
        outln!("{}", speculative_line(st));
    }
    Ok(())
}
