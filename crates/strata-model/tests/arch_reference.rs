//! Other architectures against llama.cpp and against float64 math: the real Gemma 3 270M
//! Q4_K_M file and qwen2/qwen3/qwen3moe/Mixtral models derived from the default model's real
//! weights
//! (`strata_model::derive`, default options), with reference data made by
//! `scripts/make-arch-reference.py` (llama.cpp via llama-cpp-python: `NAME.json`; the float64
//! oracle `scripts/f64-forward.py` on the same token ids: `f64_NAME.json`).
//!
//! For each model, on the exact CPU path (the default):
//! - the prompt's token ids equal llama.cpp's (its tokenizer, BOS where the vocabulary asks);
//! - the top-1 token equals llama.cpp's at every prompt position where llama.cpp's own top-2
//!   margin is clear (≥ [`CLEAR_MARGIN`]); below that its 8-bit activation rounding can order
//!   the two either way;
//! - the greedy continuation equals llama.cpp's up to the first step where llama.cpp's margin
//!   is not clear (after a legitimate different choice the texts go separate ways);
//! - the logits, and the CPU reference's, are within [`EXACT_VS_F64`] of the float64 forward
//!   pass at the oracle's top ids (the reference is not run through the greedy loops: slow, and
//!   the exact path is held to it op by op elsewhere).
//!
//! The reference files name the model's SHA-256; a derived model that no longer hashes the same
//! (the derivation changed) fails with the command that remakes the data.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use strata_model::derive::{DeriveArch, DeriveOptions, derive_bytes};
use strata_model::gguf::GgufFile;
use strata_model::{GenerateOptions, Model, SamplerConfig, Session, SessionOptions, generate};
use strata_tensor::ops::{CpuPath, with_cpu_path};

use crate::support::{ids, reference};

/// llama.cpp's top-2 margin from which its top-1 is taken as the truth.
const CLEAR_MARGIN: f64 = 0.5;
/// Largest |logit - float64 logit| at the oracle's top-10 ids on the exact and reference paths
/// (f32 accumulation error only; the default model measures 0.027).
const EXACT_VS_F64: f32 = 0.1;

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("an array of numbers").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The reference data of `name` and the model it was made from, checked to be the same file.
fn model_and_reference(name: &str, bytes: Vec<u8>, path: &std::path::Path) -> (Arc<Model>, serde_json::Value) {
    let doc = reference(&format!("{name}.json"));
    let want = doc["model_sha256"].as_str().expect("model_sha256");
    let got = sha256(&bytes);
    assert_eq!(
        got,
        want,
        "{name}: the model is not the file {name}.json was made from; remake the data with `scripts/make-arch-reference.py \
         <model> {name}` ({})",
        doc["made_from"].as_str().unwrap_or("")
    );
    let file = GgufFile::from_bytes(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let model = Model::from_file(file, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (Arc::new(model), doc)
}

/// A model derived from the default model with default options, or `None` when the
/// default model is absent and the test is a counted skip.
fn derived(arch: DeriveArch) -> Option<(Arc<Model>, serde_json::Value)> {
    let path = crate::support::model_path_or_skip()?;
    let src = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bytes = derive_bytes(&src, &DeriveOptions::new(arch)).expect("derive");
    let name = format!("{}-derived", arch.label());
    Some(model_and_reference(&name, bytes, std::path::Path::new(&format!("{name}.gguf"))))
}

/// The Gemma 3 270M Q4_K_M file (`scripts/fetch-model.sh gemma3-270m`), or `None` when the
/// test is a counted skip (STRATA_NO_MODEL=1).
fn gemma3() -> Option<(Arc<Model>, serde_json::Value)> {
    let default = strata_model::default_model_path();
    let path = default.with_file_name("gemma-3-270m-q4_k_m.gguf");
    let path = strata_kernels::check::model_file_or_skip(&strata_kernels::check::current_test(), path)?;
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(model_and_reference("gemma3-270m", bytes, &path))
}

/// Prompt ids, top-1 where llama.cpp is clear, greedy tokens up to llama.cpp's first unclear
/// step; returns the largest |logit - llama.cpp| over its top-10 ids (printed, for the record).
fn check_against_llama_cpp(name: &str, model: &Arc<Model>, doc: &serde_json::Value) -> f32 {
    let n_vocab = model.config.n_vocab;
    let mut worst = 0f32;
    for case in doc["cases"].as_array().expect("cases") {
        let prompt = ids(&case["prompt_ids"]);
        let text = case["prompt"].as_str().expect("prompt");
        let ours = model.tokenizer.encode(text, None, true).expect("encode");
        assert_eq!(ours, prompt, "{name}: token ids of {text:?} differ from llama.cpp's");

        let mut s = Session::new(Arc::clone(model), None, &SessionOptions::default()).expect("session");
        let logits = s.forward(&prompt, true).expect("forward");
        for (p, pos) in case["positions"].as_array().expect("positions").iter().enumerate() {
            let row = &logits[p * n_vocab..(p + 1) * n_vocab];
            let (want, want_logits) = (ids(&pos["ids"]), floats(&pos["logits"]));
            let margin = pos["margin"].as_f64().expect("margin");
            let top = strata_model::sample::argmax(row);
            assert!(
                top == want[0] || margin < CLEAR_MARGIN,
                "{name}: {text:?} position {p}: top-1 {top} where llama.cpp has {} by a clear margin {margin:.3}",
                want[0]
            );
            for (id, l) in want.iter().zip(&want_logits) {
                worst = worst.max((row[*id as usize] - l).abs());
            }
        }

        let want = ids(&case["greedy_ids"]);
        let margins = floats(&case["greedy_margins"]);
        let mut s = Session::new(Arc::clone(model), None, &SessionOptions::default()).expect("session");
        let opts = GenerateOptions {
            max_tokens: want.len(),
            ignore_eos: true,
            sampler: SamplerConfig::greedy(),
            ..GenerateOptions::default()
        };
        let got = generate(&mut s, &prompt, &opts, |_| {}).expect("generate").generated_ids;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            if a == b {
                continue;
            }
            assert!(
                f64::from(margins[i]) < CLEAR_MARGIN,
                "{name}: {text:?} greedy token {i} is {a} where llama.cpp has {b} by a clear margin {}",
                margins[i]
            );
            println!("{name}: {text:?} greedy token {i}: {a} vs llama.cpp {b} (its margin {:.3}); stop", margins[i]);
            break;
        }
    }
    worst
}

/// Largest |logit - f64| at the oracle's top ids, with where it was.
fn distance_to_f64(model: &Arc<Model>, doc: &serde_json::Value) -> (f32, String) {
    let n_vocab = model.config.n_vocab;
    let mut worst = (0f32, String::new());
    for (c, case) in doc["cases"].as_array().expect("cases").iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let mut s = Session::new(Arc::clone(model), None, &SessionOptions::default()).expect("session");
        let logits = s.forward(&prompt, true).expect("forward");
        for (p, pos) in case["positions"].as_array().expect("positions").iter().enumerate() {
            let row = &logits[p * n_vocab..(p + 1) * n_vocab];
            for (id, want) in ids(&pos["ids"]).into_iter().zip(floats(&pos["logits"])) {
                let d = (row[id as usize] - want).abs();
                if d > worst.0 {
                    worst = (d, format!("case {c}, position {p}, id {id}: {} vs f64 {want}", row[id as usize]));
                }
            }
        }
    }
    worst
}

fn check(name: &str, model: &Arc<Model>, doc: &serde_json::Value) {
    let worst = with_cpu_path(CpuPath::Exact, || check_against_llama_cpp(name, model, doc));
    println!("{name}, exact path: max |logit - llama.cpp| over its top-10 ids: {worst:.4}");
    let oracle = reference(&format!("f64_{name}.json"));
    for (path_name, path) in [("exact", CpuPath::Exact), ("reference", CpuPath::Reference)] {
        let (worst, at) = with_cpu_path(path, || distance_to_f64(model, &oracle));
        println!("{name}, {path_name} path: max |logit - f64| over the oracle's top-10 ids: {worst:.4} ({at})");
        assert!(worst <= EXACT_VS_F64, "{name}, {path_name} path: {worst} from float64 at {at} (bound {EXACT_VS_F64})");
    }
}

#[test]
fn qwen2_derived_matches_llama_cpp_and_float64() {
    let Some((model, doc)) = derived(DeriveArch::Qwen2) else { return };
    check("qwen2-derived", &model, &doc);
}

#[test]
fn qwen3_derived_matches_llama_cpp_and_float64() {
    let Some((model, doc)) = derived(DeriveArch::Qwen3) else { return };
    check("qwen3-derived", &model, &doc);
}

#[test]
fn gemma3_270m_matches_llama_cpp_and_float64() {
    let Some((model, doc)) = gemma3() else { return };
    check("gemma3-270m", &model, &doc);
}

#[test]
fn qwen3moe_derived_matches_llama_cpp_and_float64() {
    let Some((model, doc)) = derived(DeriveArch::Qwen3Moe) else { return };
    assert_eq!((model.config.n_expert, model.config.n_expert_used), (4, 2));
    check("qwen3moe-derived", &model, &doc);
}

#[test]
fn mixtral_derived_matches_llama_cpp_and_float64() {
    let Some((model, doc)) = derived(DeriveArch::Mixtral) else { return };
    assert_eq!((model.config.arch.as_str(), model.config.n_expert, model.config.n_expert_used), ("llama", 4, 2));
    check("mixtral-derived", &model, &doc);
}
