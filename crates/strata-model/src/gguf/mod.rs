//! GGUF model files (v2 and v3): a validating reader over a memory map and a streaming writer.
//!
//! Model files are untrusted input. The reader bounds every read by the file, caps string and
//! array lengths, checks tensor ranks, element and byte counts (overflow-checked), offsets
//! (aligned, inside the file, not overlapping), types and duplicate names, and never allocates
//! more than the file itself could justify. Each failure is a [`GgufError`] naming the key or
//! tensor and the offending value.
//!
//! Layout of a file (all integers little-endian): magic `"GGUF"`, version u32, tensor count
//! u64, metadata count u64, the metadata (key string, value type u32, value), the tensor
//! infos (name, rank u32, dims u64 × rank, ggml type u32, offset u64 relative to the data
//! section), padding to `general.alignment`, then the tensor data section.

mod reader;
mod types;
mod value;
mod writer;

pub use reader::GgufFile;
pub use types::{GgmlType, TensorInfo};
pub use value::{Metadata, Value};
pub use writer::GgufWriter;

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The largest `general.alignment` accepted (a power of two); real files use 32.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Longest metadata string value (chat templates are kilobytes; this leaves ample room).
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Longest metadata key (the GGUF spec's limit).
pub const MAX_KEY_LEN: u64 = (1 << 16) - 1;
/// Longest tensor name (the GGUF spec's limit).
pub const MAX_TENSOR_NAME_LEN: u64 = 64;
/// Deepest nesting of arrays in a metadata value (an array of scalars is depth 1). The spec
/// allows nesting; nothing real nests beyond 2, and a cap bounds the reader's recursion.
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Most dimensions of a tensor.
pub const MAX_RANK: u32 = 4;
/// Most tensors in a file. Real models have hundreds to tens of thousands; the cap bounds the
/// memory of the tensor table (~100 bytes per entry) whatever the file size.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata keys in a file (real files have tens).
pub const MAX_KVS: u64 = 1 << 20;
/// Most metadata values in all arrays together. Each costs a 32-byte [`Value`] in memory but
/// only 1 byte in the file, so file size alone would let a 4 GiB file claim 128 GiB; the
/// largest real tokenizers (vocab, scores, types, merges) total about 1.5 million.
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// What is wrong with a GGUF file (or with what a writer was asked to write).
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
    #[error("not a GGUF file: it starts with bytes {found:02x?}, expected \"GGUF\" [47, 47, 55, 46]")]
    BadMagic { found: Vec<u8> },
    #[error("GGUF version {version} is not supported; strata reads versions 2 and 3{hint}")]
    UnsupportedVersion { version: u32, hint: &'static str },
    #[error("file ends early: {what} at offset {offset} needs {need} bytes, only {have} remain")]
    Truncated { what: String, offset: u64, need: u64, have: u64 },
    #[error("{what} at offset {offset} claims {len} bytes; the limit is {max}")]
    StringTooLong { what: String, offset: u64, len: u64, max: u64 },
    #[error(
        "array {key:?} at offset {offset} claims {len} elements; at most {max} fit in the rest of the file and \
         the limit of {MAX_METADATA_VALUES} metadata values (truncated or corrupt file?)"
    )]
    ArrayTooLong { key: String, offset: u64, len: u64, max: u64 },
    #[error(
        "the header claims {count} tensors; at most {max} fit in the rest of the file and the limit of \
         {MAX_TENSORS} (truncated or corrupt file?)"
    )]
    TooManyTensors { count: u64, max: u64 },
    #[error(
        "the header claims {count} metadata keys; at most {max} fit in the rest of the file and the limit of \
         {MAX_KVS} (truncated or corrupt file?)"
    )]
    TooManyKvs { count: u64, max: u64 },
    #[error("general.alignment is {value}; it must be a power of two from 1 to {max}")]
    BadAlignment { value: u64, max: u64 },
    #[error("metadata {key:?} at offset {offset} has unknown value type {id} (known: 0 to 12)")]
    UnknownValueType { key: String, offset: u64, id: u32 },
    #[error("tensor {tensor:?} has unknown ggml type id {id}{hint}")]
    UnknownTensorType { tensor: String, id: u32, hint: &'static str },
    #[error("tensor {tensor:?} has {rank} dimensions; GGUF tensors have 1 to {MAX_RANK}")]
    BadRank { tensor: String, rank: u32 },
    #[error("tensor {tensor:?} has dims {dims:?}: {reason}")]
    BadDims { tensor: String, dims: Vec<u64>, reason: String },
    #[error("tensor {tensor:?} with dims {dims:?}: its {what} overflows")]
    Overflow { tensor: String, dims: Vec<u64>, what: &'static str },
    #[error("tensor {tensor:?} ({n_bytes} bytes at offset {offset}): {reason}")]
    BadTensorOffset { tensor: String, offset: u64, n_bytes: u64, reason: String },
    #[error("tensor name {tensor:?} appears twice")]
    DuplicateTensor { tensor: String },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata {key:?} nests arrays {depth} deep; at most {MAX_ARRAY_DEPTH} levels are allowed")]
    NestingTooDeep { key: String, depth: u32 },
    #[error("{what} at offset {offset} is empty")]
    EmptyName { what: String, offset: u64 },
    #[error("metadata {key:?} at offset {offset} is a bool stored as {value}; only 0 and 1 are valid")]
    BadBool { key: String, offset: u64, value: u8 },
}
