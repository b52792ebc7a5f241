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
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A metadata key appears more than once.
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A required metadata key is absent.
    #[error("required metadata key {key:?} is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type or an invalid value.
    #[error("metadata key {key:?} is {value}, expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value found, as text.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: it starts with bytes {found:02x?}, expected \"GGUF\" [47, 47, 55, 46]")]
    BadMagic {
        /// The first bytes of the file.
        found: Vec<u8>,
    },
    /// A GGUF version other than 2 and 3.
    #[error("GGUF version {version} is not supported; strata reads versions 2 and 3{hint}")]
    UnsupportedVersion {
        /// The version in the header.
        version: u32,
        /// Extra advice appended to the message (may be empty).
        hint: &'static str,
    },
    /// A read runs past the end of the file.
    #[error("file ends early: {what} at offset {offset} needs {need} bytes, only {have} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes the read needs.
        need: u64,
        /// Bytes left in the file.
        have: u64,
    },
    /// A string (key, value or name) longer than its limit.
    #[error("{what} at offset {offset} claims {len} bytes; the limit is {max}")]
    StringTooLong {
        /// What the string is.
        what: String,
        /// Byte offset of the string.
        offset: u64,
        /// The claimed length, bytes.
        len: u64,
        /// The limit, bytes.
        max: u64,
    },
    /// An array claims more elements than the file or the value limit allows.
    #[error(
        "array {key:?} at offset {offset} claims {len} elements; at most {max} fit in the rest of the file and \
         the limit of {MAX_METADATA_VALUES} metadata values (truncated or corrupt file?)"
    )]
    ArrayTooLong {
        /// The metadata key.
        key: String,
        /// Byte offset of the array.
        offset: u64,
        /// The claimed number of elements.
        len: u64,
        /// The most elements allowed here.
        max: u64,
    },
    /// The header claims more tensors than the file or [`MAX_TENSORS`] allows.
    #[error(
        "the header claims {count} tensors; at most {max} fit in the rest of the file and the limit of \
         {MAX_TENSORS} (truncated or corrupt file?)"
    )]
    TooManyTensors {
        /// The claimed tensor count.
        count: u64,
        /// The most tensors allowed here.
        max: u64,
    },
    /// The header claims more metadata keys than the file or [`MAX_KVS`] allows.
    #[error(
        "the header claims {count} metadata keys; at most {max} fit in the rest of the file and the limit of \
         {MAX_KVS} (truncated or corrupt file?)"
    )]
    TooManyKvs {
        /// The claimed key count.
        count: u64,
        /// The most keys allowed here.
        max: u64,
    },
    /// `general.alignment` is not a power of two in 1..=[`MAX_ALIGNMENT`].
    #[error("general.alignment is {value}; it must be a power of two from 1 to {max}")]
    BadAlignment {
        /// The alignment in the file.
        value: u64,
        /// The largest alignment accepted.
        max: u64,
    },
    /// A metadata value type id outside 0..=12.
    #[error("metadata {key:?} at offset {offset} has unknown value type {id} (known: 0 to 12)")]
    UnknownValueType {
        /// The metadata key.
        key: String,
        /// Byte offset of the type id.
        offset: u64,
        /// The type id.
        id: u32,
    },
    /// A tensor type id that is not a known [`GgmlType`].
    #[error("tensor {tensor:?} has unknown ggml type id {id}{hint}")]
    UnknownTensorType {
        /// The tensor name.
        tensor: String,
        /// The type id.
        id: u32,
        /// Extra advice appended to the message (may be empty).
        hint: &'static str,
    },
    /// A tensor rank outside 1..=[`MAX_RANK`].
    #[error("tensor {tensor:?} has {rank} dimensions; GGUF tensors have 1 to {MAX_RANK}")]
    BadRank {
        /// The tensor name.
        tensor: String,
        /// The rank in the file.
        rank: u32,
    },
    /// Invalid tensor dimensions (such as a zero dim, or a row not a whole number of blocks).
    #[error("tensor {tensor:?} has dims {dims:?}: {reason}")]
    BadDims {
        /// The tensor name.
        tensor: String,
        /// The dims, GGUF order.
        dims: Vec<u64>,
        /// What is wrong with them.
        reason: String,
    },
    /// A tensor's element or byte count overflows u64.
    #[error("tensor {tensor:?} with dims {dims:?}: its {what} overflows")]
    Overflow {
        /// The tensor name.
        tensor: String,
        /// The dims, GGUF order.
        dims: Vec<u64>,
        /// Which count overflows.
        what: &'static str,
    },
    /// A tensor's data offset is misaligned, outside the file or overlaps another tensor.
    #[error("tensor {tensor:?} ({n_bytes} bytes at offset {offset}): {reason}")]
    BadTensorOffset {
        /// The tensor name.
        tensor: String,
        /// The tensor's offset.
        offset: u64,
        /// The tensor's size, bytes.
        n_bytes: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Two tensors have the same name.
    #[error("tensor name {tensor:?} appears twice")]
    DuplicateTensor {
        /// The tensor name.
        tensor: String,
    },
    /// A string is not valid UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// What the string is.
        what: String,
        /// Byte offset of the string.
        offset: u64,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("metadata {key:?} nests arrays {depth} deep; at most {MAX_ARRAY_DEPTH} levels are allowed")]
    NestingTooDeep {
        /// The metadata key.
        key: String,
        /// The nesting depth reached.
        depth: u32,
    },
    /// An empty metadata key or tensor name.
    #[error("{what} at offset {offset} is empty")]
    EmptyName {
        /// What the name is.
        what: String,
        /// Byte offset of the name.
        offset: u64,
    },
    /// A bool value stored as a byte other than 0 or 1.
    #[error("metadata {key:?} at offset {offset} is a bool stored as {value}; only 0 and 1 are valid")]
    BadBool {
        /// The metadata key.
        key: String,
        /// Byte offset of the value.
        offset: u64,
        /// The byte found.
        value: u8,
    },
}
