//! Hybrid decode on the host test device: resident layers, then streamed layers spread among
//! cpu layers (the planner's hybrid orders). The executor keeps the copy stream running while
//! the cpu layers compute — every free slot gets its next copy before a cpu layer, the next
//! token's first copies included — and every split gives the all-CPU greedy tokens.
//!
//! The schedule checks compare the order of events on the host clock (a copy issued before a
//! cpu layer starts and consumed after it ends was in flight while it ran), never how much wall
//! time overlapped: that depends on the machine's load and is a measurement (printed here).

use std::sync::Arc;
use std::time::Duration;

use strata_model::{GenerateOptions, Layout, PassStats, SamplerConfig, Session, SessionOptions, generate};
use strata_runtime::device::{Accelerator, HostDevice};
use strata_runtime::plan::Placement;

use crate::model_or_skip;

const PROMPT: [u32; 6] = [504, 3947, 1834, 314, 216, 34];

fn opts() -> SessionOptions {
    SessionOptions { context: 64, ..SessionOptions::default() }
}

/// `resident` layers, then a band of the rest with `streamed` of them spread evenly among the
/// cpu layers: each streamed layer first (`streamed_first`) or last in its stretch, as the
/// planner orders a hybrid layout.
fn hybrid(n: usize, resident: usize, streamed: usize, streamed_first: bool, depth: usize) -> Layout {
    let g = n - resident;
    let mut placements = vec![Placement::Resident; resident];
    let mut band = vec![Placement::Cpu; g];
    for k in 0..streamed {
        band[if streamed_first { k * g / streamed } else { (k + 1) * g / streamed - 1 }] = Placement::Streamed;
    }
    placements.extend(band);
    Layout { placements, prefetch_depth: depth }
}

fn greedy(s: &mut Session, n: usize) -> Vec<u32> {
    let o = GenerateOptions { max_tokens: n, ignore_eos: true, sampler: SamplerConfig::greedy(), ..Default::default() };
    generate(s, &PROMPT, &o, |_| {}).expect("generate").generated_ids
}

/// Several hybrid splits, both orders, depths 1 and 2: the all-CPU greedy tokens exactly.
#[test]
fn every_hybrid_split_gives_the_cpu_tokens() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    let want = greedy(&mut Session::new(Arc::clone(&model), None, &opts()).expect("session"), 8);
    for (resident, streamed) in [(0, 10), (6, 8), (10, 4), (4, 13)] {
        for streamed_first in [false, true] {
            for depth in [1, 2] {
                let l = hybrid(n, resident, streamed, streamed_first, depth);
                let acc = Accelerator::Host(HostDevice::new(1 << 30));
                let mut s = Session::with_layout(Arc::clone(&model), Some(&acc), &l, &opts()).expect("session");
                let got = greedy(&mut s, 8);
                let name = format!("{resident} resident, {streamed} streamed (first {streamed_first}), depth {depth}");
                assert_eq!(got, want, "{name}: tokens differ from the all-CPU run");
                if let Accelerator::Host(h) = &acc {
                    assert!(h.budget.peak() <= h.budget.cap(), "{name}: peak over budget");
                }
            }
        }
    }
}

/// Absolute times (seconds since the session was created) of one pass's events.
struct Timeline<'a> {
    pass: &'a PassStats,
}

impl Timeline<'_> {
    fn at(&self, rel: f64) -> f64 {
        self.pass.epoch_s + rel
    }
    /// When the copy of `layer` consumed in this pass was issued.
    fn issued(&self, layer: usize) -> f64 {
        let c = self.pass.copies.iter().find(|c| c.layer == Some(layer)).expect("a copy of every streamed layer");
        self.at(c.issued_s.expect("the host device records issue times"))
    }
    fn start(&self, layer: usize) -> f64 {
        self.at(self.pass.layers[layer].start_s)
    }
    fn end(&self, layer: usize) -> f64 {
        self.at(self.pass.layers[layer].end_s)
    }
}

/// Before every cpu layer, every one of the K = d + 1 slots holds a copy in flight for a later
/// streamed layer (as many as there are left, the next token's first ones after the last
/// streamed layer): each was issued before the cpu layer started and is consumed after it
/// ended. Without the executor's copies before cpu layers only d are in flight there, and the
/// next token's copies are issued after the head.
#[test]
fn copies_of_later_streamed_layers_are_in_flight_during_cpu_layers() {
    let model = model_or_skip!();
    let n = model.config.n_layers;
    for (streamed_first, depth) in [(false, 1), (true, 1), (false, 2), (true, 2)] {
        let mut dev = HostDevice::new(1 << 30);
        // Slow copies, about as long as a layer's compute: makes the overlap visible in the
        // printed numbers; the checks below do not depend on it.
        dev.copy_delay_per_mib = Duration::from_micros(300);
        let acc = Accelerator::Host(dev);
        let l = hybrid(n, 6, 8, streamed_first, depth);
        let mut s = Session::with_layout(Arc::clone(&model), Some(&acc), &l, &opts()).expect("session");
        s.forward(&PROMPT, false).expect("prefill");
        for t in [216, 34, 504] {
            s.forward(&[t], false).expect("decode");
        }
        let stats = s.take_stats();
        assert_eq!(stats.len(), 4);
        let streamed: Vec<usize> = (0..n).filter(|&i| l.placements[i] == Placement::Streamed).collect();
        let slots = depth + 1;
        let name = format!("first {streamed_first}, depth {depth}");
        // Decode passes 1 and 2, and the pass after each (for the next token's copies).
        for p in 1..3 {
            let this = Timeline { pass: &stats[p] };
            let next = Timeline { pass: &stats[p + 1] };
            assert_eq!(this.pass.copies.len(), streamed.len(), "{name}: one copy per streamed layer");
            let mut in_wall_time = 0;
            for c in (0..n).filter(|&i| l.placements[i] == Placement::Cpu && i >= 6) {
                // The next streamed layers: this pass's (copies do not run past the pass while
                // its last streamed layer is still ahead), or after it the next pass's first.
                let rest: Vec<usize> = streamed.iter().copied().filter(|&sl| sl > c).collect();
                let later: Vec<(usize, &Timeline)> = if rest.is_empty() {
                    streamed.iter().take(slots).map(|&sl| (sl, &next)).collect()
                } else {
                    rest.iter().take(slots).map(|&sl| (sl, &this)).collect()
                };
                for (sl, tl) in later {
                    let issued = tl.issued(sl);
                    assert!(
                        issued <= this.start(c),
                        "{name}, pass {p}: the copy of layer {sl} was issued at {issued:.6} s, after cpu layer {c} \
                         started at {:.6} s",
                        this.start(c)
                    );
                    assert!(tl.start(sl) >= this.end(c), "{name}: layer {sl} ran before cpu layer {c} ended");
                    let copy = tl.pass.copies.iter().find(|x| x.layer == Some(sl)).expect("copy");
                    if tl.at(copy.start_s) < this.end(c) && tl.at(copy.end_s) > this.start(c) {
                        in_wall_time += 1;
                    }
                }
            }
            println!(
                "{name}, pass {p}: {in_wall_time} copy/cpu-layer pairs overlapped in wall time; wall {:.1} ms, \
                 compute {:.1} ms, copies {:.1} ms, waits {:.1} ms",
                1e3 * this.pass.wall_s,
                1e3 * this.pass.compute_s,
                1e3 * this.pass.copy_s,
                1e3 * this.pass.wait_s
            );
        }
    }
}
