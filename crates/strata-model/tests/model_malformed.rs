//! Malformed model metadata: every metadata key of six architectures' tiny models (llama,
//! qwen2, qwen3, gemma3, qwen3moe, Mixtral), one at a time, set to values a broken or hostile
//! file could hold (0, 1, small odd numbers, 2^16, 2^31, the type's maximum, negative numbers,
//! NaN, ±inf, huge and tiny floats, empty and odd strings, empty and one-element arrays, another
//! value type). Each file then goes through what a user's first command does: load, tokenize a
//! text with special tokens, read the chat template, open a session, prefill and decode. Every
//! step must end in an error or in finite logits: never a panic, never NaN logits from a file
//! that loaded, and never one allocation larger than the whole model needs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use strata_model::Model;
use strata_model::derive::{DeriveArch, DeriveOptions, derive_bytes};
use strata_model::gguf::{GgufFile, Value};
use strata_model::synth::{Preset, gguf_bytes};
use strata_model::tokenizer::Tokenizer;
use strata_tensor::DType;

/// The tokenizer vocabularies and merge lists: large arrays whose entries the tokenizer tests
/// cover; here their count would only multiply the cases.
const BIG_ARRAYS: [&str; 4] =
    ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"];

/// The values `v`'s key is set to in turn: same-typed extremes, then (by the caller) another
/// type.
fn variants(v: &Value) -> Vec<Value> {
    const INTS: [i128; 12] = [0, 1, 2, 3, 7, 64, 255, 1 << 16, 1 << 31, u32::MAX as i128, -1, i32::MIN as i128];
    let ints = |f: fn(i128) -> Value| INTS.iter().map(|&i| f(i)).collect::<Vec<_>>();
    match v {
        Value::U8(_) => ints(|i| Value::U8(i as u8)),
        Value::I8(_) => ints(|i| Value::I8(i as i8)),
        Value::U16(_) => ints(|i| Value::U16(i as u16)),
        Value::I16(_) => ints(|i| Value::I16(i as i16)),
        Value::U32(_) => ints(|i| Value::U32(i as u32)),
        Value::I32(_) => ints(|i| Value::I32(i as i32)),
        Value::U64(_) => [ints(|i| Value::U64(i as u64)), vec![Value::U64(u64::MAX)]].concat(),
        Value::I64(_) => [ints(|i| Value::I64(i as i64)), vec![Value::I64(i64::MIN)]].concat(),
        Value::F32(_) => [0.0, -0.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, 1e-30, f32::MAX, 1e-45]
            .into_iter()
            .map(Value::F32)
            .collect(),
        Value::F64(_) => [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300].into_iter().map(Value::F64).collect(),
        Value::Bool(b) => vec![Value::Bool(!b)],
        Value::String(_) => {
            vec![Value::String(String::new()), Value::String("qwen2".into()), Value::String("x\0y".into())]
        }
        Value::Array(a) => {
            let mut out = vec![Value::Array(Vec::new())];
            if let Some(first) = a.first() {
                for x in variants(first).into_iter().take(6) {
                    out.push(Value::Array(vec![x.clone(); a.len()]));
                    out.push(Value::Array(vec![x]));
                }
            }
            out
        }
    }
}

/// What one file did: the first error, or "ok" after a prefill and a decode step with finite
/// logits; a loaded file whose logits are not finite is reported as such.
fn exercise(bytes: Vec<u8>) -> String {
    let f = match GgufFile::from_bytes(bytes) {
        Ok(f) => f,
        Err(e) => return format!("parse: {e}"),
    };
    let md = f.metadata().clone();
    let model = match Model::from_file(f, Path::new("case.gguf")) {
        Ok(m) => Arc::new(m),
        Err(e) => return format!("load: {e}"),
    };
    if let Ok(t) = Tokenizer::from_metadata(&md) {
        if let Ok(ids) = t.encode("Hello, world! <|im_start|> 123 <|endoftext|>", Some(true), true) {
            let _ = t.decode(&ids);
        }
        let _ = t.decode(&[0, 1, 2, u32::MAX]);
    }
    let _ = strata_model::chat::ChatTemplate::from_metadata(&md);
    crate::support::first_passes(model, &[1, 2, 3], 4)
}

#[test]
fn model_malformed_metadata_values_never_panic() {
    let tiny = |preset: &str| {
        let p = Preset::by_name(preset).and_then(|p| p.with_layers(2)).expect("preset");
        GgufFile::from_bytes(gguf_bytes(&p, DType::Q4_1, 5).expect("synthetic model")).expect("parse")
    };
    let src = tiny("tiny");
    let derived = |a| GgufFile::from_bytes(derive_bytes(&src, &DeriveOptions::new(a)).expect("derive")).expect("parse");
    let files = [
        ("llama", tiny("tiny")),
        ("qwen2", derived(DeriveArch::Qwen2)),
        ("qwen3", derived(DeriveArch::Qwen3)),
        ("gemma3", derived(DeriveArch::Gemma3)),
        ("qwen3moe", tiny("tiny-moe")),
        ("mixtral", tiny("tiny-mixtral")),
    ];
    let verbose = std::env::var_os("STRATA_TEST_VERBOSE").is_some();
    let (mut cases, mut loaded, mut failures) = (0, 0, Vec::new());
    for (arch, file) in &files {
        let model_bytes: usize = file.tensors().iter().map(|t| t.n_bytes as usize).sum();
        let unchanged = exercise(crate::support::rewrite(file, |_| {}, crate::support::same));
        assert_eq!(unchanged, "ok", "{arch}: the unchanged file must run");
        for (key, value) in file.metadata().iter().filter(|(k, _)| !BIG_ARRAYS.contains(k)) {
            let other_type = if matches!(value, Value::String(_)) { Value::U8(3) } else { Value::String("7".into()) };
            for v in variants(value).into_iter().chain([other_type]) {
                cases += 1;
                let bytes = crate::support::rewrite(file, |md| md.set(key, v.clone()), crate::support::same);
                let (outcome, largest) =
                    crate::gguf_malformed::largest_alloc_during(|| catch_unwind(AssertUnwindSafe(|| exercise(bytes))));
                let case = format!("{arch}: {key} = {v:?}");
                match outcome {
                    Err(p) => {
                        let msg = p.downcast_ref::<String>().map(String::as_str).or(p.downcast_ref::<&str>().copied());
                        failures.push(format!("{case}: panicked: {msg:?}"));
                    }
                    Ok(o) if o.starts_with("NON-FINITE") => failures.push(format!("{case}: {o}")),
                    Ok(o) => {
                        loaded += usize::from(o == "ok");
                        if verbose {
                            println!("{case}: {o}");
                        }
                    }
                }
                // The file's bytes are copied once at parse; nothing else may come near that.
                if largest > 2 * model_bytes + (16 << 20) {
                    failures.push(format!("{case}: allocated {largest} bytes at once (the weights are {model_bytes})"));
                }
            }
        }
    }
    println!("{cases} metadata cases over {} architectures: {loaded} ran, the rest were refused", files.len());
    assert!(cases > 1000, "only {cases} cases: the tiny models lost their metadata?");
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
}
