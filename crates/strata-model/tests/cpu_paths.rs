//! The CPU paths against the CPU reference for a whole forward pass, on a synthetic model with
//! the default model's shape (no file needed): the exact path (the reference's products summed
//! in another f32 order) stays within f32 noise and gives the same tokens; the fast path moves
//! the logits by its 8-bit activation rounding, the number `gpu.rs` budgets for when it
//! compares the fast CPU path with CUDA.

use std::sync::Arc;
use strata_model::gguf::GgufFile;
use strata_model::synth::{Preset, gguf_bytes};
use strata_model::{GenerateOptions, Model, SamplerConfig, Session, SessionOptions, generate};
use strata_tensor::DType;
use strata_tensor::ops::{CpuPath, with_cpu_path, with_cpu_reference};

use crate::support::FAST_CPU_LOGITS_REL;

const PROMPT: [u32; 7] = [72, 101, 108, 108, 111, 32, 119];

fn synthetic(layers: usize, seed: u64) -> Arc<Model> {
    let preset = Preset::by_name("smollm2-135m").and_then(|p| p.with_layers(layers)).expect("preset");
    let bytes = gguf_bytes(&preset, DType::Q4_1, seed).expect("synthetic model");
    let file = GgufFile::from_bytes(bytes).expect("parse");
    Arc::new(Model::from_file(file, std::path::Path::new("synthetic")).expect("model"))
}

/// max |a - b| relative to the largest |a| (as gpu.rs measures CPU against CUDA).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn opts() -> SessionOptions {
    SessionOptions { context: 128, ..SessionOptions::default() }
}

/// Prefill logits, then one decode step's, then 16 greedy tokens.
fn run(model: &Arc<Model>) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let mut s = Session::new(Arc::clone(model), None, &opts()).expect("session");
    let prefill = s.forward(&PROMPT, true).expect("prefill");
    let decode = s.forward(&[65], false).expect("decode");
    s.reset();
    let o =
        GenerateOptions { max_tokens: 16, ignore_eos: true, sampler: SamplerConfig::greedy(), ..Default::default() };
    (prefill, decode, generate(&mut s, &PROMPT, &o, |_| {}).expect("generate").generated_ids)
}

#[test]
fn fast_cpu_path_stays_near_the_reference() {
    for (layers, seed) in [(4, 7), (6, 9), (30, 8)] {
        let model = synthetic(layers, seed);
        let (pf, df, tf) = with_cpu_path(CpuPath::Fast, || run(&model));
        let (pr, dr, tr) = with_cpu_reference(|| run(&model));
        let (dp, dd) = (rel_diff(&pr, &pf), rel_diff(&dr, &df));
        println!("{layers} layers, seed {seed}: prefill {dp:.2e}, decode {dd:.2e}, same greedy tokens: {}", tf == tr);
        assert!(dp < FAST_CPU_LOGITS_REL, "{layers} layers: prefill logits differ by {dp:e}");
        assert!(dd < FAST_CPU_LOGITS_REL, "{layers} layers: decode logits differ by {dd:e}");
    }
}

/// How far the exact path's logits may be from the reference's (max |a - b| over the largest
/// |logit|): f32 sums in another order, amplified through the layers (measured 7.9e-5 after 4
/// layers, 1.8e-4 after 30 on these random-weight models); the bound CUDA is held to against
/// the reference (`gpu.rs`). The 8-bit fast path is two orders of magnitude further away.
const EXACT_CPU_LOGITS_REL: f32 = 1e-3;

#[test]
fn exact_cpu_path_is_the_reference_up_to_f32_order() {
    for (layers, seed) in [(4, 7), (30, 8)] {
        let model = synthetic(layers, seed);
        let (pe, de, te) = run(&model);
        let (pr, dr, tr) = with_cpu_reference(|| run(&model));
        let (dp, dd) = (rel_diff(&pr, &pe), rel_diff(&dr, &de));
        println!("{layers} layers, seed {seed}: exact vs reference: prefill {dp:.2e}, decode {dd:.2e}");
        assert!(dp < EXACT_CPU_LOGITS_REL, "{layers} layers: prefill logits differ by {dp:e}");
        assert!(dd < EXACT_CPU_LOGITS_REL, "{layers} layers: decode logits differ by {dd:e}");
        assert_eq!(te, tr, "{layers} layers: greedy tokens differ from the reference's");
    }
}

/// The tiny synthetic model with a `rope_freqs.weight` tensor of `values` (any length).
fn tiny_with_rope_freqs(values: &[f32]) -> Result<Arc<Model>, strata_model::Error> {
    let preset = Preset::by_name("tiny").expect("preset");
    let src = GgufFile::from_bytes(gguf_bytes(&preset, DType::Q8_0, 1).expect("synthetic")).expect("parse");
    let file = GgufFile::from_bytes(crate::support::with_rope_freqs(&src, values)).expect("the file itself is valid");
    Model::from_file(file, std::path::Path::new("tiny-rope-freqs")).map(Arc::new)
}

/// RoPE frequency factors: all ones give exactly the plain model's logits (the divisor is
/// applied to the same f64 angle the plain model rounds), others change them; a tensor of the
/// wrong length or with a non-positive divisor is refused by name.
#[test]
fn rope_frequency_factors_apply_and_are_checked() {
    let preset = Preset::by_name("tiny").expect("preset");
    let plain = Arc::new(
        Model::from_file(
            GgufFile::from_bytes(gguf_bytes(&preset, DType::Q8_0, 1).expect("synthetic")).expect("parse"),
            std::path::Path::new("plain"),
        )
        .expect("plain model"),
    );
    let half = plain.config.n_rot / 2;
    let logits = |m: &Arc<Model>| {
        Session::new(Arc::clone(m), None, &opts()).expect("session").forward(&PROMPT, true).expect("forward")
    };
    let want = logits(&plain);
    let ones = tiny_with_rope_freqs(&vec![1.0; half]).expect("factors of 1 load");
    assert_eq!(logits(&ones), want, "factors of 1 must not change anything");
    let scaled: Vec<f32> = (0..half).map(|i| if i < half / 2 { 1.0 } else { 8.0 }).collect();
    let d = rel_diff(&want, &logits(&tiny_with_rope_freqs(&scaled).expect("factors load")));
    println!("factors 1 and 8 move the logits by {d:.2e} of the largest");
    assert!(d > 1e-3, "factors of 8 changed the logits by only {d:e}");
    for (bad, what) in [
        (vec![1.0; half + 1], "f32 ["),
        (vec![0.0; half], "must be positive"),
        (vec![f32::NAN; half], "must be positive"),
    ] {
        let err = tiny_with_rope_freqs(&bad).err().expect("refused");
        assert!(err.to_string().contains("rope_freqs.weight") && err.to_string().contains(what), "{err}");
    }
}

/// The `next` GPU kernel set's decode step is wired through fused ops
/// (`forward::attention_inputs` and `attention_output_and_router` under
/// `STRATA_GPU_KERNELS=next`: norm + activation quantization, gate/up + SiLU, the residual add
/// in the output projections). On the host each fused op is its composition, so the whole
/// pass must give the proven path's logits bit for bit: a wrong wiring (a skipped residual add,
/// a norm applied twice, the wrong buffer) shows here without a GPU. A dense llama model and a
/// MoE model (whose FFN keeps the unfused router path).
#[test]
fn next_kernel_set_wiring_gives_the_same_logits_on_the_cpu() {
    use strata_tensor::ops::{GpuKernels, with_gpu_kernels};
    for (name, layers) in [("smollm2-135m", 2), ("tiny-moe", 2)] {
        let preset = Preset::by_name(name).and_then(|p| p.with_layers(layers)).expect("preset");
        let bytes = gguf_bytes(&preset, DType::Q4_1, 11).expect("synthetic model");
        let model = Arc::new(
            Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), std::path::Path::new(name)).expect("model"),
        );
        let pass = |k: GpuKernels| {
            with_gpu_kernels(k, || {
                let mut s = Session::new(Arc::clone(&model), None, &opts()).expect("session");
                let mut logits = vec![s.forward(&PROMPT, true).expect("prefill")];
                for t in [65, 66, 67] {
                    logits.push(s.forward(&[t], false).expect("decode"));
                }
                logits
            })
        };
        let (proven, next) = (pass(GpuKernels::Proven), pass(GpuKernels::Next));
        for (step, (a, b)) in proven.iter().zip(&next).enumerate() {
            let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name}: step {step}: the next set's wiring changed the CPU logits");
        }
    }
}
