//! strata-model: model files (GGUF, safetensors), the llama-family forward pass, tokenizer,
//! chat templates, sampling and synthetic models.

pub mod chat;
pub mod gguf;
pub mod inspect;
pub mod safetensors;
pub mod tokenizer;
