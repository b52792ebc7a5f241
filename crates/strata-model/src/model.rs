//! A loaded model: its source (a GGUF file or a Hugging Face safetensors checkpoint),
//! hyperparameters, weights, tokenizer, chat template; and the options of a session over it.

use std::path::{Path, PathBuf};

use strata_tensor::DType;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::gguf::{GgufFile, Metadata};
use crate::safetensors::{self, SafetensorsCheckpoint};
use crate::tokenizer::Tokenizer;
use crate::weights::{LayerWeights, ModelWeights};
use crate::{Error, Result};

/// Where a model's weights and metadata come from.
pub enum ModelSource {
    /// A GGUF file.
    Gguf(GgufFile),
    /// A directory of safetensors shards with config.json and tokenizer files.
    Safetensors(SafetensorsCheckpoint),
}

impl ModelSource {
    /// The GGUF metadata, or for a checkpoint the GGUF-form metadata derived from its JSON files
    /// (architecture, name, tokenizer, chat template).
    pub fn metadata(&self) -> &Metadata {
        match self {
            ModelSource::Gguf(f) => f.metadata(),
            ModelSource::Safetensors(c) => &c.metadata,
        }
    }

    /// The GGUF file, if the model is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            ModelSource::Gguf(f) => Some(f),
            ModelSource::Safetensors(_) => None,
        }
    }

    /// "gguf" or "safetensors".
    pub fn format(&self) -> &'static str {
        match self {
            ModelSource::Gguf(_) => "gguf",
            ModelSource::Safetensors(_) => "safetensors",
        }
    }
}

/// A model ready to run: weights are views into the memory-mapped file(s).
///
/// ```
/// use strata_model::gguf::GgufFile;
/// use strata_model::synth::{Preset, gguf_bytes};
/// use strata_model::Model;
///
/// // A tiny random model built in memory; `Model::load(path)` opens a file or checkpoint.
/// let bytes = gguf_bytes(&Preset::by_name("tiny")?, strata_tensor::DType::Q8_0, 1)?;
/// let model = Model::from_file(GgufFile::from_bytes(bytes)?, "tiny.gguf".as_ref())?;
/// assert_eq!(model.weights.layers.len(), model.config.n_layers);
/// println!("{} layers, {} bytes of weights", model.config.n_layers, model.weight_bytes());
/// # Ok::<(), strata_model::Error>(())
/// ```
pub struct Model {
    /// The file or directory loaded.
    pub path: PathBuf,
    /// The opened file or checkpoint the weights are mapped from.
    pub source: ModelSource,
    /// The hyperparameters.
    pub config: LlamaConfig,
    /// The weights (views into the memory-mapped file(s)).
    pub weights: ModelWeights,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the model has one.
    pub chat_template: Option<ChatTemplate>,
}

impl Model {
    /// Opens, validates and maps a model: a GGUF file, or a Hugging Face checkpoint (a
    /// directory with `config.json`, `tokenizer.json` and safetensors weights, or a
    /// `*.safetensors`/`config.json` file inside one; see [`crate::safetensors`]).
    ///
    /// # Errors
    /// Any problem with the file(s), named (see [`crate::gguf::GgufError`] and [`Error::Model`]).
    pub fn load(path: &Path) -> Result<Model> {
        match safetensors::checkpoint_dir(path) {
            Some(dir) => Model::from_safetensors(&dir),
            None => Model::from_file(GgufFile::open(path)?, path),
        }
    }

    /// A model from an opened GGUF file (e.g. a synthetic one built in memory).
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_file(file: GgufFile, path: &Path) -> Result<Model> {
        let config = LlamaConfig::from_gguf(&file)?;
        let weights = ModelWeights::from_gguf(&file, &config)?;
        Model::assemble(path, ModelSource::Gguf(file), config, weights)
    }

    /// A model from the Hugging Face checkpoint in `dir`.
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_safetensors(dir: &Path) -> Result<Model> {
        let (checkpoint, config, weights) = safetensors::load(dir)?;
        Model::assemble(dir, ModelSource::Safetensors(checkpoint), config, weights)
    }

    fn assemble(path: &Path, source: ModelSource, config: LlamaConfig, weights: ModelWeights) -> Result<Model> {
        let tokenizer = Tokenizer::from_metadata(source.metadata())?;
        if tokenizer.vocab_size() != config.n_vocab {
            return Err(Error::model(format!(
                "the tokenizer has {} tokens but the model has {} embedding rows",
                tokenizer.vocab_size(),
                config.n_vocab
            )));
        }
        let chat_template = ChatTemplate::from_metadata(source.metadata())?;
        Ok(Model { path: path.to_path_buf(), source, config, weights, tokenizer, chat_template })
    }

    /// The model's metadata in GGUF form (see [`ModelSource::metadata`]).
    pub fn metadata(&self) -> &Metadata {
        self.source.metadata()
    }

    /// The file's name for a layer tensor (GGUF `blk.N.…`, or the checkpoint's HF name).
    pub fn layer_tensor_name(&self, layer: usize, role: crate::arch::Role) -> String {
        match self.source {
            ModelSource::Gguf(_) => format!("blk.{layer}.{}", role.gguf_suffix()),
            ModelSource::Safetensors(_) => {
                format!("model.layers.{layer}.{}", safetensors::hf_layer_tensor(&self.config.arch, role))
            }
        }
    }

    /// The first weight (by the file's name) that holds a NaN or infinite value or block scale,
    /// with where: what to name when a forward pass produces non-finite logits. Reads every
    /// weight, so it is meant for that failure path (and tools), not for loading.
    pub fn find_nonfinite_weight(&self) -> Option<String> {
        let gguf = matches!(self.source, ModelSource::Gguf(_));
        let (embd, norm, out) = if gguf {
            ("token_embd.weight", "output_norm.weight", "output.weight")
        } else {
            ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
        };
        let w = &self.weights;
        let mut named: Vec<(String, &strata_tensor::Tensor)> = vec![(embd.to_string(), &w.embedding)];
        for (l, layer) in w.layers.iter().enumerate() {
            named
                .extend(layer.roles().into_iter().zip(layer.tensors()).map(|(r, t)| (self.layer_tensor_name(l, r), t)));
        }
        named.push((norm.to_string(), &w.head.norm));
        if !self.config.tied_output {
            named.push((out.to_string(), &w.head.output));
        }
        named.into_iter().find_map(|(name, t)| nonfinite_in(t).map(|at| format!("tensor {name} {at}")))
    }

    /// Bytes of all layer weights plus head.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.layers.iter().map(LayerWeights::bytes).sum::<u64>() + self.weights.head.bytes()
    }
}

/// Where `t` (a host tensor) holds a NaN or infinite value or block scale, if it does.
fn nonfinite_in(t: &strata_tensor::Tensor) -> Option<String> {
    let bytes = t.host_bytes().ok()?;
    let kind = t.dtype().weight()?;
    if kind.is_quantized() {
        return strata_kernels::quant::find_nonfinite_scale(kind, bytes)
            .map(|b| format!("has a NaN or infinite scale in block {b} (of {} values)", kind.block_values()));
    }
    const CHUNK: usize = 4096;
    let mut values = [0.0f32; CHUNK];
    for (c, chunk) in bytes.chunks(CHUNK * kind.block_bytes()).enumerate() {
        let values = &mut values[..chunk.len() / kind.block_bytes()];
        strata_kernels::quant::dequantize_row(kind, chunk, values).ok()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Some(format!("has value {} at index {}", values[i], c * CHUNK + i));
        }
    }
    None
}

/// KV cache element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// 16-bit float (half).
    #[default]
    F16,
    /// 32-bit float.
    F32,
}

impl KvType {
    /// The tensor element type.
    pub fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::F32 => DType::F32,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

/// Options of a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Context length (positions the KV cache holds). 0 = the model's training context,
    /// capped at 4096.
    pub context: usize,
    /// Element type of the KV cache.
    pub kv_type: KvType,
    /// Most prompt tokens run through the layers at once.
    pub batch: usize,
    /// Passes of at least this many tokens stream the cpu layers to the accelerator and compute
    /// them there (the plan's prefill placement, `--prefill-stream-min`); None: never. Ignored
    /// without an accelerator.
    pub prefill_stream_min: Option<usize>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { context: 0, kv_type: KvType::F16, batch: 512, prefill_stream_min: None }
    }
}

impl SessionOptions {
    /// The context length these options give for `cfg`.
    pub fn context_for(&self, cfg: &LlamaConfig) -> usize {
        if self.context == 0 { cfg.n_ctx_train.min(4096) } else { self.context }
    }
}
