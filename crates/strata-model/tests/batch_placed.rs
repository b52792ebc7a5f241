//! The continuous-batching [`Scheduler`] on placements other than the CPU, on the host test
//! device (`HostDevice`: resident and streamed layers run the host kernels, streamed weights go
//! through the host streamer's slots, and every byte is counted against its budget): a
//! streamed plan and a mixed plan (resident + streamed + cpu). Several concurrent sequences that
//! join and leave get the greedy tokens each gets alone; KV blocks run out and come back; the
//! pool's blocks are counted against the device budget; a mixture-of-experts model whose
//! experts run apart from their layers (or are streamed) batches like alone.
//!
//! Tolerance: greedy tokens equal. On the host device every placement runs the same host
//! kernels, so the batched logits of a row do not depend on the placement at all; against a
//! single-sequence session (matvec for decode where the batch runs a matmul) only the order of
//! float additions can differ.

use std::collections::HashMap;
use std::sync::Arc;

use strata_model::batch::{Event, FinishReason, Scheduler, SchedulerOptions, SeqId};
use strata_model::gguf::GgufFile;
use strata_model::synth::{Preset, gguf_bytes};
use strata_model::{GenerateOptions, KvType, Layout, Model, SamplerConfig, Session, SessionOptions, generate};
use strata_runtime::device::{Accelerator, HostDevice};
use strata_runtime::plan::Placement;
use strata_tensor::DType;

use crate::support::{BATCH_PROMPTS, alone_in_scheduler, drain, greedy_request};

/// The tiny preset with six layers, so a plan can mix all three placements twice.
fn six_layers() -> Arc<Model> {
    let preset = Preset { n_layers: 6, ..Preset::by_name("tiny").expect("preset") };
    let bytes = gguf_bytes(&preset, DType::Q4_1, 5).expect("synthetic model");
    Arc::new(Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), "tiny6".as_ref()).expect("model"))
}

fn opts(kv_blocks: usize) -> SchedulerOptions {
    SchedulerOptions {
        context: 96,
        kv_blocks,
        block_size: 4,
        max_seqs: 8,
        step_tokens: 24,
        kv_type: KvType::F16,
        ..Default::default()
    }
}

fn plans(n: usize) -> Vec<(&'static str, Layout)> {
    use Placement::{Cpu, Resident as R, Streamed as S};
    let pattern =
        |p: &[Placement], depth| Layout { placements: (0..n).map(|i| p[i % p.len()]).collect(), prefetch_depth: depth };
    vec![("all streamed, depth 2", pattern(&[S], 2)), ("resident/streamed/cpu", pattern(&[R, S, Cpu], 1))]
}

/// Each prompt alone through a single-sequence session on the same plan.
fn alone_in_a_session(model: &Arc<Model>, layout: &Layout, n: usize) -> Vec<Vec<u32>> {
    let so = SessionOptions { context: 96, kv_type: KvType::F16, ..SessionOptions::default() };
    BATCH_PROMPTS
        .iter()
        .map(|p| {
            let acc = Accelerator::Host(HostDevice::new(1 << 30));
            let mut session = Session::with_layout(Arc::clone(model), Some(&acc), layout, &so).expect("session");
            let g = GenerateOptions {
                max_tokens: n,
                ignore_eos: true,
                sampler: SamplerConfig::greedy(),
                ..Default::default()
            };
            generate(&mut session, p, &g, |_| {}).expect("generate").generated_ids
        })
        .collect()
}

#[test]
fn concurrent_sequences_on_streamed_and_mixed_plans_get_their_tokens_alone() {
    let model = six_layers();
    let n = 10;
    // Alone in a scheduler with every layer on the CPU: the reference of the batched pass.
    let cpu_alone = alone_in_scheduler(&model, &opts(64), n);
    for (name, layout) in plans(model.config.n_layers) {
        assert_eq!(alone_in_a_session(&model, &layout, n), cpu_alone, "{name}: a session's tokens differ");
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let mut s = Scheduler::with_layout(Arc::clone(&model), Some(&acc), &layout, &opts(64)).expect("scheduler");
        assert!(s.session().stream_slots().is_some(), "{name}: no layer is streamed");
        // Two start together, the others join while those decode; with fewer tokens each
        // leaves at a different step.
        let mut ids = vec![
            s.submit(greedy_request(BATCH_PROMPTS[0], n)).expect("a"),
            s.submit(greedy_request(BATCH_PROMPTS[1], n)).expect("b"),
        ];
        let mut toks: HashMap<SeqId, Vec<u32>> = HashMap::new();
        let mut most = 0;
        for step in 0.. {
            if step == 2 {
                ids.push(s.submit(greedy_request(BATCH_PROMPTS[2], n - 3)).expect("c"));
            }
            if step == 4 {
                ids.push(s.submit(greedy_request(BATCH_PROMPTS[3], n - 5)).expect("d"));
            }
            if s.is_idle() && step > 4 {
                break;
            }
            for e in s.step().expect("step") {
                if let Event::Token { id, token } = e {
                    toks.entry(id).or_default().push(token);
                }
            }
            most = most.max(s.stats().last_batch_seqs);
        }
        assert!(most >= 3, "{name}: at most {most} sequences shared a pass");
        let lens = [n, n, n - 3, n - 5];
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(toks[id], cpu_alone[i][..lens[i]], "{name}: prompt {i} batched differs from alone");
        }
        assert_eq!(s.stats().kv_blocks_used, 0, "{name}: blocks left after every sequence finished");
        if let Accelerator::Host(h) = &acc {
            assert!(h.budget.peak() <= h.budget.cap(), "{name}: peak {} over budget", h.budget.peak());
        }
    }
}

#[test]
fn kv_blocks_run_out_and_come_back_on_a_mixed_plan() {
    let model = six_layers();
    let (_, layout) = plans(model.config.n_layers).pop().expect("the mixed plan");
    let acc = Accelerator::Host(HostDevice::new(1 << 30));
    // 10 blocks of 4 positions; each request needs 6 + 10 = 16 positions = 4 blocks: two run,
    // the third waits until one finishes.
    let mut s = Scheduler::with_layout(Arc::clone(&model), Some(&acc), &layout, &opts(10)).expect("scheduler");
    let ids: Vec<SeqId> = (0..3).map(|_| s.submit(greedy_request(BATCH_PROMPTS[0], 10)).expect("submit")).collect();
    let first = s.step().expect("step");
    let st = s.stats();
    assert_eq!((st.running, st.waiting, st.kv_blocks_used, st.kv_blocks_total), (2, 1, 8, 10));
    let (toks, done) = drain(&mut s);
    let alone = {
        let mut one = Scheduler::new(Arc::clone(&model), &opts(10)).expect("scheduler");
        let id = one.submit(greedy_request(BATCH_PROMPTS[0], 10)).expect("submit");
        drain(&mut one).0.remove(&id).expect("tokens")
    };
    for id in &ids {
        let mut got: Vec<u32> =
            first.iter().filter(|e| matches!(e, Event::Token { id: i, .. } if i == id)).map(token).collect();
        got.extend(&toks[id]);
        assert_eq!(got, alone, "a request that waited for blocks got other tokens");
        assert_eq!(done[id], FinishReason::MaxTokens);
    }
    assert_eq!(s.stats().kv_blocks_used, 0);
    // Cancelling a running sequence returns its blocks at once; the pool serves after it.
    let a = s.submit(greedy_request(BATCH_PROMPTS[1], 8)).expect("a");
    s.step().expect("step");
    assert_eq!(s.stats().kv_blocks_used, 10);
    assert!(s.cancel(a));
    assert_eq!(s.stats().kv_blocks_used, 0);
    let b = s.submit(greedy_request(BATCH_PROMPTS[2], 5)).expect("b");
    assert_eq!(drain(&mut s).0[&b].len(), 5);
}

fn token(e: &Event) -> u32 {
    match e {
        Event::Token { token, .. } => *token,
        Event::Done { .. } => u32::MAX,
    }
}

/// The pool's blocks are the session's KV caches on each layer's device: on the host device
/// they are counted against its budget, and a pool that does not fit is a typed
/// out-of-memory error naming the KV cache, not a crash.
#[test]
fn the_pool_is_counted_against_the_device_budget() {
    let model = six_layers();
    let (_, layout) = plans(model.config.n_layers).remove(0);
    let small = Accelerator::Host(HostDevice::new(1 << 30));
    let s = Scheduler::with_layout(Arc::clone(&model), Some(&small), &layout, &opts(16)).expect("scheduler");
    let Accelerator::Host(h) = &small else { unreachable!("a host device") };
    let with_16 = h.budget.used();
    drop(s);
    let big = Scheduler::with_layout(Arc::clone(&model), Some(&small), &layout, &opts(64)).expect("scheduler");
    // 48 more blocks of 4 positions in 6 layers, K and V, f16, kv_dim 32.
    let per_block = 6 * 2 * 4 * model.config.kv_dim() * 2;
    assert_eq!(h.budget.used() - with_16, (48 * per_block) as u64, "the pool is not what the budget counts");
    drop(big);
    // 65536 blocks of 4 positions: 32 MiB of KV per layer, so the second layer's does not
    // fit in 48 MiB.
    let tight = Accelerator::Host(HostDevice::new(48 << 20));
    match Scheduler::with_layout(Arc::clone(&model), Some(&tight), &layout, &opts(65536)) {
        Err(e) => assert!(e.is_out_of_memory() && e.to_string().contains("KV"), "{e}"),
        Ok(_) => panic!("a pool over the budget was allocated"),
    }
}

/// A mixture-of-experts model whose experts run apart from their layers (`--cpu-moe`, an
/// expert cache, on resident, streamed and cpu layers) or are streamed beside a resident
/// attention part: several sequences batched together get the greedy tokens each gets alone,
/// in a CPU scheduler and in a single-sequence session on the same placement.
#[test]
fn experts_apart_from_their_layers_batch_like_alone() {
    use Placement::{Cpu, Resident as R, Streamed as S};
    use strata_model::session_experts::ExpertExec;
    let model = crate::offload_moe::model();
    let n_layers = model.config.n_layers;
    let n = 8;
    let cpu_alone = alone_in_scheduler(&model, &opts(64), n);
    let cpu_moe = ExpertExec::Cpu { cached: 0 };
    let cases: Vec<(&str, Vec<Placement>, Vec<ExpertExec>)> = vec![
        ("--cpu-moe", vec![R; n_layers], vec![cpu_moe; n_layers]),
        ("cache of 3, resident/streamed/cpu", vec![R, S, Cpu, R], vec![ExpertExec::Cpu { cached: 3 }; n_layers]),
        ("--n-cpu-moe 2, streamed attention", vec![S; n_layers], vec![cpu_moe, cpu_moe]),
        ("streamed experts beside --cpu-moe", vec![R; n_layers], vec![ExpertExec::Streamed, cpu_moe]),
    ];
    let so = SessionOptions { context: 96, kv_type: KvType::F16, ..SessionOptions::default() };
    for (name, placements, experts) in cases {
        let layout = Layout { placements, prefetch_depth: 1 };
        let open = |acc: &Accelerator| {
            Session::with_layout_experts(Arc::clone(&model), Some(acc), &layout, &experts, &so, &|_, _| {})
                .expect("session")
        };
        for (i, p) in BATCH_PROMPTS.iter().enumerate() {
            let acc = Accelerator::Host(HostDevice::new(1 << 30));
            let g = GenerateOptions {
                max_tokens: n,
                ignore_eos: true,
                sampler: SamplerConfig::greedy(),
                ..Default::default()
            };
            let alone = generate(&mut open(&acc), p, &g, |_| {}).expect("generate").generated_ids;
            assert_eq!(alone, cpu_alone[i], "{name}: prompt {i} in a session differs from the CPU scheduler");
        }
        let acc = Accelerator::Host(HostDevice::new(1 << 30));
        let mut s = Scheduler::from_session(open(&acc), &opts(64)).expect("scheduler");
        let ids: Vec<SeqId> = BATCH_PROMPTS.iter().map(|p| s.submit(greedy_request(p, n)).expect("submit")).collect();
        let (mut toks, mut most) = (HashMap::<SeqId, Vec<u32>>::new(), 0);
        while !s.is_idle() {
            for e in s.step().expect("step") {
                if let Event::Token { id, token } = e {
                    toks.entry(id).or_default().push(token);
                }
            }
            most = most.max(s.stats().last_batch_seqs);
        }
        assert!(most >= 3, "{name}: at most {most} sequences shared a pass");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(toks[id], cpu_alone[i], "{name}: prompt {i} batched differs from alone");
        }
        if let Accelerator::Host(h) = &acc {
            assert!(h.budget.peak() <= h.budget.cap(), "{name}: peak {} over budget", h.budget.peak());
        }
    }
}
