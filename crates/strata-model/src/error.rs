//! strata-model's error type: one enum over the file, tokenizer, tensor and generation errors.

use crate::gguf::GgufError;
use crate::tokenizer::TokenizerError;

/// Errors of strata-model. Messages say what was asked, what was found and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A GGUF file is invalid or cannot be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer cannot be built or cannot encode.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] strata_tensor::Error),
    /// The runtime (device, streams, memory) failed.
    #[error(transparent)]
    Runtime(#[from] strata_runtime::Error),
    /// No placement plan can be made for the model on this machine.
    #[error(transparent)]
    Plan(#[from] strata_runtime::plan::PlanError),
    /// A file of a model directory (config.json, a safetensors shard…) cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is readable but does not describe a model we can run.
    #[error("{0}")]
    Model(String),
    /// A prompt plus generation that does not fit the context.
    #[error(
        "{needed} tokens ({prompt} prompt + {generate} to generate) exceed the context of {context}; \
         raise --context (the model was trained with {trained}) or shorten the prompt / --max-tokens"
    )]
    ContextFull {
        /// Positions needed: the session's tokens so far, the prompt and the tokens to generate.
        needed: usize,
        /// The session's tokens so far plus the prompt.
        prompt: usize,
        /// Tokens to generate (`max_tokens`).
        generate: usize,
        /// Context length of the session (positions).
        context: usize,
        /// Context length the model was trained with.
        trained: usize,
    },
    /// An invalid argument or option.
    #[error("{0}")]
    Invalid(String),
    /// The session's host memory (KV cache, activations) does not fit what this process may
    /// still allocate; refused before allocating, with the numbers and the flag to change.
    #[error("{0}")]
    HostMemory(String),
}

impl Error {
    /// True for a (recoverable) out-of-memory from any layer below.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self,
            Error::Tensor(strata_tensor::Error::OutOfMemory { .. })
                | Error::Runtime(strata_runtime::Error::Tensor(strata_tensor::Error::OutOfMemory { .. }))
        )
    }

    /// An [`Error::Model`] with this message.
    pub fn model(msg: impl Into<String>) -> Error {
        Error::Model(msg.into())
    }

    /// An [`Error::Invalid`] with this message.
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
}

/// Result with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
