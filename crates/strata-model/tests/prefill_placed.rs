//! The prefill placement on the host test device: a pass of at least
//! `SessionOptions::prefill_stream_min` tokens streams the layers decode computes on the CPU
//! (their copies are in the pass's records and the layers ran as streamed), shorter passes run
//! them on the CPU, and the logits of every pass are the all-CPU session's, bit for bit (the
//! host device computes with the same CPU kernels, so any difference is a routing or KV bug).

use std::sync::Arc;

use strata_model::{GenerateOptions, Layout, Model, PassStats, SamplerConfig, Session, SessionOptions, generate};
use strata_runtime::device::{Accelerator, HostDevice};
use strata_runtime::plan::Placement;

use crate::model_or_skip;

const PROMPT: [u32; 6] = [504, 3947, 1834, 314, 216, 34];

fn opts(min: Option<usize>) -> SessionOptions {
    SessionOptions { context: 64, prefill_stream_min: min, ..SessionOptions::default() }
}

/// `resident` layers, then the rest with every `every`-th streamed (0: none) and the others cpu.
fn layout(n: usize, resident: usize, every: usize) -> Layout {
    let placements = (0..n)
        .map(|i| match i {
            i if i < resident => Placement::Resident,
            i if every > 0 && (i - resident).is_multiple_of(every) => Placement::Streamed,
            _ => Placement::Cpu,
        })
        .collect();
    Layout { placements, prefetch_depth: 1 }
}

/// Passes that cross the threshold both ways: the prompt, decode steps, a second chunk of 5
/// tokens at position 8 (its attention reads the positions earlier passes wrote) and more
/// decode steps. Returns the logits of each.
fn passes(s: &mut Session) -> Vec<Vec<f32>> {
    let steps: [&[u32]; 6] = [&PROMPT, &[216], &[34], &[504, 3947, 1834, 314, 216], &[34], &[504]];
    steps.iter().map(|t| s.forward(t, false).expect("forward")).collect()
}

fn session(model: &Arc<Model>, l: &Layout, min: Option<usize>) -> Session {
    let acc = Accelerator::Host(HostDevice::new(1 << 30));
    Session::with_layout(Arc::clone(model), Some(&acc), l, &opts(min)).expect("session")
}

/// Which layers ran as streamed and which were copied in a pass.
fn streamed_and_copied(p: &PassStats) -> (Vec<usize>, Vec<usize>) {
    let ran = p.layers.iter().filter(|l| l.placement == Placement::Streamed).map(|l| l.layer).collect();
    let mut copied: Vec<usize> = p.copies.iter().filter_map(|c| c.layer).collect();
    copied.sort_unstable();
    copied.dedup();
    (ran, copied)
}

#[test]
fn prompt_passes_stream_the_cpu_layers_and_every_pass_gives_the_cpu_logits() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    let want = passes(&mut Session::new(Arc::clone(&model), None, &opts(None)).expect("cpu session"));
    // A hybrid split, and a plan with no streamed layer at all (decode never streams; the
    // prompt streams every cpu layer).
    for (name, l) in [("hybrid", layout(n, 6, 3)), ("resident + cpu", layout(n, 10, 0))] {
        let cpu: Vec<usize> = (0..n).filter(|&i| l.placements[i] == Placement::Cpu).collect();
        let decode_streamed: Vec<usize> = (0..n).filter(|&i| l.placements[i] == Placement::Streamed).collect();
        let all_streamed: Vec<usize> = (0..n).filter(|&i| l.placements[i] != Placement::Resident).collect();
        let mut s = session(&model, &l, Some(5));
        assert_eq!(s.prefill_streamed_layers(5), cpu.len(), "{name}");
        assert_eq!(s.prefill_streamed_layers(4), 0, "{name}");
        let got = passes(&mut s);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "{name}: the logits of pass {i} differ from the all-CPU session's");
        }
        let stats = s.take_stats();
        assert_eq!(stats.len(), 6);
        for p in &stats {
            let (ran, copied) = streamed_and_copied(p);
            let cpu_ran: Vec<usize> =
                p.layers.iter().filter(|l| l.placement == Placement::Cpu).map(|l| l.layer).collect();
            if p.tokens >= 5 {
                // The prompt and the 5-token chunk: every non-resident layer streamed and copied.
                assert_eq!(ran, all_streamed, "{name}: a {}-token pass", p.tokens);
                assert_eq!(copied, all_streamed, "{name}: copies of a {}-token pass", p.tokens);
                assert!(cpu_ran.is_empty(), "{name}: {cpu_ran:?} ran on the CPU in a prompt pass");
            } else {
                // Decode: the plan's split; no copy of a cpu layer.
                assert_eq!(ran, decode_streamed, "{name}: a decode pass");
                assert_eq!(cpu_ran, cpu, "{name}: a decode pass");
                assert!(copied.iter().all(|c| decode_streamed.contains(c)), "{name}: decode copied {copied:?}");
            }
        }
    }
}

/// Below the threshold, and without one, a prompt runs the cpu layers on the CPU; greedy
/// generation with the prefill placement gives the all-CPU tokens.
#[test]
fn short_prompts_and_no_threshold_keep_the_decode_placement() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    let l = layout(n, 6, 3);
    let cpu: Vec<usize> = (0..n).filter(|&i| l.placements[i] == Placement::Cpu).collect();
    for min in [Some(7), None] {
        let mut s = session(&model, &l, min);
        assert_eq!(s.prefill_streamed_layers(PROMPT.len()), 0);
        s.forward(&PROMPT, false).expect("prompt");
        let stats = s.take_stats();
        let ran_cpu: Vec<usize> =
            stats[0].layers.iter().filter(|x| x.placement == Placement::Cpu).map(|x| x.layer).collect();
        assert_eq!(ran_cpu, cpu, "threshold {min:?}");
        assert!(stats[0].copies.iter().all(|c| c.layer.is_some_and(|x| !cpu.contains(&x))), "threshold {min:?}");
    }
    let greedy = |s: &mut Session| {
        let o =
            GenerateOptions { max_tokens: 8, ignore_eos: true, sampler: SamplerConfig::greedy(), ..Default::default() };
        generate(s, &PROMPT, &o, |_| {}).expect("generate").generated_ids
    };
    let want = greedy(&mut Session::new(Arc::clone(&model), None, &opts(None)).expect("cpu session"));
    for depth in [1, 2] {
        let l = Layout { prefetch_depth: depth, ..layout(n, 4, 4) };
        assert_eq!(greedy(&mut session(&model, &l, Some(2))), want, "depth {depth}");
    }
}
