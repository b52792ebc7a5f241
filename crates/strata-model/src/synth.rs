//! Synthetic llama models: random weights in real shapes, written as GGUF (or built in
//! memory), so offloading can be tested and benchmarked on models far larger than any GPU
//! budget without downloading anything.
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
}

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
        _ => return Err(Error::invalid(format!("weight type {s:?} is not one of f32, f16, bf16, q8_0, q4_0, q4_1"))),
    })
}

/// One tensor of the file: name, GGUF dims (ne0 first), type.
struct Spec {
    name: String,
    dims: Vec<u64>,
    ggml: GgmlType,
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

    fn specs(&self, dtype: DType) -> Result<Vec<Spec>> {
        let wt = GgmlType::from_dtype(dtype).ok_or_else(|| Error::invalid(format!("{dtype} cannot be stored")))?;
        let (e, v) = (self.n_embd as u64, self.n_vocab as u64);
        let kv_dim = self.n_head_kv * (self.n_embd / self.n_head);
        let f32t = GgmlType::from_dtype(DType::F32).ok_or_else(|| Error::invalid("f32"))?;
        let mut specs = vec![Spec { name: "token_embd.weight".into(), dims: vec![e, v], ggml: wt, norm: false }];
        for l in 0..self.n_layers {
            let dims = crate::arch::LayerDims {
                n_embd: self.n_embd,
                n_ff: self.n_ff,
                q_dim: self.n_embd,
                kv_dim,
                head_dim: self.n_embd / self.n_head,
                n_expert: 0,
                n_ff_exp: 0,
            };
            for r in crate::arch::by_name("llama").map_or(&[][..], |a| a.required) {
                let dims = r.dims(&dims);
                let norm = dims.len() == 1;
                specs.push(Spec {
                    name: format!("blk.{l}.{}", r.gguf_suffix()),
                    dims,
                    ggml: if norm { f32t } else { wt },
                    norm,
                });
            }
        }
        specs.push(Spec { name: "output_norm.weight".into(), dims: vec![e], ggml: f32t, norm: true });
        if !self.tied {
            specs.push(Spec { name: "output.weight".into(), dims: vec![e, v], ggml: wt, norm: false });
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
                        let dt = if s.norm { DType::F32 } else { dtype };
                        dt.bytes_for(&[rows as usize, s.dims[0] as usize]).map_or(0, |b| b as u64)
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    fn writer(&self, dtype: DType, seed: u64) -> Result<(GgufWriter, Vec<Spec>)> {
        let mut w = GgufWriter::new();
        let md = w.metadata_mut();
        let a = "llama";
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
            w.add_tensor(&s.name, s.ggml, &s.dims)?;
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
fn fill_tensor(spec: &Spec, dtype: DType, seed: u64, index: usize, buf: &mut [u8]) {
    use rayon::prelude::*;
    let cols = spec.dims[0] as f32;
    // Uniform in [-a, a] has std a/sqrt(3); aim for std 1/sqrt(cols).
    let amp = 3f32.sqrt() / cols.sqrt();
    let dt = if spec.norm { DType::F32 } else { dtype };
    // Chunks must hold whole blocks (18, 20, 34 bytes) or elements: round 1 MiB down to a
    // multiple of the unit.
    let unit = match dt {
        DType::Q4_0 => 18,
        DType::Q4_1 => 20,
        DType::Q8_0 => 34,
        DType::F16 | DType::BF16 => 2,
        _ => 4,
    };
    let chunk = CHUNK / unit * unit;
    buf.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
        let mut rng = Mix(seed ^ ((index as u64) << 32) ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        match dt {
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => fill_blocks(dt, amp, &mut rng, out, unit),
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
    w.write_file(path, |i, buf| fill_tensor(&specs[i], dtype, seed, i, buf), progress)?;
    Ok(())
}

/// The same model as GGUF bytes in memory (tests).
pub fn gguf_bytes(preset: &Preset, dtype: DType, seed: u64) -> Result<Vec<u8>> {
    let (w, specs) = preset.writer(dtype, seed)?;
    Ok(w.to_bytes(|i, buf| fill_tensor(&specs[i], dtype, seed, i, buf))?)
}
