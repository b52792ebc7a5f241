//! A loaded model: file, hyperparameters, weights, tokenizer, chat template; and the options
//! of a session over it.

use std::path::{Path, PathBuf};

use strata_tensor::DType;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::weights::{LayerWeights, ModelWeights};
use crate::{Error, Result};

/// A model ready to run: weights are views into the memory-mapped file.
pub struct Model {
    pub path: PathBuf,
    pub file: GgufFile,
    pub config: LlamaConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

impl Model {
    /// Opens, validates and maps a GGUF model.
    ///
    /// # Errors
    /// Any problem with the file, named (see [`crate::gguf::GgufError`] and [`Error::Model`]).
    pub fn load(path: &Path) -> Result<Model> {
        Model::from_file(GgufFile::open(path)?, path)
    }

    /// A model from an opened GGUF file (e.g. a synthetic one built in memory).
    pub fn from_file(file: GgufFile, path: &Path) -> Result<Model> {
        let config = LlamaConfig::from_gguf(&file)?;
        let weights = ModelWeights::from_gguf(&file, &config)?;
        let tokenizer = Tokenizer::from_metadata(file.metadata())?;
        if tokenizer.vocab_size() != config.n_vocab {
            return Err(Error::model(format!(
                "the tokenizer has {} tokens but the model has {} embedding rows",
                tokenizer.vocab_size(),
                config.n_vocab
            )));
        }
        let chat_template = ChatTemplate::from_metadata(file.metadata())?;
        Ok(Model { path: path.to_path_buf(), file, config, weights, tokenizer, chat_template })
    }

    /// Bytes of all layer weights plus head.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.layers.iter().map(LayerWeights::bytes).sum::<u64>() + self.weights.head.bytes()
    }
}

/// KV cache element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::F32 => DType::F32,
        }
    }

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
    pub kv_type: KvType,
    /// Most prompt tokens run through the layers at once.
    pub batch: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { context: 0, kv_type: KvType::F16, batch: 512 }
    }
}

impl SessionOptions {
    /// The context length these options give for `cfg`.
    pub fn context_for(&self, cfg: &LlamaConfig) -> usize {
        if self.context == 0 { cfg.n_ctx_train.min(4096) } else { self.context }
    }
}
