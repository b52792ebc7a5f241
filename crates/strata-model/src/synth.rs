//! Synthetic models: random weights in real shapes, written as GGUF (or built in memory), so
//! offloading can be tested and benchmarked on models far larger than any GPU budget without
//! downloading anything. Dense llama shapes, and mixture-of-experts shapes (Qwen3-30B-A3B as
//! `qwen3moe`, Mixtral 8x7B as `llama` with experts) whose routers are f32 like the released
//! files' and whose 3-D expert tensors use the chosen weight type.
//!
//! Weights are drawn directly in their storage format (random quantized blocks with a scale
//! chosen for a standard deviation of about 1/sqrt(cols)), in parallel 1 MiB chunks, each
//! chunk seeded from (seed, tensor, chunk): the file depends on the seed only, never on the
//! thread count. A 7B Q4_0 model is mostly memory bandwidth: seconds, not minutes.
//!
//! The tokenizer is byte-level BPE without merges (one token per byte) plus `<|endoftext|>`,
//! `<|im_start|>`, `<|im_end|>` and unreachable filler tokens up to the vocabulary size, with
//! a ChatML template, so every command works on a synthetic model.

use std::path::Path;

use half::{bf16, f16};
use strata_tensor::DType;

use crate::gguf::{GgmlType, GgufWriter, Value};
use crate::{Error, Result};

/// A model shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Preset {
    /// Preset name.
    pub name: &'static str,
    /// Number of layers.
    pub n_layers: usize,
    /// Model width.
    pub n_embd: usize,
    /// FFN hidden width.
    pub n_ff: usize,
    /// Number of query heads.
    pub n_head: usize,
    /// Number of key/value heads.
    pub n_head_kv: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// RoPE base frequency.
    pub rope_freq_base: f32,
    /// Epsilon of the RMS norms.
    pub rms_eps: f32,
    /// No output.weight: the embedding is the output head.
    pub tied: bool,
    /// The architecture written (`llama` or `qwen3moe`).
    pub arch: &'static str,
    /// Width of one attention head (0: n_embd / n_head).
    pub head_dim: usize,
    /// Experts per layer (0: dense).
    pub n_expert: usize,
    /// Experts per token.
    pub n_expert_used: usize,
    /// One expert's FFN width.
    pub n_ff_exp: usize,
}

/// A dense llama shape's defaults (llama, head size n_embd / n_head, no experts), for
/// `Preset { .., ..DENSE }` literals.
pub const DENSE: Preset = Preset {
    name: "",
    n_layers: 0,
    n_embd: 0,
    n_ff: 0,
    n_head: 1,
    n_head_kv: 1,
    n_vocab: 0,
    n_ctx_train: 0,
    rope_freq_base: 10000.0,
    rms_eps: 1e-5,
    tied: false,
    arch: "llama",
    head_dim: 0,
    n_expert: 0,
    n_expert_used: 0,
    n_ff_exp: 0,
};

const PRESETS: &[Preset] = &[
    // For tests: every code path of the llama architecture in a few hundred KiB.
    Preset {
        name: "tiny",
        n_layers: 2,
        n_embd: 64,
        n_ff: 160,
        n_head: 4,
        n_head_kv: 2,
        n_vocab: 320,
        n_ctx_train: 256,
        rope_freq_base: 10000.0,
        rms_eps: 1e-5,
        tied: false,
        ..DENSE
    },
    Preset {
        name: "smollm2-135m",
        n_layers: 30,
        n_embd: 576,
        n_ff: 1536,
        n_head: 9,
        n_head_kv: 3,
        n_vocab: 49152,
        n_ctx_train: 8192,
        rope_freq_base: 100000.0,
        rms_eps: 1e-5,
        tied: true,
        ..DENSE
    },
    Preset {
        name: "llama-1b",
        n_layers: 16,
        n_embd: 2048,
        n_ff: 8192,
        n_head: 32,
        n_head_kv: 8,
        n_vocab: 128256,
        n_ctx_train: 131072,
        rope_freq_base: 500000.0,
        rms_eps: 1e-5,
        tied: true,
        ..DENSE
    },
    Preset {
        name: "llama-7b",
        n_layers: 32,
        n_embd: 4096,
        n_ff: 11008,
        n_head: 32,
        n_head_kv: 32,
        n_vocab: 32000,
        n_ctx_train: 4096,
        rope_freq_base: 10000.0,
        rms_eps: 1e-5,
        tied: false,
        ..DENSE
    },
    Preset {
        name: "llama-13b",
        n_layers: 40,
        n_embd: 5120,
        n_ff: 13824,
        n_head: 40,
        n_head_kv: 40,
        n_vocab: 32000,
        n_ctx_train: 4096,
        rope_freq_base: 10000.0,
        rms_eps: 1e-5,
        tied: false,
        ..DENSE
    },
    Preset {
        name: "llama-70b",
        n_layers: 80,
        n_embd: 8192,
        n_ff: 28672,
        n_head: 64,
        n_head_kv: 8,
        n_vocab: 32000,
        n_ctx_train: 4096,
        rope_freq_base: 10000.0,
        rms_eps: 1e-5,
        tied: false,
        ..DENSE
    },
    // For tests: a qwen3moe model (Q/K norms, head_dim 16, 8 experts, 2 per token).
    Preset {
        name: "tiny-moe",
        n_layers: 2,
        n_embd: 64,
        n_ff: 160,
        n_head: 4,
        n_head_kv: 2,
        n_vocab: 320,
        n_ctx_train: 256,
        arch: "qwen3moe",
        head_dim: 16,
        n_expert: 8,
        n_expert_used: 2,
        n_ff_exp: 32,
        ..DENSE
    },
    // For tests: a Mixtral-layout model (llama with 4 experts, 2 per token).
    Preset {
        name: "tiny-mixtral",
        n_layers: 2,
        n_embd: 64,
        n_ff: 64,
        n_head: 4,
        n_head_kv: 2,
        n_vocab: 320,
        n_ctx_train: 256,
        n_expert: 4,
        n_expert_used: 2,
        n_ff_exp: 64,
        ..DENSE
    },
    // Qwen3-30B-A3B (config.json: hidden 2048, 48 layers, 32 heads, 4 kv heads, head_dim 128,
    // 128 experts, 8 per token, moe_intermediate_size 768, intermediate_size 6144, vocab
    // 151936, rope_theta 1e6, rms_norm_eps 1e-6, untied).
    Preset {
        name: "qwen3-30b-a3b",
        n_layers: 48,
        n_embd: 2048,
        n_ff: 6144,
        n_head: 32,
        n_head_kv: 4,
        n_vocab: 151936,
        n_ctx_train: 40960,
        rope_freq_base: 1_000_000.0,
        rms_eps: 1e-6,
        arch: "qwen3moe",
        head_dim: 128,
        n_expert: 128,
        n_expert_used: 8,
        n_ff_exp: 768,
        ..DENSE
    },
    // Mixtral 8x7B (config.json: hidden 4096, 32 layers, 32 heads, 8 kv heads, 8 experts, 2 per
    // token, intermediate_size 14336, vocab 32000, rope_theta 1e6, untied).
    Preset {
        name: "mixtral-8x7b",
        n_layers: 32,
        n_embd: 4096,
        n_ff: 14336,
        n_head: 32,
        n_head_kv: 8,
        n_vocab: 32000,
        n_ctx_train: 32768,
        rope_freq_base: 1_000_000.0,
        n_expert: 8,
        n_expert_used: 2,
        n_ff_exp: 14336,
        ..DENSE
    },
];

/// Weight types a synthetic model can be written in.
pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "q8_0" => DType::Q8_0,
        "q4_0" => DType::Q4_0,
        "q4_1" => DType::Q4_1,
        "q4_k" => DType::Q4_K,
        _ => {
            return Err(Error::invalid(format!(
                "weight type {s:?} is not one of f32, f16, bf16, q8_0, q4_0, q4_1, q4_k"
            )));
        }
    })
}

/// One tensor of the file: name, GGUF dims (ne0 first), type.
struct Spec {
    name: String,
    dims: Vec<u64>,
    /// The storage type (f32 for norms and routers).
    dt: DType,
    /// 1/sqrt(cols) for matrices; norms are drawn near 1.
    norm: bool,
}

impl Preset {
    /// Names of all presets.
    pub fn names() -> Vec<&'static str> {
        PRESETS.iter().map(|p| p.name).collect()
    }

    /// The preset with this name (case-insensitive); an error naming the choices if none.
    pub fn by_name(name: &str) -> Result<Preset> {
        PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name)).cloned().ok_or_else(|| {
            Error::invalid(format!("unknown preset {name:?}; choose one of {}", Preset::names().join(", ")))
        })
    }

    /// The same shape with `n` layers.
    pub fn with_layers(mut self, n: usize) -> Result<Preset> {
        if n == 0 || n > 1024 {
            return Err(Error::invalid(format!("--layers {n} must be in 1..=1024")));
        }
        self.n_layers = n;
        Ok(self)
    }

    /// Width of one attention head.
    fn head_size(&self) -> usize {
        if self.head_dim > 0 { self.head_dim } else { self.n_embd / self.n_head }
    }

    fn specs(&self, dtype: DType) -> Result<Vec<Spec>> {
        GgmlType::from_dtype(dtype).ok_or_else(|| Error::invalid(format!("{dtype} cannot be stored")))?;
        let (e, v) = (self.n_embd as u64, self.n_vocab as u64);
        let hd = self.head_size();
        let spec = crate::arch::by_name(self.arch)
            .ok_or_else(|| Error::invalid(format!("preset {} has unknown architecture {}", self.name, self.arch)))?;
        let roles = crate::config::layer_roles(spec, self.n_expert > 0, |_| false);
        let matrix = |name: String, dims: Vec<u64>| Spec { name, dims, dt: dtype, norm: false };
        let mut specs = vec![matrix("token_embd.weight".into(), vec![e, v])];
        let dims = crate::arch::LayerDims {
            n_embd: self.n_embd,
            n_ff: self.n_ff,
            q_dim: self.n_head * hd,
            kv_dim: self.n_head_kv * hd,
            head_dim: hd,
            n_expert: self.n_expert,
            n_ff_exp: self.n_ff_exp,
        };
        for l in 0..self.n_layers {
            for r in &roles {
                let (name, dims) = (format!("blk.{l}.{}", r.gguf_suffix()), r.dims(&dims));
                specs.push(match r {
                    _ if r.is_vector() => Spec { name, dims, dt: DType::F32, norm: true },
                    crate::arch::Role::GateInp => Spec { name, dims, dt: DType::F32, norm: false },
                    _ => matrix(name, dims),
                });
            }
        }
        specs.push(Spec { name: "output_norm.weight".into(), dims: vec![e], dt: DType::F32, norm: true });
        if !self.tied {
            specs.push(matrix("output.weight".into(), vec![e, v]));
        }
        Ok(specs)
    }

    /// Approximate size of the file (tensor data; the header adds a few hundred KiB).
    pub fn file_bytes(&self, dtype: DType) -> u64 {
        self.specs(dtype)
            .map(|specs| {
                specs
                    .iter()
                    .map(|s| {
                        let rows: u64 = s.dims[1..].iter().product();
                        s.dt.bytes_for(&[rows as usize, s.dims[0] as usize]).map_or(0, |b| b as u64)
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    fn writer(&self, dtype: DType, seed: u64) -> Result<(GgufWriter, Vec<Spec>)> {
        let mut w = GgufWriter::new();
        let md = w.metadata_mut();
        let a = self.arch;
        let u32v = |v: usize| Value::U32(v as u32);
        md.set("general.architecture", Value::String(a.into()));
        md.set("general.name", Value::String(format!("strata synthetic {} {dtype} (seed {seed})", self.name)));
        md.set(&format!("{a}.block_count"), u32v(self.n_layers));
        md.set(&format!("{a}.embedding_length"), u32v(self.n_embd));
        md.set(&format!("{a}.feed_forward_length"), u32v(self.n_ff));
        md.set(&format!("{a}.attention.head_count"), u32v(self.n_head));
        md.set(&format!("{a}.attention.head_count_kv"), u32v(self.n_head_kv));
        md.set(&format!("{a}.context_length"), u32v(self.n_ctx_train));
        md.set(&format!("{a}.rope.freq_base"), Value::F32(self.rope_freq_base));
        md.set(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(self.rms_eps));
        md.set(&format!("{a}.vocab_size"), u32v(self.n_vocab));
        if self.head_dim > 0 {
            md.set(&format!("{a}.attention.key_length"), u32v(self.head_dim));
            md.set(&format!("{a}.attention.value_length"), u32v(self.head_dim));
        }
        if self.n_expert > 0 {
            md.set(&format!("{a}.expert_count"), u32v(self.n_expert));
            md.set(&format!("{a}.expert_used_count"), u32v(self.n_expert_used));
            match a {
                "llama" => md.set(&format!("{a}.feed_forward_length"), u32v(self.n_ff_exp)),
                _ => md.set(&format!("{a}.expert_feed_forward_length"), u32v(self.n_ff_exp)),
            }
        }
        let (tokens, types) = synth_vocab(self.n_vocab)?;
        md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        md.set("tokenizer.ggml.pre", Value::String("default".into()));
        md.set("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect()));
        md.set("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
        md.set("tokenizer.ggml.merges", Value::Array(Vec::new()));
        md.set("tokenizer.ggml.bos_token_id", Value::U32(257));
        md.set("tokenizer.ggml.eos_token_id", Value::U32(258));
        md.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        md.set("tokenizer.chat_template", Value::String(CHATML.into()));
        let specs = self.specs(dtype)?;
        for s in &specs {
            let ggml =
                GgmlType::from_dtype(s.dt).ok_or_else(|| Error::invalid(format!("{} cannot be stored", s.dt)))?;
            w.add_tensor(&s.name, ggml, &s.dims)?;
        }
        Ok((w, specs))
    }
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte → printable character map (bytes that are printable Latin-1 map to
/// themselves, the rest to U+0100 upwards).
fn byte_char(b: u8) -> char {
    let printable = |c: u8| (b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// 256 byte tokens, three specials, fillers: (tokens, llama.cpp token types).
fn synth_vocab(n_vocab: usize) -> Result<(Vec<String>, Vec<i32>)> {
    if n_vocab < 260 {
        return Err(Error::invalid("a synthetic vocabulary needs at least 260 tokens"));
    }
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1; 256];
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(s.into());
        types.push(3);
    }
    for i in tokens.len()..n_vocab {
        tokens.push(format!("<|filler_{i}|>"));
        types.push(5);
    }
    Ok((tokens, types))
}

/// splitmix64: a fast, well-mixed generator; one stream per chunk.
pub(crate) struct Mix(pub(crate) u64);

impl Mix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

const CHUNK: usize = 1 << 20;

/// Fills one tensor's bytes with random values of its type.
fn fill_tensor(spec: &Spec, seed: u64, index: usize, buf: &mut [u8]) {
    use rayon::prelude::*;
    let cols = spec.dims[0] as f32;
    // Uniform in [-a, a] has std a/sqrt(3); aim for std 1/sqrt(cols).
    let amp = 3f32.sqrt() / cols.sqrt();
    let dt = spec.dt;
    // Chunks must hold whole blocks (18, 20, 34, 144 bytes) or elements: round 1 MiB down to a
    // multiple of the unit.
    let unit = match dt {
        DType::Q4_0 => 18,
        DType::Q4_1 => 20,
        DType::Q8_0 => 34,
        DType::Q4_K => 144,
        DType::F16 | DType::BF16 => 2,
        _ => 4,
    };
    let chunk = CHUNK / unit * unit;
    buf.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
        let mut rng = Mix(seed ^ ((index as u64) << 32) ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        match dt {
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 | DType::Q4_K => fill_blocks(dt, amp, &mut rng, out, unit),
            DType::F16 => {
                out.chunks_exact_mut(2).for_each(|b| b.copy_from_slice(&f16::from_f32(amp * rng.unit()).to_le_bytes()))
            }
            DType::BF16 => {
                out.chunks_exact_mut(2).for_each(|b| b.copy_from_slice(&bf16::from_f32(amp * rng.unit()).to_le_bytes()))
            }
            _ if spec.norm => {
                out.chunks_exact_mut(4).for_each(|b| b.copy_from_slice(&(1.0 + 0.1 * rng.unit()).to_le_bytes()))
            }
            _ => out.chunks_exact_mut(4).for_each(|b| b.copy_from_slice(&(amp * rng.unit()).to_le_bytes())),
        }
    });
}

/// Random quantized blocks: random quants, a scale giving uniform values in about [-amp, amp].
fn fill_blocks(dt: DType, amp: f32, rng: &mut Mix, out: &mut [u8], unit: usize) {
    for block in out.chunks_exact_mut(unit) {
        let mut bytes = [0u8; 32];
        for w in bytes.chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes());
        }
        match dt {
            // (q - 8) * d with q in 0..16: d = amp / 8.
            DType::Q4_0 => {
                block[..2].copy_from_slice(&f16::from_f32(amp / 8.0).to_le_bytes());
                block[2..].copy_from_slice(&bytes[..16]);
            }
            // Q4_K: every sub-block's 6-bit scale and min are 32 (bytes 0..8 hold the low 6 bits
            // and the high 2 of the later sub-blocks: 0b10_100000; bytes 8..12 the later low 4
            // bits: 0), so a value is d·32·q - dmin·32 with q in 0..16: d = amp / 240,
            // dmin = amp / 32 give [-amp, amp].
            DType::Q4_K => {
                block[..2].copy_from_slice(&f16::from_f32(amp / 240.0).to_le_bytes());
                block[2..4].copy_from_slice(&f16::from_f32(amp / 32.0).to_le_bytes());
                block[4..12].fill(0xA0);
                block[12..16].fill(0);
                for q in block[16..].chunks_exact_mut(32) {
                    q.copy_from_slice(&bytes);
                    for w in bytes.chunks_exact_mut(8) {
                        w.copy_from_slice(&rng.next().to_le_bytes());
                    }
                }
            }
            // q * d + m: d = amp / 7.5, m = -amp.
            DType::Q4_1 => {
                block[..2].copy_from_slice(&f16::from_f32(amp / 7.5).to_le_bytes());
                block[2..4].copy_from_slice(&f16::from_f32(-amp).to_le_bytes());
                block[4..].copy_from_slice(&bytes[..16]);
            }
            // q * d with q in -128..128: d = amp / 128.
            _ => {
                block[..2].copy_from_slice(&f16::from_f32(amp / 128.0).to_le_bytes());
                block[2..].copy_from_slice(&bytes);
            }
        }
    }
}

/// Writes a synthetic model to `path`; `progress(bytes)` as tensors complete.
///
/// # Errors
/// An unknown type or an I/O error naming the file.
pub fn write_gguf(preset: &Preset, dtype: DType, seed: u64, path: &Path, progress: impl Fn(u64) + Sync) -> Result<()> {
    let (w, specs) = preset.writer(dtype, seed)?;
    w.write_file(path, |i, buf| fill_tensor(&specs[i], seed, i, buf), progress)?;
    Ok(())
}

/// The same model as GGUF bytes in memory (tests).
pub fn gguf_bytes(preset: &Preset, dtype: DType, seed: u64) -> Result<Vec<u8>> {
    let (w, specs) = preset.writer(dtype, seed)?;
    Ok(w.to_bytes(|i, buf| fill_tensor(&specs[i], seed, i, buf))?)
}
