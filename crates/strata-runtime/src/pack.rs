//! Packing a layer's tensors into one contiguous block, so a streamed layer moves in a single
//! host→device transfer, and rebuilding the tensors as views of a slot that holds the block.

use strata_tensor::{DType, Tensor};

use crate::{Error, Result};

/// Each tensor starts at a multiple of this inside a packed block (kernel loads stay aligned).
pub const PACK_ALIGN: usize = 256;

/// Where one tensor sits in a packed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlace {
    /// Element type of the tensor.
    pub dtype: DType,
    /// Shape of the tensor.
    pub shape: Vec<usize>,
    /// Byte offset from the start of the block (a multiple of [`PACK_ALIGN`]).
    pub offset: usize,
    /// Length of the tensor's data in bytes.
    pub len: usize,
}

/// The layout of a packed group of tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLayout {
    /// The place of each tensor, in packing order.
    pub tensors: Vec<TensorPlace>,
    /// Total bytes, including alignment padding.
    pub bytes: usize,
}

impl GroupLayout {
    /// The layout of `tensors` in order, each aligned to [`PACK_ALIGN`].
    pub fn of(tensors: &[&Tensor]) -> GroupLayout {
        let mut offset = 0usize;
        let mut places = Vec::with_capacity(tensors.len());
        for t in tensors {
            offset = offset.div_ceil(PACK_ALIGN) * PACK_ALIGN;
            places.push(TensorPlace { dtype: t.dtype(), shape: t.shape().to_vec(), offset, len: t.len_bytes() });
            offset += t.len_bytes();
        }
        GroupLayout { tensors: places, bytes: offset }
    }

    /// Copies the host tensors' bytes into `dst` at their places.
    ///
    /// # Errors
    /// If a tensor is not on the host or does not match the layout.
    pub fn pack(&self, tensors: &[&Tensor], dst: &mut [u8]) -> Result<()> {
        if tensors.len() != self.tensors.len() || dst.len() < self.bytes {
            return Err(Error::Stream(format!(
                "packing {} tensors into {} bytes does not match the layout ({} tensors, {} bytes)",
                tensors.len(),
                dst.len(),
                self.tensors.len(),
                self.bytes
            )));
        }
        for (t, p) in tensors.iter().zip(&self.tensors) {
            let src = t.host_bytes()?;
            if src.len() != p.len {
                return Err(Error::Stream(format!("tensor {t:?} has {} bytes, the layout {}", src.len(), p.len)));
            }
            dst[p.offset..p.offset + p.len].copy_from_slice(src);
        }
        Ok(())
    }
}
