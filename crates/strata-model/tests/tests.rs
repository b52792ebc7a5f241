//! strata-model's integration tests: one binary, a module per area.
//!
//! - `gguf`: GGUF round trips, the default model, the ggml type table, inspect;
//! - `gguf_malformed`: malformed GGUF files and a mutation proptest. It installs a global
//!   allocator for this binary that records the largest allocation per thread (a pass-through
//!   to `System`), to show that absurd header counts are rejected without allocating.

mod gguf;
mod gguf_malformed;
mod offload;
mod reference;
mod support;
