//! GGUF model files (v2 and v3): a validating reader over a memory map and a writer.
//!
//! Model files are untrusted input. The reader bounds every read by the file, caps string and
//! array lengths, checks tensor ranks, element and byte counts (overflow-checked), offsets
//! (aligned, inside the file, not overlapping), types and duplicate names, and never allocates
//! more than the file itself could justify. Each failure is a [`GgufError`] naming the key or
//! tensor and the offending value.

mod value;

pub use value::{Metadata, Value};

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("required metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} is {value}, expected {expected}")]
    BadValue { key: String, value: String, expected: String },
}
