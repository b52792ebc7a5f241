//! The reference dequantizer bit for bit against an independent implementation: gguf-py's
//! `gguf.quants.dequantize` (llama.cpp's Python package), whose outputs
//! `scripts/make-dequant-reference.py` wrote to `tests/data/dequant/`:
//! - `random.json`: seeded random blocks of every quantized type, with edge-case scales (zero,
//!   -0, subnormal, largest finite, infinity, NaN);
//! - `gemma.json`: rows of real Q4_K, Q6_K, Q5_0 and Q8_0 tensors of
//!   `models/gemma-3-270m-q4_k_m.gguf`, read from the file here.
//!
//! Values compare by their f32 bits, except that an expected NaN only requires a NaN: NaN
//! payloads depend on the operand order of the one operation that produced them, which
//! neither implementation specifies.

use std::path::PathBuf;

use serde_json::Value;
use strata_kernels::{DType, cpu, quant};

use crate::support::gguf;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dequant")
}

fn load(name: &str) -> Value {
    let path = data_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hex_bytes(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn hex_f32(s: &str) -> Vec<f32> {
    hex_bytes(s).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("field {key} missing in {v}"))
}

/// Asserts `got` equals `want` bit for bit (any NaN for an expected NaN).
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let bad: Vec<(usize, f32, f32)> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|&(_, (g, w))| if w.is_nan() { !g.is_nan() } else { g.to_bits() != w.to_bits() })
        .map(|(i, (&g, &w))| (i, g, w))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ from gguf-py; first (index, strata, gguf-py): {:?}",
        bad.len(),
        got.len(),
        &bad[..bad.len().min(6)]
    );
}

struct RandomCase {
    dtype: DType,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn random_cases() -> Vec<RandomCase> {
    let data = load("random.json");
    let types = data["types"].as_array().expect("types");
    types
        .iter()
        .map(|t| {
            let name = str_field(t, "type");
            let dtype = DType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
            assert_eq!(Some(dtype.ggml_type()), t["id"].as_u64().map(|i| i as u32), "{name}: GGUF id");
            RandomCase {
                dtype,
                bytes: hex_bytes(str_field(t, "bytes_hex")),
                values: hex_f32(str_field(t, "values_f32_hex")),
            }
        })
        .collect()
}

/// Index of the first block whose first scale is an edge case that is not finite (the script's
/// EDGE_SCALES: +inf, -inf, NaN follow 6 finite ones).
const FIRST_NONFINITE_BLOCK: usize = 6;
const NONFINITE_BLOCKS: usize = 3;

#[test]
fn random_blocks_match_gguf_py_bit_for_bit() {
    let cases = random_cases();
    let covered: Vec<DType> = cases.iter().map(|c| c.dtype).collect();
    for dt in DType::QUANTIZED {
        assert!(covered.contains(&dt), "random.json has no {dt} blocks: rerun scripts/make-dequant-reference.py");
    }
    for c in &cases {
        let n_values = c.bytes.len() / c.dtype.block_bytes() * c.dtype.block_values();
        let mut got = vec![0.0f32; n_values];
        quant::dequantize_row(c.dtype, &c.bytes, &mut got).unwrap();
        assert_bits(&format!("{} random blocks", c.dtype), &got, &c.values);
        let random = &c.values[(FIRST_NONFINITE_BLOCK + NONFINITE_BLOCKS) * c.dtype.block_values()..];
        let finite = random.iter().filter(|v| v.is_finite() && **v != 0.0).count();
        assert!(finite > random.len() / 2, "{}: the random blocks should give mostly finite, nonzero values", c.dtype);
    }
}

/// The same bytes through the reference ops that go block by block (`for_each_chunk`), with a
/// row of several blocks: matvec with a one-hot x picks out single values exactly.
#[test]
fn random_blocks_through_the_reference_ops() {
    for c in random_cases() {
        let bv = c.dtype.block_values();
        // Rows of two blocks, finite blocks only (a NaN scale would spread through the sums).
        let blocks = &c.bytes[..FIRST_NONFINITE_BLOCK / 2 * 2 * c.dtype.block_bytes()];
        let (rows, cols) = (FIRST_NONFINITE_BLOCK / 2, 2 * bv);
        let want = &c.values[..rows * cols];
        let mut out = vec![f32::NAN; rows * cols];
        cpu::dequantize_rows(c.dtype, blocks, rows, cols, &mut out).unwrap();
        assert_bits(&format!("{} dequantize_rows", c.dtype), &out, want);
        let ids = [2i32, 0, 1, 2];
        let mut gathered = vec![f32::NAN; ids.len() * cols];
        cpu::embedding_gather(c.dtype, blocks, rows, cols, &ids, &mut gathered).unwrap();
        for (t, &id) in ids.iter().enumerate() {
            let r = id as usize;
            assert_bits(&format!("{} gather", c.dtype), &gathered[t * cols..][..cols], &want[r * cols..][..cols]);
        }
        for col in [0, bv - 1, bv, cols - 1] {
            let mut x = vec![0.0f32; cols];
            x[col] = 1.0;
            let mut y = vec![f32::NAN; rows];
            cpu::matvec(c.dtype, blocks, rows, cols, &x, &mut y).unwrap();
            let pick: Vec<f32> = (0..rows).map(|r| want[r * cols + col]).collect();
            // A sum that starts at +0 turns a -0 value into +0, hence == rather than bits.
            assert_eq!(y, pick, "{} matvec one-hot column {col}", c.dtype);
            let mut ym = vec![f32::NAN; rows];
            cpu::matmul(c.dtype, blocks, rows, cols, &x, 1, &mut ym).unwrap();
            assert_eq!(ym, pick, "{} matmul one-hot column {col}", c.dtype);
        }
    }
}

/// Scales that decode to infinity or NaN give non-finite values (never finite garbage), and
/// `find_nonfinite_scale` finds the first such block.
#[test]
fn nonfinite_scales_give_nonfinite_values() {
    for c in random_cases() {
        let bb = c.dtype.block_bytes();
        assert_eq!(quant::find_nonfinite_scale(c.dtype, &c.bytes), Some(FIRST_NONFINITE_BLOCK), "{}", c.dtype);
        assert_eq!(quant::find_nonfinite_scale(c.dtype, &c.bytes[..FIRST_NONFINITE_BLOCK * bb]), None, "{}", c.dtype);
        let bv = c.dtype.block_values();
        let bad = &c.values[FIRST_NONFINITE_BLOCK * bv..][..NONFINITE_BLOCKS * bv];
        let mut got = vec![0.0f32; bad.len()];
        let bytes = &c.bytes[FIRST_NONFINITE_BLOCK * bb..][..NONFINITE_BLOCKS * bb];
        quant::dequantize_row(c.dtype, bytes, &mut got).unwrap();
        assert!(got.iter().all(|v| !v.is_finite()), "{}: a non-finite scale must not give finite values", c.dtype);
    }
}

/// The comparison can fail: Q6_K's `(d * sc) * q` associated as `d * (sc * q)` changes some
/// values of the random blocks (the K-quants' other products are exact in f32, so their order
/// cannot show), and a flipped quant bit changes a value.
#[test]
fn bit_comparison_catches_another_order_and_a_flipped_bit() {
    let c = random_cases().into_iter().find(|c| c.dtype == DType::Q6_K).expect("q6_K in random.json");
    let bb = c.dtype.block_bytes();
    let mut reassociated_differs = 0;
    for (b, block) in c.bytes.chunks_exact(bb).enumerate().skip(FIRST_NONFINITE_BLOCK + NONFINITE_BLOCKS) {
        // The blocks after the edge cases have normal, random scales.
        let blk = strata_kernels::BlockQ6K::read(block.try_into().unwrap());
        let d = half::f16::from_bits(blk.d).to_f32();
        for v in 0..256 {
            let q = quant::q6_k_value(&blk, v) as i32 - 32;
            let other = d * (blk.scales[v / 16] as i32 * q) as f32;
            reassociated_differs += (other.to_bits() != c.values[b * 256 + v].to_bits()) as usize;
        }
    }
    assert!(reassociated_differs > 0, "the data cannot tell (d * sc) * q from d * (sc * q)");
    let mut flipped = c.bytes.clone();
    let last = c.bytes.len() - bb;
    for q in &mut flipped[last..last + 128] {
        *q ^= 0x11; // every value of the last block (random normal scale) moves
    }
    let mut got = vec![0.0f32; c.values.len()];
    quant::dequantize_row(c.dtype, &flipped, &mut got).unwrap();
    assert!(got.iter().zip(&c.values).any(|(g, w)| g.to_bits() != w.to_bits() && !w.is_nan()));
}

fn gemma_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf")
}

#[test]
fn gemma_rows_match_gguf_py_bit_for_bit() {
    const TEST: &str = "dequant::gemma_rows_match_gguf_py_bit_for_bit";
    let Some(path) = strata_kernels::check::model_file_or_skip(TEST, gemma_path()) else { return };
    let file = gguf::read(&path);
    let data = load("gemma.json");
    let rows = data["rows"].as_array().expect("rows");
    let mut types = Vec::new();
    for r in rows {
        let name = str_field(r, "tensor");
        let t = file.tensors.get(name).unwrap_or_else(|| panic!("{name} is not in the gemma file"));
        let dtype = DType::from_ggml_type(t.ggml_type).unwrap_or_else(|| panic!("{name}: type {}", t.ggml_type));
        assert_eq!(dtype.name().to_ascii_lowercase(), str_field(r, "type").to_ascii_lowercase(), "{name}");
        let (row, cols) = (r["row"].as_u64().expect("row") as usize, t.dims[0] as usize);
        assert_eq!(r["cols"].as_u64(), Some(cols as u64), "{name}");
        let rb = dtype.row_bytes(cols).unwrap();
        let bytes = &file.data[t.offset + row * rb..][..rb];
        let mut got = vec![f32::NAN; cols];
        quant::dequantize_row(dtype, bytes, &mut got).unwrap();
        assert_bits(&format!("{name} row {row} ({dtype})"), &got, &hex_f32(str_field(r, "values_f32_hex")));
        types.push(dtype);
    }
    for dt in [DType::Q4_K, DType::Q6_K, DType::Q5_0, DType::Q8_0] {
        assert!(types.contains(&dt), "gemma.json has no {dt} row");
    }
}
