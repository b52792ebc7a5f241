//! Quantization and dequantization of rows in GGUF's block layouts, on the CPU.
//!
//! Dequantization is the reference every other implementation is compared with: a Q4_1 value
//! is `q as f32 * d + m` (multiply, then add: never fused), Q4_0 `(q - 8) as f32 * d`, Q8_0
//! `q as f32 * d`, with `d` and `m` converted from binary16 exactly. The other types follow
//! llama.cpp's `dequantize_row_*` (ggml-quants.c) operation for operation, each product and
//! difference rounded to f32 on its own (no FMA), so that the results are bit for bit those of
//! gguf-py's `gguf.quants.dequantize` (checked by `tests/quant.rs` against data it wrote):
//! - Q5_0 / Q5_1: `(q - 16) as f32 * d` and `q as f32 * d + m` with 5-bit q;
//! - Q2_K, Q4_K, Q5_K: `dl * q as f32 - ml` where `dl = d * sc as f32` and `ml = dmin * m as f32`
//!   are computed once per sub-block;
//! - Q3_K, Q6_K, IQ4_XS: `dl * q as f32` with `dl = d * sc as f32` (sc signed);
//! - IQ4_NL: `d * IQ4_VALUES[q] as f32`.
//!
//! Scales that decode to NaN or infinity are computed with, as llama.cpp does: the values of
//! that block come out NaN or infinite (never finite garbage), and a forward pass that meets
//! them produces non-finite activations. Loading does not scan scales (it would read every
//! block of a file that is otherwise mapped lazily); [`find_nonfinite_scale`] does, for tools
//! and tests that want to know.
//!
//! Quantization follows llama.cpp's reference quantizers (`quantize_row_q*_ref`) for Q8_0,
//! Q4_0 and Q4_1, so round trips land within the format's error bound; it is used by tests
//! and synthetic models. The other types are read-only here: [`random_blocks`] makes valid
//! blocks of any type for tests and benches.

use half::{bf16, f16};

use crate::dtype::{
    BlockIq4Nl, BlockIq4Xs, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, IQ4_VALUES,
};
use crate::{BlockQ4_0, BlockQ4_1, BlockQ8_0, DType, Error, QK, QK_K, Result};

fn h2f(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// The 5-bit values of a Q5_0/Q5_1 block, in value order (0..32).
fn q5_values(qh: &[u8; 4], qs: &[u8; QK / 2]) -> [u8; QK] {
    let high = u32::from_le_bytes(*qh);
    let mut q = [0u8; QK];
    for (j, &byte) in qs.iter().enumerate() {
        q[j] = (byte & 0x0F) | ((((high >> j) & 1) as u8) << 4);
        q[j + QK / 2] = (byte >> 4) | ((((high >> (j + QK / 2)) & 1) as u8) << 4);
    }
    q
}

/// Dequantizes a Q5_0 block.
pub fn dequantize_q5_0(b: &BlockQ5_0, out: &mut [f32; QK]) {
    let d = h2f(b.d);
    for (o, q) in out.iter_mut().zip(q5_values(&b.qh, &b.qs)) {
        *o = (q as i32 - 16) as f32 * d;
    }
}

/// Dequantizes a Q5_1 block.
pub fn dequantize_q5_1(b: &BlockQ5_1, out: &mut [f32; QK]) {
    let (d, m) = (h2f(b.d), h2f(b.m));
    for (o, q) in out.iter_mut().zip(q5_values(&b.qh, &b.qs)) {
        *o = q as f32 * d + m;
    }
}

/// The 2-bit field of value `v` (0..256) in the `qs` of a Q2_K/Q3_K super-block: value
/// 128 h + 32 k + l is bits 2k..2k+2 of qs[32 h + l].
fn q2_field(qs: &[u8; QK_K / 4], v: usize) -> u8 {
    let (h, k, l) = (v / 128, (v % 128) / 32, v % 32);
    (qs[32 * h + l] >> (2 * k)) & 3
}

/// Dequantizes a Q2_K super-block.
pub fn dequantize_q2_k(b: &BlockQ2K, out: &mut [f32; QK_K]) {
    let (d, dmin) = (h2f(b.d), h2f(b.dmin));
    for (s, (sub, &sc)) in out.chunks_exact_mut(16).zip(&b.scales).enumerate() {
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        for (i, o) in sub.iter_mut().enumerate() {
            *o = dl * q2_field(&b.qs, 16 * s + i) as f32 - ml;
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K super-block (stored + 32 in 12 bytes: the low nibbles
/// of bytes 0..8 are scales 0..8, their high nibbles scales 8..16; the high two bits of scale j
/// are bits 2 (j / 4).. of byte 8 + j % 4).
pub fn q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { packed[j] & 0x0F } else { packed[j - 8] >> 4 };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i32 - 32) as i8;
    }
    out
}

/// Dequantizes a Q3_K super-block.
pub fn dequantize_q3_k(b: &BlockQ3K, out: &mut [f32; QK_K]) {
    let d = h2f(b.d);
    for (s, (sub, sc)) in out.chunks_exact_mut(16).zip(q3_k_scales(&b.scales)).enumerate() {
        let dl = d * sc as f32;
        for (i, o) in sub.iter_mut().enumerate() {
            let v = 16 * s + i;
            let high_set = (b.hmask[v % 32] >> (v / 32)) & 1 == 1;
            let q = q2_field(&b.qs, v) as i32 - if high_set { 0 } else { 4 };
            *o = dl * q as f32;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block
/// (`get_scale_min_k4` in ggml): sub-blocks 0..4 use the low 6 bits of bytes j and j + 4,
/// sub-blocks 4..8 a nibble of byte j + 4 and the top two bits of bytes j - 4 and j.
pub fn k4_scale_min(j: usize, packed: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        ((packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4))
    }
}

/// Dequantizes a Q4_K super-block.
pub fn dequantize_q4_k(b: &BlockQ4K, out: &mut [f32; QK_K]) {
    let (d, dmin) = (h2f(b.d), h2f(b.dmin));
    for (s, sub) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = k4_scale_min(s, &b.scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (bytes, shift) = (&b.qs[32 * (s / 2)..][..32], 4 * (s % 2));
        for (o, &byte) in sub.iter_mut().zip(bytes) {
            *o = dl * ((byte >> shift) & 0x0F) as f32 - ml;
        }
    }
}

/// Dequantizes a Q5_K super-block.
pub fn dequantize_q5_k(b: &BlockQ5K, out: &mut [f32; QK_K]) {
    let (d, dmin) = (h2f(b.d), h2f(b.dmin));
    for (s, sub) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = k4_scale_min(s, &b.scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (bytes, shift) = (&b.qs[32 * (s / 2)..][..32], 4 * (s % 2));
        for ((o, &byte), &high) in sub.iter_mut().zip(bytes).zip(&b.qh) {
            let q = ((byte >> shift) & 0x0F) | (((high >> s) & 1) << 4);
            *o = dl * q as f32 - ml;
        }
    }
}

/// The 6-bit value `v` (0..256) of a Q6_K super-block, before the -32: value
/// 128 h + 32 k + l takes the low nibble (k < 2) or high nibble (k >= 2) of ql[64 h + 32 (k % 2)
/// + l] and bits 2k..2k+2 of qh[32 h + l].
pub fn q6_k_value(b: &BlockQ6K, v: usize) -> u8 {
    let (h, k, l) = (v / 128, (v % 128) / 32, v % 32);
    let low = (b.ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
    let high = (b.qh[32 * h + l] >> (2 * k)) & 3;
    low | (high << 4)
}

/// Dequantizes a Q6_K super-block.
pub fn dequantize_q6_k(b: &BlockQ6K, out: &mut [f32; QK_K]) {
    let d = h2f(b.d);
    for (s, (sub, &sc)) in out.chunks_exact_mut(16).zip(&b.scales).enumerate() {
        let dl = d * sc as f32;
        for (i, o) in sub.iter_mut().enumerate() {
            *o = dl * (q6_k_value(b, 16 * s + i) as i32 - 32) as f32;
        }
    }
}

/// Dequantizes an IQ4_NL block: nibbles in Q4_0's order index [`IQ4_VALUES`].
pub fn dequantize_iq4_nl(b: &BlockIq4Nl, out: &mut [f32; QK]) {
    let d = h2f(b.d);
    for (j, &q) in b.qs.iter().enumerate() {
        out[j] = d * IQ4_VALUES[(q & 0x0F) as usize] as f32;
        out[j + QK / 2] = d * IQ4_VALUES[(q >> 4) as usize] as f32;
    }
}

/// The 8 signed 6-bit scales of an IQ4_XS super-block.
pub fn iq4_xs_scales(b: &BlockIq4Xs) -> [i8; 8] {
    let mut out = [0i8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        let low = (b.scales_l[i / 2] >> (4 * (i % 2))) & 0x0F;
        let high = ((b.scales_h >> (2 * i)) & 3) as u8;
        *o = ((low | (high << 4)) as i32 - 32) as i8;
    }
    out
}

/// Dequantizes an IQ4_XS super-block.
pub fn dequantize_iq4_xs(b: &BlockIq4Xs, out: &mut [f32; QK_K]) {
    let d = h2f(b.d);
    for ((sub, qs), sc) in out.chunks_exact_mut(32).zip(b.qs.chunks_exact(16)).zip(iq4_xs_scales(b)) {
        let dl = d * sc as f32;
        for (j, &q) in qs.iter().enumerate() {
            sub[j] = dl * IQ4_VALUES[(q & 0x0F) as usize] as f32;
            sub[j + 16] = dl * IQ4_VALUES[(q >> 4) as usize] as f32;
        }
    }
}

/// Dequantizes a row of blocks of `B` bytes and `V` values each (lengths checked by the caller).
fn blocks<const B: usize, const V: usize>(row: &[u8], out: &mut [f32], f: impl Fn(&[u8; B], &mut [f32; V])) {
    for (o, c) in out.as_chunks_mut::<V>().0.iter_mut().zip(row.as_chunks::<B>().0) {
        f(c, o);
    }
}

/// The binary16 scale fields of one block (`d`, and `m`/`dmin` where the type has one).
fn block_scales(dtype: DType, block: &[u8]) -> [Option<u16>; 2] {
    let at = |i: usize| Some(u16::from_le_bytes([block[i], block[i + 1]]));
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => [None, None],
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::IQ4_NL | DType::IQ4_XS => [at(0), None],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => [at(0), at(2)],
        DType::Q2_K => [at(80), at(82)],
        DType::Q3_K => [at(108), None],
        DType::Q6_K => [at(208), None],
    }
}

/// The index of the first block of `data` (whole blocks of `dtype`) with a binary16 scale
/// that is NaN or infinite, or `None`. Plain float types have no scales and return `None`; a
/// trailing partial block is ignored.
pub fn find_nonfinite_scale(dtype: DType, data: &[u8]) -> Option<usize> {
    if !dtype.is_quantized() {
        return None;
    }
    data.chunks_exact(dtype.block_bytes())
        .position(|b| block_scales(dtype, b).into_iter().flatten().any(|bits| !f16::from_bits(bits).is_finite()))
}

/// Dequantizes a Q8_0 block.
pub fn dequantize_q8_0(b: &BlockQ8_0, out: &mut [f32; QK]) {
    let d = f16::from_bits(b.d).to_f32();
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

/// Dequantizes a Q4_0 block: low nibbles are values 0..16, high nibbles 16..32.
pub fn dequantize_q4_0(b: &BlockQ4_0, out: &mut [f32; QK]) {
    let d = f16::from_bits(b.d).to_f32();
    for (j, &q) in b.qs.iter().enumerate() {
        out[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Dequantizes a Q4_1 block: low nibbles are values 0..16, high nibbles 16..32.
pub fn dequantize_q4_1(b: &BlockQ4_1, out: &mut [f32; QK]) {
    let d = f16::from_bits(b.d).to_f32();
    let m = f16::from_bits(b.m).to_f32();
    for (j, &q) in b.qs.iter().enumerate() {
        out[j] = (q & 0x0F) as f32 * d + m;
        out[j + QK / 2] = (q >> 4) as f32 * d + m;
    }
}

fn check_row(op: &'static str, dtype: DType, bytes: usize, values: usize) -> Result<()> {
    let want = dtype.row_bytes(values)?;
    if bytes != want {
        return Err(Error::invalid(op, format!("{values} {dtype} values take {want} bytes, got a buffer of {bytes}")));
    }
    Ok(())
}

/// Dequantizes one row: `row` holds `out.len()` values of `dtype`.
///
/// # Errors
/// If `out.len()` is not a whole number of blocks or `row` has the wrong length.
pub fn dequantize_row(dtype: DType, row: &[u8], out: &mut [f32]) -> Result<()> {
    check_row("dequantize_row", dtype, row.len(), out.len())?;
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (o, c) in out.as_chunks_mut::<QK>().0.iter_mut().zip(row.as_chunks::<34>().0) {
                dequantize_q8_0(&BlockQ8_0::read(c), o);
            }
        }
        DType::Q4_0 => {
            for (o, c) in out.as_chunks_mut::<QK>().0.iter_mut().zip(row.as_chunks::<18>().0) {
                dequantize_q4_0(&BlockQ4_0::read(c), o);
            }
        }
        DType::Q4_1 => {
            for (o, c) in out.as_chunks_mut::<QK>().0.iter_mut().zip(row.as_chunks::<20>().0) {
                dequantize_q4_1(&BlockQ4_1::read(c), o);
            }
        }
        DType::Q5_0 => blocks::<22, QK>(row, out, |c, o| dequantize_q5_0(&BlockQ5_0::read(c), o)),
        DType::Q5_1 => blocks::<24, QK>(row, out, |c, o| dequantize_q5_1(&BlockQ5_1::read(c), o)),
        DType::Q2_K => blocks::<84, QK_K>(row, out, |c, o| dequantize_q2_k(&BlockQ2K::read(c), o)),
        DType::Q3_K => blocks::<110, QK_K>(row, out, |c, o| dequantize_q3_k(&BlockQ3K::read(c), o)),
        DType::Q4_K => blocks::<144, QK_K>(row, out, |c, o| dequantize_q4_k(&BlockQ4K::read(c), o)),
        DType::Q5_K => blocks::<176, QK_K>(row, out, |c, o| dequantize_q5_k(&BlockQ5K::read(c), o)),
        DType::Q6_K => blocks::<210, QK_K>(row, out, |c, o| dequantize_q6_k(&BlockQ6K::read(c), o)),
        DType::IQ4_NL => blocks::<18, QK>(row, out, |c, o| dequantize_iq4_nl(&BlockIq4Nl::read(c), o)),
        DType::IQ4_XS => blocks::<136, QK_K>(row, out, |c, o| dequantize_iq4_xs(&BlockIq4Xs::read(c), o)),
    }
    Ok(())
}

/// Quantizes one row of `values` into `out` (exactly `dtype.row_bytes(values.len())` bytes).
///
/// # Errors
/// If `values.len()` is not a whole number of blocks or `out` has the wrong length, and
/// [`Error::UnsupportedDtype`] for the types strata only reads (Q5_0, Q5_1, the K-quants, the
/// IQ4 types).
pub fn quantize_row(dtype: DType, values: &[f32], out: &mut [u8]) -> Result<()> {
    check_row("quantize_row", dtype, out.len(), values.len())?;
    match dtype {
        DType::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(values) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (c, &v) in out.chunks_exact_mut(2).zip(values) {
                c.copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (c, &v) in out.chunks_exact_mut(2).zip(values) {
                c.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
            }
        }
        DType::Q8_0 => {
            for (c, v) in out.as_chunks_mut::<34>().0.iter_mut().zip(values.chunks_exact(QK)) {
                quantize_q8_0(v).write(c);
            }
        }
        DType::Q4_0 => {
            for (c, v) in out.as_chunks_mut::<18>().0.iter_mut().zip(values.chunks_exact(QK)) {
                quantize_q4_0(v).write(c);
            }
        }
        DType::Q4_1 => {
            for (c, v) in out.as_chunks_mut::<20>().0.iter_mut().zip(values.chunks_exact(QK)) {
                quantize_q4_1(v).write(c);
            }
        }
        DType::Q5_0
        | DType::Q5_1
        | DType::Q2_K
        | DType::Q3_K
        | DType::Q4_K
        | DType::Q5_K
        | DType::Q6_K
        | DType::IQ4_NL
        | DType::IQ4_XS => {
            return Err(Error::UnsupportedDtype {
                op: "quantize_row",
                dtype,
                expected: "f32, f16, bf16, q8_0, q4_0 or q4_1 (the other types are read, not written)",
            });
        }
    }
    Ok(())
}

/// Quantizes a whole `rows` x `cols` matrix (row-major `values`) into a new buffer.
///
/// # Errors
/// If `cols` is not a whole number of blocks or `values.len() != rows * cols`.
pub fn quantize_matrix(dtype: DType, values: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    if rows.checked_mul(cols) != Some(values.len()) {
        return Err(Error::invalid(
            "quantize_matrix",
            format!("{rows} x {cols} matrix needs {} values, got {}", rows.saturating_mul(cols), values.len()),
        ));
    }
    let rb = dtype.row_bytes(cols)?;
    let mut out = vec![0u8; dtype.matrix_bytes(rows, cols)?];
    if rb > 0 {
        for (o, v) in out.chunks_exact_mut(rb).zip(values.chunks_exact(cols.max(1))) {
            quantize_row(dtype, v, o)?;
        }
    }
    Ok(out)
}

/// llama.cpp's `quantize_row_q8_0_ref` for one block: d = max|x| / 127, q = round(x / d).
pub fn quantize_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ8_0 { d: f16::from_f32(d).to_bits(), qs: [0; QK] };
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    b
}

/// llama.cpp's `quantize_row_q4_0_ref`: d = (value of largest magnitude) / -8,
/// q = min(15, trunc(x / d + 8.5)).
pub fn quantize_q4_0(x: &[f32]) -> BlockQ4_0 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ4_0 { d: f16::from_f32(d).to_bits(), qs: [0; QK / 2] };
    for j in 0..QK / 2 {
        let q0 = ((x[j] * id + 8.5) as i32).min(15) as u8;
        let q1 = ((x[j + QK / 2] * id + 8.5) as i32).min(15) as u8;
        b.qs[j] = q0 | (q1 << 4);
    }
    b
}

/// llama.cpp's `quantize_row_q4_1_ref`: d = (max - min) / 15, m = min,
/// q = min(15, trunc((x - min) / d + 0.5)).
pub fn quantize_q4_1(x: &[f32]) -> BlockQ4_1 {
    let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ4_1 { d: f16::from_f32(d).to_bits(), m: f16::from_f32(min).to_bits(), qs: [0; QK / 2] };
    for j in 0..QK / 2 {
        let q0 = (((x[j] - min) * id + 0.5) as i32).min(15) as u8;
        let q1 = (((x[j + QK / 2] - min) * id + 0.5) as i32).min(15) as u8;
        b.qs[j] = q0 | (q1 << 4);
    }
    b
}

/// `n_blocks` seeded pseudo-random blocks of `dtype` for tests and benches: random quant bits
/// and packed sub-block scales, with every binary16 scale finite and of a size that keeps
/// values within about ±4 (`d` in [2^-9, 2^-5), `m`/`dmin` likewise, both signs for `d`
/// of the types whose scale is signed in practice). Plain float types get values in [-1, 1).
pub fn random_blocks(dtype: DType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*: small, seedable, good enough for test data.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    };
    let bytes = dtype.block_bytes();
    let mut out = vec![0u8; n_blocks * bytes];
    if !dtype.is_quantized() {
        for c in out.chunks_exact_mut(bytes) {
            let v = (next() as f32 / u32::MAX as f32) * 2.0 - 1.0;
            match dtype {
                DType::F32 => c.copy_from_slice(&v.to_le_bytes()),
                DType::F16 => c.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
                _ => c.copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
        return out;
    }
    for b in out.chunks_exact_mut(bytes) {
        for byte in b.iter_mut() {
            *byte = next() as u8;
        }
        // A scale of 2^e * (1 + f), e in [-9, -5): finite and normal.
        let mut scale = |signed: bool| {
            let r = next();
            let e = -9 + (r % 4) as i32;
            let f = ((r >> 8) % 1024) as f32 / 1024.0;
            let v = (1.0 + f) * 2f32.powi(e);
            let v = if signed && (r >> 20) & 1 == 1 { -v } else { v };
            f16::from_f32(v).to_bits().to_le_bytes()
        };
        let signed = matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::Q6_K | DType::Q3_K);
        let fields: &[usize] = match dtype {
            DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
            DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
            DType::Q2_K => &[80, 82],
            DType::Q3_K => &[108],
            DType::Q6_K => &[208],
            DType::F32 | DType::F16 | DType::BF16 => &[],
        };
        for &at in fields {
            // Q4_1/Q5_1's m is an offset of either sign; K-quant mins are subtracted, so >= 0.
            let signed = signed || (at == 2 && matches!(dtype, DType::Q4_1 | DType::Q5_1));
            b[at..at + 2].copy_from_slice(&scale(signed));
        }
    }
    out
}
