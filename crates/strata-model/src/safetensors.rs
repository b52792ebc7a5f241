//! Hugging Face checkpoints of llama, mistral, qwen2, qwen3 and (text-only) gemma3 models: a
//! directory with
//! `config.json`, the weights in
//! safetensors (f32, f16 or bf16; one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`) and `tokenizer.json` (with `tokenizer_config.json` and a
//! chat template when present).
//!
//! HF weights are `[out, in]` row-major, which is strata's `[rows, cols]`, so the matrices
//! are used as stored (zero-copy views of the memory map where aligned). The q/k rows are
//! *not* permuted to GGUF's adjacent-pair RoPE order (llama.cpp's converter does that for
//! llama and mistral only): the config says [`strata_tensor::RopeLayout::HalfSplit`] and the
//! rope op rotates the two halves instead. qwen2's Q/K/V biases and qwen3's per-head Q/K norms
//! are read by their HF names (`self_attn.q_proj.bias`, `self_attn.q_norm.weight`, …); gemma3's
//! four norms per block by theirs (`pre_feedforward_layernorm`, …), each norm weight plus 1
//! (its checkpoints store `w - 1`).
//! The tokenizer is described as GGUF metadata ([`tokenizer_metadata`]) so one tokenizer and
//! chat template implementation serves both formats.
//!
//! Every file is untrusted input: JSON files are size-capped, headers validated, and every
//! count, shape and dtype checked, with errors naming the file and key or tensor.

mod config;
mod shards;
mod tokenizer;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

pub(crate) use shards::hf_layer_tensor;
pub use shards::{INDEX_FILE, MAX_HEADER_BYTES, SINGLE_FILE};
pub use tokenizer::tokenizer_metadata;

use crate::config::LlamaConfig;
use crate::gguf::{Metadata, Value};
use crate::weights::ModelWeights;
use crate::{Error, Result};

/// The hyperparameters' file.
pub const CONFIG_FILE: &str = "config.json";

/// Largest `config.json` or `tokenizer_config.json` read (real ones are a few KiB, or a
/// few hundred with a chat template).
const MAX_CONFIG_JSON: u64 = 16 << 20;

/// A loaded checkpoint's files and what was derived from them.
pub struct SafetensorsCheckpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The safetensors files, in the order opened.
    pub files: Vec<PathBuf>,
    /// `general.architecture`, `general.name` and the tokenizer and chat template keys, in
    /// GGUF form (see [`tokenizer_metadata`]).
    pub metadata: Metadata,
}

/// The checkpoint directory `path` names, if it names one: a directory, or a
/// `*.safetensors`, `config.json` or index file inside one. `None` for anything else (a GGUF
/// file).
pub fn checkpoint_dir(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.to_path_buf());
    }
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".safetensors") || name == CONFIG_FILE || name == INDEX_FILE {
        let parent = path.parent()?;
        return Some(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() });
    }
    None
}

/// Reads a UTF-8 text file of at most `max` bytes.
pub(crate) fn read_text(path: &Path, max: u64) -> Result<String> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max {
        return Err(Error::model(format!("{} is {len} bytes; the limit is {max}", path.display())));
    }
    let mut text = String::with_capacity(len as usize);
    file.take(max).read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

/// Reads and parses a JSON file of at most `max` bytes.
pub(crate) fn read_json(path: &Path, max: u64) -> Result<Json> {
    serde_json::from_str(&read_text(path, max)?)
        .map_err(|e| Error::model(format!("{} is not valid JSON: {e}", path.display())))
}

/// Opens and checks the checkpoint in `dir`: hyperparameters, tokenizer metadata, weights.
///
/// # Errors
/// A missing or unreadable file, a model strata cannot run, a missing tensor, a wrong shape
/// or dtype, a corrupt safetensors header: each named ([`Error::Model`], [`Error::Io`]).
pub fn load(dir: &Path) -> Result<(SafetensorsCheckpoint, LlamaConfig, ModelWeights)> {
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(Error::model(format!(
            "{} has no {CONFIG_FILE}: a Hugging Face checkpoint directory holds {CONFIG_FILE}, tokenizer.json and \
             {SINGLE_FILE} (or shards listed in {INDEX_FILE})",
            dir.display()
        )));
    }
    let json = read_json(&config_path, MAX_CONFIG_JSON)?;
    let config = LlamaConfig::from_hf_config(&json)?;
    let mut metadata = tokenizer_metadata(dir, &json, config.n_vocab)?;
    config.check_token_ids(&metadata)?;
    metadata.set("general.architecture", Value::String(config.arch.clone()));
    let name = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    metadata.set("general.name", Value::String(name.unwrap_or_else(|| dir.display().to_string())));
    let (shards, files) = shards::Shards::open(dir)?;
    let weights = shards.weights(&config)?;
    Ok((SafetensorsCheckpoint { dir: dir.to_path_buf(), files, metadata }, config, weights))
}
