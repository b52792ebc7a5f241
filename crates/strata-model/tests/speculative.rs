//! Speculative decoding (prompt lookup and a draft model): greedy output equals plain greedy
//! decoding on the CPU and on the host test device's streamed and mixed plans; the KV cache
//! rolls back exactly; sampled output keeps the plain sampler's distribution (chi-square);
//! bad drafters and zero values are refused.

use std::sync::Arc;

use strata_model::derive::truncate_layers_bytes;
use strata_model::gguf::{GgufFile, GgufWriter, Value};
use strata_model::sample::Sampler;
use strata_model::synth::{Preset, gguf_bytes};
use strata_model::{
    DeviceChoice, Drafter, Engine, EngineOptions, GenerateOptions, Generation, Layout, Model, SamplerConfig, Session,
    SessionOptions, Speculative, generate, generate_speculative,
};
use strata_runtime::device::{Accelerator, HostDevice};
use strata_runtime::plan::Placement;

use crate::model_or_skip;

/// Prompts whose answers copy from the prompt (what prompt lookup is for).
const PROMPTS: [&str; 2] = [
    "Rename the variable `total` to `sum` in this code and print the whole code again.\n\n\
     def add_all(values):\n    total = 0\n    for v in values:\n        total = total + v\n    return total\n\n\
     Here is the code with `total` renamed to `sum`:\n\n",
    "Copy the list of cities from the text. Text: We flew from Paris to Berlin, then took the train to \
     Vienna, Prague and Warsaw before flying home to Paris.\nCities: Paris, Berlin,",
];

fn opts(context: usize) -> SessionOptions {
    SessionOptions { context, ..SessionOptions::default() }
}

fn greedy(n: usize, spec: Option<Speculative>) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        ignore_eos: true,
        sampler: SamplerConfig::greedy(),
        speculative: spec,
        ..GenerateOptions::default()
    }
}

fn encode(model: &Model, text: &str) -> Vec<u32> {
    model.tokenizer.encode(text, None, false).expect("encode")
}

/// The first `keep` layers of `model` (same vocabulary: a draft model that agrees often).
fn truncated(model: &Model, keep: usize) -> Arc<Model> {
    let src = model.source.gguf().expect("a GGUF model");
    let bytes = truncate_layers_bytes(src, keep).expect("truncate");
    Arc::new(Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), "draft.gguf".as_ref()).expect("load"))
}

fn plain(model: &Arc<Model>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(Arc::clone(model), None, &opts(512)).expect("session");
    generate(&mut s, prompt, &greedy(n, None), |_| {}).expect("generate").generated_ids
}

fn stats(g: &Generation) -> &strata_model::SpeculativeStats {
    g.speculative.as_ref().expect("speculative stats")
}

#[test]
fn greedy_lookup_and_draft_model_equal_plain_greedy_on_the_cpu() {
    let model = model_or_skip!();
    let draft_model = truncated(&model, 12);
    let n = 40;
    for text in PROMPTS {
        let prompt = encode(&model, text);
        let want = plain(&model, &prompt, n);
        for spec in [
            Speculative::lookup(2),
            Speculative { draft_max: 3, ..Speculative::lookup(1) },
            Speculative::lookup_default(),
        ] {
            let mut s = Session::new(Arc::clone(&model), None, &opts(512)).expect("session");
            let mut streamed = String::new();
            let g =
                generate(&mut s, &prompt, &greedy(n, Some(spec.clone())), |p| streamed.push_str(p)).expect("lookup");
            assert_eq!(g.generated_ids, want, "{spec:?} on {text:?}");
            assert_eq!(streamed, g.text);
            let st = stats(&g);
            println!("{spec:?}: {st:?}");
            assert!(st.accepted_tokens > 0, "nothing accepted on a prompt made for lookup: {st:?}");
            assert!(st.target_passes < n, "no pass checked more than one token: {st:?}");
            // The cache holds the prompt and the generated tokens but the last, as plain decoding.
            assert_eq!(s.n_past(), prompt.len() + n - 1);
        }
        // A draft of 12 of the 30 layers agrees rarely (rejections); the model itself as its own
        // draft agrees almost always (long accepted runs, rolled back only at the end).
        for (name, dm, min_rate) in [("12 of 30 layers", &draft_model, 0.0), ("the model itself", &model, 0.9)] {
            let mut s = Session::new(Arc::clone(&model), None, &opts(512)).expect("session");
            let mut d = Session::new(Arc::clone(dm), None, &opts(512)).expect("draft session");
            let o = greedy(n, Some(Speculative::draft_model()));
            let g = generate_speculative(&mut s, Some(&mut d), &prompt, &o, |_| {}).expect("draft model");
            assert_eq!(g.generated_ids, want, "draft model ({name}) on {text:?}");
            let st = stats(&g);
            println!("draft model ({name}): {st:?}");
            assert!(st.drafted_tokens > 0 && st.acceptance_rate >= min_rate, "{name}: {st:?}");
        }
    }
}

/// The target's layers resident, streamed and on the CPU of the host test device (the
/// streamer's slots are refilled after every rollback): the same tokens as plain CPU greedy.
#[test]
fn greedy_speculation_on_host_device_plans_equals_plain_greedy() {
    let model = model_or_skip!();
    let draft_model = truncated(&model, 8);
    let n_layers = model.config.n_layers;
    let prompt = encode(&model, PROMPTS[1]);
    let n = 24;
    let want = plain(&model, &prompt, n);
    use Placement::{Cpu, Resident as R, Streamed as S};
    let mixed = Layout { placements: (0..n_layers).map(|i| [R, S, Cpu][i % 3]).collect(), prefetch_depth: 1 };
    let streamed = Layout { placements: vec![S; n_layers], prefetch_depth: 2 };
    for (name, layout) in [("resident/streamed/cpu", mixed), ("all streamed", streamed)] {
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let mut s = Session::with_layout(Arc::clone(&model), Some(&acc), &layout, &opts(256)).expect("session");
        let g = generate(&mut s, &prompt, &greedy(n, Some(Speculative::lookup(2))), |_| {}).expect("lookup");
        assert_eq!(g.generated_ids, want, "{name}: lookup");
        assert!(stats(&g).accepted_tokens > 0, "{name}: {:?}", stats(&g));
        // The draft model on the same device, all streamed.
        let dl = Layout { placements: vec![S; draft_model.config.n_layers], prefetch_depth: 1 };
        let mut d = Session::with_layout(Arc::clone(&draft_model), Some(&acc), &dl, &opts(256)).expect("draft");
        s.reset();
        let g =
            generate_speculative(&mut s, Some(&mut d), &prompt, &greedy(n, Some(Speculative::draft_model())), |_| {})
                .expect("draft model");
        assert_eq!(g.generated_ids, want, "{name}: draft model");
        if let Accelerator::Host(h) = &acc {
            assert!(h.budget.peak() <= h.budget.cap(), "{name}: over budget");
        }
    }
}

/// Forward after truncate gives the logits of a session that never saw the rolled-back tokens,
/// bit for bit, on every placement.
#[test]
fn kv_rollback_gives_the_logits_of_a_fresh_run() {
    let model = model_or_skip!();
    let n_layers = model.config.n_layers;
    let prompt = [504, 3947, 1834, 314, 216, 34];
    let rejected = [1000, 2000, 3000, 4000];
    let kept = [42, 4242, 9];
    use Placement::{Cpu, Resident as R, Streamed as S};
    let layouts: Vec<(&str, Option<Layout>)> = vec![
        ("cpu", None),
        ("all resident", Some(Layout::uniform(n_layers, R))),
        ("all streamed", Some(Layout { placements: vec![S; n_layers], prefetch_depth: 2 })),
        (
            "resident/streamed/cpu",
            Some(Layout { placements: (0..n_layers).map(|i| [R, S, Cpu][i % 3]).collect(), prefetch_depth: 1 }),
        ),
    ];
    for (name, layout) in layouts {
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let open = || match &layout {
            Some(l) => Session::with_layout(Arc::clone(&model), Some(&acc), l, &opts(64)).expect("session"),
            None => Session::new(Arc::clone(&model), None, &opts(64)).expect("session"),
        };
        let mut fresh = open();
        fresh.forward(&prompt, false).expect("prompt");
        let want = fresh.forward(&kept, true).expect("kept");
        let mut s = open();
        s.forward(&prompt, false).expect("prompt");
        s.forward(&rejected, true).expect("rejected");
        s.truncate(prompt.len());
        assert_eq!(s.n_past(), prompt.len());
        let got = s.forward(&kept, true).expect("kept after rollback");
        assert_eq!(got, want, "{name}: logits after truncate differ from a fresh run");
        // Rolling back part of a pass (keep the first drafted token) as verification does: the
        // same as a pass whose later tokens were others (the rejected ones leave no trace) ...
        s.truncate(prompt.len());
        s.forward(&rejected, true).expect("again");
        s.truncate(prompt.len() + 1);
        let got = s.forward(&kept, true).expect("after partial rollback");
        let mut other = open();
        other.forward(&prompt, false).expect("prompt");
        other.forward(&[rejected[0], 7, 7, 7], true).expect("other later tokens");
        other.truncate(prompt.len() + 1);
        assert_eq!(got, other.forward(&kept, true).expect("kept"), "{name}: partial rollback");
        // ... and within rounding of running the kept token alone (a one-token pass rounds the
        // matrix products in another order: see `multi_token_rows_round_like_one_token_passes`).
        let mut alone = open();
        alone.forward(&prompt, false).expect("prompt");
        alone.forward(&rejected[..1], false).expect("one kept");
        let want = alone.forward(&kept, true).expect("kept");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= ROUNDING * scale, "{name}: partial rollback is {diff} from a one-token run (scale {scale})");
    }
}

/// How far a multi-token pass's logits may be from one-token passes' over the same positions,
/// as max |a − b| over the largest |logit|. The exact CPU path computes a pass of several tokens
/// with matrix tiles and one token with a matrix-vector product: the same f32 arithmetic summed
/// in another order, measured at under 1e-4 of the largest logit on the default model.
const ROUNDING: f32 = 1e-3;

/// Measures how a verification pass's rows differ from plain one-token decoding, and how often
/// that flips the greedy token: rows of 8-token passes against the one-token logits of the same
/// positions along plain greedy decoding of the test prompts. Flips may only happen at near ties
/// (a top-two margin within the difference).
#[test]
fn multi_token_rows_round_like_one_token_passes() {
    let model = model_or_skip!();
    let (mut positions, mut flips, mut near_ties, mut worst) = (0, 0, 0, 0f32);
    for text in PROMPTS {
        let prompt = encode(&model, text);
        let mut s = Session::new(Arc::clone(&model), None, &opts(512)).expect("session");
        let mut one = vec![s.forward(&prompt, false).expect("prompt")];
        let mut ids = Vec::new();
        for _ in 0..32 {
            let id = strata_model::sample::argmax(one.last().expect("logits"));
            ids.push(id);
            one.push(s.forward(&[id], false).expect("decode"));
        }
        // The same positions in passes of 8 tokens (the pending token and 7 drafted).
        let mut m = Session::new(Arc::clone(&model), None, &opts(512)).expect("session");
        m.forward(&prompt, false).expect("prompt");
        let n_vocab = model.config.n_vocab;
        for (c, chunk) in ids.chunks(8).enumerate() {
            let rows = m.forward(chunk, true).expect("pass");
            for (i, row) in rows.chunks_exact(n_vocab).enumerate() {
                let want = &one[c * 8 + i + 1];
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                let diff = row.iter().zip(want).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                worst = worst.max(diff / scale);
                let mut sorted = want.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let margin = sorted[0] - sorted[1];
                positions += 1;
                if margin <= 2.0 * diff {
                    near_ties += 1;
                }
                if strata_model::sample::argmax(row) != strata_model::sample::argmax(want) {
                    flips += 1;
                    assert!(margin <= 2.0 * diff, "a flip at a clear margin {margin} (difference {diff})");
                }
            }
        }
    }
    println!(
        "{positions} positions: largest difference {worst:.2e} of the largest logit, {near_ties} near ties, {flips} \
         greedy flips"
    );
    assert!(worst <= ROUNDING, "multi-token rows differ by {worst:.2e} of the largest logit");
}

/// The number of tokens of each joint outcome of the `depth` tokens after `prompt`, under the
/// plain sampler's distribution, computed exactly from the target's logits.
fn exact_distribution(model: &Arc<Model>, prompt: &[u32], cfg: &SamplerConfig, depth: usize) -> Vec<(Vec<u32>, f64)> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::<u32>::new(), 1.0f64)];
    while let Some((prefix, pr)) = stack.pop() {
        if prefix.len() == depth {
            out.push((prefix, pr));
            continue;
        }
        let mut s = Session::new(Arc::clone(model), None, &opts(64)).expect("session");
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(&prefix);
        let logits = s.forward(&ids, false).expect("forward");
        let mut sampler = Sampler::new(cfg.clone()).expect("sampler");
        for &id in &ids {
            sampler.accept(id);
        }
        for (id, p) in sampler.probs(&logits) {
            let mut next = prefix.clone();
            next.push(id);
            stack.push((next, pr * p));
        }
    }
    out
}

/// Pearson's chi-square of `counts` against `expected` probabilities, cells with an expected
/// count under 5 pooled into one; returns (statistic, degrees of freedom).
fn chi_square(
    expected: &[(Vec<u32>, f64)],
    counts: &std::collections::HashMap<Vec<u32>, usize>,
    n: usize,
) -> (f64, usize) {
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut pool_e, mut pool_o) = (0.0, 0.0);
    for (k, p) in expected {
        let e = p * n as f64;
        let o = *counts.get(k).unwrap_or(&0) as f64;
        if e < 5.0 {
            pool_e += e;
            pool_o += o;
        } else {
            stat += (o - e) * (o - e) / e;
            cells += 1;
        }
    }
    // Outcomes outside the expected support count against the pool.
    let known: usize = expected.iter().map(|(k, _)| *counts.get(k).unwrap_or(&0)).sum();
    pool_o += (n - known) as f64;
    if pool_e > 0.0 {
        stat += (pool_o - pool_e) * (pool_o - pool_e) / pool_e.max(1e-9);
        cells += 1;
    }
    (stat, cells.saturating_sub(1))
}

/// The chi-square value a correct sampler exceeds with probability 0.001 (Wilson–Hilferty).
fn critical(df: usize) -> f64 {
    let k = df.max(1) as f64;
    let z = 3.090;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Sampled speculative decoding keeps the plain sampler's distribution: the joint law of the
/// first three generated tokens (the second and third go through verification) over many seeds,
/// against the exact distribution computed from the target's logits, for prompt lookup (q a
/// point mass) and a draft model of the same weights with halved logits (q near p but not equal: drafts are kept
/// and rejected, and the residual draw is exercised), with top-k, temperature and a repetition penalty. Each run's seed is
/// fixed, so the outcome is deterministic; a rule that kept every drafted token, or drew
/// rejections from p instead of the residual, is far over the threshold (see the unit tests of
/// `speculative::verify` for such a rule failing).
#[test]
fn sampled_speculation_keeps_the_target_distribution() {
    let tiny = Preset::by_name("tiny").expect("preset");
    let bytes = gguf_bytes(&tiny, strata_tensor::DType::Q8_0, 1).expect("synth");
    let target =
        Arc::new(Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), "tiny.gguf".as_ref()).expect("load"));
    // The draft: the same weights with the final norm halved, so its logits are halved: q is p
    // at twice the temperature, near p but not equal (drafts are kept often and rejected
    // sometimes).
    let halve = |name: &str, buf: &mut [u8]| {
        if name == "output_norm.weight" {
            for c in buf.chunks_exact_mut(4) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 0.5;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
    };
    let draft = edited(&target, "tiny-draft.gguf", |_, v| v.clone(), halve);
    let cfg = SamplerConfig {
        temperature: 0.7,
        top_k: 3,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.3,
        repeat_last_n: 8,
        seed: 0,
    };
    // For prompt lookup to draft, the likely first tokens must occur earlier in the prompt,
    // followed by likely second ones: plant the likely (first, second) pairs of the previous
    // prompt in front of the base prompt, a few times over (planting moves the distribution a
    // little). The exact distribution is that of the final prompt.
    let depth = 3;
    let base = [5, 17, 40, 119, 147, 115, 289, 89];
    let mut prompt = base.to_vec();
    let mut exact = exact_distribution(&target, &prompt, &cfg, depth);
    for _ in 0..3 {
        let mut pairs: Vec<(Vec<u32>, f64)> = Vec::new();
        for (k, p) in &exact {
            match pairs.iter_mut().find(|(q, _)| q[..] == k[..2]) {
                Some(e) => e.1 += p,
                None => pairs.push((k[..2].to_vec(), *p)),
            }
        }
        pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
        prompt = pairs.iter().take(6).flat_map(|(k, _)| k.iter().copied()).chain(base).collect();
        exact = exact_distribution(&target, &prompt, &cfg, depth);
    }
    println!("prompt {prompt:?}");
    let n = 3000;
    for drafter in [None, Some(Drafter::Lookup(1)), Some(Drafter::Model)] {
        let mut s = Session::new(Arc::clone(&target), None, &opts(64)).expect("session");
        let mut d = Session::new(Arc::clone(&draft), None, &opts(64)).expect("draft");
        let mut counts = std::collections::HashMap::new();
        let (mut drafted, mut accepted) = (0, 0);
        for i in 0..n {
            s.reset();
            let o = GenerateOptions {
                max_tokens: depth,
                ignore_eos: true,
                sampler: SamplerConfig { seed: 1000 + i as u64, ..cfg.clone() },
                speculative: drafter.map(|drafter| Speculative { drafter, draft_max: 4 }),
                ..GenerateOptions::default()
            };
            let g = generate_speculative(&mut s, Some(&mut d), &prompt, &o, |_| {}).expect("generate");
            if let Some(st) = &g.speculative {
                drafted += st.drafted_tokens;
                accepted += st.accepted_tokens;
            }
            *counts.entry(g.generated_ids).or_insert(0usize) += 1;
        }
        let (stat, df) = chi_square(&exact, &counts, n);
        println!(
            "{drafter:?}: chi-square {stat:.1} on {df} degrees of freedom (critical {:.1}), {accepted}/{drafted} \
             drafted tokens accepted",
            critical(df)
        );
        assert!(stat < critical(df), "{drafter:?}: chi-square {stat:.1} ≥ {:.1} ({df} df)", critical(df));
        match drafter {
            // Drafts happened; planting moves the distribution, so the drafted tokens are often
            // outside the top-k and rejected: then a rule that kept them would put mass outside
            // the support, which the pooled cell counts.
            Some(Drafter::Lookup(_) | Drafter::LookupLongest { .. }) => {
                assert!(drafted > n / 10, "lookup: only {drafted} tokens drafted in {n} runs")
            }
            // The general rule was exercised both ways, not just run.
            Some(Drafter::Model) => {
                assert!(drafted > n / 2, "draft model: only {drafted} tokens drafted in {n} runs");
                assert!(accepted > 0 && accepted < drafted, "draft model: {accepted}/{drafted} accepted");
            }
            None => {}
        }
    }
}

#[test]
fn zero_values_and_a_missing_draft_model_are_errors() {
    let tiny = Preset::by_name("tiny").expect("preset");
    let bytes = gguf_bytes(&tiny, strata_tensor::DType::Q8_0, 1).expect("synth");
    let model =
        Arc::new(Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), "tiny.gguf".as_ref()).expect("load"));
    let mut s = Session::new(Arc::clone(&model), None, &opts(64)).expect("session");
    let cases = [
        (Speculative { drafter: Drafter::Lookup(0), draft_max: 4 }, "--lookup 0"),
        (Speculative { drafter: Drafter::Lookup(2), draft_max: 0 }, "--draft-max 0"),
        (Speculative { drafter: Drafter::Model, draft_max: 0 }, "--draft-max 0"),
        (Speculative { drafter: Drafter::LookupLongest { max: 2, min: 3 }, draft_max: 4 }, "1 <= min <= max"),
        (Speculative { drafter: Drafter::LookupLongest { max: 2, min: 0 }, draft_max: 4 }, "1 <= min <= max"),
        (Speculative::draft_model(), "draft model"),
    ];
    for (spec, want) in cases {
        let err = generate(&mut s, &[1, 2, 3], &greedy(4, Some(spec.clone())), |_| {}).expect_err("must fail");
        assert!(err.to_string().contains(want), "{spec:?}: {err}");
        assert_eq!(s.n_past(), 0, "{spec:?}: nothing may run before the options are checked");
    }
}

/// A copy of `model`'s GGUF named `name`, with metadata and tensor bytes edited on the way.
fn edited(
    model: &Model,
    name: &str,
    meta: impl Fn(&str, &Value) -> Value,
    tensor: impl Fn(&str, &mut [u8]) + Sync,
) -> Arc<Model> {
    let src = model.source.gguf().expect("gguf");
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        w.metadata_mut().set(k, meta(k, v));
    }
    for t in src.tensors() {
        w.add_tensor(&t.name, t.ggml_type, &t.dims).expect("tensor");
    }
    let tensors = src.tensors();
    let bytes = w
        .to_bytes(|i, buf| {
            buf.copy_from_slice(src.tensor_data(&tensors[i]));
            tensor(&tensors[i].name, buf);
        })
        .expect("bytes");
    Arc::new(Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), name.as_ref()).expect("load"))
}

/// The default model's GGUF with token `id`'s text replaced (same vocabulary size).
fn with_token_changed(model: &Model, id: usize) -> Arc<Model> {
    let meta = |k: &str, v: &Value| match (k, v) {
        ("tokenizer.ggml.tokens", Value::Array(a)) => {
            let mut a = a.clone();
            a[id] = Value::String("<not the same token>".into());
            Value::Array(a)
        }
        _ => v.clone(),
    };
    edited(model, "other-tokenizer.gguf", meta, |_, _| {})
}

#[test]
fn a_draft_model_with_another_vocabulary_or_tokenizer_is_refused() {
    let model = model_or_skip!();
    let mut o = EngineOptions::new(&model.path);
    o.device = DeviceChoice::Cpu;
    o.session.context = 128;
    let mut engine = Engine::with_model(Arc::clone(&model), &o, &|_, _| {}).expect("engine");
    let tiny = Preset::by_name("tiny").expect("preset");
    let bytes = gguf_bytes(&tiny, strata_tensor::DType::Q8_0, 1).expect("synth");
    let other =
        Arc::new(Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), "tiny.gguf".as_ref()).expect("load"));
    let target_name = model.path.display().to_string();
    let err = engine.open_draft(Arc::clone(&other), &|_, _| {}).expect_err("another vocabulary");
    let msg = err.to_string();
    assert!(msg.contains("tiny.gguf") && msg.contains(&target_name) && msg.contains("vocabulary"), "{msg}");
    let err = engine.open_draft(with_token_changed(&model, 300), &|_, _| {}).expect_err("another tokenizer");
    let msg = err.to_string();
    assert!(msg.contains("other-tokenizer.gguf") && msg.contains(&target_name) && msg.contains("token 300"), "{msg}");
    assert!(engine.draft_session().is_none());
    // The same vocabulary is accepted, and the engine then drafts with it.
    engine.open_draft(truncated(&model, 6), &|_, _| {}).expect("same vocabulary");
    let prompt = encode(&model, PROMPTS[1]);
    let want = plain(&model, &prompt, 12);
    let g = engine.generate_ids(&prompt, &greedy(12, Some(Speculative::draft_model())), |_| {}).expect("generate");
    assert_eq!(g.generated_ids, want);
    assert!(stats(&g).drafted_tokens > 0);
}
