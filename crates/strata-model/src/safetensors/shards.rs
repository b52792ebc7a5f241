//! The safetensors files of a checkpoint (one `model.safetensors`, or the shards a
//! `model.safetensors.index.json` names), memory-mapped and validated, and the model's weights
//! viewed out of them. As for GGUF, every tensor of the checkpoint must be one the architecture
//! reads: a tensor nobody would read (a bias in a llama checkpoint, a layer past
//! `num_hidden_layers`) is an error naming it. Only the RoPE inverse frequencies some older
//! checkpoints store (`rotary_emb.inv_freq`, recomputed from `rope_theta`) are skipped, as
//! llama.cpp's converter skips them.
//!
//! Files are untrusted: the header length is capped and checked against the file before any
//! JSON is parsed, the `safetensors` crate then checks that the tensors' byte ranges tile the
//! data section exactly (no gaps, no overlap, sizes matching dtype × shape, no overflow), and
//! every tensor strata uses must have exactly the shape and one of the dtypes it expects.
//! Tensors whose bytes are aligned for their element type are zero-copy views into the map;
//! safetensors does not promise alignment, so the others are copied.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use strata_tensor::{DType, SharedBytes, Tensor};

use super::read_json;
use crate::arch::Role;
use crate::config::LlamaConfig;
use crate::weights::{HeadWeights, LayerWeights, ModelWeights};
use crate::{Error, Result};

/// Largest header accepted. Real headers take about 100 bytes per tensor (tens of KiB for a
/// 70B shard); the cap keeps a corrupt length from making us parse a huge "header".
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The HF name (after `model.layers.N.`) of a layer tensor of architecture `arch`.
pub(crate) fn hf_layer_tensor(arch: &str, r: Role) -> &'static str {
    // Gemma 3 names its four norms per block after where they sit (transformers'
    // Gemma3DecoderLayer); llama and qwen call their pre-FFN norm post_attention_layernorm.
    if arch == "gemma3" {
        match r {
            Role::PostAttnNorm => return "post_attention_layernorm.weight",
            Role::FfnNorm => return "pre_feedforward_layernorm.weight",
            Role::PostFfnNorm => return "post_feedforward_layernorm.weight",
            _ => {}
        }
    }
    match r {
        Role::AttnNorm => "input_layernorm.weight",
        Role::Q => "self_attn.q_proj.weight",
        Role::QBias => "self_attn.q_proj.bias",
        Role::K => "self_attn.k_proj.weight",
        Role::KBias => "self_attn.k_proj.bias",
        Role::V => "self_attn.v_proj.weight",
        Role::VBias => "self_attn.v_proj.bias",
        Role::QNorm => "self_attn.q_norm.weight",
        Role::KNorm => "self_attn.k_norm.weight",
        Role::O => "self_attn.o_proj.weight",
        Role::PostAttnNorm => "post_attention_layernorm.weight",
        // In HF llama/qwen checkpoints the pre-FFN norm is called post_attention_layernorm.
        Role::FfnNorm => "post_attention_layernorm.weight",
        Role::Gate => "mlp.gate_proj.weight",
        Role::Up => "mlp.up_proj.weight",
        Role::Down => "mlp.down_proj.weight",
        Role::PostFfnNorm => "post_feedforward_layernorm.weight",
        // Mixture-of-experts checkpoints (not read from safetensors yet: HF stores one 2-D
        // tensor per expert, `mlp.experts.E.gate_proj.weight`, where strata wants them stacked).
        Role::GateInp => "mlp.gate.weight",
        Role::GateExps => "mlp.experts.gate_proj.weight",
        Role::UpExps => "mlp.experts.up_proj.weight",
        Role::DownExps => "mlp.experts.down_proj.weight",
    }
}

/// What an architecture's HF checkpoints add to each RMSNorm weight to get the weight strata
/// (and GGUF) multiply by: Gemma 3's RMSNorm computes `x̂ · (1 + w)`, so its checkpoints store
/// `w - 1` for every norm (the four per block, the per-head Q/K norms and the final one), and
/// llama.cpp's converter adds 1 to each `*norm.weight`; the others store the weight itself.
pub(crate) fn hf_norm_shift(arch: &str) -> f32 {
    if arch == "gemma3" { 1.0 } else { 0.0 }
}

/// One validated safetensors file.
struct Shard {
    /// File name, for messages.
    name: String,
    bytes: SharedBytes,
    /// Absolute offset of the data section (8 + header length).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// Maps a file read-only (an empty file becomes an empty buffer: mmap rejects length 0).
fn map_file(path: &Path) -> Result<SharedBytes> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let file = File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(Arc::new(Vec::<u8>::new()));
    }
    // SAFETY: the map is read-only and private to this process. memmap2 cannot rule out another
    // process truncating or rewriting the file while it is mapped; like the GGUF reader (and
    // every mmap-based loader) we accept that model files are not modified while in use.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    Ok(Arc::new(map))
}

fn header_error(name: &str, e: SafeTensorError) -> Error {
    let what = match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensors' byte ranges do not cover the file exactly (truncated or corrupt file)".to_string()
        }
        SafeTensorError::InvalidHeaderDeserialization(e) => format!("the header is not a safetensors header: {e}"),
        other => format!("invalid safetensors header: {other}"),
    };
    Error::model(format!("{name}: {what}"))
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Shard::from_shared(name, map_file(path)?)
    }

    /// Validates the header of `bytes` (a whole safetensors file).
    fn from_shared(name: String, bytes: SharedBytes) -> Result<Shard> {
        let buf = (*bytes).as_ref();
        let len = buf.len() as u64;
        let Some(&prefix) = buf.first_chunk::<8>() else {
            return Err(Error::model(format!("{name} is {len} bytes long, too short for a safetensors file")));
        };
        let n = u64::from_le_bytes(prefix);
        if n > MAX_HEADER_BYTES {
            return Err(Error::model(format!(
                "{name}: the header length is {n} bytes; the limit is {MAX_HEADER_BYTES} (corrupt or not a safetensors file)"
            )));
        }
        if n > len - 8 {
            return Err(Error::model(format!(
                "{name}: the header length is {n} bytes, but only {} bytes follow (truncated file)",
                len - 8
            )));
        }
        let (n, metadata) = SafeTensors::read_metadata(buf).map_err(|e| header_error(&name, e))?;
        let tensors = metadata.tensors().into_iter().map(|(k, info)| (k, info.clone())).collect();
        Ok(Shard { name, data_start: 8 + n, bytes, tensors })
    }

    /// The bytes of `info` (validated by the header check; an empty slice if not, never a panic).
    fn data(&self, info: &TensorInfo) -> (usize, &[u8]) {
        let (s, e) = info.data_offsets;
        let start = self.data_start.saturating_add(s);
        let slice = (*self.bytes).as_ref().get(start..self.data_start.saturating_add(e)).unwrap_or(&[]);
        (start, slice)
    }
}

/// The files of a checkpoint and where each tensor lives.
pub(super) struct Shards {
    shards: Vec<Shard>,
    by_name: HashMap<String, usize>,
}

/// A shard file name from the index: a plain `*.safetensors` name inside the directory.
fn shard_name(tensor: &str, v: &serde_json::Value) -> Result<String> {
    let bad = || {
        Error::model(format!(
            "{INDEX_FILE}: tensor {tensor} maps to {v}, expected the name of a .safetensors file in the same directory"
        ))
    };
    let f = v.as_str().ok_or_else(bad)?;
    let plain = Path::new(f).file_name().is_some_and(|n| n == f) && !f.starts_with('.');
    if !plain || !f.ends_with(".safetensors") {
        return Err(bad());
    }
    Ok(f.to_string())
}

impl Shards {
    /// Opens `dir/model.safetensors`, or every shard of `dir/model.safetensors.index.json`.
    /// Returns the files in the order opened.
    pub(super) fn open(dir: &Path) -> Result<(Shards, Vec<PathBuf>)> {
        let index = dir.join(INDEX_FILE);
        if !index.is_file() {
            let path = dir.join(SINGLE_FILE);
            if !path.is_file() {
                return Err(Error::model(format!("{} has neither {SINGLE_FILE} nor {INDEX_FILE}", dir.display())));
            }
            let shard = Shard::open(&path)?;
            let by_name = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
            return Ok((Shards { shards: vec![shard], by_name }, vec![path]));
        }
        let json = read_json(&index, 64 << 20)?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            Error::model(format!("{INDEX_FILE} has no \"weight_map\" object (tensor name → shard file)"))
        })?;
        let (mut shards, mut files, mut by_file, mut by_name) =
            (Vec::new(), Vec::new(), HashMap::new(), HashMap::new());
        for (tensor, v) in map {
            let f = shard_name(tensor, v)?;
            let i = match by_file.get(&f) {
                Some(&i) => i,
                None => {
                    let path = dir.join(&f);
                    shards.push(Shard::open(&path)?);
                    files.push(path);
                    by_file.insert(f, shards.len() - 1);
                    shards.len() - 1
                }
            };
            by_name.insert(tensor.clone(), i);
        }
        Ok((Shards { shards, by_name }, files))
    }

    /// The shard and header entry of `name`, checked against `shape`.
    fn find(&self, name: &str, shape: &[usize], why: &str) -> Result<(&Shard, &TensorInfo)> {
        let shard = self.by_name.get(name).and_then(|&i| self.shards.get(i));
        let Some(shard) = shard else {
            return Err(Error::model(format!("tensor {name} is missing from the checkpoint")));
        };
        let info = shard.tensors.get(name).ok_or_else(|| {
            Error::model(format!("tensor {name} is missing from {} ({INDEX_FILE} lists it there)", shard.name))
        })?;
        if info.shape != shape {
            return Err(Error::model(format!(
                "tensor {name} in {} has shape {:?}, expected {shape:?}{why}",
                shard.name, info.shape
            )));
        }
        Ok((shard, info))
    }

    fn dtype(shard: &Shard, name: &str, dt: Dtype) -> Result<DType> {
        match dt {
            Dtype::F32 => Ok(DType::F32),
            Dtype::F16 => Ok(DType::F16),
            Dtype::BF16 => Ok(DType::BF16),
            other => Err(Error::model(format!(
                "tensor {name} in {} has dtype {other}; strata loads f32, f16 and bf16 safetensors weights",
                shard.name
            ))),
        }
    }

    /// A weight matrix (or the embedding): a view into the map when aligned, else a copy.
    fn matrix(&self, name: &str, shape: &[usize], why: &str) -> Result<Tensor> {
        let (shard, info) = self.find(name, shape, why)?;
        let dtype = Self::dtype(shard, name, info.dtype)?;
        let (start, bytes) = shard.data(info);
        let align = if dtype == DType::F32 { 4 } else { 2 };
        if (bytes.as_ptr() as usize).is_multiple_of(align) {
            return Ok(Tensor::from_shared(dtype, shape, Arc::clone(&shard.bytes), start)?);
        }
        log::debug!("{name} in {} is not {align}-byte aligned: copied", shard.name);
        Ok(Tensor::from_bytes(dtype, shape, bytes)?)
    }

    /// A norm vector as f32 (the kernels take f32 norm weights), `shift` added to each value
    /// ([`hf_norm_shift`]).
    fn norm(&self, name: &str, n: usize, shift: f32, why: &str) -> Result<Tensor> {
        let (shard, info) = self.find(name, &[n], why)?;
        let (_, bytes) = shard.data(info);
        let values: Vec<f32> = match Self::dtype(shard, name, info.dtype)? {
            DType::F32 if shift == 0.0 => return self.matrix(name, &[n], why),
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        };
        Ok(Tensor::from_f32(&[n], values.into_iter().map(|v| v + shift).collect())?)
    }

    /// Every weight of the checkpoint with the shapes `cfg` implies.
    ///
    /// # Errors
    /// A missing tensor, a wrong shape, an unsupported dtype or a tensor nobody reads, named.
    pub(super) fn weights(&self, cfg: &LlamaConfig) -> Result<ModelWeights> {
        self.check_all_claimed(cfg)?;
        let (e, v) = (cfg.n_embd, cfg.n_vocab);
        let top = " (from config.json vocab_size and hidden_size)";
        let embedding = self.matrix("model.embed_tokens.weight", &[v, e], top)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        let dims = cfg.layer_dims();
        let shift = hf_norm_shift(&cfg.arch);
        for l in 0..cfg.n_layers {
            let mut group = Vec::with_capacity(cfg.layer_roles.len());
            for &r in &cfg.layer_roles {
                let name = format!("model.layers.{l}.{}", hf_layer_tensor(&cfg.arch, r));
                // HF shapes are [out, in]: the GGUF dims reversed.
                let shape: Vec<usize> = r.dims(&dims).iter().rev().map(|&d| d as usize).collect();
                let why = dims_source(cfg, r);
                group.push(if r.is_vector() {
                    self.norm(&name, shape[0], if r.is_norm() { shift } else { 0.0 }, &why)?
                } else {
                    self.matrix(&name, &shape, &why)?
                });
            }
            layers.push(LayerWeights::from_group(group, &cfg.layer_roles)?);
        }
        let norm = self.norm("model.norm.weight", e, shift, " (from config.json hidden_size)")?;
        let output = if cfg.tied_output {
            self.matrix("model.embed_tokens.weight", &[v, e], top)?
        } else if self.by_name.contains_key("lm_head.weight") {
            self.matrix("lm_head.weight", &[v, e], top)?
        } else {
            return Err(Error::model(
                "tensor lm_head.weight is missing and config.json tie_word_embeddings is not true",
            ));
        };
        Ok(ModelWeights { embedding, layers, head: HeadWeights { norm, output } })
    }

    /// Every tensor of every shard is read by `cfg`'s model (or is a skipped `inv_freq`).
    fn check_all_claimed(&self, cfg: &LlamaConfig) -> Result<()> {
        let mut claimed: HashSet<String> = ["model.embed_tokens.weight", "model.norm.weight"].map(String::from).into();
        if !cfg.tied_output {
            claimed.insert("lm_head.weight".into());
        }
        for l in 0..cfg.n_layers {
            claimed
                .extend(cfg.layer_roles.iter().map(|&r| format!("model.layers.{l}.{}", hf_layer_tensor(&cfg.arch, r))));
        }
        let mut unclaimed: Vec<(&str, &str)> = self
            .shards
            .iter()
            .flat_map(|s| s.tensors.keys().map(move |k| (k.as_str(), s.name.as_str())))
            .filter(|(k, _)| !claimed.contains(*k) && !k.ends_with(".rotary_emb.inv_freq"))
            .collect();
        unclaimed.sort();
        let Some(&(name, file)) = unclaimed.first() else { return Ok(()) };
        let hint = if name == "lm_head.weight" {
            " (config.json tie_word_embeddings is true, so the output head is the token embedding)".to_string()
        } else if let Some(l) = layer_of(name)
            && l >= cfg.n_layers
        {
            format!(" (config.json num_hidden_layers is {})", cfg.n_layers)
        } else {
            let known: Vec<&str> = crate::arch::ARCHS
                .iter()
                .filter(|a| a.required.iter().chain(a.optional).any(|&r| name.ends_with(hf_layer_tensor(a.name, r))))
                .map(|a| a.name)
                .collect();
            if known.is_empty() {
                String::new()
            } else {
                format!(" (architectures with such a tensor: {}; is config.json's model_type right?)", known.join(", "))
            }
        };
        let more = match unclaimed.len() {
            1 => String::new(),
            n => format!(" ({} more unused tensors)", n - 1),
        };
        Err(Error::model(format!(
            "tensor {name} in {file} is not used by architecture {:?}{hint}{more}; refusing to run a model that \
             would silently ignore it",
            cfg.arch
        )))
    }
}

/// The config.json keys a layer tensor's expected shape comes from, for shape errors: a
/// checkpoint whose FFN or head size does not match its tensors is told which keys to check.
fn dims_source(cfg: &LlamaConfig, r: Role) -> String {
    let heads = |key: &str, n: usize| format!("{key} {n} × head_dim {}", cfg.head_dim);
    let (q, kv) = (heads("num_attention_heads", cfg.n_head), heads("num_key_value_heads", cfg.n_head_kv));
    let e = format!("hidden_size {}", cfg.n_embd);
    let what = match r {
        Role::AttnNorm | Role::FfnNorm | Role::PostAttnNorm | Role::PostFfnNorm => e,
        Role::Q | Role::O => format!("{e}; {q}"),
        Role::QBias => q,
        Role::K | Role::V => format!("{e}; {kv}"),
        Role::KBias | Role::VBias => kv,
        Role::QNorm | Role::KNorm => format!("head_dim {}", cfg.head_dim),
        Role::Gate | Role::Up | Role::Down => format!("{e}; intermediate_size {}", cfg.n_ff),
        Role::GateInp | Role::GateExps | Role::UpExps | Role::DownExps => format!("{e}; experts {}", cfg.n_expert),
    };
    format!(" (from config.json {what})")
}

/// The layer index of a `model.layers.N.…` name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split_once('.')?.0.parse().ok()
}
