//! strata-model's integration tests: one binary, a module per area.
//!
//! - `chat`: chat templates (the model's, ChatML) and their errors;
//! - `engine`: the Engine against the session it wraps, its CPU path, its refusals;
//! - `gguf`: GGUF round trips, the default model, the ggml type table, inspect;
//! - `gguf_malformed`: malformed GGUF files and a mutation proptest. It installs a global
//!   allocator for this binary that records the largest allocation per thread (a pass-through
//!   to `System`), to show that absurd header counts are rejected without allocating;
//! - `tokenizer`: token ids against llama.cpp's (corpus, reference cases), BOS, EOG, streaming
//!   decode, a SentencePiece vocabulary.

mod chat;
mod cpu_paths;
mod engine;
mod gguf;
mod gguf_malformed;
mod gpu;
mod offload;
mod reference;
mod safetensors;
mod support;
mod tokenizer;
