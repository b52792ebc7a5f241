//! Tensor element types: the kernel crate's weight types (which include the f32 and f16
//! activations) plus i32 for token ids and positions.

use std::fmt;

use crate::{Error, Result};

// The variants are spelled as GGUF spells the types (`Q4_K`, `IQ4_XS`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The element type of a tensor.
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// GGUF Q8_0: blocks of 32 8-bit weights with an f16 scale.
    Q8_0,
    /// GGUF Q4_0: blocks of 32 4-bit weights with an f16 scale.
    Q4_0,
    /// GGUF Q4_1: blocks of 32 4-bit weights with an f16 scale and minimum.
    Q4_1,
    /// GGUF Q5_0: blocks of 32 5-bit weights with an f16 scale.
    Q5_0,
    /// GGUF Q5_1: blocks of 32 5-bit weights with an f16 scale and minimum.
    Q5_1,
    /// GGUF Q2_K: 2-bit k-quant, super-blocks of 256 weights.
    Q2_K,
    /// GGUF Q3_K: 3-bit k-quant, super-blocks of 256 weights.
    Q3_K,
    /// GGUF Q4_K: 4-bit k-quant, super-blocks of 256 weights.
    Q4_K,
    /// GGUF Q5_K: 5-bit k-quant, super-blocks of 256 weights.
    Q5_K,
    /// GGUF Q6_K: 6-bit k-quant, super-blocks of 256 weights.
    Q6_K,
    /// GGUF IQ4_NL: blocks of 32 4-bit indices into a non-linear table, with an f16 scale.
    IQ4_NL,
    /// GGUF IQ4_XS: IQ4_NL's non-linear 4-bit table in super-blocks of 256 weights.
    IQ4_XS,
    /// 32-bit signed integer (token ids, positions).
    I32,
}

impl DType {
    /// The kernel crate's type, for everything but I32.
    pub fn weight(self) -> Option<strata_kernels::DType> {
        use strata_kernels::DType as K;
        Some(match self {
            DType::F32 => K::F32,
            DType::F16 => K::F16,
            DType::BF16 => K::BF16,
            DType::Q8_0 => K::Q8_0,
            DType::Q4_0 => K::Q4_0,
            DType::Q4_1 => K::Q4_1,
            DType::Q5_0 => K::Q5_0,
            DType::Q5_1 => K::Q5_1,
            DType::Q2_K => K::Q2_K,
            DType::Q3_K => K::Q3_K,
            DType::Q4_K => K::Q4_K,
            DType::Q5_K => K::Q5_K,
            DType::Q6_K => K::Q6_K,
            DType::IQ4_NL => K::IQ4_NL,
            DType::IQ4_XS => K::IQ4_XS,
            DType::I32 => return None,
        })
    }

    /// The type's name as the kernel crate spells it (`i32` for [`DType::I32`]).
    pub fn name(self) -> &'static str {
        match self.weight() {
            Some(k) => k.name(),
            None => "i32",
        }
    }

    /// Bytes of a tensor of this type and shape (row-major; quantized types need the last
    /// dimension to be a whole number of blocks). Overflow-checked.
    pub fn bytes_for(self, shape: &[usize]) -> Result<usize> {
        let (rows, cols) = match shape.split_last() {
            None => (1usize, 1usize),
            Some((&last, rest)) => {
                let rows = rest
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| Error::shape("tensor", format!("shape {shape:?} overflows usize")))?;
                (rows, last)
            }
        };
        match self.weight() {
            Some(k) => k.matrix_bytes(rows, cols).map_err(Error::from),
            None => rows
                .checked_mul(cols)
                .and_then(|n| n.checked_mul(4))
                .ok_or_else(|| Error::shape("tensor", format!("shape {shape:?} of i32 overflows usize"))),
        }
    }
}

impl From<strata_kernels::DType> for DType {
    fn from(k: strata_kernels::DType) -> Self {
        use strata_kernels::DType as K;
        match k {
            K::F32 => DType::F32,
            K::F16 => DType::F16,
            K::BF16 => DType::BF16,
            K::Q8_0 => DType::Q8_0,
            K::Q4_0 => DType::Q4_0,
            K::Q4_1 => DType::Q4_1,
            K::Q5_0 => DType::Q5_0,
            K::Q5_1 => DType::Q5_1,
            K::Q2_K => DType::Q2_K,
            K::Q3_K => DType::Q3_K,
            K::Q4_K => DType::Q4_K,
            K::Q5_K => DType::Q5_K,
            K::Q6_K => DType::Q6_K,
            K::IQ4_NL => DType::IQ4_NL,
            K::IQ4_XS => DType::IQ4_XS,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
