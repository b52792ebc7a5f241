//! Quantization round trips within each format's error bound, and the block layouts.

use half::{bf16, f16};
use proptest::prelude::*;
use strata_kernels::{BlockQ4_0, BlockQ4_1, BlockQ8_0, DType, QK, quant};

/// binary16 keeps 11 significant bits: storing d (or m) in it moves it by at most 2^-11
/// relative; 2^-10 leaves a margin.
const F16_REL: f32 = 1.0 / 1024.0;
/// Below 2^-14 binary16 is subnormal, with a fixed spacing of 2^-24: an absolute error.
const F16_ABS: f32 = 1.0 / 16_777_216.0;

fn block() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(-1.0f32..1.0, QK),
        prop::collection::vec(-1000.0f32..1000.0, QK),
        prop::collection::vec(0.0f32..1e-3, QK),
        (-5.0f32..5.0).prop_map(|c| vec![c; QK]),
        Just(vec![0.0; QK]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Q8_0: d = amax/127, |x - q*d| <= d/2, plus what rounding d to f16 moves (127 steps).
    #[test]
    fn q8_0_round_trip(x in block()) {
        let b = quant::quantize_q8_0(&x);
        let mut y = [0.0f32; QK];
        quant::dequantize_q8_0(&b, &mut y);
        let d = f16::from_bits(b.d).to_f32().abs();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bound = 0.5 * d + 127.0 * (d * F16_REL + F16_ABS) + amax * 1e-6;
        for (a, b) in x.iter().zip(&y) {
            prop_assert!((a - b).abs() <= bound, "x {a} -> {b}, bound {bound}");
        }
    }

    /// Q4_0: d = -max/8 where max has the largest magnitude; values of the other sign can
    /// clamp at q = 15, so the bound is one step, plus f16 rounding of d over 8 steps.
    #[test]
    fn q4_0_round_trip(x in block()) {
        let b = quant::quantize_q4_0(&x);
        let mut y = [0.0f32; QK];
        quant::dequantize_q4_0(&b, &mut y);
        let d = f16::from_bits(b.d).to_f32().abs();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bound = d + 8.0 * (d * F16_REL + F16_ABS) + amax * 1e-6;
        for (a, b) in x.iter().zip(&y) {
            prop_assert!((a - b).abs() <= bound, "x {a} -> {b}, bound {bound}");
        }
    }

    /// Q4_1: d = (max-min)/15, m = min: half a step, plus f16 rounding of d (15 steps) and m.
    #[test]
    fn q4_1_round_trip(x in block()) {
        let b = quant::quantize_q4_1(&x);
        let mut y = [0.0f32; QK];
        quant::dequantize_q4_1(&b, &mut y);
        let d = f16::from_bits(b.d).to_f32().abs();
        let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bound = 0.5 * d + 15.0 * (d * F16_REL + F16_ABS) + min.abs() * F16_REL + F16_ABS + amax * 1e-6;
        for (a, b) in x.iter().zip(&y) {
            prop_assert!((a - b).abs() <= bound, "x {a} -> {b}, bound {bound}");
        }
    }

    /// Plain types: f32 is exact, f16 and bf16 round to nearest (11 and 8 significant bits).
    #[test]
    fn float_round_trips(x in prop::collection::vec(-6e4f32..6e4, 1..70)) {
        for (dt, rel) in [(DType::F32, 0.0f32), (DType::F16, 1.0 / 2048.0), (DType::BF16, 1.0 / 256.0)] {
            let bytes = quant::quantize_matrix(dt, &x, 1, x.len()).unwrap();
            let mut y = vec![0.0; x.len()];
            quant::dequantize_row(dt, &bytes, &mut y).unwrap();
            for (a, b) in x.iter().zip(&y) {
                // f16 also has a smallest normal of 2^-14; tiny values are absolute-bounded.
                prop_assert!((a - b).abs() <= a.abs() * rel + 6.2e-5 * (dt == DType::F16) as u32 as f32, "{dt}: {a} -> {b}");
            }
        }
    }

    /// Block bytes survive read/write unchanged.
    #[test]
    fn block_bytes_round_trip(bytes in prop::collection::vec(any::<u8>(), 34)) {
        let b8: [u8; 34] = bytes.clone().try_into().unwrap();
        let mut out8 = [0u8; 34];
        BlockQ8_0::read(&b8).write(&mut out8);
        prop_assert_eq!(out8, b8);
        let b40: [u8; 18] = bytes[..18].try_into().unwrap();
        let mut out40 = [0u8; 18];
        BlockQ4_0::read(&b40).write(&mut out40);
        prop_assert_eq!(out40, b40);
        let b41: [u8; 20] = bytes[..20].try_into().unwrap();
        let mut out41 = [0u8; 20];
        BlockQ4_1::read(&b41).write(&mut out41);
        prop_assert_eq!(out41, b41);
    }

    /// The larger blocks too (their fields in file order, u16 little-endian).
    #[test]
    fn new_block_bytes_round_trip(bytes in prop::collection::vec(any::<u8>(), 210)) {
        macro_rules! round_trip {
            ($ty:ty, $n:literal) => {{
                let b: [u8; $n] = bytes[..$n].try_into().unwrap();
                let mut out = [0u8; $n];
                <$ty>::read(&b).write(&mut out);
                prop_assert_eq!(out, b, "{}", stringify!($ty));
            }};
        }
        round_trip!(strata_kernels::BlockQ5_0, 22);
        round_trip!(strata_kernels::BlockQ5_1, 24);
        round_trip!(strata_kernels::BlockQ2K, 84);
        round_trip!(strata_kernels::BlockQ3K, 110);
        round_trip!(strata_kernels::BlockQ4K, 144);
        round_trip!(strata_kernels::BlockQ5K, 176);
        round_trip!(strata_kernels::BlockQ6K, 210);
        round_trip!(strata_kernels::BlockIq4Nl, 18);
        round_trip!(strata_kernels::BlockIq4Xs, 136);
    }
}

/// The nibble order GGUF documents: value j < 16 is the low nibble of qs[j], value j + 16 the
/// high nibble.
#[test]
fn q4_nibble_order() {
    let mut qs = [0u8; 16];
    qs[0] = 0x2F; // value 0 -> 15, value 16 -> 2
    qs[15] = 0x90; // value 15 -> 0, value 31 -> 9
    let mut y = [0.0f32; QK];
    quant::dequantize_q4_1(&BlockQ4_1 { d: f16::from_f32(1.0).to_bits(), m: 0, qs }, &mut y);
    assert_eq!((y[0], y[16], y[15], y[31]), (15.0, 2.0, 0.0, 9.0));
    quant::dequantize_q4_0(&BlockQ4_0 { d: f16::from_f32(0.5).to_bits(), qs }, &mut y);
    assert_eq!((y[0], y[16], y[15], y[31]), (3.5, -3.0, -4.0, 0.5));
}

#[test]
fn row_sizes_and_names() {
    assert_eq!(DType::Q4_1.row_bytes(576).unwrap(), 18 * 20);
    assert_eq!(DType::Q8_0.row_bytes(576).unwrap(), 18 * 34);
    assert_eq!(DType::Q4_0.row_bytes(4096).unwrap(), 128 * 18);
    assert_eq!(DType::F16.row_bytes(7).unwrap(), 14);
    assert!(DType::Q4_0.row_bytes(33).is_err(), "a partial block is not a row");
    assert!(DType::F32.matrix_bytes(usize::MAX / 2, 3).is_err(), "overflow is an error");
    for dt in DType::ALL {
        assert_eq!(DType::from_ggml_type(dt.ggml_type()), Some(dt));
        assert_eq!(DType::from_name(dt.name()), Some(dt));
    }
    assert_eq!(DType::from_ggml_type(12), Some(DType::Q4_K));
    assert_eq!(DType::from_ggml_type(16), None, "IQ2_XXS is not supported");
    for (dt, values, bytes) in [
        (DType::Q5_0, 32, 22),
        (DType::Q5_1, 32, 24),
        (DType::Q2_K, 256, 84),
        (DType::Q3_K, 256, 110),
        (DType::Q4_K, 256, 144),
        (DType::Q5_K, 256, 176),
        (DType::Q6_K, 256, 210),
        (DType::IQ4_NL, 32, 18),
        (DType::IQ4_XS, 256, 136),
    ] {
        assert_eq!((dt.block_values(), dt.block_bytes()), (values, bytes), "{dt}");
        assert!(dt.is_quantized());
        assert_eq!(dt.row_bytes(2 * values).unwrap(), 2 * bytes);
    }
    let e = DType::Q4_K.row_bytes(640).unwrap_err().to_string();
    assert!(e.contains("q4_K") && e.contains("256") && e.contains("640"), "{e}");
    assert_eq!(bf16::from_f32(1.0).to_bits(), 0x3F80);
}

/// Malformed weight data of every quantized type, at the tensor level: a truncated
/// (super-)block, a row that is not a whole number of blocks (a K-quant row of 576 values, the
/// default model's width), and a weight buffer one byte short, through dequantization and every
/// CPU product (reference, exact f32-activation path, fast 8-bit path) and the embedding
/// gather. Each is an error that names the type or the sizes, never a panic or an
/// out-of-bounds read.
#[test]
fn malformed_rows_are_errors_for_every_quantized_type() {
    use strata_kernels::cpu;
    for dt in DType::QUANTIZED {
        let (bv, bb) = (dt.block_values(), dt.block_bytes());
        let blocks = quant::random_blocks(dt, 4, 3);
        // A row of two blocks given one byte less (a truncated block), or one block more.
        let mut out = vec![0.0f32; 2 * bv];
        for len in [2 * bb - 1, bb, 3 * bb] {
            let e = quant::dequantize_row(dt, &blocks[..len], &mut out).expect_err("wrong row length").to_string();
            assert!(e.contains(dt.name()) && e.contains(&len.to_string()), "{dt}, {len} bytes: {e}");
        }
        // Values that end inside a block.
        let mut partial = vec![0.0f32; bv + bv / 2];
        let e = quant::dequantize_row(dt, &blocks[..2 * bb], &mut partial).expect_err("partial block").to_string();
        assert!(e.contains(dt.name()), "{dt}: {e}");
        if dt.is_super_block() {
            let e = dt.row_bytes(576).expect_err("576 is not a multiple of 256").to_string();
            assert!(e.contains("576") && e.contains("256") && e.contains(dt.name()), "{dt}: {e}");
        }

        // Two rows of two blocks each, with the weight buffer one byte short.
        let (rows, cols) = (2, 2 * bv);
        let short = &blocks[..4 * bb - 1];
        let x = vec![0.5f32; cols * 3];
        let mut y = vec![0.0f32; rows * 3];
        let mut products: Vec<(&str, strata_kernels::Result<()>)> = vec![
            ("cpu::matvec", cpu::matvec(dt, short, rows, cols, &x[..cols], &mut y[..rows])),
            ("cpu::matmul", cpu::matmul(dt, short, rows, cols, &x, 3, &mut y)),
            ("fast::matvec_f32", cpu::fast::matvec_f32(dt, short, rows, cols, &x[..cols], &mut y[..rows])),
            ("fast::matmul_f32", cpu::fast::matmul_f32(dt, short, rows, cols, &x, 3, &mut y)),
            ("cpu::dequantize_rows", cpu::dequantize_rows(dt, short, rows, cols, &mut vec![0.0; rows * cols])),
            ("cpu::embedding_gather", cpu::embedding_gather(dt, short, rows, cols, &[1], &mut vec![0.0; cols])),
        ];
        // The 8-bit path takes the types it has integer kernels for (the others run as exact).
        if cpu::fast::supports_8bit(dt) {
            products.push(("fast::matvec", cpu::fast::matvec(dt, short, rows, cols, &x[..cols], &mut y[..rows])));
            products.push(("fast::matmul", cpu::fast::matmul(dt, short, rows, cols, &x, 3, &mut y)));
        }
        for (op, r) in products {
            let e = r.expect_err("a short weight buffer").to_string();
            assert!(e.contains(&(4 * bb - 1).to_string()), "{dt} {op}: {e}");
        }
        // And with a whole buffer, a column count that ends inside a block.
        let e = cpu::matvec(dt, &blocks, rows, cols + 1, &x[..cols + 1], &mut y[..rows]).expect_err("partial block");
        assert!(e.to_string().contains(dt.name()), "{dt}: {e}");
    }
}
