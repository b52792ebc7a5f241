//! The GGUF writer: collects metadata and tensor descriptions, then writes header and data in
//! one pass. Tensor bytes are produced by a caller's `fill` function, in parallel, straight
//! into the destination (a memory-mapped output file or one buffer), so a synthetic model of
//! many GB is written at memory speed without a second copy.
//!
//! Files come out as llama.cpp writes them: version 3, each tensor at a multiple of the
//! alignment, padding after every tensor including the last.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::reader::{alignment, tensor_bytes};
use super::types::{GgmlType, value_type};
use super::{GgufError, MAGIC, MAX_ARRAY_DEPTH, MAX_KEY_LEN, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN, Metadata, Value};

/// Builds a GGUF v3 file. Alignment is 32 unless `general.alignment` (u32) is set in the
/// metadata.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    ggml_type: GgmlType,
    dims: Vec<u64>,
    n_bytes: u64,
}

/// Where everything goes: the encoded header (padded to the data section), and each tensor's
/// offset relative to the data section.
struct Layout {
    header: Vec<u8>,
    offsets: Vec<u64>,
    total_len: u64,
}

impl GgufWriter {
    /// An empty version-3 file with alignment 32.
    pub fn new() -> Self {
        Self::default()
    }

    /// The metadata to write.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata to write, to add or change keys.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Adds a tensor (dims in GGUF order: `dims[0]` elements per row) and returns its index,
    /// which `fill` receives.
    ///
    /// # Errors
    /// An empty, over-long or duplicate name; rank outside 1..=4; a zero dim; `dims[0]` not a
    /// whole number of the type's blocks; an element or byte count that overflows.
    pub fn add_tensor(&mut self, name: &str, ggml_type: GgmlType, dims: &[u64]) -> Result<usize, GgufError> {
        if name.is_empty() {
            return Err(GgufError::EmptyName { what: "tensor name given to the writer".into(), offset: 0 });
        }
        if name.len() as u64 > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::StringTooLong {
                what: format!("tensor name {name:?}"),
                offset: 0,
                len: name.len() as u64,
                max: MAX_TENSOR_NAME_LEN,
            });
        }
        if self.names.contains(name) {
            return Err(GgufError::DuplicateTensor { tensor: name.into() });
        }
        let n_bytes = tensor_bytes(name, ggml_type, dims)?;
        self.names.insert(name.into());
        self.tensors.push(PendingTensor { name: name.into(), ggml_type, dims: dims.to_vec(), n_bytes });
        Ok(self.tensors.len() - 1)
    }

    /// Bytes of tensor `index` (0 for an index that was never returned by `add_tensor`).
    pub fn tensor_len(&self, index: usize) -> u64 {
        self.tensors.get(index).map_or(0, |t| t.n_bytes)
    }

    /// Number of tensors added so far.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Writes the file: header, then every tensor's bytes from `fill(index, buf)` (with
    /// `buf.len()` equal to its byte count, zeroed), called in parallel. `progress(bytes_done)`
    /// is called as tensors complete. The file is written as `<path>.part` and renamed when
    /// complete, so `path` never holds a partial file. Space for the whole file is reserved
    /// first, so a full disk is an error rather than a crash of the mapped writes.
    ///
    /// The data reaches the page cache; the kernel writes it back as usual (no fsync: these
    /// files are regenerable, and syncing many GB would dominate the time).
    ///
    /// # Errors
    /// Invalid metadata (see [`GgufWriter::to_bytes`]) or any I/O failure, naming the path.
    pub fn write_file(
        &self,
        path: &Path,
        fill: impl Fn(usize, &mut [u8]) + Sync,
        progress: impl Fn(u64) + Sync,
    ) -> Result<(), GgufError> {
        let layout = self.layout()?;
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let written = self.write_part(&part, &layout, &fill, &progress).and_then(|()| {
            std::fs::rename(&part, path).map_err(|source| GgufError::Io { path: path.display().to_string(), source })
        });
        if written.is_err() {
            // Leave nothing half-written behind; the error says what went wrong.
            let _ = std::fs::remove_file(&part);
        }
        written
    }

    fn write_part(
        &self,
        part: &Path,
        layout: &Layout,
        fill: &(impl Fn(usize, &mut [u8]) + Sync),
        progress: &(impl Fn(u64) + Sync),
    ) -> Result<(), GgufError> {
        let io = |source| GgufError::Io { path: part.display().to_string(), source };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(part).map_err(io)?;
        file.set_len(layout.total_len).map_err(io)?;
        reserve(&file, layout.total_len).map_err(io)?;
        // SAFETY: we created and truncated this file just now and keep the only handle; the
        // map is dropped before the file is renamed. Space is reserved above, so stores into
        // the map cannot fault for lack of disk space.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(io)?;
        self.fill_into(&mut map, layout, fill, progress)
    }

    /// The whole file in memory; `fill` as for [`GgufWriter::write_file`].
    ///
    /// # Errors
    /// Metadata the reader would reject: an empty or over-long key, an over-long string, an
    /// array whose elements differ in type or that nests too deep, a bad `general.alignment`.
    pub fn to_bytes(&self, fill: impl Fn(usize, &mut [u8]) + Sync) -> Result<Vec<u8>, GgufError> {
        let layout = self.layout()?;
        let len = usize::try_from(layout.total_len).map_err(|_| too_large(layout.total_len))?;
        let mut buf = vec![0u8; len];
        self.fill_into(&mut buf, &layout, &fill, &|_| {})?;
        Ok(buf)
    }

    fn layout(&self) -> Result<Layout, GgufError> {
        let alignment = alignment(&self.metadata)?;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut data_len = 0u64;
        for t in &self.tensors {
            offsets.push(data_len);
            data_len = data_len
                .checked_add(t.n_bytes)
                .and_then(|end| end.checked_next_multiple_of(alignment))
                .ok_or_else(|| too_large(u64::MAX))?;
        }

        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in self.metadata.iter() {
            if key.is_empty() {
                return Err(GgufError::EmptyName { what: "metadata key given to the writer".into(), offset: 0 });
            }
            put_string(&mut h, key, MAX_KEY_LEN, || format!("metadata key {key:?}"))?;
            h.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut h, key, value, 0)?;
        }
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            put_string(&mut h, &t.name, MAX_TENSOR_NAME_LEN, || format!("tensor name {:?}", t.name))?;
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
        }
        let data_offset = (h.len() as u64).next_multiple_of(alignment);
        h.resize(usize::try_from(data_offset).map_err(|_| too_large(data_offset))?, 0);
        let total_len = data_offset.checked_add(data_len).ok_or_else(|| too_large(u64::MAX))?;
        Ok(Layout { header: h, offsets, total_len })
    }

    /// Copies the header into `out` (exactly `layout.total_len` bytes, zeroed) and fills every
    /// tensor's range in parallel.
    fn fill_into(
        &self,
        out: &mut [u8],
        layout: &Layout,
        fill: &(impl Fn(usize, &mut [u8]) + Sync),
        progress: &(impl Fn(u64) + Sync),
    ) -> Result<(), GgufError> {
        let (header, mut rest) =
            out.split_at_mut_checked(layout.header.len()).ok_or_else(|| too_large(layout.total_len))?;
        header.copy_from_slice(&layout.header);
        // Cut the data section into one disjoint slice per tensor, in file order.
        let mut slices = Vec::with_capacity(self.tensors.len());
        let mut pos = 0u64;
        for (i, (t, &offset)) in self.tensors.iter().zip(&layout.offsets).enumerate() {
            let skip = usize::try_from(offset - pos).map_err(|_| too_large(offset))?;
            let len = usize::try_from(t.n_bytes).map_err(|_| too_large(t.n_bytes))?;
            let (_, tail) = rest.split_at_mut_checked(skip).ok_or_else(|| too_large(offset))?;
            let (slice, tail) = tail.split_at_mut_checked(len).ok_or_else(|| too_large(offset))?;
            slices.push((i, slice));
            rest = tail;
            pos = offset + t.n_bytes;
        }
        let done = AtomicU64::new(0);
        slices.into_par_iter().for_each(|(i, slice)| {
            fill(i, slice);
            let len = slice.len() as u64;
            progress(done.fetch_add(len, Ordering::Relaxed) + len);
        });
        Ok(())
    }
}

/// The error for sizes this machine cannot address (or a layout that does not add up, which
/// would be a bug here).
fn too_large(len: u64) -> GgufError {
    GgufError::Io {
        path: "(GGUF writer)".into(),
        source: std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("{len} bytes cannot be laid out")),
    }
}

fn put_string(h: &mut Vec<u8>, s: &str, max: u64, what: impl Fn() -> String) -> Result<(), GgufError> {
    let len = s.len() as u64;
    if len > max {
        return Err(GgufError::StringTooLong { what: what(), offset: h.len() as u64, len, max });
    }
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The GGUF value-type id of a value.
fn type_id(v: &Value) -> u32 {
    use value_type as t;
    match v {
        Value::U8(_) => t::U8,
        Value::I8(_) => t::I8,
        Value::U16(_) => t::U16,
        Value::I16(_) => t::I16,
        Value::U32(_) => t::U32,
        Value::I32(_) => t::I32,
        Value::U64(_) => t::U64,
        Value::I64(_) => t::I64,
        Value::F32(_) => t::F32,
        Value::F64(_) => t::F64,
        Value::Bool(_) => t::BOOL,
        Value::String(_) => t::STRING,
        Value::Array(_) => t::ARRAY,
    }
}

/// Encodes a value (without its type id), checking what the reader checks.
fn put_value(h: &mut Vec<u8>, key: &str, v: &Value, depth: u32) -> Result<(), GgufError> {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_string(h, s, MAX_STRING_LEN, || format!("string value of {key:?}"))?,
        Value::Array(items) => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep { key: key.into(), depth: depth + 1 });
            }
            // An empty array still needs an element type; any will do.
            let elem = items.first().map_or(value_type::U8, type_id);
            if items.iter().any(|x| type_id(x) != elem) {
                return Err(GgufError::BadValue {
                    key: key.into(),
                    value: v.summary(),
                    expected: "an array whose elements all have one type".into(),
                });
            }
            h.extend_from_slice(&elem.to_le_bytes());
            h.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(h, key, x, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Reserves disk blocks for the whole file, so that a full disk fails here with ENOSPC rather
/// than as SIGBUS on a store into the map.
#[cfg(unix)]
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::FileTooLarge))?;
    // SAFETY: the descriptor belongs to `file`, which is open for writing and outlives the
    // call; posix_fallocate reads no memory of ours.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // The filesystem cannot reserve space: write without the guarantee, as any writer would.
        libc::EINVAL | libc::EOPNOTSUPP => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(not(unix))]
fn reserve(_file: &File, _len: u64) -> std::io::Result<()> {
    Ok(())
}
