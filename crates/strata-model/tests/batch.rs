//! The continuous-batching [`Scheduler`]: sequences that join and leave give the tokens they
//! give alone, KV blocks run out and come back, admission is first come first served, prompts
//! are prefilled in chunks without stalling running streams, and on the default model batched
//! greedy decoding gives the single-sequence engine's tokens.

use std::collections::HashMap;
use std::sync::Arc;

use strata_model::batch::{Event, FinishReason, Scheduler, SchedulerOptions, SeqId};
use strata_model::gguf::GgufFile;
use strata_model::synth::{Preset, gguf_bytes};
use strata_model::{Error, GenerateOptions, KvType, Model, SamplerConfig, Session, SessionOptions, generate};
use strata_tensor::DType;

use crate::support::{BATCH_PROMPTS, alone_in_scheduler, drain, greedy_request};

fn synthetic() -> Arc<Model> {
    let preset = Preset::by_name("tiny").expect("preset");
    let bytes = gguf_bytes(&preset, DType::Q4_1, 3).expect("synthetic model");
    Arc::new(
        Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), std::path::Path::new("tiny")).expect("model"),
    )
}

fn opts(kv_blocks: usize) -> SchedulerOptions {
    SchedulerOptions { context: 128, kv_blocks, block_size: 4, max_seqs: 8, step_tokens: 24, ..Default::default() }
}

#[test]
fn sequences_that_join_and_leave_get_the_tokens_they_get_alone() {
    let model = synthetic();
    let o = opts(64);
    let want = alone_in_scheduler(&model, &o, 12);
    let mut s = Scheduler::new(Arc::clone(&model), &o).expect("scheduler");
    // Two start together; the others join while those decode, with fewer tokens so they
    // leave at different steps.
    let mut ids = vec![
        s.submit(greedy_request(BATCH_PROMPTS[0], 12)).expect("a"),
        s.submit(greedy_request(BATCH_PROMPTS[1], 12)).expect("b"),
    ];
    let mut toks: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut max_rows = 0;
    for step in 0.. {
        if step == 3 {
            ids.push(s.submit(greedy_request(BATCH_PROMPTS[2], 12)).expect("c"));
        }
        if step == 5 {
            ids.push(s.submit(greedy_request(BATCH_PROMPTS[3], 12)).expect("d"));
        }
        if s.is_idle() && step > 5 {
            break;
        }
        for e in s.step().expect("step") {
            if let Event::Token { id, token } = e {
                toks.entry(id).or_default().push(token);
            }
        }
        max_rows = max_rows.max(s.stats().last_batch_seqs);
    }
    assert!(max_rows >= 3, "at most {max_rows} sequences shared a pass: nothing was batched");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(toks[id], want[i], "prompt {i}: batched tokens differ from the tokens it gets alone");
    }
    let st = s.stats();
    assert_eq!((st.kv_blocks_used, st.running, st.waiting), (0, 0, 0));
    assert_eq!(st.generated_tokens, 48);
}

#[test]
fn kv_blocks_run_out_then_come_back() {
    let model = synthetic();
    // 10 blocks of 4 positions; each request needs 6 + 10 = 16 positions = 4 blocks, so two
    // fit at a time and the third waits.
    let o = opts(10);
    let mut s = Scheduler::new(Arc::clone(&model), &o).expect("scheduler");
    let ids: Vec<SeqId> = (0..3).map(|_| s.submit(greedy_request(BATCH_PROMPTS[0], 10)).expect("submit")).collect();
    let first = s.step().expect("step");
    let st = s.stats();
    assert_eq!((st.running, st.waiting, st.kv_blocks_used, st.kv_blocks_total), (2, 1, 8, 10));
    let (toks, done) = drain(&mut s);
    for id in &ids {
        let early = first.iter().filter(|e| matches!(e, Event::Token { id: i, .. } if i == id)).count();
        assert_eq!(early + toks[id].len(), 10);
        assert_eq!(done[id], FinishReason::MaxTokens);
    }
    assert_eq!(s.stats().kv_blocks_used, 0);
    // A request larger than the whole pool can never run: refused, naming the pool.
    let e = s.submit(greedy_request(&[1; 40], 10)).expect_err("larger than the pool");
    assert!(e.to_string().contains("the pool holds 10"), "{e}");
    // And the pool still serves after all that.
    let id = s.submit(greedy_request(BATCH_PROMPTS[2], 5)).expect("submit");
    assert_eq!(drain(&mut s).0[&id].len(), 5);
}

#[test]
fn cancelling_frees_the_blocks_at_once() {
    let model = synthetic();
    let mut s = Scheduler::new(Arc::clone(&model), &opts(64)).expect("scheduler");
    let a = s.submit(greedy_request(BATCH_PROMPTS[1], 20)).expect("a");
    let b = s.submit(greedy_request(BATCH_PROMPTS[0], 20)).expect("b");
    let mut b_early = 0;
    for _ in 0..4 {
        b_early += s.step().expect("step").iter().filter(|e| matches!(e, Event::Token { id, .. } if *id == b)).count();
    }
    let used = s.stats().kv_blocks_used;
    assert!(s.cancel(a));
    assert!(!s.cancel(a), "cancelled twice");
    assert_eq!(s.stats().kv_blocks_used, used - s.pool().blocks_for(BATCH_PROMPTS[1].len() + 20));
    let (toks, _) = drain(&mut s);
    assert_eq!(b_early + toks[&b].len(), 20, "b lost tokens when a left");
    assert_eq!(s.stats().kv_blocks_used, 0);
}

#[test]
fn admission_is_first_come_first_served_and_prefill_does_not_stall_decode() {
    let model = synthetic();
    let o = SchedulerOptions { max_seqs: 2, ..opts(64) };
    let mut s = Scheduler::new(Arc::clone(&model), &o).expect("scheduler");
    let ids: Vec<SeqId> =
        (0..6).map(|i| s.submit(greedy_request(BATCH_PROMPTS[i % 4], 3 + i)).expect("submit")).collect();
    let mut first_token: Vec<SeqId> = Vec::new();
    while !s.is_idle() {
        assert!(s.stats().running <= 2);
        for e in s.step().expect("step") {
            if let Event::Token { id, .. } = e
                && !first_token.contains(&id)
            {
                first_token.push(id);
            }
        }
    }
    // With two slots, the first two start together and every later one starts only after
    // all earlier ones were admitted: the order of first tokens is the order of arrival
    // within each pair at most.
    let pos = |id: &SeqId| first_token.iter().position(|x| x == id).expect("every request ran");
    for w in ids.windows(3) {
        assert!(pos(&w[0]) < pos(&w[2]), "request {:?} started after {:?}", w[0], w[2]);
    }

    // A long prompt (3 steps' worth of rows) joins a decoding sequence: the running one gets
    // a token in every step while the prompt is prefilled in chunks.
    let mut s = Scheduler::new(Arc::clone(&model), &o).expect("scheduler");
    let running = s.submit(greedy_request(BATCH_PROMPTS[0], 30)).expect("running");
    s.step().expect("prefill");
    let long: Vec<u32> = (0..60).map(|i| 100 + i).collect();
    let joined = s.submit(greedy_request(&long, 4)).expect("long");
    let mut steps_until_joined_token = 0;
    loop {
        let ev = s.step().expect("step");
        steps_until_joined_token += 1;
        assert!(
            ev.iter().any(|e| matches!(e, Event::Token { id, .. } if *id == running)),
            "the running sequence stalled while a prompt was prefilled"
        );
        if ev.iter().any(|e| matches!(e, Event::Token { id, .. } if *id == joined)) {
            break;
        }
    }
    assert!(steps_until_joined_token >= 3, "a 60-token prompt went through a 24-row step in one pass");
}

#[test]
fn requests_that_cannot_run_are_refused_by_name() {
    let model = synthetic();
    let mut s = Scheduler::new(Arc::clone(&model), &opts(64)).expect("scheduler");
    let e = s.submit(greedy_request(&[], 4)).expect_err("empty");
    assert!(e.to_string().contains("empty"), "{e}");
    let e = s.submit(greedy_request(&[1], 0)).expect_err("no tokens");
    assert!(e.to_string().contains("max_tokens"), "{e}");
    let e = s.submit(greedy_request(&[u32::MAX], 4)).expect_err("bad id");
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    match s.submit(greedy_request(&[1; 100], 29)) {
        Err(Error::ContextFull { needed: 129, context: 128, .. }) => {}
        other => panic!("expected ContextFull, got {other:?}"),
    }
    let bad = SchedulerOptions { step_tokens: 8, ..opts(64) };
    assert!(Scheduler::new(Arc::clone(&model), &bad).is_err(), "a step smaller than the sequences");
    assert!(s.is_idle());
}

/// Batched greedy decoding of the default model (exact CPU path, f16 KV) against the
/// single-sequence engine ([`generate`] over a [`Session`]). Tolerance: the greedy tokens must be
/// equal. The logits may differ in the last bits: the batched pass runs every projection as a
/// matmul over the rows where the single-sequence decode runs a matvec, and the paged attention
/// is the reference's arithmetic where the session runs the exact path's attention, so the
/// float additions can happen in another order; nothing else differs.
#[test]
fn default_model_batched_greedy_equals_the_single_sequence_engine() {
    let model = crate::model_or_skip!();
    let tok = &model.tokenizer;
    let texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,", "1, 2, 3,"];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, None, true).expect("encode")).collect();
    let n = 24;
    let so = SessionOptions { context: 256, kv_type: KvType::F16, ..SessionOptions::default() };
    let single: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut session = Session::new(Arc::clone(&model), None, &so).expect("session");
            let g = GenerateOptions {
                max_tokens: n,
                ignore_eos: true,
                sampler: SamplerConfig::greedy(),
                ..Default::default()
            };
            generate(&mut session, p, &g, |_| {}).expect("generate").generated_ids
        })
        .collect();
    let o = SchedulerOptions { context: 256, kv_blocks: 64, ..SchedulerOptions::default() };
    let mut s = Scheduler::new(Arc::clone(&model), &o).expect("scheduler");
    let ids: Vec<SeqId> = prompts.iter().map(|p| s.submit(greedy_request(p, n)).expect("submit")).collect();
    let (toks, _) = drain(&mut s);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            toks[id],
            single[i],
            "prompt {:?}: batched {:?} vs single {:?}",
            texts[i],
            tok.decode(&toks[id]),
            tok.decode(&single[i])
        );
    }
}
