//! A host model of the `next` prefill attention on tensor cores (`kernels/attention_mma.cu`),
//! checked against the CPU reference on machines without a GPU.
//!
//! The model walks the kernel's work the kernel's way, step for step: items (kv head, tile of
//! 64 query rows of its GQA group, last tile first), the block's key range, each warp's range
//! and the skip of tiles none of its rows see, K/V tiles of 64 keys (32 at head_dim 256) with
//! zero-filled rows past the range, and per warp the fragments each lane holds: Q and K loaded
//! as the kernel addresses shared memory, V through a model of `ldmatrix .x4 .trans`, the
//! scores' masking and online softmax per lane (the quad's max by the same two xor-shuffles),
//! P rounded to f16 and repacked from the C layout to the A layout. `mma.m16n8k16` itself is
//! modelled from the PTX ISA's fragment tables (which element of A, B, C each lane's registers
//! hold), written here independently of the kernel's addressing, so a fragment the kernel
//! loads from the wrong place lands in the wrong place of the product here too.
//!
//! What it cannot check: the real instructions, the cp.async/barrier ordering, the launch.
//! `tensor ops::attention_prefill_next_cuda` does, on a GPU. The bound the model is held to
//! (`check::attention_mma_bounds`) is the one that test holds the kernel to; the fault
//! injections below show it catches the indexing errors it is meant to.

// The model indexes lanes, fragment registers and tiles by number, as the kernel does.
#![allow(clippy::needless_range_loop)]

use half::f16;
use strata_kernels::check::{assert_within_bounds, attention_mma_bounds, bound_used, round_f16};
use strata_kernels::cpu::{self, CacheRef};

use crate::support::{rng, uniform};

const ROWS: usize = 64; // query rows per block (kRows)
const WARPS: usize = 4;
const PAD: usize = 8; // halves of padding per shared row (kPad)

/// A deliberate error, to show the check catches it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    /// The window admits one key too many (an off-by-one in the mask).
    WindowOffByOne,
    /// Row r read as head kvh * group + r / n_tokens (a wrong GQA row mapping).
    RowMapping,
    /// The last key tile of the block skipped (a dropped tail).
    DropLastTile,
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    n_tokens: usize,
    pos0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
}

fn first_visible_row(p: i64, window: i64) -> i64 {
    if window > 0 && p + 1 > window { p + 1 - window } else { 0 }
}

/// `mma.sync.m16n8k16.row.col.f32.f16.f16.f32` over a warp, from the PTX ISA's fragment
/// tables: lane = 4 g + c holds A elements (g + 8 (i & 1), 2c + h + 8 (i >> 1)) in a[2i + h],
/// B elements (2c + h + 8 i, g) in b[2i + h], C elements (g + 8 (e >> 1), 2c + (e & 1)) in
/// d[e]. Values are f16 (held as f32); the products and sums are f32.
fn mma(d: &mut [[f32; 4]; 32], a: &[[f32; 8]; 32], b: &[[f32; 4]; 32]) {
    let (mut am, mut bm) = ([[0.0f32; 16]; 16], [[0.0f32; 8]; 16]);
    for lane in 0..32 {
        let (g, c) = (lane / 4, lane % 4);
        for i in 0..4 {
            for h in 0..2 {
                am[g + 8 * (i & 1)][2 * c + h + 8 * (i >> 1)] = a[lane][2 * i + h];
            }
        }
        for i in 0..2 {
            for h in 0..2 {
                bm[2 * c + h + 8 * i][g] = b[lane][2 * i + h];
            }
        }
    }
    for (lane, dl) in d.iter_mut().enumerate() {
        let (g, c) = (lane / 4, lane % 4);
        for (e, de) in dl.iter_mut().enumerate() {
            let (r, n) = (g + 8 * (e >> 1), 2 * c + (e & 1));
            let sum: f32 = (0..16).map(|k| am[r][k] * bm[k][n]).sum();
            *de += sum;
        }
    }
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`: `addr[l]` is lane l's row address (an
/// index into `smem`); matrix i's row r is the 8 values at lane 8 i + r's address; lane 4 g + c
/// receives, of matrix i, (row 2c, col g) and (row 2c + 1, col g) in r[i] (here [2i], [2i+1]).
fn ldmatrix_x4_trans(smem: &[f32], addr: &[usize; 32]) -> [[f32; 8]; 32] {
    let mut out = [[0.0f32; 8]; 32];
    for (lane, o) in out.iter_mut().enumerate() {
        let (g, c) = (lane / 4, lane % 4);
        for i in 0..4 {
            o[2 * i] = smem[addr[8 * i + 2 * c] + g];
            o[2 * i + 1] = smem[addr[8 * i + 2 * c + 1] + g];
        }
    }
    out
}

fn h(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// The kernel's computation on the host (see the module doc); `k`, `v` are f16 caches of
/// `pos0 + n_tokens` rows.
fn model(q: &[f32], k: &[f16], v: &[f16], s: Shape, scale: f32, fault: Fault) -> Vec<f32> {
    let d = s.head_dim;
    let bc = if d <= 128 { 64 } else { 32 };
    let ks = d + PAD;
    let (nt_n, dt_n) = (bc / 8, d / 8);
    let group = s.n_heads / s.n_kv_heads;
    let n_rows = (s.n_tokens * group) as i64;
    let n_tiles = (n_rows + ROWS as i64 - 1) / ROWS as i64;
    let row_stride = s.n_kv_heads * d;
    let (pos0, window) = (s.pos0 as i64, s.window.unwrap_or(0) as i64);
    let window_k = if fault == Fault::WindowOffByOne && window > 0 { window + 1 } else { window };
    let head_of = |r: i64, kvh: usize| -> (usize, usize) {
        let (t, hg) = match fault {
            Fault::RowMapping => ((r as usize) % s.n_tokens, (r as usize) / s.n_tokens),
            _ => ((r / group as i64) as usize, (r % group as i64) as usize),
        };
        (t, kvh * group + hg)
    };
    let mut out = vec![f32::NAN; s.n_tokens * s.n_heads * d];

    for item in 0..n_tiles * s.n_kv_heads as i64 {
        let kvh = (item / n_tiles) as usize;
        let r0 = (n_tiles - 1 - item % n_tiles) * ROWS as i64;
        let r_end = (r0 + ROWS as i64).min(n_rows);
        let lo = first_visible_row(pos0 + r0 / group as i64, window);
        let hi = pos0 + (r_end - 1) / group as i64 + 1;

        // Q rows as f16, zeros past the end.
        let mut q_s = vec![0.0f32; ROWS * ks];
        for rr in 0..ROWS {
            let r = r0 + rr as i64;
            if r < r_end {
                let (t, hh) = head_of(r, kvh);
                for dd in 0..d {
                    q_s[rr * ks + dd] = h(q[(t * s.n_heads + hh) * d + dd]);
                }
            }
        }
        // Per warp: its rows, their key range, and each lane's state.
        struct Warp {
            wr0: i64,
            rows: bool,
            w_lo: i64,
            w_hi: i64,
            o: Vec<[[f32; 4]; 32]>,
            m: [[f32; 2]; 32],
            l: [[f32; 2]; 32],
        }
        let mut warps: Vec<Warp> = (0..WARPS)
            .map(|w| {
                let wr0 = r0 + 16 * w as i64;
                let wr_end = (wr0 + 16).min(r_end);
                let rows = wr0 < wr_end;
                Warp {
                    wr0,
                    rows,
                    w_lo: if rows { first_visible_row(pos0 + wr0 / group as i64, window) } else { 0 },
                    w_hi: if rows { pos0 + (wr_end - 1) / group as i64 + 1 } else { 0 },
                    o: vec![[[0.0; 4]; 32]; dt_n],
                    m: [[f32::NEG_INFINITY; 2]; 32],
                    l: [[0.0; 2]; 32],
                }
            })
            .collect();
        let load_tile = |cache: &[f16], base: i64| -> Vec<f32> {
            let mut t = vec![0.0f32; bc * ks];
            for j in 0..bc {
                let p = base + j as i64;
                if p < hi {
                    for dd in 0..d {
                        t[j * ks + dd] = cache[p as usize * row_stride + kvh * d + dd].to_f32();
                    }
                }
            }
            t
        };

        let mut n_key_tiles = (hi - lo + bc as i64 - 1) / bc as i64;
        if fault == Fault::DropLastTile && n_key_tiles > 1 {
            n_key_tiles -= 1;
        }
        for j in 0..n_key_tiles {
            let base = lo + j * bc as i64;
            let (k_s, v_s) = (load_tile(k, base), load_tile(v, base));
            for (w, st) in warps.iter_mut().enumerate() {
                let active = st.rows && base < st.w_hi && base + bc as i64 > st.w_lo;
                if !active {
                    continue;
                }
                // S = Q K^T: kk steps of 16 dims, nt tiles of 8 keys.
                let mut sc = vec![[[0.0f32; 4]; 32]; nt_n];
                for kk in 0..d / 16 {
                    let mut a = [[0.0f32; 8]; 32];
                    for (lane, al) in a.iter_mut().enumerate() {
                        let (g, c) = (lane / 4, lane % 4);
                        let qa = (16 * w + g) * ks + 16 * kk + 2 * c;
                        for (i, off) in [0, 8 * ks, 8, 8 * ks + 8].into_iter().enumerate() {
                            al[2 * i] = q_s[qa + off];
                            al[2 * i + 1] = q_s[qa + off + 1];
                        }
                    }
                    for (nt, scn) in sc.iter_mut().enumerate() {
                        let mut b = [[0.0f32; 4]; 32];
                        for (lane, bl) in b.iter_mut().enumerate() {
                            let (g, c) = (lane / 4, lane % 4);
                            let kb = (8 * nt + g) * ks + 16 * kk + 2 * c;
                            *bl = [k_s[kb], k_s[kb + 1], k_s[kb + 8], k_s[kb + 9]];
                        }
                        mma(scn, &a, &b);
                    }
                }
                // Mask, scale, row max per lane, then over the quad (xor 1, then xor 2).
                let mut mx = [[f32::NEG_INFINITY; 2]; 32];
                for lane in 0..32 {
                    let (g, c) = (lane / 4, lane % 4);
                    for (nt, scn) in sc.iter_mut().enumerate() {
                        for e in 0..4 {
                            let i = e / 2;
                            let r = st.wr0 + (g + 8 * i) as i64;
                            let row_ok = r < r_end;
                            let row_pos = pos0 + r / group as i64;
                            let row_first = first_visible_row(row_pos, window_k);
                            let p = base + (8 * nt + 2 * c + (e & 1)) as i64;
                            let valid = row_ok && p >= row_first && p <= row_pos;
                            scn[lane][e] = if valid { scn[lane][e] * scale } else { f32::NEG_INFINITY };
                            mx[lane][i] = mx[lane][i].max(scn[lane][e]);
                        }
                    }
                }
                for x in [1, 2] {
                    let prev = mx;
                    for lane in 0..32 {
                        for i in 0..2 {
                            mx[lane][i] = prev[lane][i].max(prev[lane ^ x][i]);
                        }
                    }
                }
                let mut corr = [[1.0f32; 2]; 32];
                for lane in 0..32 {
                    for i in 0..2 {
                        let m_new = st.m[lane][i].max(mx[lane][i]);
                        corr[lane][i] = if m_new == f32::NEG_INFINITY { 1.0 } else { (st.m[lane][i] - m_new).exp() };
                        st.m[lane][i] = m_new;
                        st.l[lane][i] *= corr[lane][i];
                    }
                    for scn in sc.iter_mut() {
                        for e in 0..4 {
                            let i = e / 2;
                            let m = st.m[lane][i];
                            let pe = if m == f32::NEG_INFINITY { 0.0 } else { (scn[lane][e] - m).exp() };
                            scn[lane][e] = h(pe);
                            st.l[lane][i] += scn[lane][e];
                        }
                    }
                    for odt in st.o.iter_mut() {
                        odt[lane][0] *= corr[lane][0];
                        odt[lane][1] *= corr[lane][0];
                        odt[lane][2] *= corr[lane][1];
                        odt[lane][3] *= corr[lane][1];
                    }
                }
                // O += P V: P's A fragment from score tiles 2kk, 2kk+1; V by ldmatrix.trans.
                for kk in 0..bc / 16 {
                    let mut a = [[0.0f32; 8]; 32];
                    for (lane, al) in a.iter_mut().enumerate() {
                        let (s0, s1) = (&sc[2 * kk][lane], &sc[2 * kk + 1][lane]);
                        *al = [s0[0], s0[1], s0[2], s0[3], s1[0], s1[1], s1[2], s1[3]];
                    }
                    for dt in (0..dt_n).step_by(2) {
                        let mut addr = [0usize; 32];
                        for (lane, ad) in addr.iter_mut().enumerate() {
                            *ad = (16 * kk + (lane & 15)) * ks + 8 * dt + 8 * (lane >> 4);
                        }
                        let r = ldmatrix_x4_trans(&v_s, &addr);
                        let (mut b0, mut b1) = ([[0.0f32; 4]; 32], [[0.0f32; 4]; 32]);
                        for lane in 0..32 {
                            b0[lane] = [r[lane][0], r[lane][1], r[lane][2], r[lane][3]];
                            b1[lane] = [r[lane][4], r[lane][5], r[lane][6], r[lane][7]];
                        }
                        mma(&mut st.o[dt], &a, &b0);
                        mma(&mut st.o[dt + 1], &a, &b1);
                    }
                }
            }
        }
        // l over the quad, then out = O / l for valid rows.
        for st in &warps {
            for lane in 0..32 {
                let (g, c) = (lane / 4, lane % 4);
                for i in 0..2 {
                    let l: f32 = (0..4).map(|x| st.l[(lane & !3) | x][i]).sum();
                    let r = st.wr0 + (g + 8 * i) as i64;
                    if r >= r_end {
                        continue;
                    }
                    let (t, hh) = head_of(r, kvh);
                    for dt in 0..dt_n {
                        for e in 0..2 {
                            out[(t * s.n_heads + hh) * d + 8 * dt + 2 * c + e] = st.o[dt][lane][2 * i + e] / l;
                        }
                    }
                }
            }
        }
    }
    out
}

struct Case {
    shape: Shape,
    q: Vec<f32>,
    k: Vec<f16>,
    v: Vec<f16>,
    scale: f32,
}

fn case(shape: Shape, seed: u64) -> Case {
    let mut r = rng(seed);
    let cache = (shape.pos0 + shape.n_tokens) * shape.n_kv_heads * shape.head_dim;
    let q = uniform(&mut r, shape.n_tokens * shape.n_heads * shape.head_dim, 2.0);
    let k = uniform(&mut r, cache, 1.0).into_iter().map(f16::from_f32).collect();
    let v = uniform(&mut r, cache, 1.0).into_iter().map(f16::from_f32).collect();
    Case { shape, q, k, v, scale: 1.0 / (shape.head_dim as f32).sqrt() }
}

/// (model output, the reference on f16-rounded q, the bounds).
fn run(c: &Case, fault: Fault) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
    let s = c.shape;
    let q16 = round_f16(&c.q);
    let (kr, vr) = (CacheRef::F16(&c.k), CacheRef::F16(&c.v));
    let mut want = vec![0.0; c.q.len()];
    cpu::attention_prefill(
        &q16,
        s.n_tokens,
        s.pos0,
        kr,
        vr,
        s.n_heads,
        s.n_kv_heads,
        s.head_dim,
        c.scale,
        s.window,
        &mut want,
    )
    .unwrap();
    let bounds =
        attention_mma_bounds(&q16, kr, vr, s.n_tokens, s.pos0, s.n_heads, s.n_kv_heads, s.head_dim, c.scale, s.window);
    (model(&c.q, &c.k, &c.v, s, c.scale, fault), want, bounds)
}

fn shape(
    n_tokens: usize,
    pos0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
) -> Shape {
    Shape { n_tokens, pos0, n_heads, n_kv_heads, head_dim, window }
}

/// The shapes the GPU parity test runs, at sizes the host model does in seconds: the three
/// head sizes (64 and 256 with the 32-key tiles), MHA and GQA groups of 3 (64-row tiles that
/// split a token's heads) and 8, token counts with partial row tiles and key tiles, a prompt
/// after cached rows (chunked prefill: keys 0..pos0+n), and windows shorter than a key tile
/// and than the prompt.
fn shapes() -> Vec<Shape> {
    vec![
        shape(1, 0, 9, 3, 64, None),
        shape(70, 0, 9, 3, 64, None),
        shape(33, 300, 9, 3, 64, Some(40)),
        shape(45, 0, 4, 4, 128, Some(5)),
        shape(20, 90, 8, 1, 128, None),
        shape(37, 0, 4, 1, 256, None),
        shape(9, 70, 2, 2, 256, Some(40)),
    ]
}

#[test]
fn the_models_tiles_and_fragments_give_the_reference() {
    for (i, s) in shapes().into_iter().enumerate() {
        let c = case(s, 100 + i as u64);
        let (got, want, bounds) = run(&c, Fault::None);
        assert_within_bounds(&format!("attention_mma model {s:?}"), &got, &want, &bounds);
    }
}

/// The bound is tight enough to matter: an off-by-one window, a wrong GQA row mapping and a
/// dropped key tile each break it on the shapes that exercise them.
#[test]
fn the_bound_catches_indexing_faults() {
    let cases = [
        (Fault::WindowOffByOne, shape(45, 0, 4, 4, 128, Some(5))),
        (Fault::WindowOffByOne, shape(33, 300, 9, 3, 64, Some(40))),
        (Fault::RowMapping, shape(70, 0, 9, 3, 64, None)),
        (Fault::DropLastTile, shape(37, 0, 4, 1, 256, None)),
        (Fault::DropLastTile, shape(20, 90, 8, 1, 128, None)),
    ];
    for (fault, s) in cases {
        let c = case(s, 7);
        let (got, want, bounds) = run(&c, fault);
        let used = bound_used(&got, &want, &bounds);
        assert!(used > 1.0, "{fault:?} on {s:?} stayed within the bound ({used:.3} of it)");
    }
}

/// How much of the bound the model uses on the test shapes: the arithmetic the model does is
/// the kernel's rounding for rounding, so this is about what the GPU test should see; a
/// bound loose by orders of magnitude would hide faults that move a single small weight.
#[test]
fn the_bound_is_not_loose_beyond_use() {
    let mut worst = 0.0f64;
    for (i, s) in shapes().into_iter().enumerate() {
        let c = case(s, 200 + i as u64);
        let (got, want, bounds) = run(&c, Fault::None);
        worst = worst.max(bound_used(&got, &want, &bounds));
    }
    assert!(worst > 1e-3, "the model used at most {worst:.2e} of the bound: the bound is too loose to mean much");
}
