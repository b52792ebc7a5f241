//! Weight and cache data types, and the quant block layouts shared with `kernels/strata.h`.
//!
//! The block structs are defined once, in the C header; these `#[repr(C)]` mirrors let the CPU
//! reference (built without CUDA, hence without bindgen) read the same bytes. In a `cuda` build,
//! `cuda::layout` asserts at compile time that bindgen's structs have the same size, alignment
//! and field offsets, so the two cannot drift apart.

use std::fmt;

use crate::{Error, Result};

/// Weights per quantization block (`STRATA_QK`).
pub const QK: usize = 32;

/// A weight type (also used for KV caches: F32 and F16). Discriminants are GGUF's ggml_type
/// ids, as in `strata_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    BF16 = 30,
}

impl DType {
    /// Every weight type, in a stable order (tests and benches iterate over it).
    pub const ALL: [DType; 6] = [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1];

    /// The GGUF ggml_type id.
    pub fn ggml_type(self) -> u32 {
        self as u32
    }

    /// The type with this GGUF ggml_type id, if strata supports it.
    pub fn from_ggml_type(id: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|t| t.ggml_type() == id)
    }

    /// Lower-case name as GGUF tools print it (`q4_1`, `f16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
        }
    }

    /// Parses a name as printed by [`DType::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
    }

    /// Values per block: 32 for quantized types, 1 otherwise.
    pub fn block_values(self) -> usize {
        if self.is_quantized() { QK } else { 1 }
    }

    /// Bytes per block (per value for plain types).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => size_of::<BlockQ8_0>(),
            DType::Q4_0 => size_of::<BlockQ4_0>(),
            DType::Q4_1 => size_of::<BlockQ4_1>(),
        }
    }

    /// Bytes of a row of `cols` values. Errors if `cols` is not a whole number of blocks or
    /// the size overflows.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(self.block_values()) {
            return Err(Error::invalid(
                "row_bytes",
                format!("{} rows need a multiple of {} values, got {cols}", self, self.block_values()),
            ));
        }
        (cols / self.block_values())
            .checked_mul(self.block_bytes())
            .ok_or_else(|| Error::invalid("row_bytes", format!("{cols} values of {self} overflow usize")))
    }

    /// Bytes of a `rows` x `cols` matrix, overflow-checked.
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> Result<usize> {
        self.row_bytes(cols)?
            .checked_mul(rows)
            .ok_or_else(|| Error::invalid("matrix_bytes", format!("{rows} x {cols} of {self} overflows usize")))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// RoPE pair layout (`strata_rope_layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RopeLayout {
    /// Rotates (x[2i], x[2i+1]): GGUF llama.
    Adjacent = 0,
    /// Rotates (x[i], x[i + n_rot/2]): NeoX and Hugging Face checkpoints.
    HalfSplit = 1,
}

/// Q8_0 block (`strata_block_q8_0`): value[i] = qs[i] * d. `d` holds IEEE binary16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// Q4_0 block (`strata_block_q4_0`): value[j] = ((qs[j] & 15) - 8) * d and
/// value[j + 16] = ((qs[j] >> 4) - 8) * d.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}

/// Q4_1 block (`strata_block_q4_1`): value[j] = (qs[j] & 15) * d + m and
/// value[j + 16] = (qs[j] >> 4) * d + m.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}

const _: () = {
    assert!(size_of::<BlockQ8_0>() == 34 && align_of::<BlockQ8_0>() == 2);
    assert!(size_of::<BlockQ4_0>() == 18 && align_of::<BlockQ4_0>() == 2);
    assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 2);
};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl BlockQ8_0 {
    /// Reads a block from its 34 little-endian bytes (GGUF data is little-endian).
    pub fn read(b: &[u8; 34]) -> Self {
        let mut qs = [0i8; QK];
        for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
            *q = byte as i8;
        }
        BlockQ8_0 { d: u16_at(b, 0), qs }
    }

    pub fn write(&self, b: &mut [u8; 34]) {
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        for (byte, &q) in b[2..].iter_mut().zip(&self.qs) {
            *byte = q as u8;
        }
    }
}

impl BlockQ4_0 {
    pub fn read(b: &[u8; 18]) -> Self {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[2..]);
        BlockQ4_0 { d: u16_at(b, 0), qs }
    }

    pub fn write(&self, b: &mut [u8; 18]) {
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..].copy_from_slice(&self.qs);
    }
}

impl BlockQ4_1 {
    pub fn read(b: &[u8; 20]) -> Self {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[4..]);
        BlockQ4_1 { d: u16_at(b, 0), m: u16_at(b, 2), qs }
    }

    pub fn write(&self, b: &mut [u8; 20]) {
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.m.to_le_bytes());
        b[4..].copy_from_slice(&self.qs);
    }
}
