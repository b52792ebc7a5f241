//! The `next` kernel set's fused decode ops (`ops::rmsnorm_quantize`, `ops::matvec_quantized`,
//! `ops::matvec_glu`, `ops::matvec_add`). On the host each must be its composition of unfused
//! ops bit for bit (the model's decode step switches to them under `next` whatever the device).
//! On CUDA (`fused_decode_next_cuda`, GPU only) the fused kernels against the CPU fast path on
//! the same normed row (8-bit activations rounded the same way: equal up to the order of f32
//! sums), and against the unfused `next` launches of the same data on the GPU.

use strata_kernels::check::{Tolerance, assert_close};
use strata_kernels::{cpu, quant};
use strata_tensor::{Error, Stream, Tensor, ops};

use crate::support::{on, poisoned, uniform};

type K = strata_kernels::DType;

/// (type, rows, cols): every quantized type on whole super-blocks, odd row counts, and the
/// 32-value types also on widths that are not.
fn cases() -> Vec<(K, usize, usize)> {
    let mut v: Vec<_> = K::QUANTIZED.into_iter().map(|dt| (dt, 37, 512)).collect();
    v.extend([(K::Q4_0, 5, 96), (K::Q8_0, 70, 160), (K::IQ4_NL, 3, 32), (K::Q5_1, 1, 224)]);
    v
}

fn weights(dt: K, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Tensor) {
    let bytes = quant::random_blocks(dt, rows * cols / dt.block_values(), seed);
    let t = Tensor::from_bytes(dt.into(), &[rows, cols], &bytes).unwrap();
    (bytes, t)
}

fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(shape, v.to_vec()).unwrap()
}

fn next<R>(f: impl FnOnce() -> R) -> R {
    ops::with_gpu_kernels(ops::GpuKernels::Next, f)
}

/// On the host every fused op is exactly its composition, whatever the kernel set.
#[test]
fn fused_ops_equal_their_composition_cpu() {
    let s = &Stream::Host;
    for (i, (dt, rows, cols)) in cases().into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = f32t(&[1, cols], &uniform(seed, cols, 3.0));
        let nw = f32t(&[cols], &uniform(seed + 1, cols, 1.0));
        let (_, wg) = weights(dt, rows, cols, seed + 2);
        let (_, wu) = weights(dt, rows, cols, seed + 3);
        let (_, wd) = weights(dt, cols, rows.next_multiple_of(dt.block_values()), seed + 4);
        let label = format!("{dt} {rows}x{cols}");
        next(|| {
            let mut acts = ops::QuantizedActs::new(cols, s).unwrap();
            let mut h = poisoned(&[1, cols], s);
            ops::rmsnorm_quantize(&x, &nw, 1e-5, dt.into(), &mut h, &mut acts, s).unwrap();
            assert_eq!(acts.holds(), None, "{label}: the host keeps no 8-bit activations");
            let mut want_h = poisoned(&[1, cols], s);
            ops::rmsnorm(&x, &nw, 1e-5, &mut want_h, s).unwrap();
            let h_vals = h.to_vec_f32(s).unwrap();
            assert_close(&format!("{label} norm"), &h_vals, &want_h.to_vec_f32(s).unwrap(), Tolerance::STRICT);

            let mut y = poisoned(&[rows], s);
            ops::matvec_quantized(&wg, &h, &acts, &mut y, s).unwrap();
            let mut g = poisoned(&[rows], s);
            ops::matvec(&wg, &h, &mut g, s).unwrap();
            assert_close(
                &format!("{label} matvec"),
                &y.to_vec_f32(s).unwrap(),
                &g.to_vec_f32(s).unwrap(),
                Tolerance::STRICT,
            );

            let mut u = poisoned(&[rows], s);
            ops::matvec(&wu, &h, &mut u, s).unwrap();
            for (glu, reference) in [
                (ops::Glu::Silu, ops::silu_mul as fn(&Tensor, &Tensor, &mut Tensor, &Stream) -> _),
                (ops::Glu::GeluTanh, ops::gelu_mul),
            ] {
                let mut got = poisoned(&[rows], s);
                ops::matvec_glu(&wg, &wu, &h, &acts, glu, &mut got, s).unwrap();
                let mut want = poisoned(&[rows], s);
                reference(&g, &u, &mut want, s).unwrap();
                let (got, want) = (got.to_vec_f32(s).unwrap(), want.to_vec_f32(s).unwrap());
                assert_close(&format!("{label} {glu:?}"), &got, &want, Tolerance::STRICT);
            }

            // y += W_down act: the residual add after a projection.
            let down_cols = wd.shape()[1];
            let a = f32t(&[down_cols], &uniform(seed + 5, down_cols, 1.0));
            let r0 = uniform(seed + 6, cols, 2.0);
            let mut y = f32t(&[1, cols], &r0);
            ops::matvec_add(&wd, &a, &mut y, s).unwrap();
            let mut o = poisoned(&[cols], s);
            ops::matvec(&wd, &a, &mut o, s).unwrap();
            let want: Vec<f32> = r0.iter().zip(o.to_vec_f32(s).unwrap()).map(|(r, o)| r + o).collect();
            assert_close(&format!("{label} matvec_add"), &y.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);
        });
    }
}

/// Bad shapes are typed errors, never a panic or a launch.
#[test]
fn fused_ops_refuse_bad_shapes() {
    let s = &Stream::Host;
    let (cols, rows) = (64, 8);
    let nw = f32t(&[cols], &[1.0; 64]);
    let mut acts = ops::QuantizedActs::new(cols, s).unwrap();
    // Two rows: the fused norm takes one.
    let x2 = f32t(&[2, cols], &[0.5; 128]);
    let mut h2 = poisoned(&[2, cols], s);
    let e = ops::rmsnorm_quantize(&x2, &nw, 1e-5, K::Q8_0.into(), &mut h2, &mut acts, s);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    // Activations made for another width.
    let mut other = ops::QuantizedActs::new(96, s).unwrap();
    let x = f32t(&[cols], &[0.5; 64]);
    let mut h = poisoned(&[cols], s);
    let e = ops::rmsnorm_quantize(&x, &nw, 1e-5, K::Q8_0.into(), &mut h, &mut other, s);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    // Gate and up of different shapes; a wrong output length.
    let (_, wg) = weights(K::Q8_0, rows, cols, 1);
    let (_, wu) = weights(K::Q8_0, rows + 1, cols, 2);
    let mut out = poisoned(&[rows], s);
    let e = ops::matvec_glu(&wg, &wu, &x, &acts, ops::Glu::Silu, &mut out, s);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    let mut short = poisoned(&[rows - 1], s);
    let e = ops::matvec_glu(&wg, &wg, &x, &acts, ops::Glu::Silu, &mut short, s);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    let e = ops::matvec_add(&wg, &x, &mut short, s);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
}

/// The fused kernels on a GPU (`kernels/fused_q8.cu`, `strata_matvec_q8_add`) under `next`:
/// - the norm equals the proven `rmsnorm` kernel bit for bit and the CPU reference within f32
///   accumulation; the activations it leaves give the same matvec as the unfused `next`
///   matvec (which quantizes the same row itself) bit for bit, and the CPU fast path's on the
///   GPU's normed row within f32 accumulation;
/// - gate/up with SiLU and GELU against the CPU fast path's two products and the CPU
///   activation (f32 accumulation), and against the unfused `next` launches (f32 rounding:
///   the same sums in the same order, the same activation code);
/// - the residual add in the epilogue, in place, against the same compositions.
#[test]
fn fused_decode_next_cuda() {
    crate::support::on_cuda("fused::fused_decode_next_cuda", |s| {
        for (i, (dt, rows, cols)) in cases().into_iter().enumerate() {
            let seed = 500 + 10 * i as u64;
            let xv = uniform(seed, cols, 3.0);
            let nv = uniform(seed + 1, cols, 1.0);
            let (gb, wg) = weights(dt, rows, cols, seed + 2);
            let (ub, wu) = weights(dt, rows, cols, seed + 3);
            let down_cols = rows.next_multiple_of(dt.block_values());
            let (db, wd) = weights(dt, cols, down_cols, seed + 4);
            let (x, nw) = (on(s, f32t(&[1, cols], &xv)), on(s, f32t(&[cols], &nv)));
            let (wg, wu, wd) = (on(s, wg), on(s, wu), on(s, wd));
            let label = format!("{dt} {rows}x{cols}");
            next(|| {
                let mut acts = ops::QuantizedActs::new(cols, s).unwrap();
                let mut h = poisoned(&[1, cols], s);
                ops::rmsnorm_quantize(&x, &nw, 1e-5, dt.into(), &mut h, &mut acts, s).unwrap();
                assert_eq!(acts.holds(), Some(dt), "{label}: the GPU keeps the activations");
                let hv = h.to_vec_f32(s).unwrap();
                let mut cpu_h = vec![0.0; cols];
                cpu::rmsnorm(&xv, &nv, 1, cols, 1e-5, &mut cpu_h).unwrap();
                assert_close(&format!("{label} norm vs cpu"), &hv, &cpu_h, Tolerance::F32_ACCUMULATION);
                let mut proven_h = poisoned(&[1, cols], s);
                ops::rmsnorm(&x, &nw, 1e-5, &mut proven_h, s).unwrap();
                assert_close(
                    &format!("{label} norm vs kernel"),
                    &hv,
                    &proven_h.to_vec_f32(s).unwrap(),
                    Tolerance::STRICT,
                );

                // The products on the GPU's own normed row: the CPU fast path rounds it as the
                // kernels do.
                let fast = |w: &[u8], r: usize, c: usize, x: &[f32]| {
                    let mut y = vec![0.0; r];
                    cpu::fast::matvec(dt, w, r, c, x, &mut y).unwrap();
                    y
                };
                let (cpu_g, cpu_u) = (fast(&gb, rows, cols, &hv), fast(&ub, rows, cols, &hv));

                let mut y = poisoned(&[rows], s);
                ops::matvec_quantized(&wg, &h, &acts, &mut y, s).unwrap();
                let yv = y.to_vec_f32(s).unwrap();
                assert_close(
                    &format!("{label} matvec on the norm's activations vs cpu"),
                    &yv,
                    &cpu_g,
                    Tolerance::F32_ACCUMULATION,
                );
                let mut g = poisoned(&[rows], s);
                ops::matvec(&wg, &h, &mut g, s).unwrap();
                assert_close(&format!("{label} vs unfused matvec"), &yv, &g.to_vec_f32(s).unwrap(), Tolerance::STRICT);
                let mut u = poisoned(&[rows], s);
                ops::matvec(&wu, &h, &mut u, s).unwrap();

                assert!(ops::glu_fuses(&wg, &wu, &acts, s), "{label}: gate/up should fuse");
                for glu in [ops::Glu::Silu, ops::Glu::GeluTanh] {
                    let mut got = poisoned(&[rows], s);
                    ops::matvec_glu(&wg, &wu, &h, &acts, glu, &mut got, s).unwrap();
                    let got = got.to_vec_f32(s).unwrap();
                    let mut want = vec![0.0; rows];
                    let mut unfused = poisoned(&[rows], s);
                    match glu {
                        ops::Glu::Silu => {
                            cpu::silu_mul(&cpu_g, &cpu_u, &mut want).unwrap();
                            ops::silu_mul(&g, &u, &mut unfused, s).unwrap();
                        }
                        ops::Glu::GeluTanh => {
                            cpu::gelu_mul(&cpu_g, &cpu_u, &mut want).unwrap();
                            ops::gelu_mul(&g, &u, &mut unfused, s).unwrap();
                        }
                    }
                    assert_close(&format!("{label} {glu:?} vs cpu"), &got, &want, Tolerance::F32_ACCUMULATION);
                    let unfused = unfused.to_vec_f32(s).unwrap();
                    assert_close(&format!("{label} {glu:?} vs unfused"), &got, &unfused, Tolerance::F32_ROUNDING);
                }

                // y += W_down a, in place (the residual is the output).
                let av = uniform(seed + 5, down_cols, 1.0);
                let r0 = uniform(seed + 6, cols, 2.0);
                let a = on(s, f32t(&[down_cols], &av));
                let mut y = on(s, f32t(&[1, cols], &r0));
                ops::matvec_add(&wd, &a, &mut y, s).unwrap();
                let yv = y.to_vec_f32(s).unwrap();
                let o = fast(&db, cols, down_cols, &av);
                let want: Vec<f32> = r0.iter().zip(&o).map(|(r, o)| r + o).collect();
                assert_close(&format!("{label} matvec_add vs cpu"), &yv, &want, Tolerance::F32_ACCUMULATION);
                let mut o = poisoned(&[cols], s);
                ops::matvec(&wd, &a, &mut o, s).unwrap();
                let mut unfused = on(s, f32t(&[1, cols], &r0));
                ops::add_inplace(&mut unfused, &o.reshape(&[1, cols]).unwrap(), s).unwrap();
                assert_close(
                    &format!("{label} matvec_add vs unfused"),
                    &yv,
                    &unfused.to_vec_f32(s).unwrap(),
                    Tolerance::STRICT,
                );
            });
        }
    });
}
