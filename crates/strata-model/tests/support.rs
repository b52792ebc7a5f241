//! Shared helpers: the default model and the llama.cpp reference data.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use strata_model::Model;

/// The default model's file (`strata_model::default_model_path`), or `None` after counting
/// the running test as skipped because `STRATA_NO_MODEL=1` says this machine has none. A
/// missing model without that variable fails the test (`strata_kernels::check::model_or_skip`).
pub fn model_path_or_skip() -> Option<PathBuf> {
    strata_kernels::check::model_or_skip(&strata_kernels::check::current_test())
}

/// The default model, loaded; see [`model_path_or_skip`].
pub fn default_model() -> Option<Arc<Model>> {
    let path = model_path_or_skip()?;
    Some(Arc::new(
        Model::load(&path).unwrap_or_else(|e| panic!("the default model {} does not load: {e}", path.display())),
    ))
}

/// Loads the default model, or returns from the test after counting it as skipped (only with
/// `STRATA_NO_MODEL=1`; see [`model_path_or_skip`]).
#[macro_export]
macro_rules! model_or_skip {
    () => {
        match $crate::support::default_model() {
            Some(m) => m,
            None => return,
        }
    };
}

/// Why a GPU test cannot run, in the workspace's one wording per reason (`strata_kernels::check`).
pub fn gpu_skip_reason(e: &strata_tensor::Error) -> String {
    use strata_kernels::check;
    use strata_tensor::{Error, Unavailable};
    match e {
        Error::Unavailable(Unavailable::NotBuilt) => check::NOT_BUILT_WITH_CUDA.to_string(),
        Error::Unavailable(Unavailable::NoDriver) => check::NO_DRIVER.to_string(),
        other => check::no_cuda_device(other),
    }
}

/// A llama.cpp reference file from tests/data/reference (copied from shared/reference).
pub fn reference(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// How far the fast CPU path's logits may be from the CPU reference's (or from CUDA's, which
/// stays within 1e-3 of the reference), as max |a - b| over the largest |logit|: the fast path
/// rounds every matrix product's activations to 8 bits (error about 1/440 of a row's RMS per
/// product, see `Tolerance::Q8_ACTIVATIONS`), and through a forward pass that compounds to
/// 1.8e-2 .. 2.6e-2 on the synthetic default-shape models of `cpu_paths` (4 to 30 layers). About twice
/// the largest seen. Greedy tokens are not compared at this distance: random synthetic models
/// have near-ties at most steps, and the paths pick differently there.
pub const FAST_CPU_LOGITS_REL: f32 = 5e-2;

/// `src` rewritten with a `rope_freqs.weight` tensor of `values` (f32, any length) added: a
/// model with Llama 3.1-style RoPE frequency factors, the same bytes otherwise.
pub fn with_rope_freqs(src: &strata_model::gguf::GgufFile, values: &[f32]) -> Vec<u8> {
    let bytes = values.iter().flat_map(|f| f.to_le_bytes()).collect();
    let extra = ("rope_freqs.weight", strata_model::gguf::GgmlType::F32, vec![values.len() as u64], bytes);
    rewrite_adding(src, |_| {}, same, vec![extra])
}

/// A tensor as [`rewrite`] passes it on: type, dims, bytes (borrowed from the source file
/// when unchanged, so the one copy is the output's).
pub type Rewritten<'a> = (strata_model::gguf::GgmlType, Vec<u64>, Cow<'a, [u8]>);

/// A copy of `src` with its metadata edited by `meta`, and each tensor's type, dims and bytes
/// passed through `edit` (name, type, dims, bytes) → `None` drops the tensor. The one GGUF
/// rewriting loop the tests share.
pub fn rewrite<'a>(
    src: &'a strata_model::gguf::GgufFile,
    meta: impl Fn(&mut strata_model::gguf::Metadata),
    edit: impl Fn(&str, strata_model::gguf::GgmlType, &[u64], &'a [u8]) -> Option<Rewritten<'a>>,
) -> Vec<u8> {
    rewrite_adding(src, meta, edit, Vec::new())
}

/// [`rewrite`], then the tensors of `extra` (name, type, dims, bytes) appended.
pub fn rewrite_adding<'a>(
    src: &'a strata_model::gguf::GgufFile,
    meta: impl Fn(&mut strata_model::gguf::Metadata),
    edit: impl Fn(&str, strata_model::gguf::GgmlType, &[u64], &'a [u8]) -> Option<Rewritten<'a>>,
    extra: Vec<(&str, strata_model::gguf::GgmlType, Vec<u64>, Vec<u8>)>,
) -> Vec<u8> {
    let mut w = strata_model::gguf::GgufWriter::new();
    *w.metadata_mut() = src.metadata().clone();
    meta(w.metadata_mut());
    let mut data = Vec::new();
    for t in src.tensors() {
        if let Some((ty, dims, bytes)) = edit(&t.name, t.ggml_type, &t.dims, src.tensor_data(t)) {
            w.add_tensor(&t.name, ty, &dims).expect("tensor");
            data.push(bytes);
        }
    }
    for (name, ty, dims, bytes) in extra {
        w.add_tensor(name, ty, &dims).expect("extra tensor");
        data.push(Cow::Owned(bytes));
    }
    w.to_bytes(|i, buf| buf.copy_from_slice(&data[i])).expect("write")
}

/// The [`rewrite`] edit that keeps a tensor as it is.
pub fn same<'a>(_: &str, ty: strata_model::gguf::GgmlType, dims: &[u64], b: &'a [u8]) -> Option<Rewritten<'a>> {
    Some((ty, dims.to_vec(), Cow::Borrowed(b)))
}

/// The default model's GGUF file cut to its first `layers` layers (`block_count` and the
/// tensors), in memory; `None` after counting the test as skipped (see [`model_path_or_skip`]).
/// Real weights at a fraction of the cost, for tests about formats rather than depth.
pub fn default_model_layers(layers: usize) -> Option<strata_model::gguf::GgufFile> {
    use strata_model::gguf::{GgufFile, Value};
    let path = model_path_or_skip()?;
    let src = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let arch = src.metadata().str("general.architecture").expect("architecture").to_string();
    let key = format!("{arch}.block_count");
    let bytes = rewrite(
        &src,
        |md| md.set(&key, Value::U32(layers as u32)),
        |name, ty, dims, b| match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((l, _)) if l.parse::<usize>().expect("layer") >= layers => None,
            _ => same(name, ty, dims, b),
        },
    );
    Some(GgufFile::from_bytes(bytes).expect("parse"))
}

/// The scheduler tests' prompts: short, long, one token, a run of ids.
pub const BATCH_PROMPTS: [&[u32]; 4] = [
    &[72, 101, 108, 108, 111, 32],
    &[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5],
    &[10],
    &[200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210],
];

/// A greedy request for `max_tokens` tokens that ignores end-of-generation.
pub fn greedy_request(prompt: &[u32], max_tokens: usize) -> strata_model::batch::Request {
    strata_model::batch::Request {
        prompt: prompt.to_vec(),
        max_tokens,
        sampler: strata_model::SamplerConfig::greedy(),
        ignore_eos: true,
    }
}

/// The tokens of each sequence and how each ended, after running the scheduler until idle.
pub type Drained = (
    std::collections::HashMap<strata_model::batch::SeqId, Vec<u32>>,
    std::collections::HashMap<strata_model::batch::SeqId, strata_model::batch::FinishReason>,
);

/// Runs the scheduler until idle, collecting every sequence's tokens and finish reason.
pub fn drain(s: &mut strata_model::batch::Scheduler) -> Drained {
    use strata_model::batch::Event;
    let (mut toks, mut done): Drained = Default::default();
    let mut steps = 0;
    while !s.is_idle() {
        for e in s.step().expect("step") {
            match e {
                Event::Token { id, token } => toks.entry(id).or_insert_with(Vec::new).push(token),
                Event::Done { id, reason, .. } => {
                    done.insert(id, reason);
                }
            }
        }
        steps += 1;
        assert!(steps < 10_000, "the scheduler does not finish");
    }
    (toks, done)
}

/// The prompt's logits from one forward pass, then (after a reset) `n` greedy tokens that
/// ignore end-of-generation: what the placement tests compare with the all-CPU run.
pub fn logits_then_greedy(s: &mut strata_model::Session, prompt: &[u32], n: usize) -> (Vec<f32>, Vec<u32>) {
    let logits = s.forward(prompt, true).expect("prefill");
    s.reset();
    s.take_stats();
    let g = strata_model::GenerateOptions {
        max_tokens: n,
        ignore_eos: true,
        sampler: strata_model::SamplerConfig::greedy(),
        ..Default::default()
    };
    let out = strata_model::generate(s, prompt, &g, |_| {}).expect("generate");
    (logits, out.generated_ids)
}

/// Each of [`BATCH_PROMPTS`] alone in a scheduler with options `o`: its `n` greedy tokens, the
/// reference the batched runs are compared with.
pub fn alone_in_scheduler(model: &Arc<Model>, o: &strata_model::batch::SchedulerOptions, n: usize) -> Vec<Vec<u32>> {
    BATCH_PROMPTS
        .iter()
        .map(|p| {
            let mut s = strata_model::batch::Scheduler::new(Arc::clone(model), o).expect("scheduler");
            let id = s.submit(greedy_request(p, n)).expect("submit");
            drain(&mut s).0.remove(&id).expect("tokens")
        })
        .collect()
}

/// What a model loaded from a hostile file does on its first passes: a session of 64
/// positions, a prefill of `prompt` and one decoded `next`. "ok" when every logit is finite;
/// "NON-FINITE ..." when a pass returns NaN/inf logits or the session refuses them (the file
/// loaded but cannot run: the hostile-value tests count that as a failure); else the error.
pub fn first_passes(model: Arc<Model>, prompt: &[u32], next: u32) -> String {
    let opts = strata_model::SessionOptions { context: 64, ..Default::default() };
    let mut s = match strata_model::Session::new(model, None, &opts) {
        Ok(s) => s,
        Err(e) => return format!("session: {e}"),
    };
    for (step, tokens, all) in [("prefill", prompt, true), ("decode", &[next][..], false)] {
        match s.forward(tokens, all) {
            Ok(l) if l.iter().all(|v| v.is_finite()) => {}
            Ok(_) => return format!("NON-FINITE logits after the {step}"),
            Err(e) if e.to_string().contains("non-finite logits") => {
                return format!("NON-FINITE logits after the {step}: {e}");
            }
            Err(e) => return format!("{step}: {e}"),
        }
    }
    "ok".into()
}
