//! Test models of other architectures derived from a real llama-family GGUF file (the default
//! model), so that qwen2, qwen3 and gemma3 code paths run on meaningful weights rather than
//! noise, and llama.cpp can produce reference logits for exactly the same file.
//!
//! What a derived file holds, per architecture:
//! - every tensor of the source, byte for byte, except the Q and K projections, whose rows are
//!   permuted back from the llama converter's adjacent-pair RoPE order to the half-split
//!   (NEOX) order that qwen2, qwen3 and gemma3 files use. Rows are whole quant blocks, so the
//!   permutation is exact on quantized bytes, and with the half-split RoPE the derived model
//!   computes the same attention scores as the source;
//! - qwen2: Q, K and V biases (f32), uniform in [-bias, bias] from a seeded splitmix64 stream
//!   (`bias = 0` gives zero biases: the derived model then equals the source);
//! - qwen3: per-head Q and K RMSNorm weights 1 + jitter·u (u uniform in [-1, 1), seeded), and
//!   `attention.key_length`/`value_length`;
//! - gemma3: the same Q/K norms, post-attention and post-FFN norms (1 + jitter·u), a sliding
//!   window (`window`) on 5 of every 6 layers, the source's RoPE base as the global one
//!   (llama.cpp fixes the local one at 10000), key/value length. Gemma scales embeddings by
//!   √n_embd; to keep the residual stream at the source's scale the token embedding's block
//!   scales are divided by √n_embd (f16 rounding of the scales only), and the original
//!   embedding is written as `output.weight` so the logits use the unscaled rows.
//! - qwen3moe: qwen3's attention (as above), and in place of each layer's FFN `n_expert`
//!   experts and a router: expert 0 is the source FFN byte for byte, expert e > 0 the source
//!   FFN with each quant block's scales (d, and m for q4_1) × (1 + expert_jitter·u), u uniform
//!   in [-1, 1) per block from a seeded stream, so every expert is exact on quantized bytes and
//!   a small perturbation of the real FFN; the router `ffn_gate_inp` is f32 uniform in
//!   [-router_amp, router_amp] (seeded); `expert_count`, `expert_used_count`,
//!   `expert_feed_forward_length`.
//! - mixtral: the same experts and router in a `llama` file (`llama.expert_count` > 0, the
//!   source's adjacent-pair Q/K rows kept as they are), Mixtral's layout.
//!
//! All metadata is kept (tokenizer, chat template), with `llama.*` keys renamed to the new
//! architecture's prefix. Seeds: tensor i's values come from splitmix64 seeded with
//! `seed ^ (i << 32)`, so a file depends only on (source, options).

use std::path::Path;

use half::f16;

use crate::gguf::{GgmlType, GgufFile, GgufWriter, TensorInfo, Value};
use crate::synth::Mix;
use crate::{Error, Result};

/// Architectures a test model can be derived as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeriveArch {
    /// The `qwen2` architecture.
    Qwen2,
    /// The `qwen3` architecture.
    Qwen3,
    /// The `gemma3` architecture.
    Gemma3,
    /// The `qwen3moe` architecture (qwen3 attention, experts).
    Qwen3Moe,
    /// Mixtral: a `llama` file with experts.
    Mixtral,
}

impl DeriveArch {
    /// Parses `qwen2`, `qwen3`, `gemma3`, `qwen3moe` or `mixtral`.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(s: &str) -> Result<DeriveArch> {
        match s.to_ascii_lowercase().as_str() {
            "qwen2" => Ok(DeriveArch::Qwen2),
            "qwen3" => Ok(DeriveArch::Qwen3),
            "gemma3" => Ok(DeriveArch::Gemma3),
            "qwen3moe" => Ok(DeriveArch::Qwen3Moe),
            "mixtral" => Ok(DeriveArch::Mixtral),
            _ => Err(Error::invalid(format!("--derive {s:?}: choose qwen2, qwen3, gemma3, qwen3moe or mixtral"))),
        }
    }

    /// The GGUF `general.architecture` name.
    pub fn name(self) -> &'static str {
        match self {
            DeriveArch::Qwen2 => "qwen2",
            DeriveArch::Qwen3 => "qwen3",
            DeriveArch::Gemma3 => "gemma3",
            DeriveArch::Qwen3Moe => "qwen3moe",
            DeriveArch::Mixtral => "llama",
        }
    }

    /// The name of the derived test model (`NAME-derived`): the architecture, or `mixtral`.
    pub fn label(self) -> &'static str {
        match self {
            DeriveArch::Mixtral => "mixtral",
            a => a.name(),
        }
    }

    /// Whether the derived layers have experts.
    pub fn has_experts(self) -> bool {
        matches!(self, DeriveArch::Qwen3Moe | DeriveArch::Mixtral)
    }

    /// Whether Q/K get per-head norms (qwen3's attention).
    fn qk_norms(self) -> bool {
        matches!(self, DeriveArch::Qwen3 | DeriveArch::Gemma3 | DeriveArch::Qwen3Moe)
    }

    /// Whether the Q/K rows move to the half-split RoPE order.
    fn half_split(self) -> bool {
        self != DeriveArch::Mixtral
    }
}

/// How to derive: the architecture and the seeded extras.
#[derive(Debug, Clone, PartialEq)]
pub struct DeriveOptions {
    /// The architecture to derive.
    pub arch: DeriveArch,
    /// Seed of the random generator for the added tensors.
    pub seed: u64,
    /// qwen2: biases uniform in [-bias, bias]; 0 gives zero biases.
    pub bias: f32,
    /// qwen3/gemma3: added norm weights are 1 + jitter·u; 0 gives unit weights.
    pub norm_jitter: f32,
    /// gemma3: the sliding window of the local layers.
    pub window: usize,
    /// qwen3moe/mixtral: experts per layer.
    pub n_expert: usize,
    /// qwen3moe/mixtral: experts per token.
    pub n_expert_used: usize,
    /// qwen3moe/mixtral: experts e > 0 scale each quant block by 1 + expert_jitter·u.
    pub expert_jitter: f32,
    /// qwen3moe/mixtral: router weights uniform in [-router_amp, router_amp].
    pub router_amp: f32,
}

impl DeriveOptions {
    /// The documented defaults: seed 0, biases in [-0.05, 0.05], norm jitter 0.05, window 16,
    /// 4 experts of which 2 per token, expert jitter 0.2, router amplitude 0.1.
    pub fn new(arch: DeriveArch) -> DeriveOptions {
        DeriveOptions {
            arch,
            seed: 0,
            bias: 0.05,
            norm_jitter: 0.05,
            window: 16,
            n_expert: 4,
            n_expert_used: 2,
            expert_jitter: 0.2,
            router_amp: 0.1,
        }
    }
}

/// Where a tensor of the derived file comes from.
enum Source<'a> {
    /// The source tensor's bytes.
    Copy(&'a TensorInfo),
    /// The source tensor's rows, permuted to the half-split order within each head of
    /// `head_dim` rows.
    HalfSplit(&'a TensorInfo, usize),
    /// The source tensor with its block scales (f16 d, and m for q4_1) multiplied by a factor.
    Scaled(&'a TensorInfo, f32),
    /// f32 values uniform in [-amp, amp] around `center`.
    Random { center: f32, amp: f32 },
    /// `n` experts stacked from one source FFN tensor: expert 0 its bytes, expert e > 0 its
    /// bytes with each block's scales × (1 + jitter·u).
    Experts { t: &'a TensorInfo, n: usize, jitter: f32 },
}

/// The derived model as a GGUF writer plus the way to fill each tensor.
struct Plan<'a> {
    writer: GgufWriter,
    sources: Vec<Source<'a>>,
}

fn meta_u64(src: &GgufFile, key: &str) -> Result<usize> {
    Ok(src.metadata().u64(key)? as usize)
}

fn plan<'a>(src: &'a GgufFile, o: &DeriveOptions) -> Result<Plan<'a>> {
    let md = src.metadata();
    let from = md.str("general.architecture")?;
    if !crate::config::LLAMA_FAMILY.contains(&from) {
        return Err(Error::model(format!(
            "can only derive from a llama-family GGUF (adjacent-pair RoPE rows); this file is {from:?}"
        )));
    }
    let n_embd = meta_u64(src, &format!("{from}.embedding_length"))?;
    let n_head = meta_u64(src, &format!("{from}.attention.head_count"))?;
    let n_head_kv = md.opt_u64(&format!("{from}.attention.head_count_kv"))?.map_or(n_head, |v| v as usize);
    let n_layers = meta_u64(src, &format!("{from}.block_count"))?;
    if n_head == 0 || n_head_kv == 0 || !n_embd.is_multiple_of(n_head) || !(n_embd / n_head).is_multiple_of(2) {
        return Err(Error::model(format!("cannot derive: {n_embd} embedding / {n_head} heads is no even head size")));
    }
    let head_dim = n_embd / n_head;
    let arch = o.arch.name();

    let mut w = GgufWriter::new();
    for (k, v) in md.iter() {
        let key = match k.strip_prefix(&format!("{from}.")) {
            Some(rest) => format!("{arch}.{rest}"),
            None => k.to_string(),
        };
        w.metadata_mut().set(&key, v.clone());
    }
    let wm = w.metadata_mut();
    wm.set("general.architecture", Value::String(arch.into()));
    let name = md.opt_str("general.name")?.unwrap_or("model");
    // Files of the architectures without experts keep the name (and so the bytes) they had
    // before experts existed: their reference data records the file's SHA-256.
    let experts = if o.arch.has_experts() {
        format!(
            ", experts {}/{}, expert jitter {}, router amplitude {}",
            o.n_expert_used, o.n_expert, o.expert_jitter, o.router_amp
        )
    } else {
        String::new()
    };
    wm.set(
        "general.name",
        Value::String(format!(
            "{name} derived as {} by strata (seed {}, bias {}, norm jitter {}, window {}{experts})",
            o.arch.label(),
            o.seed,
            o.bias,
            o.norm_jitter,
            o.window
        )),
    );
    if o.arch.has_experts() {
        if o.n_expert == 0 || o.n_expert_used == 0 || o.n_expert_used > o.n_expert {
            return Err(Error::invalid(format!(
                "{} experts of which {} per token: need 1 <= used <= experts",
                o.n_expert, o.n_expert_used
            )));
        }
        wm.set(&format!("{arch}.expert_count"), Value::U32(o.n_expert as u32));
        wm.set(&format!("{arch}.expert_used_count"), Value::U32(o.n_expert_used as u32));
        if o.arch == DeriveArch::Qwen3Moe {
            let n_ff = meta_u64(src, &format!("{from}.feed_forward_length"))?;
            wm.set(&format!("{arch}.expert_feed_forward_length"), Value::U32(n_ff as u32));
        }
    }
    if o.arch != DeriveArch::Qwen2 && o.arch != DeriveArch::Mixtral {
        wm.set(&format!("{arch}.attention.key_length"), Value::U32(head_dim as u32));
        wm.set(&format!("{arch}.attention.value_length"), Value::U32(head_dim as u32));
    }
    if o.arch == DeriveArch::Gemma3 {
        if o.window == 0 {
            return Err(Error::invalid("a gemma3 sliding window must be at least 1"));
        }
        wm.set(&format!("{arch}.attention.sliding_window"), Value::U32(o.window as u32));
    }

    let f32t = GgmlType::F32;
    let mut sources = Vec::new();
    let mut add = |w: &mut GgufWriter, name: &str, ty: GgmlType, dims: &[u64], s: Source<'a>| -> Result<()> {
        w.add_tensor(name, ty, dims)?;
        sources.push(s);
        Ok(())
    };
    let tensor = |name: &str| src.tensor(name).ok_or_else(|| Error::model(format!("source tensor {name} is missing")));
    let vector = |center: f32, amp: f32| Source::Random { center, amp };
    let norm = || vector(1.0, o.norm_jitter);
    let untied = o.arch == DeriveArch::Gemma3 && src.tensor("output.weight").is_none();

    for t in src.tensors() {
        let name = t.name.as_str();
        let suffix = name.strip_prefix("blk.").and_then(|r| r.split_once('.')).map(|(_, s)| s);
        let ffn = matches!(suffix, Some("ffn_gate.weight" | "ffn_up.weight" | "ffn_down.weight"));
        if ffn && o.arch.has_experts() {
            let name = name.replacen(".weight", "_exps.weight", 1);
            let mut dims = t.dims.clone();
            dims.push(o.n_expert as u64);
            add(&mut w, &name, t.ggml_type, &dims, Source::Experts { t, n: o.n_expert, jitter: o.expert_jitter })?;
            continue;
        }
        let s = match suffix {
            Some("attn_q.weight" | "attn_k.weight") if o.arch.half_split() => Source::HalfSplit(t, head_dim),
            _ if name == "token_embd.weight" && o.arch == DeriveArch::Gemma3 => {
                Source::Scaled(t, 1.0 / (n_embd as f32).sqrt())
            }
            _ => Source::Copy(t),
        };
        add(&mut w, name, t.ggml_type, &t.dims, s)?;
    }
    if untied {
        let t = tensor("token_embd.weight")?;
        add(&mut w, "output.weight", t.ggml_type, &t.dims, Source::Copy(t))?;
    }
    let (q_dim, kv_dim) = (n_head * head_dim, n_head_kv * head_dim);
    for l in 0..n_layers {
        let blk = |s: &str| format!("blk.{l}.{s}");
        match o.arch {
            DeriveArch::Qwen2 => {
                for (s, n) in [("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)] {
                    add(&mut w, &blk(s), f32t, &[n as u64], vector(0.0, o.bias))?;
                }
            }
            _ if o.arch.qk_norms() => {
                for s in ["attn_q_norm.weight", "attn_k_norm.weight"] {
                    add(&mut w, &blk(s), f32t, &[head_dim as u64], norm())?;
                }
            }
            _ => {}
        }

        if o.arch == DeriveArch::Gemma3 {
            for s in ["post_attention_norm.weight", "post_ffw_norm.weight"] {
                add(&mut w, &blk(s), f32t, &[n_embd as u64], norm())?;
            }
        }
    }
    // The routers last, so that the other added tensors have the indices (and so the values)
    // they have in the architecture without experts.
    for l in 0..n_layers {
        if o.arch.has_experts() {
            let router = vector(0.0, o.router_amp);
            add(&mut w, &format!("blk.{l}.ffn_gate_inp.weight"), f32t, &[n_embd as u64, o.n_expert as u64], router)?;
        }
    }
    Ok(Plan { writer: w, sources })
}

/// Fills tensor `index`'s bytes.
fn fill(src: &GgufFile, seed: u64, index: usize, s: &Source<'_>, out: &mut [u8]) {
    match s {
        Source::Copy(t) => out.copy_from_slice(src.tensor_data(t)),
        Source::HalfSplit(t, head_dim) => {
            let data = src.tensor_data(t);
            let rows: u64 = t.dims[1..].iter().product();
            let row = data.len() / rows.max(1) as usize;
            let half = head_dim / 2;
            for (r, dst) in out.chunks_exact_mut(row).enumerate() {
                // Within a head, half-split row j (< half) pairs with j + half; the llama
                // converter stored that pair as rows 2j and 2j + 1.
                let (head, j) = (r / head_dim, r % head_dim);
                let from = head * head_dim + if j < half { 2 * j } else { 2 * (j - half) + 1 };
                dst.copy_from_slice(&data[from * row..(from + 1) * row]);
            }
        }
        Source::Scaled(t, f) => {
            out.copy_from_slice(src.tensor_data(t));
            scale_blocks(t.ggml_type, *f, out);
        }
        Source::Random { center, amp } => {
            let mut rng = Mix(seed ^ ((index as u64) << 32));
            for b in out.chunks_exact_mut(4) {
                b.copy_from_slice(&(center + amp * rng.unit()).to_le_bytes());
            }
        }
        Source::Experts { t, n, jitter } => {
            let data = src.tensor_data(t);
            let mut rng = Mix(seed ^ ((index as u64) << 32));
            for (e, dst) in out.chunks_exact_mut(data.len()).take(*n).enumerate() {
                dst.copy_from_slice(data);
                if e > 0 {
                    let block = t.ggml_type.type_size() as usize;
                    for b in dst.chunks_exact_mut(block) {
                        scale_blocks(t.ggml_type, 1.0 + jitter * rng.unit(), b);
                    }
                }
            }
        }
    }
}

/// Multiplies every value of a tensor by `f` by scaling its block scales (q4_0, q8_0: d;
/// q4_1: d and m) or its values (f32, f16).
fn scale_blocks(ty: GgmlType, f: f32, out: &mut [u8]) {
    let scale16 = |b: &mut [u8]| {
        let v = f16::from_le_bytes([b[0], b[1]]).to_f32() * f;
        b.copy_from_slice(&f16::from_f32(v).to_le_bytes());
    };
    match ty {
        GgmlType::F32 => out.chunks_exact_mut(4).for_each(|b| {
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * f;
            b.copy_from_slice(&v.to_le_bytes());
        }),
        GgmlType::F16 => out.chunks_exact_mut(2).for_each(scale16),
        GgmlType::Q4_0 | GgmlType::Q8_0 => {
            out.chunks_exact_mut(ty.type_size() as usize).for_each(|b| scale16(&mut b[..2]))
        }
        GgmlType::Q4_1 => out.chunks_exact_mut(20).for_each(|b| {
            scale16(&mut b[..2]);
            scale16(&mut b[2..4]);
        }),
        _ => {}
    }
}

/// Checks that every scaled tensor has a type [`scale_blocks`] handles.
fn check_scalable(p: &Plan<'_>) -> Result<()> {
    for s in &p.sources {
        if let Source::Scaled(t, _) | Source::Experts { t, .. } = s
            && !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
        {
            return Err(Error::model(format!(
                "cannot rescale {} of type {} (gemma3's embedding scale, experts' jitter: f32, f16, q4_0, q4_1, q8_0 \
                 only)",
                t.name,
                t.ggml_type.name()
            )));
        }
    }
    Ok(())
}

/// The derived model as GGUF bytes in memory (tests).
///
/// # Errors
/// A source that is not a llama-family file, or lacks what the derivation needs, named.
pub fn derive_bytes(src: &GgufFile, o: &DeriveOptions) -> Result<Vec<u8>> {
    let p = plan(src, o)?;
    check_scalable(&p)?;
    Ok(p.writer.to_bytes(|i, buf| fill(src, o.seed, i, &p.sources[i], buf))?)
}

/// Writes the derived model to `path`.
///
/// # Errors
/// As [`derive_bytes`], or an I/O error naming the path.
pub fn derive_file(src: &GgufFile, o: &DeriveOptions, path: &Path) -> Result<()> {
    let p = plan(src, o)?;
    check_scalable(&p)?;
    p.writer.write_file(path, |i, buf| fill(src, o.seed, i, &p.sources[i], buf), |_| {})?;
    Ok(())
}

/// The first `keep` layers of a model as a GGUF file in memory: the same metadata (with
/// `<arch>.block_count` set to `keep`), embedding, output norm and head, and the kept layers'
/// tensors byte for byte. The result shares the source's vocabulary and tokenizer, so it can
/// serve as a draft model for speculative decoding that agrees with the source often.
///
/// # Errors
/// `keep` of 0 or more than the source's layers; a source without an architecture or block
/// count.
pub fn truncate_layers_bytes(src: &GgufFile, keep: usize) -> Result<Vec<u8>> {
    let md = src.metadata();
    let arch = md.str("general.architecture")?;
    let n_layers = meta_u64(src, &format!("{arch}.block_count"))?;
    if keep == 0 || keep > n_layers {
        return Err(Error::invalid(format!(
            "cannot keep {keep} layers of a model with {n_layers}: expected 1..={n_layers}"
        )));
    }
    let mut w = GgufWriter::new();
    for (k, v) in md.iter() {
        w.metadata_mut().set(k, v.clone());
    }
    w.metadata_mut().set(&format!("{arch}.block_count"), Value::U32(keep as u32));
    let name = md.opt_str("general.name")?.unwrap_or("model");
    w.metadata_mut().set("general.name", Value::String(format!("{name}, first {keep} of {n_layers} layers")));
    let mut kept = Vec::new();
    for t in src.tensors() {
        let layer =
            t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')).and_then(|(l, _)| l.parse::<usize>().ok());
        if layer.is_some_and(|l| l >= keep) {
            continue;
        }
        w.add_tensor(&t.name, t.ggml_type, &t.dims)?;
        kept.push(t);
    }
    Ok(w.to_bytes(|i, buf| buf.copy_from_slice(src.tensor_data(kept[i])))?)
}
