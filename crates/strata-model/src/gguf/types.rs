//! ggml tensor types (ids, names, block geometry), GGUF value-type ids, and the tensor records
//! of a GGUF file.
//!
//! Every standard ggml type id is known here, including the ones strata cannot compute with,
//! so that the byte size of any tensor in any GGUF file is computed exactly and the layout of a
//! whole file can be validated. Ids that ggml has removed (4, 5, 31–33, 36–38) are unknown.

use strata_tensor::DType;

/// Defines [`GgmlType`] and its tables from one list, so id, name and block geometry cannot
/// drift apart.
macro_rules! ggml_types {
    ($($(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $size:literal;)*) => {
        /// A ggml tensor type. The discriminant is the id stored in GGUF files.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[repr(u32)]
        pub enum GgmlType {
            $($(#[$doc])* $variant = $id,)*
        }

        impl GgmlType {
            /// Every known type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant,)*];

            /// The type with this id, or `None` for an id ggml does not define (or has removed).
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// ggml's name of the type (`"q4_1"`, `"q6_K"`, `"bf16"` …).
            pub fn name(&self) -> &'static str {
                match self {
                    $(GgmlType::$variant => $name,)*
                }
            }

            /// Elements per block (1 for plain number types).
            pub fn block_size(&self) -> u64 {
                match self {
                    $(GgmlType::$variant => $block,)*
                }
            }

            /// Bytes per block.
            pub fn type_size(&self) -> u64 {
                match self {
                    $(GgmlType::$variant => $size,)*
                }
            }
        }
    };
}

// Block geometry of each type, as ggml lays its blocks out (`sizeof(block_*)` in
// ggml-common.h): e.g. q4_1 = f16 scale + f16 min + 16 bytes of nibbles per 32 elements;
// the k-quants and most i-quants use 256-element super-blocks.
ggml_types! {
    /// `f32` (id 0): one 4-byte value per element.
    F32 = 0, "f32", 1, 4;
    /// `f16` (id 1): one 2-byte value per element.
    F16 = 1, "f16", 1, 2;
    /// `q4_0` (id 2): blocks of 32 elements in 18 bytes.
    Q4_0 = 2, "q4_0", 32, 18;
    /// `q4_1` (id 3): blocks of 32 elements in 20 bytes.
    Q4_1 = 3, "q4_1", 32, 20;
    /// `q5_0` (id 6): blocks of 32 elements in 22 bytes.
    Q5_0 = 6, "q5_0", 32, 22;
    /// `q5_1` (id 7): blocks of 32 elements in 24 bytes.
    Q5_1 = 7, "q5_1", 32, 24;
    /// `q8_0` (id 8): blocks of 32 elements in 34 bytes.
    Q8_0 = 8, "q8_0", 32, 34;
    /// `q8_1` (id 9): blocks of 32 elements in 36 bytes.
    Q8_1 = 9, "q8_1", 32, 36;
    /// `q2_K` (id 10): blocks of 256 elements in 84 bytes.
    Q2_K = 10, "q2_K", 256, 84;
    /// `q3_K` (id 11): blocks of 256 elements in 110 bytes.
    Q3_K = 11, "q3_K", 256, 110;
    /// `q4_K` (id 12): blocks of 256 elements in 144 bytes.
    Q4_K = 12, "q4_K", 256, 144;
    /// `q5_K` (id 13): blocks of 256 elements in 176 bytes.
    Q5_K = 13, "q5_K", 256, 176;
    /// `q6_K` (id 14): blocks of 256 elements in 210 bytes.
    Q6_K = 14, "q6_K", 256, 210;
    /// `q8_K` (id 15): blocks of 256 elements in 292 bytes.
    Q8_K = 15, "q8_K", 256, 292;
    /// `iq2_xxs` (id 16): blocks of 256 elements in 66 bytes.
    IQ2_XXS = 16, "iq2_xxs", 256, 66;
    /// `iq2_xs` (id 17): blocks of 256 elements in 74 bytes.
    IQ2_XS = 17, "iq2_xs", 256, 74;
    /// `iq3_xxs` (id 18): blocks of 256 elements in 98 bytes.
    IQ3_XXS = 18, "iq3_xxs", 256, 98;
    /// `iq1_s` (id 19): blocks of 256 elements in 50 bytes.
    IQ1_S = 19, "iq1_s", 256, 50;
    /// `iq4_nl` (id 20): blocks of 32 elements in 18 bytes.
    IQ4_NL = 20, "iq4_nl", 32, 18;
    /// `iq3_s` (id 21): blocks of 256 elements in 110 bytes.
    IQ3_S = 21, "iq3_s", 256, 110;
    /// `iq2_s` (id 22): blocks of 256 elements in 82 bytes.
    IQ2_S = 22, "iq2_s", 256, 82;
    /// `iq4_xs` (id 23): blocks of 256 elements in 136 bytes.
    IQ4_XS = 23, "iq4_xs", 256, 136;
    /// `i8` (id 24): one 1-byte value per element.
    I8 = 24, "i8", 1, 1;
    /// `i16` (id 25): one 2-byte value per element.
    I16 = 25, "i16", 1, 2;
    /// `i32` (id 26): one 4-byte value per element.
    I32 = 26, "i32", 1, 4;
    /// `i64` (id 27): one 8-byte value per element.
    I64 = 27, "i64", 1, 8;
    /// `f64` (id 28): one 8-byte value per element.
    F64 = 28, "f64", 1, 8;
    /// `iq1_m` (id 29): blocks of 256 elements in 56 bytes.
    IQ1_M = 29, "iq1_m", 256, 56;
    /// `bf16` (id 30): one 2-byte value per element.
    BF16 = 30, "bf16", 1, 2;
    /// `tq1_0` (id 34): blocks of 256 elements in 54 bytes.
    TQ1_0 = 34, "tq1_0", 256, 54;
    /// `tq2_0` (id 35): blocks of 256 elements in 66 bytes.
    TQ2_0 = 35, "tq2_0", 256, 66;
    /// `mxfp4` (id 39): blocks of 32 elements in 17 bytes.
    MXFP4 = 39, "mxfp4", 32, 17;
    /// `nvfp4` (id 40): blocks of 64 elements in 36 bytes.
    NVFP4 = 40, "nvfp4", 64, 36;
    /// `q1_0` (id 41): blocks of 128 elements in 18 bytes.
    Q1_0 = 41, "q1_0", 128, 18;
}

impl GgmlType {
    /// The id stored in GGUF files.
    pub fn id(&self) -> u32 {
        *self as u32
    }

    /// The ggml type of a strata dtype (every strata dtype has one).
    pub fn from_dtype(d: DType) -> Option<GgmlType> {
        Some(match d {
            DType::F32 => GgmlType::F32,
            DType::F16 => GgmlType::F16,
            DType::BF16 => GgmlType::BF16,
            DType::Q8_0 => GgmlType::Q8_0,
            DType::Q4_0 => GgmlType::Q4_0,
            DType::Q4_1 => GgmlType::Q4_1,
            DType::Q5_0 => GgmlType::Q5_0,
            DType::Q5_1 => GgmlType::Q5_1,
            DType::Q2_K => GgmlType::Q2_K,
            DType::Q3_K => GgmlType::Q3_K,
            DType::Q4_K => GgmlType::Q4_K,
            DType::Q5_K => GgmlType::Q5_K,
            DType::Q6_K => GgmlType::Q6_K,
            DType::IQ4_NL => GgmlType::IQ4_NL,
            DType::IQ4_XS => GgmlType::IQ4_XS,
            DType::I32 => GgmlType::I32,
        })
    }

    /// The strata dtype of this type, or `None` for a type strata cannot compute with.
    pub fn dtype(&self) -> Option<DType> {
        Some(match self {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::Q8_0 => DType::Q8_0,
            GgmlType::Q4_0 => DType::Q4_0,
            GgmlType::Q4_1 => DType::Q4_1,
            GgmlType::Q5_0 => DType::Q5_0,
            GgmlType::Q5_1 => DType::Q5_1,
            GgmlType::Q2_K => DType::Q2_K,
            GgmlType::Q3_K => DType::Q3_K,
            GgmlType::Q4_K => DType::Q4_K,
            GgmlType::Q5_K => DType::Q5_K,
            GgmlType::Q6_K => DType::Q6_K,
            GgmlType::IQ4_NL => DType::IQ4_NL,
            GgmlType::IQ4_XS => DType::IQ4_XS,
            GgmlType::I32 => DType::I32,
            _ => return None,
        })
    }

    /// Bytes of one row of `ne0` elements, or `None` if `ne0` is not a whole number of blocks
    /// or the count overflows.
    pub fn row_bytes(&self, ne0: u64) -> Option<u64> {
        if !ne0.is_multiple_of(self.block_size()) {
            return None;
        }
        (ne0 / self.block_size()).checked_mul(self.type_size())
    }

    /// Why an id is unknown, for error messages: ggml removed some ids that old files may use.
    pub(crate) fn unknown_id_hint(id: u32) -> &'static str {
        match id {
            4 | 5 => " (q4_2/q4_3, removed from ggml in 2023)",
            31..=33 => " (q4_0_4_4/q4_0_4_8/q4_0_8_8, removed from GGUF files by ggml; requantize)",
            36..=38 => " (iq4_nl_4_4/iq4_nl_4_8/iq4_nl_8_8, removed from GGUF files by ggml; requantize)",
            _ => "",
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a GGUF file, as validated by the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor name.
    pub name: String,
    /// The element type.
    pub ggml_type: GgmlType,
    /// GGUF order: `dims[0]` (ne0) is the number of elements per contiguous row. Rank 1..=4,
    /// every dim ≥ 1.
    pub dims: Vec<u64>,
    /// Absolute byte offset in the file (data section start + the tensor's relative offset).
    pub offset: u64,
    /// Size of the tensor data, bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (the reader has checked that it does not overflow).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// The row-major shape strata tensors use: the GGUF dims reversed, so dims `[576, 1536]`
    /// (1536 rows of 576) become `[1536, 576]`.
    pub fn shape(&self) -> Vec<usize> {
        // Dims fit in usize on 64-bit targets (the reader checked them against the file size);
        // saturating keeps a 32-bit target from wrapping silently.
        self.dims.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect()
    }

    /// The strata dtype, or `None` for a type strata cannot compute with.
    pub fn dtype(&self) -> Option<DType> {
        self.ggml_type.dtype()
    }
}

/// GGUF metadata value-type ids.
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;

    /// The fewest bytes one value of this type occupies in a file (a string is at least its
    /// u64 length, an array at least its element type and u64 length), or `None` for an
    /// unknown type. Bounds array lengths by the bytes that remain.
    pub fn min_size(ty: u32) -> Option<u64> {
        Some(match ty {
            U8 | I8 | BOOL => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | STRING => 8,
            ARRAY => 12,
            _ => return None,
        })
    }
}
