//! strata-model: model files (GGUF, safetensors), the llama-family forward pass, tokenizer,
//! chat templates, sampling and synthetic models.
//!
//! The library API for runners: open an [`Engine`] (model, device, plan, session in one
//! call), then [`Engine::generate`] text or [`Engine::score`] tokens. Underneath it:
//! [`Model::load`] a file, open a [`Session`] on a device, and [`generate`](fn@generate) text (or call
//! [`Session::forward`] for logits).

#![warn(missing_docs)]

pub mod arch;
pub mod batch;
pub mod chat;
pub mod config;
pub mod derive;
pub mod engine;
mod error;
pub mod forward;
pub mod generate;
pub mod gguf;
pub mod inspect;
pub mod model;
pub mod moe;
pub mod offload;
pub mod safetensors;
pub mod sample;
pub mod session;
pub mod session_experts;
pub mod speculative;
pub mod synth;
pub mod tokenizer;
pub mod weights;

pub use config::{LlamaConfig, ModelConfig};
pub use engine::{DeviceChoice, Engine, EngineOptions};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generation, StopReason, Timings, generate};
pub use model::{KvType, Model, ModelSource, SessionOptions};
pub use sample::{Sampler, SamplerConfig};
pub use session::{Layout, PassStats, STATS_KEPT, Session};
pub use speculative::{Drafter, Speculative, SpeculativeStats, generate_speculative};
/// The default model file (`$STRATA_MODEL`, else `models/…` in or above the current directory
/// or the running program); one lookup for the CLI and the tests.
pub use strata_kernels::{DEFAULT_MODEL, MODEL_ENV, default_model_path};
