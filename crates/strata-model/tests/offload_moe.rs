//! Expert placements of a mixture-of-experts model on the host test device: experts with their
//! layer (resident or streamed), on the CPU (`--cpu-moe`, `--n-cpu-moe N`), and on the CPU with a
//! device cache of 0, some or all experts give the greedy tokens of the all-CPU run; the cache
//! counts hits; the device budget holds only what the placement puts there; the planner sees
//! the model's experts.
//!
//! The model: the `tiny` synthetic llama with its FFNs replaced by 8 seeded Q8_0 experts (2
//! routed per token) and a seeded f32 router, i.e. a Mixtral-shaped GGUF (`llama` with
//! `expert_count`).

use std::sync::Arc;

use strata_model::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use strata_model::offload::{OffloadOptions, make_plan};
use strata_model::session_experts::{ExpertExec, expert_execs_of};
use strata_model::synth::{Preset, gguf_bytes};
use strata_model::{Layout, Model, PassStats, Session, SessionOptions};
use strata_runtime::device::{Accelerator, HostDevice};
use strata_runtime::plan::{CpuExperts, ExpertPlacement, ExpertPolicy, Placement, assumed_speeds};

use crate::support::logits_then_greedy;

const N_EXPERT: usize = 8;
const N_USED: usize = 2;
const N_FF_EXP: usize = 96;
const N_LAYERS: usize = 4;
const PROMPT: [u32; 7] = [17, 300, 45, 122, 9, 261, 80];

/// splitmix64, for seeded weights.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// The tiny MoE model's GGUF bytes.
fn moe_bytes() -> Vec<u8> {
    let preset = Preset::by_name("tiny").and_then(|p| p.with_layers(N_LAYERS)).expect("tiny preset");
    let dense =
        GgufFile::from_bytes(gguf_bytes(&preset, strata_tensor::DType::Q8_0, 7).expect("synth")).expect("parse");
    let mut w = GgufWriter::new();
    *w.metadata_mut() = dense.metadata().clone();
    let md = w.metadata_mut();
    md.set("llama.expert_count", Value::U32(N_EXPERT as u32));
    md.set("llama.expert_used_count", Value::U32(N_USED as u32));
    md.set("llama.feed_forward_length", Value::U32(N_FF_EXP as u32));
    let dense_ffn =
        |name: &str| ["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"].iter().any(|s| name.ends_with(s));
    let kept: Vec<_> = dense.tensors().iter().filter(|t| !dense_ffn(&t.name)).collect();
    for t in &kept {
        w.add_tensor(&t.name, t.ggml_type, &t.dims).expect("tensor");
    }
    let e = preset.n_embd as u64;
    let (ne, ff) = (N_EXPERT as u64, N_FF_EXP as u64);
    // (name, dims, f32?, input width for the amplitude)
    let mut added = Vec::new();
    for l in 0..N_LAYERS {
        added.push((format!("blk.{l}.ffn_gate_inp.weight"), vec![e, ne], true, 0.5));
        added.push((format!("blk.{l}.ffn_gate_exps.weight"), vec![e, ff, ne], false, 1.0 / (e as f32).sqrt()));
        added.push((format!("blk.{l}.ffn_up_exps.weight"), vec![e, ff, ne], false, 1.0 / (e as f32).sqrt()));
        added.push((format!("blk.{l}.ffn_down_exps.weight"), vec![ff, e, ne], false, 1.0 / (ff as f32).sqrt()));
    }
    for (name, dims, f32, _) in &added {
        let ty = if *f32 { GgmlType::F32 } else { GgmlType::Q8_0 };
        w.add_tensor(name, ty, dims).expect("expert tensor");
    }
    w.to_bytes(|i, buf| {
        if i < kept.len() {
            buf.copy_from_slice(dense.tensor_data(kept[i]));
            return;
        }
        let (_, _, f32, amp) = &added[i - kept.len()];
        let mut rng = Mix(0xE4E4 ^ (i as u64) << 20);
        if *f32 {
            buf.chunks_exact_mut(4).for_each(|b| b.copy_from_slice(&(amp * rng.unit()).to_le_bytes()));
        } else {
            // Q8_0: an f16 scale and 32 signed bytes; values uniform in about [-√3·amp, √3·amp].
            let d = half::f16::from_f32(3f32.sqrt() * amp / 127.0).to_le_bytes();
            for block in buf.chunks_exact_mut(34) {
                block[..2].copy_from_slice(&d);
                block[2..].iter_mut().for_each(|q| *q = (rng.next() % 255) as u8 ^ 0x80);
            }
        }
    })
    .expect("write")
}

pub(crate) fn model() -> Arc<Model> {
    let file = GgufFile::from_bytes(moe_bytes()).expect("parse");
    Arc::new(Model::from_file(file, "tiny-moe.gguf".as_ref()).expect("the MoE model loads"))
}

fn opts() -> SessionOptions {
    SessionOptions { context: 64, ..SessionOptions::default() }
}

/// Greedy tokens, the prompt's logits and the pass stats of a session.
fn run(mut s: Session, n: usize) -> (Vec<f32>, Vec<u32>, Vec<PassStats>) {
    let (logits, tokens) = logits_then_greedy(&mut s, &PROMPT, n);
    (logits, tokens, s.take_stats())
}

fn session(model: &Arc<Model>, acc: &Accelerator, placements: Vec<Placement>, experts: &[ExpertExec]) -> Session {
    let layout = Layout { placements, prefetch_depth: 1 };
    Session::with_layout_experts(Arc::clone(model), Some(acc), &layout, experts, &opts(), &|_, _| {}).expect("session")
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn every_expert_placement_gives_the_cpu_tokens() {
    let model = model();
    assert!(model.config.is_moe() && model.config.n_expert == N_EXPERT);
    let cpu = Session::new(Arc::clone(&model), None, &opts()).expect("cpu session");
    let (want_logits, want, _) = run(cpu, 8);
    use Placement::{Cpu, Resident as R, Streamed as S};
    let n = N_LAYERS;
    let all = |e: ExpertExec| vec![e; n];
    let cpu_moe = ExpertExec::Cpu { cached: 0 };
    let first_two: Vec<ExpertExec> = (0..n).map(|i| if i < 2 { cpu_moe } else { ExpertExec::WithLayer }).collect();
    let cases: Vec<(&str, Vec<Placement>, Vec<ExpertExec>, bool)> = vec![
        // (name, layer placements, expert placements, bit-identical to the CPU)
        ("all resident, experts with their layers", vec![R; n], vec![], true),
        ("streamed layers, experts streamed with them", vec![S; n], vec![], true),
        ("--cpu-moe", vec![R; n], all(cpu_moe), true),
        ("--n-cpu-moe 2", vec![R; n], first_two, true),
        ("--cpu-moe, streamed attention", vec![S; n], all(cpu_moe), true),
        ("--cpu-moe, resident/streamed/cpu layers", vec![R, S, Cpu, R], all(cpu_moe), true),
        ("cache of 3 experts", vec![R; n], all(ExpertExec::Cpu { cached: 3 }), false),
        ("cache of every expert", vec![R; n], all(ExpertExec::Cpu { cached: N_EXPERT }), false),
        ("cache of 5, streamed attention", vec![S, R, S, R], all(ExpertExec::Cpu { cached: 5 }), false),
        ("resident attention, streamed experts", vec![R; n], all(ExpertExec::Streamed), true),
        ("streamed experts, resident/streamed/cpu layers", vec![R, S, Cpu, R], all(ExpertExec::Streamed), true),
        (
            "streamed experts beside --cpu-moe and a cache",
            vec![R, R, R, S],
            vec![ExpertExec::Streamed, cpu_moe, ExpertExec::Cpu { cached: 2 }, ExpertExec::Streamed],
            false,
        ),
    ];
    for (name, placements, experts, exact) in cases {
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let (logits, got, stats) = run(session(&model, &acc, placements.clone(), &experts), 8);
        assert_eq!(got, want, "{name}: tokens differ from the all-CPU run");
        if exact {
            // With no cache the CPU sums every expert in the same order as the whole layer.
            assert_eq!(logits, want_logits, "{name}: prefill logits differ from the all-CPU run");
        } else {
            // Cached experts are summed apart from the others: rounding may differ.
            let d = max_rel(&want_logits, &logits);
            assert!(d < 1e-5, "{name}: prefill logits differ by {d} (relative to the largest)");
        }
        if let Accelerator::Host(h) = &acc {
            assert!(h.budget.peak() <= h.budget.cap(), "{name}: peak {} over budget", h.budget.peak());
        }
        // Experts run apart only in layers on the device (a cpu layer runs all of itself).
        let apart =
            experts.iter().zip(&placements).filter(|(e, p)| matches!(e, ExpertExec::Cpu { .. }) && **p != Cpu).count()
                as u64;
        let decode: Vec<&PassStats> = stats.iter().filter(|p| p.tokens == 1).collect();
        let routed: u64 = decode.iter().map(|p| p.experts.routed).sum();
        assert_eq!(routed, decode.len() as u64 * apart * N_USED as u64, "{name}: routed pairs counted");
    }
}

/// A cache of every expert is full after the first pass (each expert routed to at least once
/// in the prompt, or only those routed are cached): from then on every routed expert hits; a
/// cache of none never hits; a partial one is in between.
#[test]
fn the_expert_cache_counts_hits_and_fills_with_the_hottest() {
    let model = model();
    let decode_rate = |cached: usize| {
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let (_, _, stats) =
            run(session(&model, &acc, vec![Placement::Resident; N_LAYERS], &[ExpertExec::Cpu { cached }; N_LAYERS]), 6);
        let decode: Vec<&PassStats> = stats.iter().filter(|p| p.tokens == 1).collect();
        let (hits, routed) = decode.iter().fold((0, 0), |(h, r), p| (h + p.experts.hits, r + p.experts.routed));
        let refill: u64 = stats.iter().map(|p| p.experts.refill_bytes).sum();
        (hits as f64 / routed as f64, refill)
    };
    let (none, refill_none) = decode_rate(0);
    assert_eq!((none, refill_none), (0.0, 0));
    let (some, refill_some) = decode_rate(3);
    let (full, refill_full) = decode_rate(N_EXPERT);
    assert!(some > 0.0 && some <= full, "hit rates: 3 cached {some}, all cached {full}");
    // Uniform routing would hit 3/8 of the time; the hottest experts are hit more often.
    assert!(some >= 3.0 / 8.0 - 0.15, "3 of 8 cached hit only {some}");
    assert!(full > 0.9, "every expert cached hit {full}");
    // A cache of every expert never evicts, so it copies each expert at most once; a smaller one
    // follows the (decayed) routing counts and may copy an expert again after evicting it.
    let all_experts: u64 = model.weights.layers.iter().map(strata_model::session_experts::expert_bytes).sum();
    assert!(refill_some > 0 && refill_full > 0);
    assert!(refill_full <= all_experts, "a full cache copied {refill_full} of {all_experts} expert bytes");
}

/// The host test device's budget holds what each placement puts on it: a budget too small for
/// the whole layers fits their attention parts once the experts are on the CPU, and a cache is
/// counted against it.
#[test]
fn expert_placement_is_counted_against_the_device_budget() {
    let model = model();
    let layer = model.weights.layers[0].bytes();
    let experts = strata_model::session_experts::expert_bytes(&model.weights.layers[0]);
    assert!(experts > layer / 2, "the experts are most of the layer");
    let layout = Layout { placements: vec![Placement::Resident; N_LAYERS], prefetch_depth: 1 };
    // What --cpu-moe takes on the device (attention parts, KV caches, head, activations), and
    // room for half the experts of one layer more.
    let roomy = Accelerator::Host(HostDevice::new(1 << 30));
    let apart = [ExpertExec::Cpu { cached: 0 }; N_LAYERS];
    drop(Session::with_layout_experts(Arc::clone(&model), Some(&roomy), &layout, &apart, &opts(), &|_, _| {}));
    let Accelerator::Host(h) = &roomy else { unreachable!("a host device") };
    let budget = h.budget.peak() + experts / 2;
    let acc = Accelerator::Host(HostDevice::new(budget));
    let whole = Session::with_layout(Arc::clone(&model), Some(&acc), &layout, &opts());
    assert!(whole.is_err(), "whole layers must not fit {budget} bytes");
    let acc = Accelerator::Host(HostDevice::new(budget));
    let s = Session::with_layout_experts(
        Arc::clone(&model),
        Some(&acc),
        &layout,
        &[ExpertExec::Cpu { cached: 0 }; N_LAYERS],
        &opts(),
        &|_, _| {},
    );
    assert!(s.is_ok(), "attention parts fit: {:?}", s.err());
    drop(s);
    // A cache of every expert is the experts again: it does not fit either.
    let acc = Accelerator::Host(HostDevice::new(budget));
    let cached = Session::with_layout_experts(
        Arc::clone(&model),
        Some(&acc),
        &layout,
        &[ExpertExec::Cpu { cached: N_EXPERT }; N_LAYERS],
        &opts(),
        &|_, _| {},
    );
    let err = cached.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("host device budget"), "a full cache must not fit: {err}");
    let Accelerator::Host(h) = &acc else { unreachable!("a host device") };
    assert!(h.budget.peak() <= h.budget.cap());
}

/// Resident attention with streamed experts: each pass copies exactly the expert tensors of
/// those layers through the streamer's slots (nothing else), and a budget that holds the
/// attention parts and two expert-sized slots but not the whole layers is enough.
#[test]
fn streamed_experts_copy_only_the_expert_group_each_pass() {
    let model = model();
    let experts = strata_model::session_experts::expert_bytes(&model.weights.layers[0]);
    let layout = Layout { placements: vec![Placement::Resident; N_LAYERS], prefetch_depth: 1 };
    let streamed = [ExpertExec::Streamed; N_LAYERS];
    let roomy = Accelerator::Host(HostDevice::new(1 << 30));
    let s = Session::with_layout_experts(Arc::clone(&model), Some(&roomy), &layout, &streamed, &opts(), &|_, _| {})
        .expect("session");
    assert_eq!(s.stream_slots(), Some((2, experts as usize)), "two slots of one layer's experts");
    let (_, _, stats) = run(s, 3);
    assert!(!stats.is_empty());
    for p in &stats {
        assert_eq!(p.copy_bytes, N_LAYERS as u64 * experts, "a pass copies every layer's experts once");
        assert_eq!(p.copies.len(), N_LAYERS);
    }
    // What this placement takes, then the same with whole layers resident: it must not fit.
    let Accelerator::Host(h) = &roomy else { unreachable!("a host device") };
    let budget = h.budget.peak();
    let acc = Accelerator::Host(HostDevice::new(budget));
    let whole = Session::with_layout(Arc::clone(&model), Some(&acc), &layout, &opts());
    assert!(whole.is_err(), "whole layers must not fit {budget} bytes");
    let acc = Accelerator::Host(HostDevice::new(budget));
    let s = Session::with_layout_experts(Arc::clone(&model), Some(&acc), &layout, &streamed, &opts(), &|_, _| {});
    assert!(s.is_ok(), "attention parts and expert slots fit {budget} bytes: {:?}", s.err());
}

/// The planner sees the file's experts: their bytes and counts, and the flags place them.
#[test]
fn the_plan_of_a_moe_file_places_its_experts() {
    let model = model();
    let w = &model.weights.layers[0];
    let experts = strata_model::session_experts::expert_bytes(w);
    let o = |cpu: CpuExperts| OffloadOptions {
        hypothetical_gpu: Some(1 << 30),
        experts: ExpertPolicy { cpu, cache_bytes: None },
        ..OffloadOptions::default()
    };
    let p = make_plan(&model, &opts(), None, assumed_speeds(), &o(CpuExperts::All)).expect("plan");
    let x = p.experts.as_ref().expect("a MoE plan has an expert summary");
    assert_eq!(x.cpu_bytes, N_LAYERS as u64 * experts, "{}", p.render_table());
    assert_eq!(x.active_bytes_per_token, N_LAYERS as u64 * experts / N_EXPERT as u64 * N_USED as u64);
    assert!(p.layers.iter().all(|l| l.experts.is_some_and(|e| e.placement == ExpertPlacement::Cpu)));
    let execs = expert_execs_of(&p);
    for (l, e) in p.layers.iter().zip(&execs) {
        let want = if l.placement == Placement::Cpu { ExpertExec::WithLayer } else { ExpertExec::Cpu { cached: 0 } };
        assert_eq!(*e, want);
    }
    let p = make_plan(&model, &opts(), None, assumed_speeds(), &o(CpuExperts::First(1))).expect("plan");
    assert!(
        p.layers[1..]
            .iter()
            .all(|l| l.experts.is_some_and(|e| e.placement != ExpertPlacement::Cpu) || l.placement == Placement::Cpu)
    );
    assert!(p.render_table().contains("experts"), "{}", p.render_table());
    // Streamed experts of a resident layer run as such; of a streamed layer, with the layer.
    let mut q = p.clone();
    for l in &mut q.layers {
        l.experts = l.experts.map(|e| strata_runtime::plan::ExpertPlan { placement: ExpertPlacement::Streamed, ..e });
    }
    q.layers[0].placement = Placement::Resident;
    q.layers[1].placement = Placement::Streamed;
    let execs = expert_execs_of(&q);
    assert_eq!(execs[0], ExpertExec::Streamed);
    assert_eq!(execs[1], ExpertExec::WithLayer);
}

/// qwen3moe and Mixtral derived from the default model's real weights (4 experts, 2 per token;
/// `strata synth --derive`): experts on the CPU, cached or streamed with their layers give the
/// all-CPU greedy tokens.
#[test]
fn derived_moe_models_give_the_cpu_tokens_in_every_expert_placement() {
    use strata_model::derive::{DeriveArch, DeriveOptions, derive_bytes};
    for arch in [DeriveArch::Qwen3Moe, DeriveArch::Mixtral] {
        let Some(src) = crate::support::default_model_layers(3) else { return };
        let bytes = derive_bytes(&src, &DeriveOptions::new(arch)).expect("derive");
        let model = Arc::new(
            Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), "derived-moe.gguf".as_ref()).expect("load"),
        );
        let n = model.config.n_layers;
        let (_, want, _) = run(Session::new(Arc::clone(&model), None, &opts()).expect("cpu"), 6);
        use Placement::{Resident as R, Streamed as S};
        let cases: Vec<(&str, Vec<Placement>, Vec<ExpertExec>)> = vec![
            ("--cpu-moe", vec![R; n], vec![ExpertExec::Cpu { cached: 0 }; n]),
            ("cache of 2 of 4", vec![R; n], vec![ExpertExec::Cpu { cached: 2 }; n]),
            ("streamed attention, cache of 1", vec![S; n], vec![ExpertExec::Cpu { cached: 1 }; n]),
            ("experts streamed with their layers", vec![S; n], vec![]),
        ];
        for (name, placements, experts) in cases {
            let acc = Accelerator::Host(HostDevice::new(1 << 30));
            let (_, got, _) = run(session(&model, &acc, placements, &experts), 6);
            assert_eq!(got, want, "{arch:?} {name}: tokens differ from the all-CPU run");
        }
    }
}
