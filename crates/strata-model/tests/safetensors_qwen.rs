//! qwen2, qwen3 and gemma3 from Hugging Face safetensors + `config.json`, held to the same
//! weights in GGUF form. The default model's first layers are derived as qwen2 (Q/K/V biases),
//! qwen3 (per-head Q/K norms, `head_dim`) and gemma3 (four norms per block, sliding windows,
//! GELU, scaled embeddings) GGUF files by `strata_model::derive` (what `strata synth --derive`
//! writes), then written as HF checkpoints: every weight dequantized to f32 (exact: each value
//! of a q4_1/q8_0 block is an f32), HF names, `[out, in]` shapes, and the Q/K rows as they are,
//! since llama.cpp's converter leaves qwen2/qwen3/gemma3 rows in HF's half-split order (it
//! permutes llama's only). Gemma's norms are stored as `w - 1` (its RMSNorm multiplies by
//! `1 + w`; llama.cpp's converter adds the 1 back). The checkpoint must give the GGUF model's
//! logits:
//! - bit for bit against the same f32 values in a GGUF file (the same arithmetic: nothing
//!   differs but the container and the names; for gemma3 that file's norms are `(w - 1) + 1`
//!   in f32, what the loader computes from the checkpoint);
//! - within [`QUANT_ORDER`] against the quantized GGUF itself (the exact CPU path multiplies the
//!   same dequantized values, summed in another order).

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use strata_model::derive::{DeriveArch, DeriveOptions, derive_bytes};
use strata_model::gguf::{GgmlType, GgufFile, GgufWriter, Metadata};
use strata_model::{Model, Session, SessionOptions};
use tempfile::TempDir;

use crate::safetensors::{St, rel_err, write_safetensors, write_tokenizer_with};

/// Layers of the default model kept: enough for the attention, biases and norms of several
/// blocks to compound, few enough that the f32 checkpoint stays ~170 MB (the f32 embedding is
/// 113 MB of it).
const LAYERS: usize = 3;

/// The GGUF's quantized products against f32 products of the same dequantized values, summed
/// in another order: f32 rounding only (measured 8.0e-6 for qwen2 and 2.0e-5 for qwen3, 3
/// layers). Relative to the largest logit; a wrong row order,
/// a bias or norm not applied, or a wrong head size moves logits by 1e-2 and more.
const QUANT_ORDER: f32 = 1e-4;

const PROMPT: &[u32] = &[1, 504, 3458, 282, 4649, 314, 260, 3904, 28, 339, 5248, 17];

/// A tensor's values as f32, dequantized by the reference.
fn values(f: &GgufFile, t: &strata_model::gguf::TensorInfo) -> Vec<f32> {
    let dt = strata_kernels::DType::from_ggml_type(t.ggml_type.id()).expect("a strata type");
    let mut out = vec![0.0f32; t.n_elements() as usize];
    strata_kernels::quant::dequantize_row(dt, f.tensor_data(t), &mut out).expect("dequantize");
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The HF name of a GGUF tensor name, as transformers' Qwen2/Qwen3/Gemma3 modules name them.
fn hf_name(gguf: &str, arch: &str) -> String {
    let top = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    if let Some((_, hf)) = top.iter().find(|(g, _)| *g == gguf) {
        return hf.to_string();
    }
    let (l, suffix) = gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')).expect("a layer tensor");
    let hf = match suffix {
        "post_attention_norm.weight" if arch == "gemma3" => "post_attention_layernorm.weight",
        "ffn_norm.weight" if arch == "gemma3" => "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight" if arch == "gemma3" => "post_feedforward_layernorm.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("no HF name for {other}"),
    };
    format!("model.layers.{l}.{hf}")
}

/// What a gemma3 checkpoint stores for the norm weights `w` (`w - 1`), and what the loader
/// gets back from that (`(w - 1) + 1` in f32, not always `w`); other architectures store `w`.
fn hf_norm(arch: &str, w: &[f32]) -> (Vec<f32>, Vec<f32>) {
    if arch != "gemma3" {
        return (w.to_vec(), w.to_vec());
    }
    let stored: Vec<f32> = w.iter().map(|v| v - 1.0).collect();
    let loaded = stored.iter().map(|v| v + 1.0).collect();
    (stored, loaded)
}

/// `file` with every tensor stored as f32 (the same values; norms as the loader gets them from
/// the checkpoint, see [`hf_norm`]).
fn as_f32_gguf(file: &GgufFile, arch: &str) -> GgufFile {
    let mut w = GgufWriter::new();
    *w.metadata_mut() = file.metadata().clone();
    for t in file.tensors() {
        w.add_tensor(&t.name, GgmlType::F32, &t.dims).expect("tensor");
    }
    let bytes = w
        .to_bytes(|i, buf| {
            let t = &file.tensors()[i];
            let v = values(file, t);
            let v = if t.name.ends_with("norm.weight") { hf_norm(arch, &v).1 } else { v };
            buf.copy_from_slice(&f32_bytes(&v))
        })
        .expect("write");
    GgufFile::from_bytes(bytes).expect("parse")
}

/// config.json of the derived model, from its GGUF metadata, as transformers writes it.
fn hf_config(md: &Metadata, arch: &str) -> Value {
    let u = |k: &str| md.u64(&format!("{arch}.{k}")).expect(k);
    let f = |k: &str| md.opt_f64(&format!("{arch}.{k}")).expect(k).expect(k);
    let (n_embd, n_head) = (u("embedding_length"), u("attention.head_count"));
    let class = if arch == "qwen2" { "Qwen2ForCausalLM" } else { "Qwen3ForCausalLM" };
    let mut c = json!({
        "architectures": [class],
        "model_type": arch,
        "hidden_size": n_embd,
        "intermediate_size": u("feed_forward_length"),
        "num_hidden_layers": u("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": u("attention.head_count_kv"),
        "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
        "rope_theta": f("rope.freq_base"),
        "rope_scaling": null,
        "max_position_embeddings": u("context_length"),
        "vocab_size": md.str_array("tokenizer.ggml.tokens").expect("tokens").len(),
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "use_sliding_window": false,
        "sliding_window": 4096,
        "max_window_layers": 21,
        "bos_token_id": md.u64("tokenizer.ggml.bos_token_id").expect("bos"),
        "eos_token_id": md.u64("tokenizer.ggml.eos_token_id").expect("eos"),
        "torch_dtype": "float32"
    });
    if arch == "qwen3" {
        let o = c.as_object_mut().expect("object");
        o.insert("head_dim".into(), json!(u("attention.key_length")));
        o.insert("attention_bias".into(), json!(false));
    }
    if arch == "gemma3" {
        // Gemma3TextConfig's keys (transformers): the window and its layers, the local RoPE
        // base, the score scale, the GELU name; no hidden_act or use_sliding_window.
        let layers = u("block_count") as usize;
        let types: Vec<&str> =
            (0..layers).map(|l| if l % 6 < 5 { "sliding_attention" } else { "full_attention" }).collect();
        let o = c.as_object_mut().expect("object");
        for k in ["hidden_act", "use_sliding_window", "max_window_layers"] {
            o.remove(k);
        }
        for (k, v) in [
            ("architectures", json!(["Gemma3ForCausalLM"])),
            ("model_type", json!("gemma3_text")),
            ("head_dim", json!(u("attention.key_length"))),
            ("query_pre_attn_scalar", json!(u("attention.key_length"))),
            ("sliding_window", json!(u("attention.sliding_window"))),
            ("layer_types", json!(types)),
            ("rope_local_base_freq", json!(10000.0)),
            ("hidden_activation", json!("gelu_pytorch_tanh")),
            ("final_logit_softcapping", Value::Null),
            ("attn_logit_softcapping", Value::Null),
            ("attention_bias", json!(false)),
        ] {
            o.insert(k.into(), v);
        }
    }
    c
}

/// Writes the HF checkpoint of a derived GGUF model into a fresh directory.
fn write_checkpoint(file: &GgufFile, model: &Model) -> TempDir {
    let arch = model.config.arch.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = hf_config(file.metadata(), arch);
    // The derived gemma3 has an output head of its own (its embedding is rescaled by 1/√n_embd).
    config["tie_word_embeddings"] = json!(file.tensor("output.weight").is_none());
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    // SmolLM2's pre-tokenizer (llama.cpp's `smollm`), so the tokenizers can be compared too.
    let pre = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
    write_tokenizer_with(dir.path(), model, pre);
    let tensors: Vec<St> = file
        .tensors()
        .iter()
        .map(|t| {
            let v = values(file, t);
            let v = if t.name.ends_with("norm.weight") { hf_norm(arch, &v).0 } else { v };
            St {
                name: hf_name(&t.name, arch),
                dtype: "F32",
                shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
                data: f32_bytes(&v),
            }
        })
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, false);
    dir
}

/// All positions' logits of [`PROMPT`] (prefill) and of one decoded token.
fn logits(model: &Arc<Model>) -> Vec<f32> {
    let opts = SessionOptions { context: 64, ..Default::default() };
    let mut s = Session::new(Arc::clone(model), None, &opts).expect("session");
    let mut out = s.forward(PROMPT, true).expect("prefill");
    out.extend(s.forward(&[PROMPT[3]], true).expect("decode"));
    out
}

fn check(arch: DeriveArch) {
    let Some(src) = crate::support::default_model_layers(LAYERS) else { return };
    // A gemma3 window shorter than the prompt, so the windowed attention is in the logits.
    let opts = DeriveOptions { window: 8, ..DeriveOptions::new(arch) };
    let derived = GgufFile::from_bytes(derive_bytes(&src, &opts).expect("derive")).expect("parse");
    let quantized = Arc::new(Model::from_file(derived, Path::new("derived.gguf")).expect("the derived model loads"));
    let Some(derived) = quantized.source.gguf() else { panic!("a GGUF model") };
    let f32_gguf = as_f32_gguf(derived, arch.name());
    let f32_gguf = Arc::new(Model::from_file(f32_gguf, Path::new("f32.gguf")).expect("f32 gguf loads"));
    let dir = write_checkpoint(derived, &quantized);
    let hf = Arc::new(Model::load(dir.path()).expect("the HF checkpoint loads"));

    let name = arch.name();
    assert_eq!((hf.source.format(), hf.config.arch.as_str()), ("safetensors", name));
    // Also: `sliding_window` (4096, under the 8192 context) is ignored with use_sliding_window false.
    assert_eq!(hf.config, quantized.config, "{name}: config.json gives the GGUF hyperparameters");
    assert_eq!(hf.weights.layers[0].roles(), quantized.weights.layers[0].roles(), "{name}: the same tensors");
    let text = "Hello world, 12 apples";
    assert_eq!(
        hf.tokenizer.encode(text, None, false).expect("hf encode"),
        quantized.tokenizer.encode(text, None, false).expect("gguf encode"),
        "{name}: tokenizer.json gives the GGUF tokenizer"
    );

    let (want, got) = (logits(&f32_gguf), logits(&hf));
    assert!(want.iter().all(|v| v.is_finite()));
    let (d, i) = rel_err(&want, &got);
    println!("{name}: safetensors vs the same f32 values in GGUF: max |diff| / max |logit| {d:.2e} at {i}");
    assert_eq!(d, 0.0, "{name}: the same f32 weights give other logits at {i}: {} vs {}", want[i], got[i]);

    let q = logits(&quantized);
    let (d, i) = rel_err(&q, &got);
    println!("{name}: safetensors (f32) vs the quantized GGUF: max |diff| / max |logit| {d:.2e} at {i}");
    assert!(d <= QUANT_ORDER, "{name}: {d:.2e} > {QUANT_ORDER:.0e} at {i}: {} vs {}", q[i], got[i]);
}

#[test]
fn safetensors_qwen2_checkpoint_gives_the_gguf_logits() {
    check(DeriveArch::Qwen2);
}

#[test]
fn safetensors_qwen3_checkpoint_gives_the_gguf_logits() {
    check(DeriveArch::Qwen3);
}

#[test]
fn safetensors_gemma3_checkpoint_gives_the_gguf_logits() {
    check(DeriveArch::Gemma3);
}

/// Qwen2/Qwen3's tokenizer.json pre-tokenizer (their split regex, then byte level) is named
/// `qwen2`, llama.cpp's name for it (single digits, unlike Llama 3's runs of up to three).
#[test]
fn safetensors_qwen2_pre_tokenizer_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let regex = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let tj = json!({
        "added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": true}],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tj.to_string()).expect("write");
    let md = strata_model::safetensors::tokenizer_metadata(dir.path(), &json!({"eos_token_id": 3}), 4).expect("md");
    assert_eq!(md.str("tokenizer.ggml.pre").expect("pre"), "qwen2");
}

/// A Gemma 3 config.json whose layout of windowed layers, windowed RoPE base, activation or
/// soft-capping strata does not run is refused naming the key; the text-only config as
/// transformers writes it gives Gemma 3's hyperparameters.
#[test]
fn safetensors_gemma3_config_is_read_or_refused_by_key() {
    use strata_model::config::LlamaConfig;
    let types: Vec<&str> = (0..8).map(|l| if l % 6 < 5 { "sliding_attention" } else { "full_attention" }).collect();
    let base = json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256, "vocab_size": 262144,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "sliding_window": 512, "layer_types": types,
        "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": null,
        "attn_logit_softcapping": null, "rope_scaling": null
    });
    let c = LlamaConfig::from_hf_config(&base).expect("Gemma 3 270M's config");
    assert_eq!((c.arch.as_str(), c.sliding_window, c.tied_output), ("gemma3", Some(512), true));
    assert_eq!((c.layer_window(4), c.layer_window(5)), (Some(512), None), "every sixth layer global");
    assert_eq!((c.layer_rope_base(0), c.layer_rope_base(5)), (10000.0, 1000000.0));
    assert_eq!((c.attn_scale, c.embed_scale), (1.0 / 16.0, Some(640f32.sqrt())));
    assert_eq!(c.n_ctx_train, 32768, "the window is per layer, not a bound on the context");

    let mut swapped = types.clone();
    swapped.swap(0, 5);
    for (key, value) in [
        ("layer_types", json!(swapped)),
        ("layer_types", json!(["sliding_attention"])),
        ("sliding_window_pattern", json!(4)),
        ("rope_local_base_freq", json!(20000.0)),
        ("hidden_activation", json!("gelu")),
        ("final_logit_softcapping", json!(30.0)),
        ("attn_logit_softcapping", json!(50.0)),
        ("sliding_window", json!(0)),
        ("use_bidirectional_attention", json!(true)),
    ] {
        let mut cfg = base.clone();
        cfg[key] = value.clone();
        let e = LlamaConfig::from_hf_config(&cfg).expect_err(&format!("{key} = {value} must be refused")).to_string();
        println!("{key} = {value}: {e}");
        assert!(e.contains(key), "{key} = {value}: the error must name the key: {e}");
    }
    let mut multimodal = base.clone();
    multimodal["model_type"] = json!("gemma3");
    let e = LlamaConfig::from_hf_config(&multimodal).expect_err("the multimodal config").to_string();
    assert!(e.contains("gemma3_text"), "{e}");
}
