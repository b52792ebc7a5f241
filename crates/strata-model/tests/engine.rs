//! The [`Engine`] on a synthetic model (no file, no GPU needed): it gives what a session it
//! wraps gives, runs its ops on its own CPU path (no thread-local state for the caller to
//! set), and refuses GPU-only placements on the CPU by name.

use std::sync::Arc;

use strata_model::engine::plan_for;
use strata_model::gguf::GgufFile;
use strata_model::offload::OffloadOptions;
use strata_model::synth::{Preset, gguf_bytes};
use strata_model::{
    DeviceChoice, Engine, EngineOptions, GenerateOptions, Model, SamplerConfig, Session, SessionOptions, generate,
};
use strata_runtime::plan::{Placement, Policy};
use strata_tensor::DType;
use strata_tensor::ops::{CpuPath, with_cpu_path};

const PROMPT: [u32; 6] = [72, 101, 108, 108, 111, 32];

fn synthetic() -> Arc<Model> {
    let preset = Preset::by_name("tiny").expect("preset");
    let bytes = gguf_bytes(&preset, DType::Q4_1, 3).expect("synthetic model");
    Arc::new(
        Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), std::path::Path::new("tiny")).expect("model"),
    )
}

fn cpu_options(path: CpuPath) -> EngineOptions {
    let mut o = EngineOptions::new("tiny");
    o.device = DeviceChoice::Cpu;
    o.session = SessionOptions { context: 64, ..SessionOptions::default() };
    o.cpu_path = path;
    o
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_tokens: n, ignore_eos: true, sampler: SamplerConfig::greedy(), ..Default::default() }
}

#[test]
fn engine_gives_what_its_session_gives() {
    let model = synthetic();
    let mut engine = Engine::with_model(Arc::clone(&model), &cpu_options(CpuPath::Exact), &|_, _| {}).expect("engine");
    assert!(engine.plan().is_none() && engine.gpu().is_none(), "a CPU engine has no plan and no GPU");
    assert_eq!(engine.device_note(), None, "--device cpu is not a fallback to explain");
    let mut s =
        Session::new(Arc::clone(&model), None, &SessionOptions { context: 64, ..Default::default() }).expect("session");
    let want = s.forward(&PROMPT, true).expect("forward");
    assert_eq!(engine.score(&PROMPT).expect("score"), want);
    // Scoring starts from position 0 each time.
    assert_eq!(engine.score(&PROMPT).expect("score again"), want);
    assert_eq!(engine.session().n_past(), PROMPT.len());

    s.reset();
    let g_session = generate(&mut s, &PROMPT, &greedy(8), |_| {}).expect("generate");
    engine.reset();
    let mut streamed = String::new();
    let g = engine.generate_ids(&PROMPT, &greedy(8), |piece| streamed.push_str(piece)).expect("engine generate");
    assert_eq!(g.generated_ids, g_session.generated_ids);
    assert_eq!(g.generated_ids.len(), 8);
    assert_eq!(streamed, g.text, "the callback saw the whole text");
}

#[test]
fn engine_runs_its_own_cpu_path() {
    let model = synthetic();
    let logits = |path: CpuPath| {
        let mut e = Engine::with_model(Arc::clone(&model), &cpu_options(path), &|_, _| {}).expect("engine");
        assert_eq!(e.cpu_path(), path);
        e.score(&PROMPT).expect("score")
    };
    let session_on = |path: CpuPath| {
        let mut s = Session::new(Arc::clone(&model), None, &SessionOptions { context: 64, ..Default::default() })
            .expect("session");
        with_cpu_path(path, || s.forward(&PROMPT, true)).expect("forward")
    };
    let fast = logits(CpuPath::Fast);
    let exact = logits(CpuPath::Exact);
    assert_eq!(fast, session_on(CpuPath::Fast), "the engine's fast path is the fast kernels");
    assert_eq!(exact, session_on(CpuPath::Exact));
    assert_ne!(fast, exact, "8-bit activations move the logits, so the setting was applied");
    // The caller's thread-local setting does not leak into an engine with its own.
    assert_eq!(with_cpu_path(CpuPath::Fast, || logits(CpuPath::Exact)), exact);
}

#[test]
fn engine_refuses_gpu_placements_without_a_gpu() {
    let model = synthetic();
    for policy in [Policy::GpuLayers(2), Policy::AllStreamed] {
        let mut o = cpu_options(CpuPath::Exact);
        o.offload = OffloadOptions { policy, ..OffloadOptions::default() };
        let err = Engine::with_model(Arc::clone(&model), &o, &|_, _| {}).err().expect("refused");
        assert!(err.to_string().contains("need a GPU"), "{policy:?}: {err}");
    }
}

#[test]
fn engine_open_names_a_missing_file() {
    let err = Engine::open(EngineOptions::new("/nonexistent/model.gguf")).err().expect("no such file");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

/// On a hypothetical 8 GiB card every layer of a tiny model can be resident (asked for
/// explicitly: in auto the planner predicts the CPU faster for a model this small); without a
/// card that request is refused and auto puts every layer on the CPU.
#[test]
fn plan_for_a_hypothetical_card() {
    let model = synthetic();
    let mut o = cpu_options(CpuPath::Exact);
    o.offload.hypothetical_gpu = Some(8 << 30);
    o.offload.policy = Policy::GpuLayers(model.config.n_layers);
    let plan = plan_for(&model, &o, None).expect("plan");
    assert_eq!(plan.layers.len(), model.config.n_layers);
    assert!(plan.layers.iter().all(|l| l.placement == Placement::Resident), "{}", plan.render_table());
    o.offload.hypothetical_gpu = None;
    assert!(plan_for(&model, &o, None).is_err(), "resident layers without any card");
    o.offload.policy = Policy::Auto;
    let plan = plan_for(&model, &o, None).expect("cpu plan");
    assert!(plan.layers.iter().all(|l| l.placement == Placement::Cpu), "{}", plan.render_table());
}
