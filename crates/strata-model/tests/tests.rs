//! strata-model's integration tests: one binary, a module per area.
//!
//! - `arch`: qwen2/qwen3 models derived from the default model against it, strict files;
//! - `arch_reference`: Gemma 3 and derived qwen2/qwen3 models against llama.cpp and float64;
//! - `batch`: the continuous-batching scheduler: join/leave, KV block exhaustion and recovery,
//!   cancellation, first-come-first-served admission, chunked prefill that does not stall
//!   decoding, and batched greedy tokens equal to the single-sequence engine's;
//! - `batch_placed`: the scheduler on a streamed and a mixed plan of the host test device, and
//!   on a MoE model whose experts run apart from their layers;
//! - `chat`: chat templates (the model's, ChatML) and their errors;
//! - `engine`: the Engine against the session it wraps, its CPU path, its refusals;
//! - `f64_oracle`: the exact CPU path against a float64 forward pass of the default model;
//! - `gguf`: GGUF round trips, the default model, the ggml type table, inspect;
//! - `model_malformed`: every metadata key of six architectures' tiny models set to hostile
//!   values, each file loaded, tokenized and run: an error or finite logits, never a panic or a
//!   huge allocation;
//! - `moe`: qwen3moe and Mixtral models derived from the default model: identical experts give
//!   the dense model, routing spreads tokens, the split forward API, whole-layer placements,
//!   mixed expert types, a NaN router, malformed expert metadata and shapes;
//! - `offload_moe`: expert placements of a tiny MoE model on the host test device (experts with
//!   their layer, on the CPU, cached) against the all-CPU tokens; the cache's hits and budget;
//! - `hybrid`: hybrid layouts (streamed layers among cpu layers) on the host test device: the
//!   all-CPU tokens for several splits, and copies of later streamed layers in flight during
//!   every cpu layer (the order of events);
//! - `prefill_placed`: the prefill placement on the host test device: prompt passes stream the
//!   cpu layers (in the copy records), decode passes do not, and every pass gives the all-CPU
//!   logits;
//! - `gguf_malformed`: malformed GGUF files and a mutation proptest. It installs a global
//!   allocator for this binary that records the largest allocation per thread (a pass-through
//!   to `System`), to show that absurd header counts are rejected without allocating;
//! - `safetensors`, `safetensors_qwen`: HF checkpoints (llama; qwen2/qwen3/gemma3 from the
//!   default model) against the same weights in GGUF, Gemma 3 config keys read or refused,
//!   broken or unused-tensor checkpoints, and hostile config values (never a panic);
//! - `sample`: the sampler's filters against an f64 reference distribution, seeds, greedy;
//! - `speculative`: speculative decoding (lookup, draft model) equals plain greedy on the CPU and
//!   the host device's plans, KV rollback, the sampled distribution (chi-square), bad drafters;
//! - `tokenizer`: token ids against llama.cpp's (corpus, reference cases), BOS, EOG, streaming
//!   decode, a SentencePiece vocabulary.

mod arch;
mod arch_reference;
mod batch;
mod batch_placed;
mod chat;
mod cpu_paths;
mod engine;
mod f64_oracle;
mod gguf;
mod gguf_malformed;
mod gpu;
mod hybrid;
mod model_malformed;
mod moe;
mod offload;
mod offload_moe;
mod prefill_placed;
mod reference;
mod safetensors;
mod safetensors_qwen;
mod sample;
mod speculative;
mod support;
mod tokenizer;
