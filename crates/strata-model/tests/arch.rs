//! Architectures as data: qwen2 and qwen3 test models derived from the default model
//! (`strata_model::derive`) run through the one block runner, and strict files: every tensor
//! is used or refused by name, shapes follow the metadata, unknown architectures are named.

use std::path::Path;

use std::sync::Arc;
use strata_model::derive::{DeriveArch, DeriveOptions, derive_bytes};

use strata_model::arch::Role;
use strata_model::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use strata_model::{Model, Session, SessionOptions};

/// The default model's GGUF file, or `None` when the test is skipped (see
/// `support::model_path_or_skip`).
fn source() -> Option<GgufFile> {
    let path = crate::support::model_path_or_skip()?;
    Some(GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn load(bytes: Vec<u8>) -> strata_model::Result<std::sync::Arc<Model>> {
    Model::from_file(GgufFile::from_bytes(bytes).expect("parse"), Path::new("derived.gguf")).map(std::sync::Arc::new)
}

fn derived(src: &GgufFile, o: &DeriveOptions) -> GgufFile {
    GgufFile::from_bytes(derive_bytes(src, o).expect("derive")).expect("parse")
}

/// A copy of `src` with metadata edited by `meta`, tensors dropped where `keep` is false, and
/// the block scales (f16 d and m of q4_1) of tensors whose name `scale` matches multiplied by 2.
fn rewrite(
    src: &GgufFile,
    meta: impl Fn(&mut strata_model::gguf::Metadata),
    keep: impl Fn(&str) -> bool,
    scale: impl Fn(&str) -> bool,
) -> Vec<u8> {
    crate::support::rewrite(src, meta, |name, ty, dims, b| {
        if !keep(name) {
            return None;
        }
        if !scale(name) {
            return crate::support::same(name, ty, dims, b);
        }
        assert_eq!(ty, GgmlType::Q4_1, "{name} must be q4_1 to rescale");
        let mut b = b.to_vec();
        for blk in b.chunks_exact_mut(20) {
            for at in [0, 2] {
                let v = half::f16::from_le_bytes([blk[at], blk[at + 1]]).to_f32() * 2.0;
                blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        Some((ty, dims.to_vec(), b.into()))
    })
}

/// All positions' logits of a prompt (prefill) and of one more decoded token.
fn logits(model: &std::sync::Arc<Model>, prompt: &[u32]) -> Vec<f32> {
    let mut s = Session::new(std::sync::Arc::clone(model), None, &SessionOptions { context: 64, ..Default::default() })
        .expect("session");
    let mut out = s.forward(prompt, true).expect("prefill");
    out.extend(s.forward(&[prompt[0]], true).expect("decode"));
    out
}

/// max |a - b| over the largest |a|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

const PROMPT: &[u32] = &[1, 504, 3458, 282, 4649, 314, 260, 3904, 28, 339, 5248, 17];

/// Two computations of the same function whose sums run in different orders (here the
/// attention scores, over a half-split instead of an adjacent-pair head): as for the exact vs
/// reference CPU paths (`cpu_paths`, measured 1.8e-4 after 30 layers), max |diff| over the
/// largest |logit| stays under 1e-3. A wrong row permutation or RoPE layout moves logits by
/// whole units (relative 1e-1 and more).
const SAME_FUNCTION: f32 = 1e-3;

/// qwen2 with zero biases is the llama model with Q/K rows in half-split order and NEOX RoPE:
/// the same function. This holds the permutation, the RoPE layout switch and the bias path
/// (zero biases added) to the llama logits, prefill and decode.
#[test]
fn arch_qwen2_with_zero_biases_equals_llama() {
    let Some(src) = source() else { return };
    let llama = load(rewrite(&src, |_| {}, |_| true, |_| false)).expect("llama");
    let o = DeriveOptions { bias: 0.0, ..DeriveOptions::new(DeriveArch::Qwen2) };
    let qwen2 = load(derive_bytes(&src, &o).expect("derive")).expect("the qwen2 model loads");
    assert_eq!(qwen2.config.arch, "qwen2");
    assert_eq!(qwen2.config.rope_layout, strata_tensor::RopeLayout::HalfSplit);
    assert_eq!(qwen2.weights.layers[0].tensors().len(), 12, "9 matrices and norms + 3 biases");
    let (want, got) = (logits(&llama, PROMPT), logits(&qwen2, PROMPT));
    let d = rel_diff(&got, &want);
    println!("qwen2 (zero biases) vs llama: max |diff| / max |logit| {d:.2e}");
    assert!(d < SAME_FUNCTION, "qwen2 with zero biases differs from llama by {d}");

    // Non-zero biases are applied: the logits move.
    let biased = load(derive_bytes(&src, &DeriveOptions::new(DeriveArch::Qwen2)).expect("derive")).expect("loads");
    let b = logits(&biased, PROMPT);
    assert!(b.iter().all(|v| v.is_finite()));
    let d = rel_diff(&b, &want);
    println!("qwen2 (biases ±0.05) vs llama: max |diff| / max |logit| {d:.2e}");
    assert!(d > 50.0 * SAME_FUNCTION, "biases of ±0.05 move the logits by only {d}");
}

/// qwen3's per-head Q and K norms: doubling every Q and K weight (exact on q4_1 block scales)
/// leaves the qwen3 model's logits unchanged up to the norm's epsilon, since each head is
/// normalized before RoPE; the same doubling moves the llama model's (no norms) logits a lot.
#[test]
fn arch_qwen3_qk_norms_normalize_each_head() {
    let Some(src) = source() else { return };
    let qwen3 = derived(&src, &DeriveOptions::new(DeriveArch::Qwen3));
    let qk = |n: &str| n.ends_with("attn_q.weight") || n.ends_with("attn_k.weight");
    let base = load(rewrite(&qwen3, |_| {}, |_| true, |_| false)).expect("the qwen3 model loads");
    assert_eq!(base.config.arch, "qwen3");
    assert_eq!(base.config.head_dim, 64);
    let doubled = load(rewrite(&qwen3, |_| {}, |_| true, qk)).expect("loads");
    let (a, b) = (logits(&base, PROMPT), logits(&doubled, PROMPT));
    assert!(a.iter().all(|v| v.is_finite()));
    let d = rel_diff(&a, &b);
    println!("qwen3: Q and K doubled: max |diff| / max |logit| {d:.2e}");
    assert!(d < SAME_FUNCTION, "Q/K norms should cancel a scale of Q and K, logits moved by {d}");

    let llama_bytes = rewrite(&src, |_| {}, |_| true, |_| false);
    let llama_doubled = rewrite(&src, |_| {}, |_| true, qk);
    let d = rel_diff(
        &logits(&load(llama_bytes).expect("llama"), PROMPT),
        &logits(&load(llama_doubled).expect("llama"), PROMPT),
    );
    println!("llama: Q and K doubled: max |diff| / max |logit| {d:.2e}");
    assert!(d > 50.0 * SAME_FUNCTION, "without norms, doubling Q and K should matter; moved by {d}");
}

/// gemma3's sliding window masks exactly the positions it should, through the whole model:
/// a window covering every position of the prompt and the decoded token gives the same logits
/// as a window longer than the context, bit for bit; a window of 3 leaves the first three
/// positions (which see at most 3 positions anyway) bit for bit unchanged and moves the later
/// ones a lot.
#[test]
fn arch_gemma3_sliding_window_masks_old_positions() {
    let Some(src) = source() else { return };
    let with_window = |window| {
        let o = DeriveOptions { window, ..DeriveOptions::new(DeriveArch::Gemma3) };
        load(derive_bytes(&src, &o).expect("derive")).expect("the gemma3 model loads")
    };
    let wide = with_window(4096);
    assert_eq!(wide.config.arch, "gemma3");
    assert_eq!(wide.config.layer_window(0), Some(4096));
    assert_eq!(wide.config.layer_window(5), None, "every 6th layer is global");
    let n_vocab = wide.config.n_vocab;
    let long = logits(&wide, PROMPT);
    assert!(long.iter().all(|v| v.is_finite()));
    assert!(logits(&with_window(PROMPT.len() + 1), PROMPT) == long, "a window covering all positions is global");
    let short = logits(&with_window(3), PROMPT);
    assert!(short[..3 * n_vocab] == long[..3 * n_vocab], "positions 0..3 see the same keys with a window of 3");
    let d = rel_diff(&short[3 * n_vocab..], &long[3 * n_vocab..]);
    println!("gemma3: window 3 vs 4096 at positions 3..: max |diff| / max |logit| {d:.2e}");
    assert!(d > 50.0 * SAME_FUNCTION, "a window of 3 should change later positions; moved by {d}");
}

/// The deriver is deterministic and seeded.
#[test]
fn arch_derive_is_deterministic() {
    let Some(src) = source() else { return };
    let o = DeriveOptions::new(DeriveArch::Qwen2);
    assert!(derive_bytes(&src, &o).expect("derive") == derive_bytes(&src, &o).expect("derive"));
    let other = DeriveOptions { seed: 1, ..o };
    assert!(derive_bytes(&src, &o).expect("derive") != derive_bytes(&src, &other).expect("derive"));
}

fn load_err(bytes: Vec<u8>) -> String {
    match load(bytes) {
        Ok(_) => panic!("the file should be refused"),
        Err(e) => e.to_string(),
    }
}

fn relabel(arch: &'static str, from: &'static str) -> impl Fn(&mut strata_model::gguf::Metadata) {
    move |md| {
        let keys: Vec<(String, Value)> = md.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        for (k, v) in keys {
            if let Some(rest) = k.strip_prefix(&format!("{from}.")) {
                md.set(&format!("{arch}.{rest}"), v);
            }
        }
        md.set("general.architecture", Value::String(arch.into()));
    }
}

/// Strict files: a qwen2 file relabelled as llama names the bias nobody would read; a
/// missing tensor, a wrong FFN or head size, an unknown architecture, a gemma3 file without its
/// post-FFN norms or with a sliding window of 0, and a layer past block_count are each an error
/// naming the tensor or key.
#[test]
fn arch_malformed_files_are_refused_by_name() {
    let Some(src) = source() else { return };
    let qwen2 = derived(&src, &DeriveOptions::new(DeriveArch::Qwen2));
    let all = |_: &str| true;
    let none = |_: &str| false;

    let e = load_err(rewrite(&qwen2, relabel("llama", "qwen2"), all, none));
    assert!(e.contains("blk.0.attn_q.bias") && e.contains("qwen2") && e.contains("\"llama\""), "{e}");

    let e = load_err(rewrite(&qwen2, |_| {}, |n| n != "blk.3.attn_k.bias", none));
    assert!(e.contains("blk.3.attn_k.bias") && e.contains("missing"), "{e}");

    let e = load_err(rewrite(&qwen2, |md| md.set("qwen2.feed_forward_length", Value::U32(1024)), all, none));
    println!("FFN size: {e}");
    assert!(e.contains("blk.0.ffn_gate.weight") && e.contains("qwen2.feed_forward_length 1024"), "{e}");

    let qwen3 = derived(&src, &DeriveOptions::new(DeriveArch::Qwen3));
    let e = load_err(rewrite(
        &qwen3,
        |md| {
            md.set("qwen3.attention.key_length", Value::U32(128));
            md.set("qwen3.attention.value_length", Value::U32(128));
        },
        all,
        none,
    ));
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("qwen3.attention.key_length"), "{e}");
    println!("head size: {e}");
    let e = load_err(rewrite(&qwen3, |md| md.set("qwen3.attention.value_length", Value::U32(32)), all, none));
    assert!(e.contains("qwen3.attention.value_length"), "{e}");

    let e = load_err(rewrite(&src, relabel("falcon9", "llama"), all, none));
    assert!(e.contains("\"falcon9\"") && e.contains("qwen2"), "{e}");

    let gemma3 = derived(&src, &DeriveOptions::new(DeriveArch::Gemma3));
    let e = load_err(rewrite(&gemma3, |_| {}, |n| n != "blk.2.post_ffw_norm.weight", none));
    assert!(e.contains("blk.2.post_ffw_norm.weight") && e.contains("missing"), "{e}");
    let e = load_err(rewrite(&gemma3, |md| md.set("gemma3.attention.sliding_window", Value::U32(0)), all, none));
    assert!(e.contains("gemma3.attention.sliding_window"), "{e}");

    let e = load_err(rewrite(&src, |md| md.set("llama.block_count", Value::U32(29)), all, none));
    assert!(e.contains("blk.29.") && e.contains("block_count"), "{e}");
}

/// Metadata a qwen2 file needs and a name nobody knows: each refused by name before any weight
/// is read.
#[test]
fn arch_missing_and_unknown_keys_are_named() {
    let Some(src) = crate::support::default_model_layers(2) else { return };
    let qwen2 = derived(&src, &DeriveOptions::new(DeriveArch::Qwen2));
    let (all, none) = (|_: &str| true, |_: &str| false);
    for key in
        ["qwen2.attention.head_count", "qwen2.block_count", "qwen2.embedding_length", "qwen2.feed_forward_length"]
    {
        let e = load_err(rewrite(
            &qwen2,
            |md| {
                let rest: Vec<(String, Value)> =
                    md.iter().filter(|(k, _)| *k != key).map(|(k, v)| (k.to_string(), v.clone())).collect();
                *md = strata_model::gguf::Metadata::new();
                for (k, v) in rest {
                    md.set(&k, v);
                }
            },
            all,
            none,
        ));
        assert!(e.contains(key), "missing {key}: {e}");
    }
    let e = load_err(rewrite(&qwen2, relabel("qwen9", "qwen2"), all, none));
    assert!(e.contains("\"qwen9\"") && e.contains("qwen3"), "{e}");
    // A head count that does not divide the embedding (no key_length to say otherwise).
    let e = load_err(rewrite(&qwen2, |md| md.set("qwen2.attention.head_count", Value::U32(7)), all, none));
    assert!(e.contains("qwen2.attention.head_count") && e.contains('7'), "{e}");
}

/// Where a block's binary16 scale sits in each type (`d`, and `dmin`/`m` where there is one).
fn scale_offsets(t: strata_kernels::DType) -> &'static [usize] {
    use strata_kernels::DType as K;
    match t {
        K::Q4_K | K::Q5_K | K::Q5_1 => &[0, 2],
        K::Q2_K => &[80, 82],
        K::Q3_K => &[108],
        K::Q6_K => &[208],
        _ => &[0],
    }
}

/// `src` with `blk.1.ffn_down.weight` (rows of 1536 values: whole 256-value super-blocks)
/// replaced by seeded valid blocks of `ty`, moved to the end of the file; `edit` may change
/// its bytes.
fn with_quant_ffn_down(src: &GgufFile, ty: strata_kernels::DType, edit: impl Fn(&mut [u8])) -> Vec<u8> {
    const NAME: &str = "blk.1.ffn_down.weight";
    let gt = GgmlType::from_id(ty.ggml_type()).expect("a ggml type");
    let mut w = GgufWriter::new();
    *w.metadata_mut() = src.metadata().clone();
    let kept: Vec<_> = src.tensors().iter().filter(|t| t.name != NAME).collect();
    let down = src.tensor(NAME).expect("ffn_down");
    for t in &kept {
        w.add_tensor(&t.name, t.ggml_type, &t.dims).expect("tensor");
    }
    let last = w.add_tensor(NAME, gt, &down.dims).expect("the quantized tensor");
    let n_blocks = (down.n_elements() as usize) / ty.block_values();
    let mut blocks = strata_kernels::quant::random_blocks(ty, n_blocks, 11);
    // Scale the weights down to the real tensor's size (the blocks' values reach ±4).
    for b in blocks.chunks_exact_mut(ty.block_bytes()) {
        for &at in scale_offsets(ty) {
            let v = half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32() / 64.0;
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    edit(&mut blocks);
    w.to_bytes(
        |i, buf| if i == last { buf.copy_from_slice(&blocks) } else { buf.copy_from_slice(src.tensor_data(kept[i])) },
    )
    .expect("write")
}

/// The new weight types in a real model: valid blocks run (finite logits); a scale that decodes
/// to NaN or infinity is found when the logits come out non-finite, and the error names the
/// tensor and block instead of sampling garbage; a truncated super-block is refused when the
/// file is opened, naming the tensor.
#[test]
fn arch_new_types_bad_scales_and_truncation_are_named() {
    use strata_kernels::DType as K;
    let Some(src) = crate::support::default_model_layers(2) else { return };
    let qwen2 = derived(&src, &DeriveOptions::new(DeriveArch::Qwen2));
    for ty in [K::Q2_K, K::Q3_K, K::Q4_K, K::Q5_K, K::Q6_K, K::Q5_0, K::Q5_1, K::IQ4_NL, K::IQ4_XS] {
        let ok = load(with_quant_ffn_down(&qwen2, ty, |_| {})).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(ok.weights.layers[1].get(Role::Down).expect("down").dtype().weight(), Some(ty));
        assert!(logits(&ok, &PROMPT[..4]).iter().all(|v| v.is_finite()), "{ty}: valid blocks give finite logits");

        for (bits, what) in [(0x7E00u16, "NaN"), (0xFC00, "-inf")] {
            let at = *scale_offsets(ty).last().expect("a scale");
            let bad = load(with_quant_ffn_down(&qwen2, ty, |b| {
                let o = 7 * ty.block_bytes() + at;
                b[o..o + 2].copy_from_slice(&bits.to_le_bytes());
            }))
            .expect("scales are not read at load time");
            let mut s = Session::new(Arc::clone(&bad), None, &SessionOptions { context: 64, ..Default::default() })
                .expect("session");
            let e = s.forward(&PROMPT[..4], false).expect_err("non-finite logits are an error").to_string();
            assert!(e.contains("blk.1.ffn_down.weight") && e.contains("block 7"), "{ty} with a {what} scale: {e}");
            println!("{ty}, {what} scale: {e}");
        }

        let mut cut = with_quant_ffn_down(&qwen2, ty, |_| {});
        cut.truncate(cut.len() - ty.block_bytes() / 2);
        let e = GgufFile::from_bytes(cut).expect_err("a truncated super-block").to_string();
        assert!(e.contains("blk.1.ffn_down.weight"), "{ty}: truncated: {e}");
        println!("{ty}, truncated: {e}");
    }
}
