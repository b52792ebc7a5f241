//! Weight and cache data types, and the quant block layouts shared with `kernels/strata.h`.
//!
//! The block structs are defined once, in the C header; these `#[repr(C)]` mirrors let the CPU
//! reference (built without CUDA, hence without bindgen) read the same bytes. In a `cuda` build,
//! `cuda::layout` asserts at compile time that bindgen's structs have the same size, alignment
//! and field offsets, so the two cannot drift apart.

use std::fmt;

use crate::{Error, Result};

/// Weights per quantization block of the 32-value types (`STRATA_QK`).
pub const QK: usize = 32;

/// Weights per super-block of the K-quants and IQ4_XS (`STRATA_QK_K`).
pub const QK_K: usize = 256;

/// Bytes of packed 6-bit scales and mins in Q4_K/Q5_K super-blocks (`STRATA_K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// A weight type (also used for KV caches: F32 and F16). Discriminants are GGUF's ggml_type
/// ids, as in `strata_dtype`.
// The variants are spelled as GGUF spells the types (`Q4_K`, `IQ4_XS`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    IQ4_NL = 20,
    IQ4_XS = 23,
    BF16 = 30,
}

impl DType {
    /// Every weight type, in a stable order (tests and benches iterate over it).
    pub const ALL: [DType; 15] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ];

    /// The quantized types, in the order of [`DType::ALL`].
    pub const QUANTIZED: [DType; 12] = [
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ];

    /// The GGUF ggml_type id.
    pub fn ggml_type(self) -> u32 {
        self as u32
    }

    /// The type with this GGUF ggml_type id, if strata supports it.
    pub fn from_ggml_type(id: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|t| t.ggml_type() == id)
    }

    /// Name as GGUF tools print it (`q4_1`, `f16`, `q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q2_K => "q2_K",
            DType::Q3_K => "q3_K",
            DType::Q4_K => "q4_K",
            DType::Q5_K => "q5_K",
            DType::Q6_K => "q6_K",
            DType::IQ4_NL => "iq4_nl",
            DType::IQ4_XS => "iq4_xs",
        }
    }

    /// Parses a name as printed by [`DType::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Whether values come in 256-value super-blocks (the K-quants and IQ4_XS).
    pub fn is_super_block(self) -> bool {
        self.block_values() == QK_K
    }

    /// Values per block: 256 for the K-quants and IQ4_XS, 32 for the other quantized types,
    /// 1 for plain floats.
    pub fn block_values(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::IQ4_NL => QK,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::IQ4_XS => QK_K,
        }
    }

    /// Bytes per block (per value for plain types).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => size_of::<BlockQ8_0>(),
            DType::Q4_0 => size_of::<BlockQ4_0>(),
            DType::Q4_1 => size_of::<BlockQ4_1>(),
            DType::Q5_0 => size_of::<BlockQ5_0>(),
            DType::Q5_1 => size_of::<BlockQ5_1>(),
            DType::Q2_K => size_of::<BlockQ2K>(),
            DType::Q3_K => size_of::<BlockQ3K>(),
            DType::Q4_K => size_of::<BlockQ4K>(),
            DType::Q5_K => size_of::<BlockQ5K>(),
            DType::Q6_K => size_of::<BlockQ6K>(),
            DType::IQ4_NL => size_of::<BlockIq4Nl>(),
            DType::IQ4_XS => size_of::<BlockIq4Xs>(),
        }
    }

    /// Bytes of a row of `cols` values. Errors if `cols` is not a whole number of blocks or
    /// the size overflows.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(self.block_values()) {
            return Err(Error::invalid(
                "row_bytes",
                format!("{self} rows need a multiple of {} values, got {cols}", self.block_values()),
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
    /// Rotates (`x[2i]`, `x[2i+1]`): GGUF llama.
    Adjacent = 0,
    /// Rotates (`x[i]`, `x[i + n_rot/2]`): NeoX and Hugging Face checkpoints.
    HalfSplit = 1,
}

/// Q8_0 block (`strata_block_q8_0`): `value[i] = qs[i] * d`. `d` holds IEEE binary16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// Q4_0 block (`strata_block_q4_0`): `value[j] = ((qs[j] & 15) - 8) * d` and
/// `value[j + 16] = ((qs[j] >> 4) - 8) * d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}

/// Q4_1 block (`strata_block_q4_1`): `value[j] = (qs[j] & 15) * d + m` and
/// `value[j + 16] = (qs[j] >> 4) * d + m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}

/// Q5_0 block (`strata_block_q5_0`): like Q4_0 with a fifth bit per value in `qh` (bit j of
/// the little-endian u32 for value j): `value[j] = ((qs[j] & 15 | bit j << 4) - 16) * d` and
/// `value[j + 16] = ((qs[j] >> 4 | bit (j + 16) << 4) - 16) * d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q5_1 block (`strata_block_q5_1`): value = q * d + m with the 5-bit q of [`BlockQ5_0`]
/// (without the -16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q2_K super-block (`strata_block_q2_k`): 16 sub-blocks of 16 values, each with a 4-bit scale
/// (low nibble of `scales[s]`) and a 4-bit min (high nibble): value = d * sc * q - dmin * m,
/// q = 2 bits. Value `128 h + 32 k + l` (h < 2, k < 4, l < 32) is bits 2k..2k+2 of
/// qs[32 h + l], in sub-block 8 h + 2 k + l / 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: u16,
    pub dmin: u16,
}

/// Q3_K super-block (`strata_block_q3_k`): 16 sub-blocks of 16 values with signed 6-bit scales
/// (stored + 32, packed in 12 bytes): value = d * (sc - 32) * (q - (hmask bit ? 0 : 4)), q = the
/// 2 low bits from `qs` (laid out as in Q2_K), the high bit in `hmask[l]` bit 4 h + k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: u16,
}

/// Q4_K super-block (`strata_block_q4_k`): 8 sub-blocks of 32 values, each with a 6-bit scale
/// and a 6-bit min packed in `scales`: value = d * sc * q - dmin * m, q = 4 bits. Sub-block 2 i
/// is the low nibbles of qs[32 i..32 i + 32], sub-block 2 i + 1 their high nibbles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// Q5_K super-block (`strata_block_q5_k`): Q4_K with a fifth bit per value, bit s of `qh[l]`
/// for value l of sub-block s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K super-block (`strata_block_q6_k`): 16 sub-blocks of 16 values with signed 8-bit
/// scales: value = d * sc * (q - 32), q = 4 low bits from `ql` and 2 high bits from `qh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}

/// IQ4_NL block (`strata_block_iq4_nl`): Q4_0's nibble order, but each nibble indexes the
/// non-linear table [`IQ4_VALUES`]: `value = d * IQ4_VALUES[q]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockIq4Nl {
    pub d: u16,
    pub qs: [u8; QK / 2],
}

/// IQ4_XS super-block (`strata_block_iq4_xs`): 8 IQ4_NL-like sub-blocks of 32 values sharing
/// `d`, each with a 6-bit scale (4 low bits in `scales_l`, 2 high bits in `scales_h`, stored +
/// 32): `value = d * (ls - 32) * IQ4_VALUES[q]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockIq4Xs {
    pub d: u16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}

/// The 16 values an IQ4_NL/IQ4_XS nibble selects (`kvalues_iq4nl` in ggml).
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

const _: () = {
    assert!(size_of::<BlockQ8_0>() == 34 && align_of::<BlockQ8_0>() == 2);
    assert!(size_of::<BlockQ4_0>() == 18 && align_of::<BlockQ4_0>() == 2);
    assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 2);
    assert!(size_of::<BlockQ5_0>() == 22 && align_of::<BlockQ5_0>() == 2);
    assert!(size_of::<BlockQ5_1>() == 24 && align_of::<BlockQ5_1>() == 2);
    assert!(size_of::<BlockQ2K>() == 84 && align_of::<BlockQ2K>() == 2);
    assert!(size_of::<BlockQ3K>() == 110 && align_of::<BlockQ3K>() == 2);
    assert!(size_of::<BlockQ4K>() == 144 && align_of::<BlockQ4K>() == 2);
    assert!(size_of::<BlockQ5K>() == 176 && align_of::<BlockQ5K>() == 2);
    assert!(size_of::<BlockQ6K>() == 210 && align_of::<BlockQ6K>() == 2);
    assert!(size_of::<BlockIq4Nl>() == 18 && align_of::<BlockIq4Nl>() == 2);
    assert!(size_of::<BlockIq4Xs>() == 136 && align_of::<BlockIq4Xs>() == 2);
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

/// `N` bytes of `b` from `at` (callers pass fixed-size blocks, so the range is in bounds).
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// `read`/`write` of a block's little-endian bytes, from its fields in file order (u16 fields
/// are binary16 bits or, for IQ4_XS `scales_h`, a plain u16; byte arrays are copied as they
/// are, `i8` arrays bit for bit).
macro_rules! block_io {
    ($ty:ident, $n:literal, { $($field:ident : $kind:tt $(; $len:expr)?),* $(,)? }) => {
        impl $ty {
            /// Reads a block from its little-endian bytes (GGUF data is little-endian).
            pub fn read(b: &[u8; $n]) -> Self {
                let mut _at = 0usize;
                $(let $field = block_io!(@read $kind, b, _at $(, $len)?);)*
                $ty { $($field),* }
            }

            /// Writes the block's little-endian bytes.
            pub fn write(&self, b: &mut [u8; $n]) {
                let mut _at = 0usize;
                $(block_io!(@write $kind, b, _at, self.$field $(, $len)?);)*
            }
        }
    };
    (@read u16, $b:ident, $at:ident) => {{ let v = u16_at($b, $at); $at += 2; v }};
    (@read u8s, $b:ident, $at:ident, $len:expr) => {{ let v: [u8; $len] = bytes_at($b, $at); $at += $len; v }};
    (@read i8s, $b:ident, $at:ident, $len:expr) => {{ let v: [u8; $len] = bytes_at($b, $at); $at += $len; v.map(|x| x as i8) }};
    (@write u16, $b:ident, $at:ident, $v:expr) => {{ $b[$at..$at + 2].copy_from_slice(&$v.to_le_bytes()); $at += 2; }};
    (@write u8s, $b:ident, $at:ident, $v:expr, $len:expr) => {{ $b[$at..$at + $len].copy_from_slice(&$v); $at += $len; }};
    (@write i8s, $b:ident, $at:ident, $v:expr, $len:expr) => {{ $b[$at..$at + $len].copy_from_slice(&$v.map(|x| x as u8)); $at += $len; }};
}

block_io!(BlockQ5_0, 22, { d: u16, qh: u8s; 4, qs: u8s; QK / 2 });
block_io!(BlockQ5_1, 24, { d: u16, m: u16, qh: u8s; 4, qs: u8s; QK / 2 });
block_io!(BlockQ2K, 84, { scales: u8s; QK_K / 16, qs: u8s; QK_K / 4, d: u16, dmin: u16 });
block_io!(BlockQ3K, 110, { hmask: u8s; QK_K / 8, qs: u8s; QK_K / 4, scales: u8s; 12, d: u16 });
block_io!(BlockQ4K, 144, { d: u16, dmin: u16, scales: u8s; K_SCALE_SIZE, qs: u8s; QK_K / 2 });
block_io!(BlockQ5K, 176, { d: u16, dmin: u16, scales: u8s; K_SCALE_SIZE, qh: u8s; QK_K / 8, qs: u8s; QK_K / 2 });
block_io!(BlockQ6K, 210, { ql: u8s; QK_K / 2, qh: u8s; QK_K / 4, scales: i8s; QK_K / 16, d: u16 });
block_io!(BlockIq4Nl, 18, { d: u16, qs: u8s; QK / 2 });
block_io!(BlockIq4Xs, 136, { d: u16, scales_h: u16, scales_l: u8s; QK_K / 64, qs: u8s; QK_K / 2 });
