//! CUDA graphs of the decode step (issue 13 §4): the decode attention that reads its position
//! on the device (`ops::attention_decode_at`, host and CUDA), and capture and replay of a
//! stream's launches (`GpuStream::capture`, `GpuGraph`), including the captures that must fail
//! (an allocation inside, an error from the closure) and leave the stream usable.

use half::f16;
use strata_kernels::check::{Tolerance, assert_close};
use strata_kernels::cpu::{self, CacheRef};
use strata_tensor::{DType, Stream, Tensor, ops};

use crate::support::{on, on_cpu, on_cuda, poisoned, uniform};

fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(shape, v.to_vec()).unwrap()
}

fn pos_tensor(s: &Stream, p: i32) -> Tensor {
    on(s, Tensor::from_i32(&[1], vec![p]).unwrap())
}

/// F16 K/V caches of [rows, kvh, d] on the stream's device and their values for the reference.
fn caches(s: &Stream, rows: usize, kvh: usize, d: usize, seed: u64) -> (Tensor, Tensor, [Vec<f16>; 2]) {
    let n = rows * kvh * d;
    let halves = [uniform(seed, n, 1.0), uniform(seed + 1, n, 1.0)]
        .map(|v| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<f16>>());
    let t = |i: usize| on(s, Tensor::from_f16(&[rows, kvh, d], &halves[i]).unwrap());
    (t(0), t(1), halves)
}

/// The query at the position in a device tensor attends the rows up to it: the same numbers as
/// `attention_decode` with n_kv = position + 1 (on the host the same code, so equal; on a GPU the `next` flash-decoding kernel with the row count read on the device, whose
/// blocks do the same work as with the count as an argument, so equal bit for bit too), and
/// within the f32-accumulation tolerance of the CPU reference. Positions around the 256-row
/// splits, GQA and MHA, windows shorter and longer than a split.
fn attention_decode_at_body(s: &Stream) {
    let rows = 600;
    for (h, kvh, d) in [(8, 2, 64), (6, 6, 128)] {
        let (kt, vt, halves) = caches(s, rows, kvh, d, 41);
        let (kr, vr) = (CacheRef::F16(&halves[0]), CacheRef::F16(&halves[1]));
        let q = uniform(43, h * d, 2.0);
        let qt = on(s, f32t(&[h, d], &q));
        let scale = 1.0 / (d as f32).sqrt();
        for p in [0usize, 255, 256, 511, rows - 1] {
            for window in [None, Some(100), Some(300)] {
                let label = format!("attention_decode_at {h}/{kvh}x{d} position {p} window {window:?}");
                let mut want = vec![0.0; h * d];
                cpu::attention_decode(&q, kr, vr, h, kvh, d, p + 1, scale, window, &mut want).unwrap();
                let pos = pos_tensor(s, p as i32);
                let mut out = poisoned(&[h, d], s);
                ops::attention_decode_at(&qt, &kt, &vt, &pos, scale, window, &mut out, s).unwrap();
                let got = out.to_vec_f32(s).unwrap();
                let mut plain = poisoned(&[h, d], s);
                ops::with_gpu_kernels(ops::GpuKernels::Next, || {
                    ops::attention_decode(&qt, &kt, &vt, p + 1, scale, window, &mut plain, s)
                })
                .unwrap();
                let plain = plain.to_vec_f32(s).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&got), bits(&plain), "{label}: differs from attention_decode with n_kv = {}", p + 1);
                // The host's default path is the SIMD one: the reference's sums in another order.
                assert_close(&label, &got, &want, Tolerance::F32_ACCUMULATION);
            }
        }
    }
}

crate::device_test!(attention_decode_at, attention_decode_at_body);

/// The same as a `_next_cuda` test, so `scripts/gpu-check.sh next` runs it (and the sanitizers).
#[test]
fn attention_decode_at_next_cuda() {
    on_cuda("graph::attention_decode_at_next_cuda", attention_decode_at_body);
}

/// A position outside the cache is a typed error on the host (the GPU kernel clamps instead of
/// reading past the cache), as are a position tensor of the wrong type or shape.
#[test]
fn attention_decode_at_refuses_positions_outside_the_cache() {
    on_cpu(|s| {
        let (kt, vt, _) = caches(s, 16, 2, 64, 3);
        let qt = f32t(&[4, 64], &uniform(5, 256, 1.0));
        let mut out = poisoned(&[4, 64], s);
        for p in [16, -1] {
            let e = ops::attention_decode_at(&qt, &kt, &vt, &pos_tensor(s, p), 0.1, None, &mut out, s).unwrap_err();
            assert!(e.to_string().contains("outside the cache"), "position {p}: {e}");
        }
        let two = Tensor::from_i32(&[2], vec![1, 2]).unwrap();
        assert!(ops::attention_decode_at(&qt, &kt, &vt, &two, 0.1, None, &mut out, s).is_err());
        let float = f32t(&[1], &[1.0]);
        assert!(ops::attention_decode_at(&qt, &kt, &vt, &float, 0.1, None, &mut out, s).is_err());
    });
}

/// Capture a small decode-like sequence (an add into a fixed buffer, then attention at the
/// position in a fixed buffer), change the inputs' contents, replay: the graph computes from
/// the new contents exactly what the plain launches compute. Then the captures that must fail:
/// an allocation inside (refused before it reaches the driver) and an error from the closure;
/// each leaves the stream usable for plain launches. A GPU-only test.
#[test]
fn graph_replays_captured_launches_next_cuda() {
    on_cuda("graph::graph_replays_captured_launches_next_cuda", |s| {
        let Stream::Gpu(g) = s else { unreachable!("on_cuda gives a GPU stream") };
        let (h, kvh, d, rows) = (8, 2, 64, 600);
        let (kt, vt, _) = caches(s, rows, kvh, d, 61);
        let scale = 0.125;
        let mut a = on(s, f32t(&[h, d], &uniform(1, h * d, 1.0)));
        let b = on(s, f32t(&[h, d], &uniform(2, h * d, 1.0)));
        let mut q = poisoned(&[h, d], s);
        let mut pos = pos_tensor(s, 10);
        let mut out = poisoned(&[h, d], s);
        let ((), mut graph) = g
            .capture(|| {
                ops::add(&a, &b, &mut q, s)?;
                ops::attention_decode_at(&q, &kt, &vt, &pos, scale, None, &mut out, s)
            })
            .expect("capture");
        assert!(graph.launches() >= 2, "{graph:?}");
        for (step, p) in [(0u64, 10), (1, 300), (2, 599)] {
            let av = uniform(100 + step, h * d, 1.0);
            a.copy_from(&f32t(&[h, d], &av), s).unwrap();
            pos.copy_from(&Tensor::from_i32(&[1], vec![p]).unwrap(), s).unwrap();
            graph.launch().expect("replay");
            let got = out.to_vec_f32(s).unwrap();
            let mut q2 = poisoned(&[h, d], s);
            let mut want = poisoned(&[h, d], s);
            ops::add(&a, &b, &mut q2, s).unwrap();
            ops::attention_decode_at(&q2, &kt, &vt, &pos, scale, None, &mut want, s).unwrap();
            let want = want.to_vec_f32(s).unwrap();
            assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "replay {step} at position {p}");
        }

        let e = g.capture(|| Tensor::zeros(DType::F32, &[4], s, "inside a capture").map(|_| ())).unwrap_err();
        assert!(e.to_string().contains("no device memory may be allocated"), "{e}");
        let e = g.capture(|| -> strata_tensor::Result<()> {
            Err(strata_tensor::Error::Device { op: "test", what: "refused".into() })
        });
        assert!(e.unwrap_err().to_string().contains("refused"));
        // The stream still runs plain launches.
        let mut q3 = poisoned(&[h, d], s);
        ops::add(&a, &b, &mut q3, s).unwrap();
        assert!(q3.to_vec_f32(s).unwrap().iter().all(|v| v.is_finite()));
    });
}
