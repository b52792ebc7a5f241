//! strata-model's integration tests: one binary, a module per area.

mod gguf;
mod gguf_malformed;
mod offload;
mod reference;
mod safetensors;
mod support;
