//! Quantization and dequantization of rows in GGUF's block layouts, on the CPU.
//!
//! Dequantization is the reference every other implementation is compared with: a Q4_1 value
//! is `q as f32 * d + m` (multiply, then add: never fused), Q4_0 `(q - 8) as f32 * d`, Q8_0
//! `q as f32 * d`, with `d` and `m` converted from binary16 exactly. Quantization follows
//! llama.cpp's reference quantizers (`quantize_row_q*_ref`), so round trips land within the
//! format's error bound; it is used by tests and synthetic models.

use half::{bf16, f16};

use crate::{BlockQ4_0, BlockQ4_1, BlockQ8_0, DType, Error, QK, Result};

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
    }
    Ok(())
}

/// Quantizes one row of `values` into `out` (exactly `dtype.row_bytes(values.len())` bytes).
///
/// # Errors
/// If `values.len()` is not a whole number of blocks or `out` has the wrong length.
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
