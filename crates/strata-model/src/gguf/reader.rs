//! The GGUF reader: parses and validates a whole file (header, metadata, tensor infos, data
//! layout) up front, so that everything [`GgufFile`] hands out afterwards is known to be in
//! bounds.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use strata_tensor::SharedBytes;

use super::types::{GgmlType, TensorInfo, value_type};
use super::{
    DEFAULT_ALIGNMENT, GgufError, MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_KEY_LEN, MAX_KVS, MAX_METADATA_VALUES,
    MAX_RANK, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN, MAX_TENSORS, Metadata, Value,
};

/// Fewest bytes one metadata entry occupies: key length u64, a 1-byte key, value type u32,
/// a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Fewest bytes one tensor info occupies: name length u64, a 1-byte name, rank u32, one dim
/// u64, type u32, offset u64.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

/// A validated GGUF file, memory-mapped (or in memory), shareable across threads.
pub struct GgufFile {
    bytes: SharedBytes,
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_offset: u64,
}

impl GgufFile {
    /// Maps the file read-only and validates it.
    ///
    /// # Errors
    /// [`GgufError::Io`] if the file cannot be opened or mapped; any other variant if its
    /// contents are not a valid GGUF v2/v3 file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io { path: path.display().to_string(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // mmap of an empty file fails with EINVAL; let the parser report it as truncated.
        let bytes: SharedBytes = if len == 0 {
            Arc::new(Vec::<u8>::new())
        } else {
            // SAFETY: the map is read-only and private to this process. memmap2 cannot rule out
            // another process truncating or rewriting the file while it is mapped (which would
            // change or fault the bytes under us); like every mmap-based model loader we accept
            // that model files are not modified while in use.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            Arc::new(map)
        };
        Self::from_shared(bytes)
    }

    /// Validates a GGUF file held in memory (tests, synthetic models).
    ///
    /// # Errors
    /// As [`GgufFile::open`], less the I/O errors.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_shared(Arc::new(AlignedBytes::new(bytes)))
    }

    fn from_shared(bytes: SharedBytes) -> Result<GgufFile, GgufError> {
        let parsed = parse((*bytes).as_ref())?;
        Ok(GgufFile {
            bytes,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name: parsed.by_name,
            data_offset: parsed.data_offset,
        })
    }

    /// The file's GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The file's metadata, in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this name, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The bytes of a tensor of this file. A [`TensorInfo`] from another file whose range does
    /// not fit this one gives an empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.n_bytes).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?));
        range.and_then(|r| self.bytes().get(r)).unwrap_or(&[])
    }

    /// The whole file's bytes, shared: tensors can view them without copying
    /// (`Tensor::from_shared(dtype, &t.shape(), file.shared(), t.offset as usize)`).
    pub fn shared(&self) -> SharedBytes {
        Arc::clone(&self.bytes)
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the file, bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("file_len", &self.file_len())
            .finish()
    }
}

/// Heap bytes whose start is 16-byte aligned, so that f32/f16/i32 views of tensor data work
/// on in-memory files as they do on (page-aligned) maps. Copies only when the allocator handed
/// out a less aligned buffer.
struct AlignedBytes {
    buf: Vec<u8>,
    start: usize,
}

impl AlignedBytes {
    const ALIGN: usize = 16;

    fn new(bytes: Vec<u8>) -> AlignedBytes {
        if bytes.as_ptr().align_offset(Self::ALIGN) == 0 {
            return AlignedBytes { buf: bytes, start: 0 };
        }
        let mut buf: Vec<u8> = Vec::with_capacity(bytes.len() + Self::ALIGN - 1);
        // The capacity covers padding + bytes, so the buffer does not move after this.
        let start = buf.as_ptr().align_offset(Self::ALIGN).min(Self::ALIGN - 1);
        buf.resize(start, 0);
        buf.extend_from_slice(&bytes);
        AlignedBytes { buf, start }
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }
}

/// The validated contents of a file.
struct Parsed {
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_offset: u64,
}

/// A read that ran past the end; the caller adds what it was reading.
struct Short {
    offset: u64,
    need: u64,
    have: u64,
}

impl Short {
    fn what(self, what: impl Into<String>) -> GgufError {
        GgufError::Truncated { what: what.into(), offset: self.offset, need: self.need, have: self.have }
    }
}

/// A position in the file; every read is bounded by the bytes that remain.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        let short = Short { offset: self.offset(), need: n, have: self.remaining() };
        if n > short.have {
            return Err(short);
        }
        // n ≤ remaining, so it fits usize and the range is inside the buffer.
        let end = self.pos + n as usize;
        let s = self.buf.get(self.pos..end).ok_or(short)?;
        self.pos = end;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let at = self.offset();
        let s = self.take(N as u64)?;
        <[u8; N]>::try_from(s).map_err(|_| Short { offset: at, need: N as u64, have: s.len() as u64 })
    }

    fn u8(&mut self) -> Result<u8, Short> {
        Ok(u8::from_le_bytes(self.fixed()?))
    }

    fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    /// A GGUF string (u64 length, UTF-8 bytes) of at most `max` bytes. `what` names it in
    /// errors and is only called on failure.
    fn string(&mut self, max: u64, what: impl Fn() -> String) -> Result<&'a str, GgufError> {
        let at = self.offset();
        let len = self.u64().map_err(|s| s.what(format!("length of {}", what())))?;
        if len > max {
            return Err(GgufError::StringTooLong { what: what(), offset: at, len, max });
        }
        let bytes_at = self.offset();
        let bytes = self.take(len).map_err(|s| s.what(what()))?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what: what(), offset: bytes_at })
    }
}

/// Parses and validates a whole file.
fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    // A file that does not even start like GGUF is reported as such, however short it is.
    let head = buf.get(..buf.len().min(4)).unwrap_or(&[]);
    if !MAGIC.starts_with(head) {
        return Err(GgufError::BadMagic { found: head.to_vec() });
    }
    let mut cur = Cursor { buf, pos: 0 };
    cur.take(4).map_err(|s| s.what("magic"))?;
    let version = cur.u32().map_err(|s| s.what("version"))?;
    if version != 2 && version != 3 {
        let hint = match version {
            1 => " (version 1 used 32-bit counts and is obsolete; re-convert the model with a current llama.cpp)",
            v if matches!(v.swap_bytes(), 2 | 3) => " (this file is big-endian; strata reads little-endian files)",
            _ => "",
        };
        return Err(GgufError::UnsupportedVersion { version, hint });
    }
    let n_tensors = cur.u64().map_err(|s| s.what("tensor count"))?;
    let n_kv = cur.u64().map_err(|s| s.what("metadata count"))?;

    // Reject counts the remaining bytes cannot back before allocating anything for them.
    let rem = cur.remaining();
    let max_kvs = (rem / MIN_KV_BYTES).min(MAX_KVS);
    if n_kv > max_kvs {
        return Err(GgufError::TooManyKvs { count: n_kv, max: max_kvs });
    }
    let max_tensors = ((rem - n_kv * MIN_KV_BYTES) / MIN_TENSOR_INFO_BYTES).min(MAX_TENSORS);
    if n_tensors > max_tensors {
        return Err(GgufError::TooManyTensors { count: n_tensors, max: max_tensors });
    }

    let mut metadata = Metadata::new();
    let mut values_left = MAX_METADATA_VALUES;
    for i in 0..n_kv {
        let key_at = cur.offset();
        let key = cur.string(MAX_KEY_LEN, || format!("key of metadata entry {i}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyName { what: format!("key of metadata entry {i}"), offset: key_at });
        }
        let ty_at = cur.offset();
        let ty = cur.u32().map_err(|s| s.what(format!("value type of {key:?}")))?;
        let value = read_value(&mut cur, ValueAt { ty, ty_at, key, depth: 0 }, &mut values_left)?;
        metadata.insert(key.to_owned(), value)?;
    }
    let alignment = alignment(&metadata)?;

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut by_name = HashMap::with_capacity(n_tensors as usize);
    let mut relative = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let (info, rel) = read_tensor_info(&mut cur, i)?;
        if by_name.insert(info.name.clone(), tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor { tensor: info.name });
        }
        tensors.push(info);
        relative.push(rel);
    }

    let header_end = cur.offset();
    let data_offset = header_end.checked_next_multiple_of(alignment).ok_or_else(|| GgufError::Overflow {
        tensor: "(data section)".into(),
        dims: Vec::new(),
        what: "start offset",
    })?;
    place_tensors(&mut tensors, &relative, data_offset, alignment, buf.len() as u64)?;
    Ok(Parsed { version, alignment, metadata, tensors, by_name, data_offset })
}

/// `general.alignment`: a u32 power of two, 32 when absent.
pub(crate) fn alignment(metadata: &Metadata) -> Result<u64, GgufError> {
    let key = "general.alignment";
    match metadata.get(key) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(&Value::U32(a)) => {
            let a = u64::from(a);
            if a.is_power_of_two() && a <= MAX_ALIGNMENT {
                Ok(a)
            } else {
                Err(GgufError::BadAlignment { value: a, max: MAX_ALIGNMENT })
            }
        }
        Some(other) => Err(GgufError::BadValue {
            key: key.into(),
            value: format!("{} {}", other.type_name(), other.summary()),
            expected: "a u32 power of two".into(),
        }),
    }
}

/// Where a metadata value is: its type (read at `ty_at`), its key, and how many arrays
/// enclose it.
#[derive(Clone, Copy)]
struct ValueAt<'k> {
    ty: u32,
    ty_at: u64,
    key: &'k str,
    depth: u32,
}

/// One metadata value. `values_left` is what remains of [`MAX_METADATA_VALUES`].
fn read_value(cur: &mut Cursor<'_>, at: ValueAt<'_>, values_left: &mut u64) -> Result<Value, GgufError> {
    use value_type as t;
    let ValueAt { ty, ty_at, key, depth } = at;
    let what = || {
        if depth == 0 { format!("value of {key:?}") } else { format!("array element of {key:?}") }
    };
    let short = |s: Short| s.what(what());
    Ok(match ty {
        t::U8 => Value::U8(cur.u8().map_err(short)?),
        t::I8 => Value::I8(i8::from_le_bytes(cur.fixed().map_err(short)?)),
        t::U16 => Value::U16(u16::from_le_bytes(cur.fixed().map_err(short)?)),
        t::I16 => Value::I16(i16::from_le_bytes(cur.fixed().map_err(short)?)),
        t::U32 => Value::U32(cur.u32().map_err(short)?),
        t::I32 => Value::I32(i32::from_le_bytes(cur.fixed().map_err(short)?)),
        t::F32 => Value::F32(f32::from_le_bytes(cur.fixed().map_err(short)?)),
        t::U64 => Value::U64(cur.u64().map_err(short)?),
        t::I64 => Value::I64(i64::from_le_bytes(cur.fixed().map_err(short)?)),
        t::F64 => Value::F64(f64::from_le_bytes(cur.fixed().map_err(short)?)),
        t::BOOL => {
            let at = cur.offset();
            match cur.u8().map_err(short)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                value => return Err(GgufError::BadBool { key: key.into(), offset: at, value }),
            }
        }
        t::STRING => Value::String(cur.string(MAX_STRING_LEN, what)?.to_owned()),
        t::ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep { key: key.into(), depth: depth + 1 });
            }
            let elem_at = cur.offset();
            let elem = cur.u32().map_err(|s| s.what(format!("element type of array {key:?}")))?;
            let Some(min) = value_type::min_size(elem) else {
                return Err(GgufError::UnknownValueType { key: key.into(), offset: elem_at, id: elem });
            };
            let len_at = cur.offset();
            let len = cur.u64().map_err(|s| s.what(format!("length of array {key:?}")))?;
            // Each element takes at least `min` bytes, so this bounds the allocation below by
            // the bytes the file actually has (and by the budget of values).
            let max = (cur.remaining() / min).min(*values_left);
            if len > max {
                return Err(GgufError::ArrayTooLong { key: key.into(), offset: len_at, len, max });
            }
            *values_left -= len;
            let mut items = Vec::with_capacity(len as usize);
            let inner = ValueAt { ty: elem, ty_at: elem_at, key, depth: depth + 1 };
            for _ in 0..len {
                items.push(read_value(cur, inner, values_left)?);
            }
            Value::Array(items)
        }
        id => return Err(GgufError::UnknownValueType { key: key.into(), offset: ty_at, id }),
    })
}

/// Tensor info `i`, with its offset relative to the data section (checked later, once the
/// data section's start is known).
fn read_tensor_info(cur: &mut Cursor<'_>, i: u64) -> Result<(TensorInfo, u64), GgufError> {
    let name_at = cur.offset();
    let name = cur.string(MAX_TENSOR_NAME_LEN, || format!("name of tensor {i}"))?;
    if name.is_empty() {
        return Err(GgufError::EmptyName { what: format!("name of tensor {i}"), offset: name_at });
    }
    let rank = cur.u32().map_err(|s| s.what(format!("rank of tensor {name:?}")))?;
    if rank == 0 || rank > MAX_RANK {
        return Err(GgufError::BadRank { tensor: name.into(), rank });
    }
    let mut dims = Vec::with_capacity(rank as usize);
    for _ in 0..rank {
        dims.push(cur.u64().map_err(|s| s.what(format!("dims of tensor {name:?}")))?);
    }
    let id = cur.u32().map_err(|s| s.what(format!("type of tensor {name:?}")))?;
    let rel = cur.u64().map_err(|s| s.what(format!("offset of tensor {name:?}")))?;
    let Some(ggml_type) = GgmlType::from_id(id) else {
        return Err(GgufError::UnknownTensorType { tensor: name.into(), id, hint: GgmlType::unknown_id_hint(id) });
    };
    let n_bytes = tensor_bytes(name, ggml_type, &dims)?;
    Ok((TensorInfo { name: name.into(), ggml_type, dims, offset: 0, n_bytes }, rel))
}

/// Bytes of a tensor of this type and dims, after checking rank, dims (each ≥ 1, ne0 a whole
/// number of blocks) and overflow. Element counts must fit i64, as ggml stores them so.
pub(crate) fn tensor_bytes(name: &str, ty: GgmlType, dims: &[u64]) -> Result<u64, GgufError> {
    let bad = |reason: String| GgufError::BadDims { tensor: name.into(), dims: dims.to_vec(), reason };
    let rank = u32::try_from(dims.len()).unwrap_or(u32::MAX);
    if rank == 0 || rank > MAX_RANK {
        return Err(GgufError::BadRank { tensor: name.into(), rank });
    }
    if let Some(axis) = dims.iter().position(|&d| d == 0) {
        return Err(bad(format!("dimension {axis} is 0")));
    }
    let overflow = |what| GgufError::Overflow { tensor: name.into(), dims: dims.to_vec(), what };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| overflow("element count"))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    let block = ty.block_size();
    if !ne0.is_multiple_of(block) {
        return Err(bad(format!("ne0 = {ne0} is not a multiple of the {} block size {block}", ty.name())));
    }
    (n_elements / block).checked_mul(ty.type_size()).ok_or_else(|| overflow("byte count"))
}

/// Sets each tensor's absolute offset and checks that it is aligned, inside the file and
/// overlaps no other tensor.
fn place_tensors(
    tensors: &mut [TensorInfo],
    relative: &[u64],
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for (t, &rel) in tensors.iter_mut().zip(relative) {
        let bad = |offset, reason: String| GgufError::BadTensorOffset {
            tensor: t.name.clone(),
            offset,
            n_bytes: t.n_bytes,
            reason,
        };
        if !rel.is_multiple_of(alignment) {
            return Err(bad(rel, format!("relative offset {rel} is not a multiple of the alignment {alignment}")));
        }
        let Some(start) = data_offset.checked_add(rel) else {
            return Err(bad(rel, format!("relative offset {rel} overflows")));
        };
        match start.checked_add(t.n_bytes) {
            Some(end) if end <= file_len => t.offset = start,
            _ => {
                let reason = format!(
                    "data section starts at {data_offset}; the tensor would end past the end of the file ({file_len} bytes)"
                );
                return Err(bad(start, reason));
            }
        }
    }
    // Sorted by start, a tensor overlaps another exactly when it starts before its
    // predecessor ends.
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_unstable_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if let [prev, next] = pair {
            let prev_end = prev.offset + prev.n_bytes;
            if next.offset < prev_end {
                return Err(GgufError::BadTensorOffset {
                    tensor: next.name.clone(),
                    offset: next.offset,
                    n_bytes: next.n_bytes,
                    reason: format!("overlaps tensor {:?} at {}..{prev_end}", prev.name, prev.offset),
                });
            }
        }
    }
    Ok(())
}
