//! The `next` GPU decode matvec's arithmetic (`kernels/matvec_q8.cu`, `STRATA_GPU_KERNELS=next`)
//! run on the host through its host twins, which compile the kernels' own per-block code for
//! the CPU (dp4a emulated): every type's decoding and the activation rounding are checked
//! against the CPU fast path on machines without a GPU. The GPU launch itself is checked by
//! strata-tensor's `matvec_next` test where a device exists.
//!
//! In a build without `cuda` the host twins do not exist: the tests say `skipped:` and count.

use strata_kernels::check::{Tolerance, assert_close, skip};
use strata_kernels::{DType, cpu, cuda, quant};

use crate::support::{rng, uniform};

/// Columns: two 256-value super-blocks (eight 32-value blocks).
const COLS: usize = 512;

fn built(test: &str) -> bool {
    if !cuda::BUILT {
        skip(test, strata_kernels::check::NOT_BUILT_WITH_CUDA);
    }
    cuda::BUILT
}

/// The activation values x' = q * d the host twin's buffer holds (its layout: q at 0, then the
/// scales, each section 16-byte aligned).
fn act_values(dt: DType, act: &[u8], cols: usize) -> Vec<f32> {
    let qk = if dt.block_values() == 256 { 256 } else { 32 };
    let d_at = cols.next_multiple_of(16);
    (0..cols)
        .map(|c| {
            let b = c / qk;
            let d = f32::from_le_bytes(act[d_at + 4 * b..][..4].try_into().unwrap());
            act[c] as i8 as f32 * d
        })
        .collect()
}

/// Activations: a spread of magnitudes per block, an all-zero block and (if `poison`) a block
/// holding a NaN.
fn activations(seed: u64, poison: bool) -> Vec<f32> {
    let mut x = uniform(&mut rng(seed), COLS, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        *v *= [1.0, 0.01, 30.0, 1e-4][(i / 64) % 4];
    }
    x[256..288].fill(0.0);
    if poison {
        x[300] = f32::NAN;
    }
    x
}

#[test]
fn activations_are_the_cpu_fast_paths_bit_for_bit() {
    if !built("matvec_q8::activations_are_the_cpu_fast_paths_bit_for_bit") {
        return;
    }
    for dt in DType::QUANTIZED {
        for poison in [false, true] {
            let x = activations(7, poison);
            let mut act = vec![0u8; cuda::act_q8_bytes(dt, COLS).unwrap()];
            cuda::quantize_act_q8_host(dt, &x, COLS, &mut act).unwrap();
            let got = act_values(dt, &act, COLS);
            let mut want = vec![0.0; COLS];
            cpu::fast::activation_values_for(dt, &x, COLS, &mut want).unwrap();
            for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{dt} (poison {poison}): value {c} is {g} on the GPU kernels' rounding, {w} on the CPU fast path's"
                );
            }
        }
    }
}

#[test]
fn matvec_is_the_cpu_fast_paths_up_to_f32_sums() {
    if !built("matvec_q8::matvec_is_the_cpu_fast_paths_up_to_f32_sums") {
        return;
    }
    let rows = 9;
    for dt in DType::QUANTIZED {
        // Every bit pattern of the blocks (random quant bits, finite scales) and, for the types
        // our quantizer writes, realistic weights.
        let mut cases = vec![("random blocks", quant::random_blocks(dt, rows * COLS / dt.block_values(), 11))];
        if let Ok(real) = quant::quantize_matrix(dt, &uniform(&mut rng(12), rows * COLS, 1.0), rows, COLS) {
            cases.push(("quantized weights", real));
        }
        for (what, w) in cases {
            let x = activations(13, false);
            let mut act = vec![0u8; cuda::act_q8_bytes(dt, COLS).unwrap()];
            cuda::quantize_act_q8_host(dt, &x, COLS, &mut act).unwrap();
            let mut got = vec![f32::NAN; rows];
            cuda::matvec_q8_host(dt, &w, rows, COLS, &act, &mut got).unwrap();
            let mut want = vec![f32::NAN; rows];
            cpu::fast::matvec(dt, &w, rows, COLS, &x, &mut want).unwrap();
            assert_close(&format!("matvec_q8 {dt} on {what}"), &got, &want, Tolerance::F32_ACCUMULATION);
            // And against f64 sums of the dequantized weights times the same activation values.
            let mut wd = vec![0.0f32; rows * COLS];
            cpu::dequantize_rows(dt, &w, rows, COLS, &mut wd).unwrap();
            let xv = act_values(dt, &act, COLS);
            let exact: Vec<f64> =
                wd.chunks_exact(COLS).map(|r| r.iter().zip(&xv).map(|(&a, &b)| a as f64 * b as f64).sum()).collect();
            assert_close(&format!("matvec_q8 {dt} on {what} vs f64"), &got, &exact, Tolerance::F32_ACCUMULATION);
        }
    }
}

#[test]
fn a_nan_activation_block_makes_its_rows_nan() {
    if !built("matvec_q8::a_nan_activation_block_makes_its_rows_nan") {
        return;
    }
    for dt in DType::QUANTIZED {
        let w = quant::random_blocks(dt, 2 * COLS / dt.block_values(), 3);
        let x = activations(5, true);
        let mut act = vec![0u8; cuda::act_q8_bytes(dt, COLS).unwrap()];
        cuda::quantize_act_q8_host(dt, &x, COLS, &mut act).unwrap();
        let mut y = vec![0.0; 2];
        cuda::matvec_q8_host(dt, &w, 2, COLS, &act, &mut y).unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{dt}: a NaN activation gave {y:?}");
    }
}

#[test]
fn bad_shapes_are_errors() {
    if !built("matvec_q8::bad_shapes_are_errors") {
        return;
    }
    assert_eq!(cuda::act_q8_bytes(DType::F16, 64), None, "plain floats have no 8-bit activations");
    assert_eq!(cuda::act_q8_bytes(DType::Q4_K, 32), None, "K-quant activations come in blocks of 256");
    assert!(cuda::act_q8_bytes(DType::Q4_0, 32).is_some());
    let mut act = vec![0u8; cuda::act_q8_bytes(DType::Q4_0, 64).unwrap()];
    assert!(cuda::quantize_act_q8_host(DType::Q4_0, &[0.0; 32], 64, &mut act).is_err(), "x too short");
    let w = quant::random_blocks(DType::Q4_0, 2, 1);
    let mut y = vec![0.0; 2];
    assert!(cuda::matvec_q8_host(DType::Q4_0, &w, 2, 64, &act, &mut y).is_err(), "w holds one row, not two");
}
