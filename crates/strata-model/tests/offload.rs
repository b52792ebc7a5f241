//! The executor on the host test device: any mix of resident, streamed and cpu layers gives
//! the same logits and tokens as running everything on the CPU, for prefill and decode; the
//! device budget is never exceeded; copies overlap compute.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use strata_model::{GenerateOptions, Layout, Model, SamplerConfig, Session, SessionOptions, generate};
use strata_runtime::device::{Accelerator, HostDevice};
use strata_runtime::plan::Placement;

use crate::model_or_skip;
use crate::support::logits_then_greedy;

const PROMPT: [u32; 6] = [504, 3947, 1834, 314, 216, 34];

fn opts() -> SessionOptions {
    SessionOptions { context: 64, ..SessionOptions::default() }
}

/// Greedy tokens and the prompt's logits for a layout (None = all on the CPU).
fn run(model: &Arc<Model>, acc: Option<&Accelerator>, layout: Option<&Layout>, n: usize) -> (Vec<f32>, Vec<u32>) {
    let mut s = match layout {
        Some(l) => Session::with_layout(Arc::clone(model), acc, l, &opts()).expect("session"),
        None => Session::new(Arc::clone(model), None, &opts()).expect("session"),
    };
    logits_then_greedy(&mut s, &PROMPT, n)
}

fn layout(pattern: &[Placement], n_layers: usize, depth: usize) -> Layout {
    Layout { placements: (0..n_layers).map(|i| pattern[i % pattern.len()]).collect(), prefetch_depth: depth }
}

#[test]
fn every_mix_of_placements_gives_the_cpu_tokens() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    let (want_logits, want) = run(&model, None, None, 6);
    use Placement::{Cpu, Resident as R, Streamed as S};
    let cases: Vec<(&str, Layout)> = vec![
        ("all resident", layout(&[R], n, 1)),
        ("all streamed, depth 1", layout(&[S], n, 1)),
        ("all streamed, depth 2", layout(&[S], n, 2)),
        ("resident/streamed/cpu", layout(&[R, S, Cpu], n, 1)),
        ("streamed/cpu", layout(&[S, S, Cpu], n, 2)),
        (
            "first half resident, rest streamed",
            Layout { placements: (0..n).map(|i| if i < n / 2 { R } else { S }).collect(), prefetch_depth: 1 },
        ),
    ];
    for (name, l) in cases {
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let (logits, got) = run(&model, Some(&acc), Some(&l), 6);
        assert_eq!(got, want, "{name}: tokens differ from the all-CPU run");
        assert_eq!(logits, want_logits, "{name}: prefill logits differ from the all-CPU run");
        if let Accelerator::Host(h) = &acc {
            assert!(h.budget.peak() <= h.budget.cap(), "{name}: peak {} over budget", h.budget.peak());
        }
    }
}

/// Gemma 3 270M (sliding-window and global layers, four norms, GELU, K-quant weights) through
/// resident, streamed and cpu layers on the host test device: the layer is still the unit the
/// runtime places and streams, so every mix gives the all-CPU logits and greedy tokens.
#[test]
fn gemma3_mixed_placements_give_the_cpu_tokens() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/gemma-3-270m-q4_k_m.gguf");
    let test = strata_kernels::check::current_test();
    let Some(path) = strata_kernels::check::model_file_or_skip(&test, path) else { return };
    let model = Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let prompt = [2, 818, 5279, 529, 7001, 563]; // <bos>The capital of France is
    let go = |acc: Option<&Accelerator>, l: Option<&Layout>| {
        let mut s = match l {
            Some(l) => Session::with_layout(Arc::clone(&model), acc, l, &opts()).expect("session"),
            None => Session::new(Arc::clone(&model), None, &opts()).expect("session"),
        };
        let logits = s.forward(&prompt, true).expect("prefill");
        s.reset();
        let greedy =
            GenerateOptions { max_tokens: 3, ignore_eos: true, sampler: SamplerConfig::greedy(), ..Default::default() };
        (logits, generate(&mut s, &prompt, &greedy, |_| {}).expect("generate").generated_ids)
    };
    let (want_logits, want) = go(None, None);
    let n = model.config.n_layers;
    use Placement::{Cpu, Resident as R, Streamed as S};
    for (name, l) in [("resident/streamed/cpu", layout(&[R, S, Cpu], n, 1)), ("all streamed", layout(&[S], n, 2))] {
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let (logits, got) = go(Some(&acc), Some(&l));
        assert_eq!(got, want, "{name}: tokens differ from the all-CPU run");
        assert_eq!(logits, want_logits, "{name}: prefill logits differ from the all-CPU run");
    }
}

#[test]
fn a_budget_too_small_is_a_typed_error() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    let acc = Accelerator::Host(HostDevice::new(8 << 20));
    let r = Session::with_layout(Arc::clone(&model), Some(&acc), &Layout::uniform(n, Placement::Resident), &opts());
    let err = r.err().expect("30 resident layers do not fit in 8 MiB");
    assert!(err.to_string().contains("budget"), "{err}");
    if let Accelerator::Host(h) = &acc {
        assert_eq!(h.budget.used(), 0, "a failed session must give all its memory back");
    }
}

/// The copy of layer i+d is handed to the copy stream before layer i's compute starts, for
/// every prefetch depth d, so the two can overlap. This checks the schedule (the order of
/// events on the host clock), not how much overlap the OS scheduler grants on a loaded machine:
/// that is a measurement, printed here and measured on a GPU by `scripts/gpu-check.sh stream`.
#[test]
fn copies_of_the_next_layer_overlap_compute_of_this_one() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    for depth in [1, 2] {
        // Slow copies down so they take about as long as a layer's compute on this machine.
        let mut dev = HostDevice::new(1 << 30);
        dev.copy_delay_per_mib = Duration::from_micros(300);
        let acc = Accelerator::Host(dev);
        let layout = Layout { placements: vec![Placement::Streamed; n], prefetch_depth: depth };
        let mut s = Session::with_layout(Arc::clone(&model), Some(&acc), &layout, &opts()).expect("session");
        s.forward(&PROMPT, false).expect("prefill");
        s.forward(&[216], false).expect("decode");
        let stats = s.take_stats();
        let pass = stats.last().expect("a pass");
        assert_eq!(pass.layers.len(), n);
        assert_eq!(pass.copies.len(), n, "depth {depth}: one copy per streamed layer in a pass");
        let mut overlapping = 0;
        for i in 0..n - depth {
            let layer = &pass.layers[i];
            let c = pass.copies.iter().find(|c| c.group == i + depth).expect("the copy of a later group");
            let issued = c.issued_s.expect("the host device records issue times");
            assert!(
                issued <= layer.start_s,
                "depth {depth}: the copy of group {} was issued at {issued:.6} s, after layer {i}'s compute \
                 started at {:.6} s",
                i + depth,
                layer.start_s
            );
            assert!(
                c.start_s >= issued && c.end_s >= c.start_s,
                "depth {depth}: copy {} times out of order",
                i + depth
            );
            if c.start_s < layer.end_s && c.end_s > layer.start_s {
                overlapping += 1;
            }
        }
        println!(
            "depth {depth}: {overlapping} of {} copies overlapped in wall time; overlap efficiency {:.2}",
            n - depth,
            pass.overlap_efficiency
        );
    }
}

/// Random layouts and budgets: the session either fits (peak ≤ budget, and the prompt gives
/// the CPU's logits, so the same first token) or fails with a typed out-of-memory error that
/// gives everything back. The model is loaded once, outside the cases, so that a machine
/// without it counts one skipped test instead of passing empty cases.
#[test]
fn random_layouts_never_exceed_the_budget() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    let prompt = &PROMPT[..2];
    let want = Session::new(Arc::clone(&model), None, &opts())
        .expect("cpu session")
        .forward(prompt, false)
        .expect("cpu forward");
    let want_token = strata_model::sample::argmax(&want);
    let cases = std::env::var("STRATA_TEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8).min(8);
    let mut runner = TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let strategy = (proptest::collection::vec(0u8..3, n), 4u64..160, 1usize..3);
    let result = runner.run(&strategy, |(seed, budget_mib, depth)| {
        let placements: Vec<Placement> =
            seed.iter().map(|s| [Placement::Resident, Placement::Streamed, Placement::Cpu][*s as usize]).collect();
        let acc = Accelerator::Host(HostDevice::new(budget_mib << 20));
        let l = Layout { placements, prefetch_depth: depth };
        let Accelerator::Host(h) = &acc else { unreachable!() };
        match Session::with_layout(Arc::clone(&model), Some(&acc), &l, &opts()) {
            Ok(mut s) => {
                let logits = s.forward(prompt, false).expect("forward");
                prop_assert!(h.budget.peak() <= h.budget.cap());
                prop_assert_eq!(
                    strata_model::sample::argmax(&logits),
                    want_token,
                    "first token differs from the CPU's"
                );
                prop_assert!(logits == want, "logits differ from the CPU's");
            }
            Err(e) => {
                prop_assert!(e.to_string().contains("budget"), "{}", e);
                prop_assert_eq!(h.budget.used(), 0);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A session keeps at most `STATS_KEPT` pass timelines however many passes run without a
/// `take_stats` (a long chat), says how many it dropped, and keeps the most recent ones.
#[test]
fn pass_timelines_are_bounded() {
    use strata_model::STATS_KEPT;
    use strata_model::gguf::GgufFile;
    use strata_model::synth::{Preset, gguf_bytes};
    use strata_tensor::DType;

    let preset = Preset::by_name("tiny").expect("preset");
    let file = GgufFile::from_bytes(gguf_bytes(&preset, DType::Q8_0, 1).expect("synthetic")).expect("parse");
    let model = std::sync::Arc::new(Model::from_file(file, std::path::Path::new("tiny")).expect("model"));
    let mut s =
        Session::new(std::sync::Arc::clone(&model), None, &SessionOptions { context: 8, ..SessionOptions::default() })
            .expect("session");
    let extra = 5;
    for i in 0..STATS_KEPT + extra {
        // The last pass has two tokens, so it is recognisable as the newest one kept.
        let tokens: &[u32] = if i + 1 == STATS_KEPT + extra { &[1, 2] } else { &[1] };
        s.forward(tokens, false).expect("forward");
        s.reset();
    }
    assert_eq!(s.stats_dropped(), extra);
    let stats = s.take_stats();
    assert_eq!(stats.len(), STATS_KEPT);
    assert_eq!(stats.last().map(|p| p.tokens), Some(2), "the newest pass is kept");
    assert_eq!(s.stats_dropped(), 0, "take_stats starts the count again");
    assert!(s.take_stats().is_empty());
}
