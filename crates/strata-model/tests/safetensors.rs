//! Hugging Face safetensors checkpoints: a synthetic GGUF model converted to an HF checkpoint
//! (q/k rows un-permuted from GGUF's adjacent-pair order to HF's half-split order, the inverse
//! of llama.cpp's `permute`) gives the GGUF model's logits, in f32, f16 and bf16, single-file
//! and sharded, aligned (zero-copy) and not (copied); its tokenizer metadata is the GGUF one;
//! and broken checkpoints are errors that name the problem.

use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};
use serde_json::{Value, json};
use strata_model::arch::Role;
use strata_model::gguf::GgufFile;
use strata_model::safetensors::{MAX_HEADER_BYTES, tokenizer_metadata};
use strata_model::synth::{self, Preset};
use strata_model::{Model, Session, SessionOptions};
use strata_tensor::{DType, HostData, Storage, Tensor};
use tempfile::TempDir;

/// Token ids run through both models: specials, bytes, ten positions for RoPE to matter.
const IDS: [u32; 10] = [257, 72, 101, 108, 108, 111, 44, 32, 119, 258];

/// A small llama: GQA (4 query heads over 2 kv heads), head size 16, 2 layers.
fn preset(tied: bool) -> Preset {
    Preset {
        name: "tiny",
        n_layers: 2,
        n_embd: 64,
        n_ff: 96,
        n_head: 4,
        n_head_kv: 2,
        n_vocab: 300,
        n_ctx_train: 512,
        rope_freq_base: 10000.0,
        rms_eps: 1e-5,
        tied,
        ..synth::DENSE
    }
}

fn gguf_model(p: &Preset, dtype: DType) -> Arc<Model> {
    let bytes = synth::gguf_bytes(p, dtype, 7).expect("synthetic gguf");
    Arc::new(
        Model::from_file(GgufFile::from_bytes(bytes).expect("gguf parses"), Path::new("tiny.gguf"))
            .expect("gguf model"),
    )
}

/// One tensor to write: name, safetensors dtype, shape, little-endian bytes.
pub(crate) struct St {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        other => panic!("no safetensors dtype for {other}"),
    }
}

/// f32 values as `dtype` bytes.
fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        other => panic!("cannot encode {other}"),
    }
}

/// Rows of a GGUF q/k matrix in HF order. llama.cpp's converter maps HF row `h*d + s*d/2 + i`
/// of head `h` (half `s`, index `i`) to GGUF row `h*d + 2i + s`; this is the inverse.
fn unpermute(t: &Tensor, n_heads: usize) -> Vec<u8> {
    let bytes = t.host_bytes().expect("host tensor");
    let [rows, _cols] = t.shape() else { panic!("a matrix") };
    let row = bytes.len() / rows;
    let d = rows / n_heads;
    let mut out = Vec::with_capacity(bytes.len());
    for h in 0..n_heads {
        for s in 0..2 {
            for i in 0..d / 2 {
                let src = h * d + 2 * i + s;
                out.extend_from_slice(&bytes[src * row..(src + 1) * row]);
            }
        }
    }
    out
}

/// The HF tensors of `model` (a GGUF model whose matrices are `dtype`), norms as `norm_dtype`.
fn hf_tensors(model: &Model, dtype: DType, norm_dtype: DType) -> Vec<St> {
    let cfg = &model.config;
    let w = &model.weights;
    let mat = |name: String, t: &Tensor, data: Vec<u8>| {
        assert_eq!(t.dtype(), dtype);
        St { name, dtype: st_dtype(dtype), shape: t.shape().to_vec(), data }
    };
    let raw = |t: &Tensor| t.host_bytes().expect("host").to_vec();
    let norm = |name: String, t: &Tensor| St {
        name,
        dtype: st_dtype(norm_dtype),
        shape: t.shape().to_vec(),
        data: encode(t.as_f32().expect("f32 norm"), norm_dtype),
    };
    let mut out = vec![mat("model.embed_tokens.weight".into(), &w.embedding, raw(&w.embedding))];
    for (l, lw) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        out.push(norm(p("input_layernorm"), lw.get(Role::AttnNorm).expect("attn_norm")));
        out.push(mat(
            p("self_attn.q_proj"),
            lw.get(Role::Q).expect("wq"),
            unpermute(lw.get(Role::Q).expect("wq"), cfg.n_head),
        ));
        out.push(mat(
            p("self_attn.k_proj"),
            lw.get(Role::K).expect("wk"),
            unpermute(lw.get(Role::K).expect("wk"), cfg.n_head_kv),
        ));
        out.push(mat(p("self_attn.v_proj"), lw.get(Role::V).expect("wv"), raw(lw.get(Role::V).expect("wv"))));
        out.push(mat(p("self_attn.o_proj"), lw.get(Role::O).expect("wo"), raw(lw.get(Role::O).expect("wo"))));
        out.push(norm(p("post_attention_layernorm"), lw.get(Role::FfnNorm).expect("ffn_norm")));
        out.push(mat(
            p("mlp.gate_proj"),
            lw.get(Role::Gate).expect("w_gate"),
            raw(lw.get(Role::Gate).expect("w_gate")),
        ));
        out.push(mat(p("mlp.up_proj"), lw.get(Role::Up).expect("w_up"), raw(lw.get(Role::Up).expect("w_up"))));
        out.push(mat(
            p("mlp.down_proj"),
            lw.get(Role::Down).expect("w_down"),
            raw(lw.get(Role::Down).expect("w_down")),
        ));
    }
    out.push(norm("model.norm.weight".into(), &w.head.norm));
    if !cfg.tied_output {
        out.push(mat("lm_head.weight".into(), &w.head.output, raw(&w.head.output)));
    }
    out
}

/// Writes a safetensors file with the tensors in the given order. `odd` pads the header to an
/// odd length, so that every tensor starts at an odd address (not zero-copy).
pub(crate) fn write_safetensors(path: &Path, tensors: &[St], odd: bool) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("json");
    h.resize(h.len().next_multiple_of(8) + odd as usize, b' ');
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    for t in tensors {
        file.extend_from_slice(&t.data);
    }
    std::fs::write(path, file).expect("write safetensors");
}

fn hf_config(p: &Preset) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.n_embd,
        "intermediate_size": p.n_ff,
        "num_hidden_layers": p.n_layers,
        "num_attention_heads": p.n_head,
        "num_key_value_heads": p.n_head_kv,
        "head_dim": p.n_embd / p.n_head,
        "rms_norm_eps": p.rms_eps,
        "rope_theta": p.rope_freq_base,
        "rope_scaling": null,
        "max_position_embeddings": p.n_ctx_train,
        "vocab_size": p.n_vocab,
        "tie_word_embeddings": p.tied,
        "hidden_act": "silu",
        "bos_token_id": 257,
        "eos_token_id": 258,
        "torch_dtype": "float32"
    })
}

/// tokenizer.json and tokenizer_config.json for a GGUF model's vocabulary: byte-level BPE
/// with its merges and `pre_tokenizer`, control tokens as added tokens, the others as ordinary
/// tokens; BOS/EOS and the chat template from its metadata.
pub(crate) fn write_tokenizer_with(dir: &Path, model: &Model, pre_tokenizer: Value) {
    let md = model.metadata();
    let tokens = md.str_array("tokenizer.ggml.tokens").expect("tokens");
    let types = md.array("tokenizer.ggml.token_type").expect("types");
    let merges = md.str_array("tokenizer.ggml.merges").unwrap_or_default();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(types).enumerate() {
        if ty.as_i64() == Some(3) {
            added.push(json!({"id": i, "content": t, "special": true, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false}));
        } else {
            vocab.insert(t.to_string(), json!(i));
        }
    }
    let tj = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false, "vocab": vocab,
                  "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).expect("write tokenizer.json");
    let token = |key: &str| {
        let id = md.opt_u64(key).expect("id").expect("special token id") as usize;
        tokens[id].to_string()
    };
    let template = md.str("tokenizer.chat_template").expect("template");
    let tc = json!({"add_bos_token": false, "bos_token": token("tokenizer.ggml.bos_token_id"),
                    "eos_token": {"content": token("tokenizer.ggml.eos_token_id")}, "chat_template": template});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).expect("write tokenizer_config.json");
}

/// [`write_tokenizer_with`] and the GPT-2 pre-tokenizer (byte level alone).
fn write_tokenizer(dir: &Path, model: &Model) {
    let pre = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    write_tokenizer_with(dir, model, pre);
}

/// Layout of the checkpoint's weights.
#[derive(Clone, Copy)]
enum Files {
    Single {
        odd: bool,
    },
    /// Two shards and an index: the embedding and layer 0 in one, the rest in the other.
    Sharded,
}

/// A checkpoint of `model` in a fresh directory.
fn write_checkpoint(model: &Model, p: &Preset, dtype: DType, norm_dtype: DType, files: Files) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.json"), hf_config(p).to_string()).expect("write config.json");
    write_tokenizer(dir.path(), model);
    let tensors = hf_tensors(model, dtype, norm_dtype);
    match files {
        Files::Single { odd } => write_safetensors(&dir.path().join("model.safetensors"), &tensors, odd),
        Files::Sharded => {
            let (a, b): (Vec<St>, Vec<St>) =
                tensors.into_iter().partition(|t| t.name.starts_with("model.embed") || t.name.contains(".0."));
            let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
            let mut map = serde_json::Map::new();
            for (shard, name) in [&a, &b].into_iter().zip(names) {
                write_safetensors(&dir.path().join(name), shard, false);
                for t in shard {
                    map.insert(t.name.clone(), json!(name));
                }
            }
            let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
            std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("write index");
        }
    }
    dir
}

fn logits(model: &Arc<Model>) -> Vec<f32> {
    let mut s = Session::new(Arc::clone(model), None, &SessionOptions { context: 64, ..SessionOptions::default() })
        .expect("session");
    s.forward(&IDS, true).expect("forward")
}

/// Max |a - b| over max |a|, with where it happened.
pub(crate) fn rel_err(want: &[f32], got: &[f32]) -> (f32, usize) {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let (i, d) = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    (d / scale, i)
}

/// The same weights and the same arithmetic except the order of the q·k sums (head dims in
/// half-split vs adjacent-pair order): f32 rounding, relative to the largest logit.
const STRICT: f32 = 1e-5;
/// Norm weights rounded to f16 (relative error 2^-11 each) through two layers and the head.
const F16_NORMS: f32 = 3e-3;
/// Norm weights rounded to bf16 (relative error 2^-8 each).
const BF16_NORMS: f32 = 2e-2;

fn assert_close(what: &str, want: &[f32], got: &[f32], tol: f32) {
    let (err, i) = rel_err(want, got);
    assert!(
        err <= tol,
        "{what}: max relative error {err:.3e} > {tol:.1e} at logit {i} (token {}, vocab {}): want {} got {}; first pairs {:?}",
        i / 300,
        i % 300,
        want[i],
        got[i],
        want.iter().zip(got).take(4).collect::<Vec<_>>()
    );
    println!("{what}: max relative error {err:.3e} (tolerance {tol:.1e})");
}

fn is_view(t: &Tensor) -> bool {
    matches!(t.storage(), Storage::Host(HostData::Mapped { .. }))
}

#[test]
fn safetensors_f32_checkpoint_gives_the_gguf_logits() {
    for tied in [false, true] {
        let p = preset(tied);
        let gguf = gguf_model(&p, DType::F32);
        let dir = write_checkpoint(&gguf, &p, DType::F32, DType::F32, Files::Single { odd: false });
        let hf = Arc::new(Model::load(dir.path()).expect("checkpoint loads"));
        assert_eq!(hf.source.format(), "safetensors");
        assert_eq!(hf.config.rope_layout, strata_tensor::RopeLayout::HalfSplit);
        let want = {
            let mut c = gguf.config.clone();
            c.rope_layout = hf.config.rope_layout;
            c
        };
        assert_eq!(hf.config, want, "config.json gives the GGUF hyperparameters");
        assert!(
            is_view(&hf.weights.embedding) && is_view(hf.weights.layers[1].get(Role::Down).expect("w_down")),
            "aligned f32 is zero-copy"
        );
        assert_close(&format!("f32, tied {tied}"), &logits(&gguf), &logits(&hf), STRICT);
    }
}

#[test]
fn safetensors_f16_and_bf16_checkpoints_match() {
    for (dtype, tol) in [(DType::F16, F16_NORMS), (DType::BF16, BF16_NORMS)] {
        let p = preset(false);
        let gguf = gguf_model(&p, dtype);
        let want = logits(&gguf);
        // Matrices are the GGUF's own bytes; f32 norms make it exact, rounded norms loose.
        let exact = write_checkpoint(&gguf, &p, dtype, DType::F32, Files::Single { odd: false });
        let hf = Arc::new(Model::load(exact.path()).expect("checkpoint loads"));
        assert_eq!(hf.weights.layers[0].get(Role::Q).expect("wq").dtype(), dtype);
        assert_close(&format!("{dtype} matrices, f32 norms"), &want, &logits(&hf), STRICT);
        let rounded = write_checkpoint(&gguf, &p, dtype, dtype, Files::Single { odd: false });
        let hf = Arc::new(Model::load(rounded.path()).expect("checkpoint loads"));
        assert_eq!(
            hf.weights.layers[0].get(Role::AttnNorm).expect("attn_norm").dtype(),
            DType::F32,
            "norms widened to f32"
        );
        assert_close(&format!("{dtype} matrices and norms"), &want, &logits(&hf), tol);
    }
}

#[test]
fn safetensors_sharded_and_misaligned_checkpoints_load() {
    let p = preset(false);
    let gguf = gguf_model(&p, DType::F16);
    let want = logits(&gguf);
    let sharded = write_checkpoint(&gguf, &p, DType::F16, DType::F32, Files::Sharded);
    let hf =
        Arc::new(Model::load(&sharded.path().join("model.safetensors.index.json")).expect("sharded checkpoint loads"));
    match &hf.source {
        strata_model::ModelSource::Safetensors(c) => assert_eq!(c.files.len(), 2),
        _ => panic!("not a safetensors source"),
    }
    assert_close("two shards", &want, &logits(&hf), STRICT);
    let odd = write_checkpoint(&gguf, &p, DType::F16, DType::F32, Files::Single { odd: true });
    let hf = Arc::new(Model::load(&odd.path().join("config.json")).expect("misaligned checkpoint loads"));
    assert!(!is_view(hf.weights.layers[0].get(Role::Q).expect("wq")), "misaligned tensors are copied");
    assert_close("odd offsets (copied)", &want, &logits(&hf), STRICT);
}

#[test]
fn safetensors_tokenizer_metadata_matches_the_gguf() {
    let p = preset(true);
    let gguf = gguf_model(&p, DType::F32);
    let dir = write_checkpoint(&gguf, &p, DType::F32, DType::F32, Files::Single { odd: false });
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    let md = tokenizer_metadata(dir.path(), &config, p.n_vocab).expect("tokenizer metadata");
    let g = gguf.metadata();
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"] {
        assert_eq!(md.get(key), g.get(key), "{key}");
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        assert_eq!(md.opt_u64(key).unwrap(), g.opt_u64(key).unwrap(), "{key}");
    }
    assert_eq!(md.opt_bool("tokenizer.ggml.add_bos_token").unwrap(), Some(false));
    assert_eq!(md.str("tokenizer.ggml.pre").unwrap(), "gpt-2");
    let (want, got) = (g.array("tokenizer.ggml.token_type").unwrap(), md.array("tokenizer.ggml.token_type").unwrap());
    assert_eq!(want[..259], got[..259], "byte and special token types");
    assert!(md.str("tokenizer.huggingface.json").unwrap().contains("\"ByteLevel\""));
    let hf = Arc::new(Model::load(dir.path()).expect("loads"));
    assert_eq!(hf.tokenizer.vocab_size(), p.n_vocab);
    assert_eq!(hf.metadata().str("general.architecture").unwrap(), "llama");
}

/// A valid f32 checkpoint to break, and what loading it now says.
fn broken(edit: impl FnOnce(&Path)) -> String {
    let p = preset(false);
    let gguf = gguf_model(&p, DType::F32);
    let dir = write_checkpoint(&gguf, &p, DType::F32, DType::F32, Files::Single { odd: false });
    edit(dir.path());
    match Model::load(dir.path()) {
        Ok(_) => panic!("a broken checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<St>)) {
    let p = preset(false);
    let gguf = gguf_model(&p, DType::F32);
    let mut t = hf_tensors(&gguf, DType::F32, DType::F32);
    edit(&mut t);
    write_safetensors(&dir.join("model.safetensors"), &t, false);
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut c = hf_config(&preset(false));
    edit(c.as_object_mut().expect("object"));
    std::fs::write(dir.join("config.json"), c.to_string()).expect("write");
}

fn expect_err(what: &str, msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{what}: the error {msg:?} does not mention {n:?}");
    }
    println!("{what}: {msg}");
}

#[test]
fn safetensors_broken_checkpoints_are_named_errors() {
    let m = broken(|d| std::fs::remove_file(d.join("config.json")).unwrap());
    expect_err("missing config.json", &m, &["no config.json"]);
    let m = broken(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    expect_err("missing tokenizer.json", &m, &["no tokenizer.json"]);
    let m = broken(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    expect_err("missing weights", &m, &["model.safetensors", "model.safetensors.index.json"]);
    let m = broken(|d| rewrite_tensors(d, |t| t.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight")));
    expect_err("missing tensor", &m, &["model.layers.1.mlp.up_proj.weight", "missing"]);
    let m = broken(|d| {
        rewrite_tensors(d, |t| {
            let k = t.iter_mut().find(|t| t.name == "model.layers.0.self_attn.k_proj.weight").unwrap();
            k.shape = vec![64, 32];
        })
    });
    expect_err("wrong shape", &m, &["model.layers.0.self_attn.k_proj.weight", "[64, 32]", "[32, 64]"]);
    let m = broken(|d| {
        rewrite_tensors(d, |t| {
            let v = t.iter_mut().find(|t| t.name == "model.layers.1.self_attn.v_proj.weight").unwrap();
            v.dtype = "I64";
            v.data.extend(vec![0u8; v.data.len()]);
        })
    });
    expect_err("unsupported dtype", &m, &["model.layers.1.self_attn.v_proj.weight", "I64"]);
    let m = broken(|d| {
        let f = d.join("model.safetensors");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 100).unwrap();
    });
    expect_err("truncated file", &m, &["model.safetensors", "truncated"]);
    let m = broken(|d| {
        let f = d.join("model.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&f, bytes).unwrap();
    });
    expect_err("absurd header length", &m, &["model.safetensors", "header length", &MAX_HEADER_BYTES.to_string()]);
    let m = broken(|d| {
        let f = d.join("model.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        let n = bytes.len() as u64;
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        std::fs::write(&f, bytes).unwrap();
    });
    expect_err("header past the end", &m, &["model.safetensors", "header length", "truncated"]);
    let m = broken(|d| std::fs::write(d.join("model.safetensors"), b"abc").unwrap());
    expect_err("tiny file", &m, &["model.safetensors", "too short"]);
    let m = broken(|d| {
        let f = d.join("model.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[8] = b'[';
        std::fs::write(&f, bytes).unwrap();
    });
    expect_err("header not JSON", &m, &["model.safetensors", "header"]);
}

/// An edit of config.json.
type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>;

#[test]
fn safetensors_unsupported_configs_are_named_errors() {
    let cases: Vec<(&str, ConfigEdit, &[&str])> = vec![
        (
            "other architecture",
            Box::new(|c| {
                c.insert("model_type".into(), json!("gemma3"));
            }),
            &["model_type", "gemma3", "qwen3"],
        ),
        (
            "a llama checkpoint labelled qwen2 (no biases)",
            Box::new(|c| {
                c.insert("model_type".into(), json!("qwen2"));
            }),
            &["model.layers.0.self_attn.q_proj.bias", "missing"],
        ),
        (
            "a llama checkpoint labelled qwen3 (no Q/K norms)",
            Box::new(|c| {
                c.insert("model_type".into(), json!("qwen3"));
            }),
            &["model.layers.0.self_attn.q_norm.weight", "missing"],
        ),
        (
            "heads do not divide",
            Box::new(|c| {
                c.insert("num_attention_heads".into(), json!(5));
                c.remove("head_dim");
            }),
            &["num_attention_heads = 5", "hidden_size = 64"],
        ),
        (
            "kv heads do not divide",
            Box::new(|c| {
                c.insert("num_key_value_heads".into(), json!(3));
            }),
            &["num_key_value_heads = 3"],
        ),
        (
            "head_dim that does not match the tensors",
            Box::new(|c| {
                c.insert("head_dim".into(), json!(32));
            }),
            &["model.layers.0.self_attn.q_proj.weight", "[64, 64]", "[128, 64]", "head_dim 32"],
        ),
        (
            "FFN size that does not match the tensors",
            Box::new(|c| {
                c.insert("intermediate_size".into(), json!(128));
            }),
            &["model.layers.0.mlp.gate_proj.weight", "[96, 64]", "[128, 64]", "intermediate_size 128"],
        ),
        (
            "biases where llama has none",
            Box::new(|c| {
                c.insert("attention_bias".into(), json!(true));
                c.insert("model_type".into(), json!("qwen3"));
            }),
            &["attention_bias", "qwen3"],
        ),
        (
            "no hidden_size",
            Box::new(|c| {
                c.remove("hidden_size");
            }),
            &["hidden_size"],
        ),
        (
            "absurd layer count",
            Box::new(|c| {
                c.insert("num_hidden_layers".into(), json!(1u64 << 40));
            }),
            &["num_hidden_layers", "out of range"],
        ),
        (
            "negative eps",
            Box::new(|c| {
                c.insert("rms_norm_eps".into(), json!(-1.0));
            }),
            &["rms_norm_eps"],
        ),
        (
            "llama3 rope scaling without its parameters",
            Box::new(|c| {
                c.insert("rope_scaling".into(), json!({"rope_type": "llama3", "factor": 8.0}));
            }),
            &["rope_scaling", "low_freq_factor"],
        ),
        (
            "yarn rope scaling",
            Box::new(|c| {
                c.insert("rope_scaling".into(), json!({"rope_type": "yarn", "factor": 4.0}));
            }),
            &["rope_scaling", "yarn"],
        ),
        (
            "attention bias",
            Box::new(|c| {
                c.insert("attention_bias".into(), json!(true));
            }),
            &["attention_bias"],
        ),
        (
            "vocab mismatch",
            Box::new(|c| {
                c.insert("vocab_size".into(), json!(290));
            }),
            &["290"],
        ),
    ];
    for (what, edit, needles) in cases {
        let m = broken(|d| edit_config(d, edit));
        expect_err(what, &m, needles);
    }
    // Linear scaling is supported.
    let p = preset(false);
    let gguf = gguf_model(&p, DType::F32);
    let dir = write_checkpoint(&gguf, &p, DType::F32, DType::F32, Files::Single { odd: false });
    edit_config(dir.path(), |c| {
        c.insert("rope_scaling".into(), json!({"type": "linear", "factor": 4.0}));
    });
    assert_eq!(Model::load(dir.path()).expect("linear scaling loads").config.rope_freq_scale, 0.25);
    // So is Llama 3.1's, as the divisors llama.cpp's converter would write into the GGUF: the
    // factors of scripts/make-rope-freqs-reference.py (the same formula, checked there against
    // llama.cpp) for the same base, head size and parameters.
    edit_config(dir.path(), |c| {
        c.insert("rope_theta".into(), json!(100000.0));
        c.insert(
            "rope_scaling".into(),
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64}),
        );
    });
    let cfg = Model::load(dir.path()).expect("llama3 scaling loads").config;
    let got = cfg.rope_freq_factors.expect("factors");
    assert_eq!(got, strata_model::config::llama3_rope_factors(100000.0, cfg.n_rot, 8.0, 1.0, 4.0, 64.0));
    // The formula gives the divisors the converter's numpy code gave for the default model's
    // base and head size (scripts/make-rope-freqs-reference.py, checked there against
    // llama.cpp): 1 at high frequencies, 8 at low ones, rising in between.
    let doc = crate::support::reference("rope_freqs.json");
    let want: Vec<f32> = doc["factors"].as_array().expect("f").iter().map(|v| v.as_f64().expect("f") as f32).collect();
    let n_rot = doc["n_rot"].as_u64().expect("n_rot") as usize;
    let base = doc["rope_freq_base"].as_f64().expect("base") as f32;
    let old = doc["old_context_len"].as_f64().expect("old context");
    let ours = strata_model::config::llama3_rope_factors(base, n_rot, 8.0, 1.0, 4.0, old);
    for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b, "factor {i}: {a} vs the converter's {b}");
    }
    assert_eq!(ours.len(), want.len());
}

/// Strict checkpoints: every tensor is read by the architecture or refused by name (a qwen2
/// bias in a llama checkpoint, a layer past `num_hidden_layers`, an `lm_head` beside tied
/// embeddings, a stray tensor); only `rotary_emb.inv_freq` is skipped, as llama.cpp skips it.
#[test]
fn safetensors_unused_tensors_are_refused_by_name() {
    let f32s = |name: &str, n: usize| St { name: name.into(), dtype: "F32", shape: vec![n], data: vec![0; 4 * n] };
    let m = broken(|d| rewrite_tensors(d, |t| t.push(f32s("model.layers.1.self_attn.q_proj.bias", 64))));
    expect_err(
        "a qwen2 bias in a llama checkpoint",
        &m,
        &["model.layers.1.self_attn.q_proj.bias", "\"llama\"", "qwen2"],
    );
    let m = broken(|d| rewrite_tensors(d, |t| t.push(f32s("model.layers.2.input_layernorm.weight", 64))));
    expect_err(
        "a layer past num_hidden_layers",
        &m,
        &["model.layers.2.input_layernorm.weight", "num_hidden_layers is 2"],
    );
    let m = broken(|d| rewrite_tensors(d, |t| t.push(f32s("model.vision_tower.weight", 8))));
    expect_err("a stray tensor", &m, &["model.vision_tower.weight", "model.safetensors", "not used"]);
    let m = broken(|d| {
        edit_config(d, |c| {
            c.insert("tie_word_embeddings".into(), json!(true));
        })
    });
    expect_err("lm_head beside tied embeddings", &m, &["lm_head.weight", "tie_word_embeddings"]);

    let p = preset(false);
    let gguf = gguf_model(&p, DType::F32);
    let dir = write_checkpoint(&gguf, &p, DType::F32, DType::F32, Files::Single { odd: false });
    rewrite_tensors(dir.path(), |t| t.push(f32s("model.layers.0.self_attn.rotary_emb.inv_freq", 8)));
    let hf = Arc::new(Model::load(dir.path()).expect("inv_freq is skipped"));
    assert_close("with a skipped inv_freq", &logits(&gguf), &logits(&hf), STRICT);
}

#[test]
fn safetensors_bad_index_is_a_named_error() {
    let m = broken(|d| {
        std::fs::rename(d.join("model.safetensors"), d.join("weights.safetensors")).unwrap();
        let index = json!({"weight_map": {"model.embed_tokens.weight": "../weights.safetensors"}});
        std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    });
    expect_err("index escaping the directory", &m, &["model.embed_tokens.weight", "../weights.safetensors"]);
    let m = broken(|d| {
        std::fs::rename(d.join("model.safetensors"), d.join("weights.safetensors")).unwrap();
        let index = json!({"weight_map": {"model.embed_tokens.weight": "weights.safetensors"}});
        std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    });
    expect_err("index missing a tensor", &m, &["model.layers.0.input_layernorm.weight", "missing"]);
}

#[test]
fn safetensors_sentencepiece_and_llama3_tokenizers_map_to_gguf_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let special = |id: u32, content: &str| json!({"id": id, "content": content, "special": true});
    let tj = json!({
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"},
                       {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]},
        "pre_tokenizer": null,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                  "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "\u{2581}": 4, "a": 5, "b": 6,
                            "\u{2581}a": 7, "ab": 8, "\u{2581}ab": 9},
                  "merges": ["\u{2581} a", ["a", "b"], "\u{2581}a b"]}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tj.to_string()).unwrap();
    let tc = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true,
                    "chat_template": [{"name": "default", "template": "X"}, {"name": "tool_use", "template": "Y"}]});
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    let md = tokenizer_metadata(dir.path(), &json!({}), 12).expect("sentencepiece-style metadata");
    assert_eq!(md.str("tokenizer.ggml.model").unwrap(), "llama");
    let types: Vec<i64> = md.array("tokenizer.ggml.token_type").unwrap().iter().filter_map(|v| v.as_i64()).collect();
    assert_eq!(types, [2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 5, 5]);
    let scores: Vec<f64> = md.array("tokenizer.ggml.scores").unwrap().iter().filter_map(|v| v.as_f64()).collect();
    assert_eq!(scores[7..10], [0.0, -1.0, -2.0], "earlier merges score higher");
    assert_eq!(md.str_array("tokenizer.ggml.tokens").unwrap()[10], "[PAD10]");
    assert_eq!(md.opt_bool("tokenizer.ggml.add_space_prefix").unwrap(), Some(true));
    assert_eq!(md.opt_bool("tokenizer.ggml.add_bos_token").unwrap(), Some(true));
    for (key, id) in [("bos", 1), ("eos", 2), ("unknown", 0)] {
        assert_eq!(md.opt_u64(&format!("tokenizer.ggml.{key}_token_id")).unwrap(), Some(id), "{key}");
    }
    assert_eq!(md.str("tokenizer.chat_template").unwrap(), "X");
    assert_eq!(md.str("tokenizer.chat_template.tool_use").unwrap(), "Y");

    // Llama 3: byte-level with its split regex, BOS added by the post-processor, ids from
    // config.json when tokenizer_config.json is absent.
    let regex = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*";
    let tj = json!({
        "added_tokens": [special(3, "<|begin_of_text|>"), special(4, "<|end_of_text|>")],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}
    });
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tj.to_string()).unwrap();
    let config = json!({"bos_token_id": 3, "eos_token_id": [4, 2]});
    let md = tokenizer_metadata(dir.path(), &config, 5).expect("llama 3 metadata");
    assert_eq!(md.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(md.str("tokenizer.ggml.pre").unwrap(), "llama-bpe");
    assert_eq!(md.str_array("tokenizer.ggml.merges").unwrap(), ["a b"]);
    assert_eq!(md.opt_u64("tokenizer.ggml.bos_token_id").unwrap(), Some(3));
    assert_eq!(md.opt_u64("tokenizer.ggml.eos_token_id").unwrap(), Some(4));
    assert_eq!(md.opt_bool("tokenizer.ggml.add_bos_token").unwrap(), Some(true));

    let tj = json!({"model": {"type": "Unigram", "vocab": []}});
    std::fs::write(dir.path().join("tokenizer.json"), tj.to_string()).unwrap();
    let e = tokenizer_metadata(dir.path(), &config, 5).expect_err("unigram is refused").to_string();
    expect_err("unigram tokenizer", &e, &["tokenizer.json", "Unigram"]);
}

/// Every key of a checkpoint's `config.json` and `tokenizer_config.json` (and optional keys the
/// loader reads: `head_dim`, `rope_scaling`, `sliding_window`, `query_pre_attn_scalar`, ...) set
/// in turn to values a broken or hostile file could hold: numbers out of every range, another
/// JSON type, nested values. Each checkpoint loads with finite logits or is a named error: never
/// a panic (the JSON twin of `model_malformed`'s GGUF metadata cases).
#[test]
fn safetensors_hostile_config_values_never_panic() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let p = preset(false);
    let gguf = gguf_model(&p, DType::F32);
    let dir = write_checkpoint(&gguf, &p, DType::F32, DType::F32, Files::Single { odd: false });
    let read = |name: &str| -> serde_json::Map<String, Value> {
        let text = std::fs::read_to_string(dir.path().join(name)).expect("read");
        serde_json::from_str::<Value>(&text).expect("json").as_object().expect("object").clone()
    };
    let (config, tok_config) = (read("config.json"), read("tokenizer_config.json"));
    let hostile = [
        json!(0),
        json!(1),
        json!(3),
        json!(-1),
        json!(1u64 << 31),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(1e308),
        json!(-1e308),
        json!(1e-308),
        Value::Null,
        json!(""),
        json!("x"),
        json!(true),
        json!([]),
        json!([1, "a"]),
        json!({}),
        json!({"rope_type": "linear", "factor": 0}),
        json!({"rope_type": "linear", "factor": 1e-308}),
        json!({"rope_type": "linear", "factor": 1e308}),
        json!({"rope_type": "llama3", "factor": 1e308, "low_freq_factor": 1, "high_freq_factor": 1,
               "original_max_position_embeddings": 0}),
    ];
    let extra = [
        "head_dim",
        "rope_scaling",
        "sliding_window",
        "use_sliding_window",
        "query_pre_attn_scalar",
        "layer_types",
        "partial_rotary_factor",
        "attention_bias",
        "mlp_bias",
        "model_type",
        "architectures",
    ];
    let run = || -> String {
        let model = match Model::load(dir.path()) {
            Ok(m) => Arc::new(m),
            Err(e) => return format!("load: {e}"),
        };
        let _ = model.tokenizer.encode("Hello <|im_start|> 12", Some(true), true);
        crate::support::first_passes(model, &IDS[..4], IDS[4])
    };
    let (mut cases, mut ran, mut failures) = (0, 0, Vec::new());
    let files = [("config.json", &config), ("tokenizer_config.json", &tok_config)];
    for (file, base) in files {
        let keys: Vec<String> = base.keys().cloned().chain(extra.iter().map(|k| k.to_string())).collect();
        for key in keys.iter().filter(|k| file == "config.json" || base.contains_key(*k)) {
            for v in &hostile {
                cases += 1;
                let mut edited = base.clone();
                edited.insert(key.clone(), v.clone());
                std::fs::write(dir.path().join(file), Value::Object(edited).to_string()).expect("write");
                match catch_unwind(AssertUnwindSafe(run)) {
                    Err(e) => {
                        let msg = e.downcast_ref::<String>().map(String::as_str).or(e.downcast_ref::<&str>().copied());
                        failures.push(format!("{file} {key} = {v}: panicked: {msg:?}"));
                    }
                    Ok(o) if o.starts_with("NON-FINITE") => failures.push(format!("{file} {key} = {v}: {o}")),
                    Ok(o) => {
                        if std::env::var_os("STRATA_TEST_VERBOSE").is_some() {
                            println!("{file} {key} = {v}: {o}");
                        }
                        ran += usize::from(o == "ok");
                    }
                }
            }
            std::fs::write(dir.path().join(file), Value::Object(base.clone()).to_string()).expect("restore");
        }
    }
    println!("{cases} hostile config values: {ran} ran, the rest were refused");
    assert!(cases > 400, "only {cases} cases");
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
}
