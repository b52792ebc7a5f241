//! Paged attention (a batch of sequences of different lengths over a block pool) through the
//! tensor API, on the CPU and on CUDA: the CPU reference against the contiguous attention of
//! each sequence gathered from its blocks, and the device against the CPU reference.

use half::f16;
use strata_kernels::check::{Tolerance, assert_close};
use strata_kernels::cpu::{self, CacheRef, PagedShape};
use strata_tensor::{DType, Stream, Tensor, ops};

use crate::device_test;
use crate::support::{on, poisoned, uniform};

/// A batch over a pool of `n_blocks` blocks of `bs` rows: three sequences of 1, 37 and 70
/// positions with shuffled, interleaved block tables, and rows that are a decode step (last
/// position), a prefill chunk (several positions of one sequence) and a position in the middle
/// of a block. Returns (tables, table_start, positions, per-row (sequence, position)).
struct Batch {
    tables: Vec<i32>,
    table_start: Vec<i32>,
    positions: Vec<i32>,
    /// The logical→cache row map of each sequence.
    seq_rows: Vec<Vec<usize>>,
    row_seq: Vec<usize>,
}

fn batch(bs: usize) -> Batch {
    let lens = [1usize, 37, 70];
    // Blocks handed out in a scrambled order so tables are neither contiguous nor sorted.
    let mut next = (0..64i32).map(|b| (b * 37 + 11) % 64).collect::<Vec<_>>().into_iter();
    let mut tables = Vec::new();
    let mut starts = Vec::new();
    let mut seq_rows = Vec::new();
    for &len in &lens {
        starts.push(tables.len() as i32);
        let blocks: Vec<i32> = (0..len.div_ceil(bs)).map(|_| next.next().unwrap()).collect();
        seq_rows.push((0..len).map(|p| blocks[p / bs] as usize * bs + p % bs).collect());
        tables.extend(blocks);
    }
    // (sequence, position) of each row.
    let rows: Vec<(usize, usize)> = vec![(0, 0), (1, 36), (2, 60), (2, 61), (2, 62), (2, 69), (1, 5), (2, 0)];
    Batch {
        tables,
        table_start: rows.iter().map(|&(q, _)| starts[q]).collect(),
        positions: rows.iter().map(|&(_, p)| p as i32).collect(),
        seq_rows,
        row_seq: rows.iter().map(|&(q, _)| q).collect(),
    }
}

fn paged_body(s: &Stream) {
    let (h, kvh, d, bs, n_blocks) = (6, 2, 40, 16, 64);
    let cache_rows = bs * n_blocks;
    let b = batch(bs);
    let n_rows = b.positions.len();
    let k = uniform(21, cache_rows * kvh * d, 1.0);
    let v = uniform(22, cache_rows * kvh * d, 1.0);
    let q = uniform(23, n_rows * h * d, 1.0);
    let scale = 1.0 / (d as f32).sqrt();
    let shape = PagedShape { n_rows, n_heads: h, n_kv_heads: kvh, head_dim: d, block_size: bs };
    for cache_dt in [DType::F16, DType::F32] {
        for window in [None, Some(20)] {
            let (k16, v16): (Vec<f16>, Vec<f16>) =
                (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
            let (kr, vr, kt, vt) = match cache_dt {
                DType::F16 => (
                    CacheRef::F16(&k16),
                    CacheRef::F16(&v16),
                    Tensor::from_f16(&[cache_rows, kvh, d], &k16).unwrap(),
                    Tensor::from_f16(&[cache_rows, kvh, d], &v16).unwrap(),
                ),
                _ => (
                    CacheRef::F32(&k),
                    CacheRef::F32(&v),
                    Tensor::from_f32(&[cache_rows, kvh, d], k.clone()).unwrap(),
                    Tensor::from_f32(&[cache_rows, kvh, d], v.clone()).unwrap(),
                ),
            };
            let mut want = vec![f32::NAN; n_rows * h * d];
            cpu::paged_attention(&q, kr, vr, shape, &b.tables, &b.table_start, &b.positions, scale, window, &mut want)
                .unwrap();
            // The reference against each sequence's contiguous cache and the plain attention:
            // the same products in the same order, so equal bit for bit.
            let row = kvh * d;
            for (r, (&seq, &pos)) in b.row_seq.iter().zip(&b.positions).enumerate() {
                let gather = |c: &[f32]| -> Vec<f32> {
                    b.seq_rows[seq].iter().flat_map(|&cr| c[cr * row..(cr + 1) * row].iter().copied()).collect()
                };
                let (kc, vc) = match cache_dt {
                    DType::F16 => {
                        let round = |c: &[f32]| c.iter().map(|&x| f16::from_f32(x).to_f32()).collect::<Vec<_>>();
                        (gather(&round(&k)), gather(&round(&v)))
                    }
                    _ => (gather(&k), gather(&v)),
                };
                let mut one = vec![f32::NAN; h * d];
                let qr = &q[r * h * d..(r + 1) * h * d];
                cpu::attention_prefill(
                    qr,
                    1,
                    pos as usize,
                    CacheRef::F32(&kc),
                    CacheRef::F32(&vc),
                    h,
                    kvh,
                    d,
                    scale,
                    window,
                    &mut one,
                )
                .unwrap();
                let label = format!("paged {cache_dt} window {window:?} row {r}: reference vs contiguous attention");
                assert_close(&label, &want[r * h * d..(r + 1) * h * d], &one, Tolerance::STRICT);
            }
            let i32s = |v: &[i32]| on(s, Tensor::from_i32(&[v.len()], v.to_vec()).unwrap());
            let (tables, starts, positions) = (i32s(&b.tables), i32s(&b.table_start), i32s(&b.positions));
            let index =
                ops::PagedIndex { tables: &tables, table_start: &starts, positions: &positions, block_size: bs };
            let mut out = poisoned(&[n_rows, h, d], s);
            let qt = on(s, Tensor::from_f32(&[n_rows, h, d], q.clone()).unwrap());
            ops::paged_attention(&qt, &on(s, kt), &on(s, vt), &index, scale, window, &mut out, s).unwrap();
            let label = format!("paged_attention {cache_dt} window {window:?}: {s:?} vs cpu reference");
            // The host runs the reference itself; a GPU sums in another order.
            let tol = if matches!(s, Stream::Host) { Tolerance::STRICT } else { Tolerance::F32_ACCUMULATION };
            assert_close(&label, &out.to_vec_f32(s).unwrap(), &want, tol);
        }
    }
}
device_test!(paged_attention, paged_body);

/// Indices the host can check are typed errors: a table too short for a position, a block
/// beyond the cache, a negative position, a block size of 0.
#[test]
fn paged_attention_refuses_bad_indices() {
    let s = Stream::Host;
    let (h, kvh, d, bs) = (2, 1, 8, 4);
    let k = Tensor::from_f32(&[8, kvh, d], vec![0.5; 8 * d]).unwrap();
    let q = Tensor::from_f32(&[1, h, d], vec![1.0; h * d]).unwrap();
    let i32s = |v: &[i32]| Tensor::from_i32(&[v.len()], v.to_vec()).unwrap();
    let run = |tables: &[i32], pos: i32, block_size: usize| {
        let (t, st, p) = (i32s(tables), i32s(&[0]), i32s(&[pos]));
        let index = ops::PagedIndex { tables: &t, table_start: &st, positions: &p, block_size };
        let mut out = Tensor::from_f32(&[1, h, d], vec![f32::NAN; h * d]).unwrap();
        ops::paged_attention(&q, &k, &k, &index, 1.0, None, &mut out, &s).map(|()| out.to_vec_f32(&s).unwrap())
    };
    assert!(run(&[1], 4, bs).is_err(), "position 4 needs a second table entry");
    assert!(run(&[2], 0, bs).is_err(), "block 2 ends past the 8 cache rows");
    assert!(run(&[1], -1, bs).is_err(), "a negative position");
    assert!(run(&[1], 0, 0).is_err(), "a block size of 0");
    // The same call with valid indices runs: every value is 0.5, so the output is 0.5.
    let got = run(&[1, 0], 6, bs).expect("a valid table");
    assert!(got.iter().all(|&x| (x - 0.5).abs() < 1e-6), "{got:?}");
}
