//! Prefill products with f32 activations, every quantized type, AVX-512 and AVX2: the weights of
//! a panel of 32 rows (16 with AVX2) decoded once to f32 and multiplied into every token of the
//! call.
//!
//! The register tiles of `f32act` and `f32act_k512` decode a weight block for each tile of 4
//! tokens, so in a prefill of hundreds of tokens every weight is decoded a hundred times, and
//! the decoding (unpack, convert, scale: more vector operations than the multiply-adds it
//! feeds) is most of the product. Here each row is decoded once per call by the exact path's
//! decoders ([`super::dequantize_row_exact`]: the reference's values bit for bit), into a panel
//! stored column-major (`panel[c][i]` = weight c of row i, 32 rows: two 16-lane registers per
//! column), and the panel meets the tokens 12 at a time: for each column, one broadcast of each
//! token's activation and two FMAs per token into 24 accumulators that hold 32 rows × 12
//! tokens. That is BLIS's shape of an f32 matrix product: no horizontal sums, 14 loads per 24
//! FMAs, and the panel (32 × cols f32, 80 KiB for 640 columns) stays in the cache while every
//! token passes over it. The activations are regrouped 12 tokens at a time, token-minor, so the
//! 12 broadcasts of a column are 48 contiguous bytes, and each tile's 32 sums per token go
//! straight into y ([n][rows]), one row of it per token. With AVX2 (16 registers of 8 lanes) the same scheme has 16-row panels
//! and tiles of 16 rows × 6 tokens.
//!
//! Each sum is one chain over the columns in order, as the reference's row loop adds them, each
//! step an FMA (the product `w * x` unrounded, where the reference rounds it first). So the
//! results differ from the reference's by f32 accumulation error only, the `exact` path's
//! promise, under the same rigorous bound the tiles are tested to (`tests/fast.rs`).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::Isa;
use crate::DType;

/// Fewest tokens a product runs through panels: the panel costs a decode and a transpose of
/// each weight once per call, which the register tiles spread over 4 tokens at a time. Measured
/// (`strata bench -p N`, exact, AVX-512, 2 threads, Intel Xeon VM): Gemma 3 270M pp16 247 tok/s
/// with panels against 280 without, pp24 337-339 against 269-312, pp32 373 against 314; the
/// default model's pp24 325 against 345 (within the runs' spread).
pub(super) const MIN_TOKENS: usize = 24;

/// Rows per panel: two 16-lane registers (AVX-512), two 8-lane ones (AVX2).
const PANEL: usize = 32;
const PANEL256: usize = 16;
/// Tokens per tile: 2 × 12 accumulators, two registers of weights and one broadcast within 32
/// registers (AVX-512); 2 × 6 and three more within 16 (AVX2).
const TOKENS: usize = 12;
const TOKENS256: usize = 6;

/// Whether a product of `dtype` with `n_tokens` tokens on the x86 kernels runs here:
/// [`MIN_TOKENS`] or more, a type [`super::dequantize_row_exact`] decodes, and `STRATA_CPU_PANELS` not
/// `off`.
pub(super) fn applies(dtype: DType, n_tokens: usize) -> bool {
    n_tokens >= MIN_TOKENS && super::f32act_dq::decodes(dtype) && super::panels_enabled()
}

/// y[t][r] = row r of `w` · token t of `x` ([n][cols]), y [n][rows], `w` whole rows of `rb`
/// bytes of `dtype` (checked by the caller), in parallel over groups of panels. Each task
/// writes its rows' sums straight into `y` (the tiles hold 32 consecutive rows of a token, a
/// row of `y`), where the register tiles' [rows][n] results took a transpose after the call.
///
/// # Safety
/// The CPU must support `isa` ([`Isa::Avx512Vnni`]: AVX-512 F/BW/VL, AVX2, FMA and F16C; any
/// other: AVX2, FMA and F16C).
pub(super) unsafe fn matmul(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    rb: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let wide = isa == Isa::Avx512Vnni;
    let (panel, tokens) = if wide { (PANEL, TOKENS) } else { (PANEL256, TOKENS256) };
    if rb == 0 {
        // No columns: every sum is empty (and `w` holds no rows to count).
        y.fill(0.0);
        return;
    }
    let rows = w.len() / rb;
    if rows == 0 || n == 0 {
        return;
    }
    if x.len() < n * cols || y.len() < n * rows {
        // Lengths the caller's checks rule out.
        y.fill(f32::NAN);
        return;
    }
    // The activations regrouped a tile's tokens at a time, token-minor (xg[g][c][j] =
    // x[12g + j][c] with AVX-512, zeros past the last token): a tile's 12 broadcasts per column
    // are then 48 contiguous bytes at one pointer, where 12 rows of x were 12 streams and 12
    // address computations.
    let groups = n.div_ceil(tokens);
    let mut xg = vec![0.0f32; groups * cols * tokens];
    xg.par_chunks_mut(cols * tokens).enumerate().for_each(|(g, xgg)| {
        for j in 0..tokens.min(n - g * tokens) {
            for (c, &v) in x[(g * tokens + j) * cols..][..cols].iter().enumerate() {
                xgg[c * tokens + j] = v;
            }
        }
    });
    let threads = rayon::current_num_threads().max(1);
    // About four tasks per thread, whole panels each.
    let per = rows.div_ceil(4 * threads).next_multiple_of(panel);
    let out = Out { ptr: y.as_mut_ptr(), rows, n };
    (0..rows.div_ceil(per)).into_par_iter().for_each(|i| {
        let (r0, r1) = (i * per, ((i + 1) * per).min(rows));
        let w = &w[r0 * rb..r1 * rb];
        // SAFETY: this CPU has `isa`'s features (this function's contract); the tasks' row
        // ranges are disjoint, so each element of `y` is written by one task only, and `out`
        // describes `y` ([n][rows], checked above).
        unsafe {
            if wide {
                panels512(dtype, w, rb, cols, &xg, n, &out, r0);
            } else {
                panels256(dtype, w, rb, cols, &xg, n, &out, r0);
            }
        }
    });
}

/// Where the tasks write their sums: y [n][rows], shared by tasks that each own some rows.
struct Out {
    ptr: *mut f32,
    rows: usize,
    n: usize,
}

// SAFETY: the tasks write disjoint elements (their own rows) of the one buffer `ptr` points to,
// which outlives them (`matmul` waits for every task before it returns).
unsafe impl Sync for Out {}

/// Rows `first..first + w.len() / rb` of the product, panel by panel, with AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; `out` must describe a live
/// [n][rows] buffer that no one else reads or writes at rows first.. of this call while it
/// runs, with `first + w.len() / rb <= out.rows` and `n == out.n`. `xg` holds the activations
/// grouped as [`matmul`] makes them.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn panels512(dtype: DType, w: &[u8], rb: usize, cols: usize, xg: &[f32], n: usize, out: &Out, first: usize) {
    // SAFETY: this function's contract is the body's, with the features enabled here.
    unsafe { panels_body::<true>(dtype, w, rb, cols, xg, n, out, first) }
}

/// [`panels512`] with AVX2: panels of 16 rows, tiles of 6 tokens.
///
/// # Safety
/// As [`panels512`], with AVX2, FMA and F16C for the features.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panels256(dtype: DType, w: &[u8], rb: usize, cols: usize, xg: &[f32], n: usize, out: &Out, first: usize) {
    // SAFETY: this function's contract is the body's, with the features enabled here.
    unsafe { panels_body::<false>(dtype, w, rb, cols, xg, n, out, first) }
}

/// The panel loop of [`panels512`] (`WIDE`) and [`panels256`]: decode a panel's rows, transpose
/// them, run every token's tiles.
///
/// # Safety
/// As [`panels512`] / [`panels256`]; inlined into them, so compiled with their features.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn panels_body<const WIDE: bool>(
    dtype: DType,
    w: &[u8],
    rb: usize,
    cols: usize,
    xg: &[f32],
    n: usize,
    out: &Out,
    first: usize,
) {
    let (p, isa) = if WIDE { (PANEL, Isa::Avx512Vnni) } else { (PANEL256, Isa::Avx2) };
    let rows = w.len() / rb;
    let mut rowbuf = vec![0.0f32; p * cols];
    let mut panel = vec![0.0f32; cols * p];
    let mut r0 = 0;
    while r0 < rows {
        let pr = (rows - r0).min(p);
        for (i, buf) in rowbuf.chunks_exact_mut(cols).enumerate() {
            if i < pr {
                let row = &w[(r0 + i) * rb..][..rb];
                if super::dequantize_row_exact(isa, dtype, row, buf).is_err() {
                    buf.fill(f32::NAN);
                }
            } else {
                // The rows past a short last panel: zeros, whose sums are never stored.
                buf.fill(0.0);
            }
        }
        // SAFETY (both arms): the features are this function's callers'; rows at..at + pr of
        // `out` are this call's (its contract).
        unsafe {
            if WIDE {
                transpose(&rowbuf, cols, &mut panel);
                tiles512(&panel, xg, cols, n, out, first + r0, pr);
            } else {
                for (i, row) in rowbuf.chunks_exact(cols).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        panel[c * PANEL256 + i] = v;
                    }
                }
                tiles256(&panel, xg, cols, n, out, first + r0, pr);
            }
        }
        r0 += pr;
    }
}

/// Every token's tiles against one AVX-512 panel (rows at..at + pr of `out`).
///
/// # Safety
/// As [`panels512`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tiles512(panel: &[f32], xg: &[f32], cols: usize, n: usize, out: &Out, at: usize, pr: usize) {
    let mut t0 = 0;
    // SAFETY (all tiles): this function's contract.
    unsafe {
        while n - t0 >= TOKENS {
            tile::<TOKENS>(panel, xg, cols, t0, out, at, pr);
            t0 += TOKENS;
        }
        match n - t0 {
            0 => {}
            1 => tile::<1>(panel, xg, cols, t0, out, at, pr),
            2 => tile::<2>(panel, xg, cols, t0, out, at, pr),
            3 => tile::<3>(panel, xg, cols, t0, out, at, pr),
            4 => tile::<4>(panel, xg, cols, t0, out, at, pr),
            5 => tile::<5>(panel, xg, cols, t0, out, at, pr),
            6 => tile::<6>(panel, xg, cols, t0, out, at, pr),
            7 => tile::<7>(panel, xg, cols, t0, out, at, pr),
            8 => tile::<8>(panel, xg, cols, t0, out, at, pr),
            9 => tile::<9>(panel, xg, cols, t0, out, at, pr),
            10 => tile::<10>(panel, xg, cols, t0, out, at, pr),
            _ => tile::<11>(panel, xg, cols, t0, out, at, pr),
        }
    }
}

/// Every token's tiles against one AVX2 panel (rows at..at + pr of `out`).
///
/// # Safety
/// As [`panels256`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles256(panel: &[f32], xg: &[f32], cols: usize, n: usize, out: &Out, at: usize, pr: usize) {
    let mut t0 = 0;
    // SAFETY (all tiles): this function's contract.
    unsafe {
        while n - t0 >= TOKENS256 {
            tile256::<TOKENS256>(panel, xg, cols, t0, out, at, pr);
            t0 += TOKENS256;
        }
        match n - t0 {
            0 => {}
            1 => tile256::<1>(panel, xg, cols, t0, out, at, pr),
            2 => tile256::<2>(panel, xg, cols, t0, out, at, pr),
            3 => tile256::<3>(panel, xg, cols, t0, out, at, pr),
            4 => tile256::<4>(panel, xg, cols, t0, out, at, pr),
            _ => tile256::<5>(panel, xg, cols, t0, out, at, pr),
        }
    }
}

/// [`tile`] with AVX2: tokens t0..t0 + T (t0 a multiple of 6) against a 16-row panel.
///
/// # Safety
/// As [`panels256`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile256<const T: usize>(panel: &[f32], xg: &[f32], cols: usize, t0: usize, out: &Out, at: usize, pr: usize) {
    if panel.len() < cols * PANEL256 || xg.len() < (t0 + TOKENS256) * cols || t0 + T > out.n || at + pr > out.rows {
        return;
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let mut xp = xg[t0 * cols..].as_ptr();
    let mut wp = panel.as_ptr();
    for _ in 0..cols {
        // SAFETY: one of `cols` steps: the 16 weights at wp and the 6 activations at xp are
        // inside the panel and the group (checked above).
        unsafe {
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            for (j, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(*xp.add(j));
                a[0] = _mm256_fmadd_ps(w0, xv, a[0]);
                a[1] = _mm256_fmadd_ps(w1, xv, a[1]);
            }
            wp = wp.add(PANEL256);
            xp = xp.add(TOKENS256);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let mut v = [0.0f32; PANEL256];
        // SAFETY: v holds 16 values, two registers' worth.
        unsafe {
            _mm256_storeu_ps(v.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(v.as_mut_ptr().add(8), a[1]);
        }
        // SAFETY: token t0 + j < n and rows at..at + pr < rows (checked above): inside y, and
        // this caller's rows (the contract).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out.ptr.add((t0 + j) * out.rows + at), pr) };
    }
}

/// panel[c][i] = rows[i][c] for the 32 rows of `rows` ([32][cols]): 16 × 16 blocks transposed
/// in registers (unpack and shuffle stages), the last cols % 16 columns one value at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn transpose(rows: &[f32], cols: usize, panel: &mut [f32]) {
    if rows.len() < PANEL * cols || panel.len() < PANEL * cols {
        return;
    }
    let whole = cols / 16 * 16;
    for half in 0..2 {
        for c0 in (0..whole).step_by(16) {
            // SAFETY: rows half * 16 + k (k < 16) hold cols values and c0 + 16 <= cols; the
            // panel's columns c0..c0 + 16 hold 32 values each (lengths checked above).
            unsafe {
                let src = rows.as_ptr().add(half * 16 * cols + c0);
                let mut r = [_mm512_setzero_ps(); 16];
                for (k, v) in r.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(src.add(k * cols));
                }
                let t = transpose16(r);
                let dst = panel.as_mut_ptr().add(c0 * PANEL + half * 16);
                for (k, v) in t.iter().enumerate() {
                    _mm512_storeu_ps(dst.add(k * PANEL), *v);
                }
            }
        }
    }
    for c in whole..cols {
        for i in 0..PANEL {
            panel[c * PANEL + i] = rows[i * cols + c];
        }
    }
}

/// The 16 × 16 transpose of 16 registers: out[j] lane i = r[i] lane j.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Stage 1: interleave pairs of rows by 32-bit lanes; stage 2: by 64-bit lanes (giving 4 × 4
    // blocks within each 128-bit lane); stages 3 and 4: move the 128-bit lanes.
    let mut a = [_mm512_setzero_ps(); 16];
    for k in 0..8 {
        a[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    let mut b = [_mm512_setzero_ps(); 16];
    for k in 0..4 {
        let (p, q) = (4 * k, 4 * k + 2);
        for h in 0..2 {
            let (x, y) = (_mm512_castps_pd(a[p + h]), _mm512_castps_pd(a[q + h]));
            b[p + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            b[p + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        }
    }
    // b[4k + m] holds, in 128-bit lane L, column 4L + m of rows 4k..4k + 4.
    let mut c = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        // Rows 0..8 and 8..16 of column group m: lanes (L of b[m], L of b[4 + m]) pairs.
        let (r0, r1, r2, r3) = (b[m], b[4 + m], b[8 + m], b[12 + m]);
        let lo01 = _mm512_shuffle_f32x4::<0b01_00_01_00>(r0, r1); // r0.L0 r0.L1 r1.L0 r1.L1
        let hi01 = _mm512_shuffle_f32x4::<0b11_10_11_10>(r0, r1); // r0.L2 r0.L3 r1.L2 r1.L3
        let lo23 = _mm512_shuffle_f32x4::<0b01_00_01_00>(r2, r3);
        let hi23 = _mm512_shuffle_f32x4::<0b11_10_11_10>(r2, r3);
        // Column 4L + m of all 16 rows: (r0.LL, r1.LL, r2.LL, r3.LL).
        c[m] = _mm512_shuffle_f32x4::<0b10_00_10_00>(lo01, lo23); // L = 0
        c[4 + m] = _mm512_shuffle_f32x4::<0b11_01_11_01>(lo01, lo23); // L = 1
        c[8 + m] = _mm512_shuffle_f32x4::<0b10_00_10_00>(hi01, hi23); // L = 2
        c[12 + m] = _mm512_shuffle_f32x4::<0b11_01_11_01>(hi01, hi23); // L = 3
    }
    c
}

/// Tokens t0..t0 + T (t0 a multiple of 12) against the panel of rows at..at + pr of `out`:
/// y[t0 + j][at + i].
///
/// # Safety
/// As [`panels`]: the CPU's features, and rows at..at + pr of `out` this caller's alone.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tile<const T: usize>(panel: &[f32], xg: &[f32], cols: usize, t0: usize, out: &Out, at: usize, pr: usize) {
    // The loads below go through raw pointers: the panel holds cols × 32 values and the token
    // group cols × 12 (checked here once, not per load).
    if panel.len() < cols * PANEL || xg.len() < (t0 + TOKENS) * cols || t0 + T > out.n || at + pr > out.rows {
        return;
    }
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    let mut xp = xg[t0 * cols..].as_ptr();
    let mut wp = panel.as_ptr();
    for _ in 0..cols {
        // SAFETY: one of `cols` steps: the 32 weights at wp and the 12 activations at xp are
        // inside the panel and the group (checked above).
        unsafe {
            let (w0, w1) = (_mm512_loadu_ps(wp), _mm512_loadu_ps(wp.add(16)));
            for (j, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(j));
                a[0] = _mm512_fmadd_ps(w0, xv, a[0]);
                a[1] = _mm512_fmadd_ps(w1, xv, a[1]);
            }
            wp = wp.add(PANEL);
            xp = xp.add(TOKENS);
        }
    }
    // Lanes of rows at + pr.. (a short last panel's zero rows) are not stored.
    let m0 = if pr >= 16 { 0xFFFF } else { (1u32 << pr) as u16 - 1 };
    let m1 = if pr >= 32 {
        0xFFFF
    } else if pr > 16 {
        (1u32 << (pr - 16)) as u16 - 1
    } else {
        0
    };
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: token t0 + j < n and rows at..at + pr < rows (checked above): inside y, and
        // this caller's rows (the contract); masked lanes are not written.
        unsafe {
            let dst = out.ptr.add((t0 + j) * out.rows + at);
            _mm512_mask_storeu_ps(dst, m0, a[0]);
            _mm512_mask_storeu_ps(dst.add(16), m1, a[1]);
        }
    }
}
