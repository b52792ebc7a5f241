//! Tensors: a type, a contiguous row-major shape, and storage on the host (owned, or a view
//! into memory held by an `Arc`, such as a memory-mapped model file) or on a CUDA device.

use std::sync::Arc;

use half::f16;

use crate::gpu::{DeviceBuffer, GpuStream};
use crate::{DType, Device, Error, Result};

/// Where ops run: on the host (synchronously, by the CPU reference) or on a CUDA stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Stream {
    /// The host: ops run synchronously on the CPU reference.
    Host,
    /// A CUDA stream: ops are queued on it.
    Gpu(GpuStream),
}

impl Stream {
    /// The device the stream runs on.
    pub fn device(&self) -> Device {
        match self {
            Stream::Host => Device::Cpu,
            Stream::Gpu(s) => Device::Cuda(s.gpu().info().ordinal),
        }
    }

    /// Blocks until the stream's work is done (nothing to wait for on the host).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Stream::Host => Ok(()),
            Stream::Gpu(s) => s.synchronize(),
        }
    }
}

/// Bytes shared with something else that keeps them alive (e.g. a memory map).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Host bytes, owned (4-byte aligned) or borrowed from shared memory.
#[derive(Clone)]
pub enum HostData {
    /// Owned, stored as words so that f32/i32/f16 views are always aligned.
    Owned {
        /// The bytes, in 4-byte words (the last one zero-padded).
        words: Vec<u32>,
        /// Length in bytes.
        len: usize,
    },
    /// `len` bytes at `offset` of memory kept alive by `owner`.
    Mapped {
        /// What keeps the memory alive.
        owner: SharedBytes,
        /// Byte offset of the data in `owner`.
        offset: usize,
        /// Length in bytes.
        len: usize,
    },
}

impl HostData {
    /// `len` zero bytes, or [`Error::HostOutOfMemory`] when the allocator refuses (instead of
    /// aborting the process, as `vec![0; n]` does: a KV cache for a long context is the size
    /// of the machine's memory). The zeros are written, so the pages are committed now rather
    /// than at the first token, where running out would kill the process.
    fn zeroed(len: usize, what: &str) -> Result<HostData> {
        let n = len.div_ceil(4);
        let mut words = Vec::new();
        words
            .try_reserve_exact(n)
            .map_err(|_| Error::HostOutOfMemory { what: what.to_string(), requested: len as u64 })?;
        words.resize(n, 0);
        Ok(HostData::Owned { words, len })
    }

    fn bytes(&self) -> &[u8] {
        match self {
            HostData::Owned { words, len } => &bytemuck::cast_slice(words)[..*len],
            HostData::Mapped { owner, offset, len } => &(**owner).as_ref()[*offset..*offset + *len],
        }
    }
}

/// Where a tensor's bytes are.
pub enum Storage {
    /// In host memory.
    Host(HostData),
    /// In the memory of a CUDA device.
    Cuda(DeviceBuffer),
}

/// A tensor: dtype, shape (contiguous, row-major; quantized types block the last dimension),
/// and storage.
///
/// ```
/// use strata_tensor::{Stream, Tensor, ops};
///
/// // Ops run on the device of the stream they are given: here the host (CPU reference).
/// let s = Stream::Host;
/// let a = Tensor::from_f32(&[2, 2], vec![1.0, 2.0, 3.0, 4.0])?;
/// let b = Tensor::from_f32(&[2, 2], vec![0.5; 4])?;
/// let mut out = Tensor::from_f32(&[2, 2], vec![0.0; 4])?;
/// ops::add(&a, &b, &mut out, &s)?;
/// assert_eq!(out.shape(), &[2, 2]);
/// assert_eq!(out.to_vec_f32(&s)?, vec![1.5, 2.5, 3.5, 4.5]);
/// # Ok::<(), strata_tensor::Error>(())
/// ```
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?} on {})", self.dtype, self.shape, self.device())
    }
}

fn expect_numel(op: &'static str, shape: &[usize], n: usize) -> Result<()> {
    let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if want != Some(n) {
        return Err(Error::shape(op, format!("shape {shape:?} needs {want:?} elements, got {n}")));
    }
    Ok(())
}

impl Tensor {
    fn host(dtype: DType, shape: &[usize], data: HostData) -> Tensor {
        Tensor { dtype, shape: shape.to_vec(), storage: Storage::Host(data) }
    }

    /// An f32 host tensor.
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        expect_numel("from_f32", shape, data.len())?;
        let len = data.len() * 4;
        Ok(Tensor::host(DType::F32, shape, HostData::Owned { words: bytemuck::allocation::cast_vec(data), len }))
    }

    /// An i32 host tensor (token ids, positions).
    pub fn from_i32(shape: &[usize], data: Vec<i32>) -> Result<Tensor> {
        expect_numel("from_i32", shape, data.len())?;
        let len = data.len() * 4;
        Ok(Tensor::host(DType::I32, shape, HostData::Owned { words: bytemuck::allocation::cast_vec(data), len }))
    }

    /// An f16 host tensor.
    pub fn from_f16(shape: &[usize], data: &[f16]) -> Result<Tensor> {
        expect_numel("from_f16", shape, data.len())?;
        Tensor::from_bytes(DType::F16, shape, bytemuck::cast_slice(data))
    }

    /// A host tensor of any type from its little-endian bytes (copied).
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        let need = dtype.bytes_for(shape)?;
        if bytes.len() != need {
            return Err(Error::shape(
                "from_bytes",
                format!("{dtype} {shape:?} takes {need} bytes, got {}", bytes.len()),
            ));
        }
        let mut data = HostData::zeroed(need, "a host tensor")?;
        if let HostData::Owned { words, .. } = &mut data {
            bytemuck::cast_slice_mut::<u32, u8>(words)[..need].copy_from_slice(bytes);
        }
        Ok(Tensor::host(dtype, shape, data))
    }

    /// A host tensor viewing `owner`'s bytes at `offset` without copying (e.g. a weight inside
    /// a memory-mapped model file).
    ///
    /// # Errors
    /// If the tensor's bytes do not lie inside `owner`.
    pub fn from_shared(dtype: DType, shape: &[usize], owner: SharedBytes, offset: usize) -> Result<Tensor> {
        let len = dtype.bytes_for(shape)?;
        let total = (*owner).as_ref().len();
        if offset.checked_add(len).is_none_or(|end| end > total) {
            return Err(Error::shape(
                "from_shared",
                format!("{dtype} {shape:?} ({len} bytes at offset {offset}) does not fit in {total} bytes"),
            ));
        }
        Ok(Tensor::host(dtype, shape, HostData::Mapped { owner, offset, len }))
    }

    /// A device tensor over `buf` (e.g. a view into a streamed layer's slot).
    ///
    /// # Errors
    /// If the buffer's size is not the one `dtype` and `shape` take.
    pub fn from_device(dtype: DType, shape: &[usize], buf: DeviceBuffer) -> Result<Tensor> {
        let need = dtype.bytes_for(shape)?;
        if buf.len() != need {
            return Err(Error::shape(
                "from_device",
                format!("{dtype} {shape:?} takes {need} bytes, the buffer has {}", buf.len()),
            ));
        }
        Ok(Tensor { dtype, shape: shape.to_vec(), storage: Storage::Cuda(buf) })
    }

    /// A tensor of zeros on the stream's device.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] over a GPU budget, [`Error::HostOutOfMemory`] when host memory
    /// cannot be allocated, a shape whose size overflows.
    pub fn zeros(dtype: DType, shape: &[usize], s: &Stream, what: &str) -> Result<Tensor> {
        let len = dtype.bytes_for(shape)?;
        let storage = match s {
            Stream::Host => Storage::Host(HostData::zeroed(len, what)?),
            Stream::Gpu(g) => {
                let mut b = g.gpu().alloc(len, what)?;
                b.fill(0, g)?;
                Storage::Cuda(b)
            }
        };
        Ok(Tensor { dtype, shape: shape.to_vec(), storage })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape (contiguous, row-major).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the data in bytes.
    pub fn len_bytes(&self) -> usize {
        match &self.storage {
            Storage::Host(h) => h.bytes().len(),
            Storage::Cuda(b) => b.len(),
        }
    }

    /// The device that holds the data.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Host(_) => Device::Cpu,
            Storage::Cuda(b) => Device::Cuda(b.gpu().info().ordinal),
        }
    }

    /// Where the bytes are.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Same bytes, another shape with the same byte size.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let need = self.dtype.bytes_for(shape)?;
        if need != self.len_bytes() {
            return Err(Error::shape("reshape", format!("{:?} -> {shape:?} changes the size", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The bytes of a host tensor.
    pub fn host_bytes(&self) -> Result<&[u8]> {
        match &self.storage {
            Storage::Host(h) => Ok(h.bytes()),
            Storage::Cuda(_) => {
                Err(Error::Device { op: "host_bytes", what: format!("tensor is on {}", self.device()) })
            }
        }
    }

    fn typed<T: bytemuck::Pod>(&self, want: DType) -> Result<&[T]> {
        if self.dtype != want {
            return Err(Error::Dtype { op: "view", dtype: self.dtype.to_string(), expected: want.name() });
        }
        bytemuck::try_cast_slice(self.host_bytes()?)
            .map_err(|e| Error::shape("view", format!("{want} view of misaligned bytes: {e}")))
    }

    /// The elements of a host tensor of type [`DType::F32`].
    pub fn as_f32(&self) -> Result<&[f32]> {
        self.typed(DType::F32)
    }

    /// The elements of a host tensor of type [`DType::I32`].
    pub fn as_i32(&self) -> Result<&[i32]> {
        self.typed(DType::I32)
    }

    /// The elements of a host tensor of type [`DType::F16`].
    pub fn as_f16(&self) -> Result<&[f16]> {
        self.typed(DType::F16)
    }

    /// Mutable bytes of an owned host tensor (a shared view is read-only).
    pub(crate) fn host_bytes_mut(&mut self) -> Result<&mut [u8]> {
        let device = self.device();
        match &mut self.storage {
            Storage::Host(HostData::Owned { words, len }) => Ok(&mut bytemuck::cast_slice_mut(words)[..*len]),
            Storage::Host(HostData::Mapped { .. }) => {
                Err(Error::Device { op: "write", what: "tensor is a read-only view of shared memory".into() })
            }
            Storage::Cuda(_) => Err(Error::Device { op: "write", what: format!("tensor is on {device}") }),
        }
    }

    fn typed_mut<T: bytemuck::Pod>(&mut self, want: DType) -> Result<&mut [T]> {
        if self.dtype != want {
            return Err(Error::Dtype { op: "view", dtype: self.dtype.to_string(), expected: want.name() });
        }
        bytemuck::try_cast_slice_mut(self.host_bytes_mut()?)
            .map_err(|e| Error::shape("view", format!("{want} view of misaligned bytes: {e}")))
    }

    /// The elements of an owned host tensor of type [`DType::F32`], writable.
    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        self.typed_mut(DType::F32)
    }

    /// The elements of an owned host tensor of type [`DType::I32`], writable.
    pub fn as_i32_mut(&mut self) -> Result<&mut [i32]> {
        self.typed_mut(DType::I32)
    }

    /// The elements of an owned host tensor of type [`DType::F16`], writable.
    pub fn as_f16_mut(&mut self) -> Result<&mut [f16]> {
        self.typed_mut(DType::F16)
    }

    /// A copy of this tensor on the stream's device (upload, download or host copy). Returns
    /// once the source may be reused; the copy itself is ordered on the stream.
    pub fn to_device(&self, s: &Stream, what: &str) -> Result<Tensor> {
        let mut out = Tensor::empty_like(self, s, what)?;
        out.copy_from(self, s)?;
        Ok(out)
    }

    fn empty_like(src: &Tensor, s: &Stream, what: &str) -> Result<Tensor> {
        let storage = match s {
            Stream::Host => Storage::Host(HostData::zeroed(src.len_bytes(), what)?),
            Stream::Gpu(g) => Storage::Cuda(g.gpu().alloc(src.len_bytes(), what)?),
        };
        Ok(Tensor { dtype: src.dtype, shape: src.shape.clone(), storage })
    }

    /// Copies `src` (same type and shape, any device) into this tensor on stream `s`.
    pub fn copy_from(&mut self, src: &Tensor, s: &Stream) -> Result<()> {
        if src.dtype != self.dtype || src.shape != self.shape {
            return Err(Error::shape(
                "copy",
                format!("{} {:?} into {} {:?}", src.dtype, src.shape, self.dtype, self.shape),
            ));
        }
        let stream_of = |op| match s {
            Stream::Gpu(g) => Ok(g),
            Stream::Host => Err(Error::Device { op, what: "a copy to or from a GPU needs a GPU stream".into() }),
        };
        match (&mut self.storage, &src.storage) {
            (Storage::Host(_), Storage::Host(h)) => {
                self.host_bytes_mut()?.copy_from_slice(h.bytes());
                Ok(())
            }
            (Storage::Cuda(d), Storage::Host(h)) => d.upload(0, h.bytes(), stream_of("upload")?),
            (Storage::Host(_), Storage::Cuda(d)) => {
                let g = stream_of("download")?;
                d.download(0, self.host_bytes_mut()?, g)
            }
            (Storage::Cuda(d), Storage::Cuda(from)) => d.copy_from(0, from, 0..from.len(), stream_of("copy")?),
        }
    }

    /// Copies rows `rows` of the first dimension of `src` into the same rows of this tensor
    /// (same type and shape, any pair of devices), on stream `s`. A download has finished when
    /// this returns, as with [`Tensor::copy_from`]. Used to move part of a KV cache.
    ///
    /// # Errors
    /// Different types or shapes, a range outside the tensors, block-quantized rows, or a GPU
    /// side without a GPU stream.
    pub fn copy_rows_from(&mut self, src: &Tensor, rows: std::ops::Range<usize>, s: &Stream) -> Result<()> {
        if src.dtype != self.dtype || src.shape != self.shape {
            return Err(Error::shape(
                "copy_rows_from",
                format!("{} {:?} into {} {:?}", src.dtype, src.shape, self.dtype, self.shape),
            ));
        }
        let n = *self.shape.first().ok_or_else(|| Error::shape("copy_rows_from", "tensor has no dimensions"))?;
        if rows.start > rows.end || rows.end > n {
            return Err(Error::shape("copy_rows_from", format!("rows {rows:?} of a tensor with {n}")));
        }
        let row_bytes = self.dtype.bytes_for(&self.shape[1..])?;
        let bytes = rows.start * row_bytes..rows.end * row_bytes;
        if bytes.is_empty() {
            return Ok(());
        }
        let stream_of = |op| match s {
            Stream::Gpu(g) => Ok(g),
            Stream::Host => Err(Error::Device { op, what: "a copy to or from a GPU needs a GPU stream".into() }),
        };
        match (&mut self.storage, &src.storage) {
            (Storage::Host(_), Storage::Host(h)) => {
                self.host_bytes_mut()?[bytes.clone()].copy_from_slice(&h.bytes()[bytes]);
                Ok(())
            }
            (Storage::Cuda(d), Storage::Host(h)) => d.upload(bytes.start, &h.bytes()[bytes], stream_of("upload")?),
            (Storage::Host(_), Storage::Cuda(d)) => {
                let g = stream_of("download")?;
                let start = bytes.start;
                d.download(start, &mut self.host_bytes_mut()?[bytes], g)
            }
            (Storage::Cuda(d), Storage::Cuda(from)) => d.copy_from(bytes.start, from, bytes, stream_of("copy")?),
        }
    }

    /// A new tensor on the same device holding rows `rows` of the first dimension (any
    /// unquantized type).
    ///
    /// # Errors
    /// If the range is outside the tensor or the type is block-quantized.
    pub fn copy_rows(&self, rows: std::ops::Range<usize>, s: &Stream) -> Result<Tensor> {
        let n = *self.shape.first().ok_or_else(|| Error::shape("copy_rows", "tensor has no dimensions"))?;
        if rows.start > rows.end || rows.end > n {
            return Err(Error::shape("copy_rows", format!("rows {rows:?} of a tensor with {n}")));
        }
        let row_bytes = self.len_bytes().checked_div(n).unwrap_or(0);
        if self.dtype.bytes_for(&self.shape[1..])? != row_bytes {
            return Err(Error::shape("copy_rows", format!("{} rows cannot be split", self.dtype)));
        }
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        let bytes = rows.start * row_bytes..rows.end * row_bytes;
        match &self.storage {
            Storage::Host(h) => Tensor::from_bytes(self.dtype, &shape, &h.bytes()[bytes]),
            Storage::Cuda(d) => {
                let Stream::Gpu(g) = s else {
                    return Err(Error::Device { op: "copy_rows", what: "a device tensor needs a GPU stream".into() });
                };
                let mut out = g.gpu().alloc(bytes.len(), "rows")?;
                out.copy_from(0, d, bytes, g)?;
                Ok(Tensor { dtype: self.dtype, shape, storage: Storage::Cuda(out) })
            }
        }
    }

    /// Rows `rows` of the first dimension as a tensor of the same type, without copying the
    /// bytes where they are shared: a view into the same memory map (host, mapped) or the same
    /// device allocation (GPU). Host tensors that own their bytes (built in memory, not loaded)
    /// cannot lend them out and are copied. One expert of a 3-D `[n_expert, rows, cols]`
    /// weight is `narrow(e..e + 1)?.reshape(&[rows, cols])`; quantized blocks never straddle
    /// the first dimension, since they block the last.
    ///
    /// # Errors
    /// If the range is outside the tensor or the tensor has no dimensions.
    pub fn narrow(&self, rows: std::ops::Range<usize>) -> Result<Tensor> {
        let n = *self.shape.first().ok_or_else(|| Error::shape("narrow", "tensor has no dimensions"))?;
        if rows.start > rows.end || rows.end > n {
            return Err(Error::shape("narrow", format!("rows {rows:?} of a tensor with {n}")));
        }
        let row_bytes = self.dtype.bytes_for(&self.shape[1..])?;
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        let bytes = rows.start * row_bytes..rows.end * row_bytes;
        let storage = match &self.storage {
            Storage::Host(HostData::Mapped { owner, offset, .. }) => {
                Storage::Host(HostData::Mapped { owner: owner.clone(), offset: offset + bytes.start, len: bytes.len() })
            }
            Storage::Host(h) => return Tensor::from_bytes(self.dtype, &shape, &h.bytes()[bytes]),
            Storage::Cuda(d) => Storage::Cuda(d.view(bytes)?),
        };
        Ok(Tensor { dtype: self.dtype, shape, storage })
    }

    /// Sets every byte to zero, on the stream's device.
    ///
    /// # Errors
    /// A read-only host view, or a device tensor without a GPU stream.
    pub fn fill_zero(&mut self, s: &Stream) -> Result<()> {
        match (&mut self.storage, s) {
            (Storage::Cuda(d), Stream::Gpu(g)) => d.fill(0, g),
            (Storage::Cuda(_), Stream::Host) => {
                Err(Error::Device { op: "fill_zero", what: "a device tensor needs a GPU stream".into() })
            }
            (Storage::Host(_), _) => {
                self.host_bytes_mut()?.fill(0);
                Ok(())
            }
        }
    }

    /// A host copy of this tensor (downloaded on `s` if it is on a GPU).
    pub fn to_host(&self, s: &Stream) -> Result<Tensor> {
        let mut host = Tensor::empty_like(self, &Stream::Host, "host copy")?;
        host.copy_from(self, s)?;
        Ok(host)
    }

    /// The values as f32 on the host (f32 tensors only), downloading if needed.
    pub fn to_vec_f32(&self, s: &Stream) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Host(_) => Ok(self.as_f32()?.to_vec()),
            Storage::Cuda(_) => Ok(self.to_host(s)?.as_f32()?.to_vec()),
        }
    }

    /// The values as i32 on the host (i32 tensors only), downloading if needed.
    pub fn to_vec_i32(&self, s: &Stream) -> Result<Vec<i32>> {
        match &self.storage {
            Storage::Host(_) => Ok(self.as_i32()?.to_vec()),
            Storage::Cuda(_) => Ok(self.to_host(s)?.as_i32()?.to_vec()),
        }
    }
}
