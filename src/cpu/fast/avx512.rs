//! AVX-512 VNNI kernels: two 32-value blocks per 512-bit register.
//!
//! Per pair of blocks, for each (row, token) of a tile: one `vpdpbusd` multiplies 64 unsigned
//! weight bytes (Q4 nibbles, Q5_0 nibbles with their fifth bit, or |q| for Q8_0 with the
//! activation's sign flipped to match) with 64 signed activation bytes into sixteen 32-bit
//! sums, lanes 0..8 from the first block and 8..16 from the second; one FMA adds them scaled by
//! `d_w * d_x` (a vector holding each block's scale in its eight lanes) to the tile's
//! accumulator, and for Q4 and Q5_0 one more FMA adds the offset term `m_w * s_x`. The
//! activations' per-block scalars are stored eight times each (`Acts::lanes`), so a pair's
//! scales are one load; the activations are padded to an even number of blocks, and a row's
//! odd last block is paired with zeros (masked loads).
//!
//! Q4_0, Q4_1 and Q5_0 take four blocks per register pair instead by default ([`tile_quads`]:
//! one block per 128-bit lane, the low nibbles in one register and the high in another, half
//! the shuffles per block); `STRATA_CPU_QUADS=off` keeps them on the pairs above.
//!
//! The block loops load through raw pointers, with the lengths checked once per tile, rather
//! than through bounds-checked slices: the checks and the registers they hold cost as much as
//! the arithmetic in a memory-bound decode step.

use std::arch::x86_64::*;

use super::WType;
use super::act::{ActRow, Acts, Layout};
use super::x86::{prefetch, store};
use crate::QK;

/// Rows per tile for a single token (decode): two accumulator chains. Four rows hide more FMA
/// latency but make four interleaved weight streams; a decode step waits on memory, and two
/// measured 7% to 20% faster (best of 15 decode steps of the default model, 2 threads).
const R_ONE: usize = 2;
/// The same for [`tile_quads`], whose per-row work is lighter: four rows share each quad's
/// activation loads (within noise of two in decode on a 2-vCPU Xeon VM, 4 rounds each).
const R_ONE_QUADS: usize = 4;
/// Rows and tokens per tile for prefill: 16 accumulators, and the two rows' weights and
/// scales, within the 32 vector registers; then tiles of 4 and 1 tokens for what is left.
const R_MANY: usize = 2;
const T_MANY: usize = 8;
/// How many row tiles ahead to prefetch the weights: the hardware prefetchers alone leave a
/// decode step waiting on memory (the R rows of a tile are R interleaved streams).
const PREFETCH_TILES: usize = 2;

/// out[r][t] = row r of `w` · token t of `acts` (`out` is [rows][acts.n], `w` holds the rows,
/// `rb` bytes each, in `ty`'s block layout).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm(ty: WType, w: &[u8], rb: usize, acts: &Acts, out: &mut [f32]) {
    let quads = acts.layout == Layout::Q4Quads;
    match ty {
        WType::Q4_0 if quads => gemm_ty::<Q4_0_QUADS>(w, rb, acts, out),
        WType::Q4_1 if quads => gemm_ty::<Q4_1_QUADS>(w, rb, acts, out),
        WType::Q5_0 if quads => gemm_ty::<Q5_0_QUADS>(w, rb, acts, out),
        WType::Q4_0 => gemm_ty::<Q4_0>(w, rb, acts, out),
        WType::Q4_1 => gemm_ty::<Q4_1>(w, rb, acts, out),
        WType::Q8_0 => gemm_ty::<Q8_0>(w, rb, acts, out),
        WType::Q5_0 => gemm_ty::<Q5_0>(w, rb, acts, out),
        // No 512-bit kernels for these yet: the AVX2 ones (their activations come in the
        // layout AVX2 reads, see `Isa::layout`; this CPU has AVX2, FMA and F16C).
        WType::Q5_1 | WType::IQ4_NL => super::avx2::gemm(ty, w, rb, acts, out),
    }
}

/// The weight type as a const parameter, so each kernel is compiled for one layout.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
const Q5_0: u8 = 3;
/// Q4_0, Q4_1 and Q5_0 four blocks at a time ([`tile_quads`], activations in
/// `Layout::Q4Quads`).
const Q4_0_QUADS: u8 = 4;
const Q4_1_QUADS: u8 = 5;
const Q5_0_QUADS: u8 = 6;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemm_ty<const TY: u8>(w: &[u8], rb: usize, acts: &Acts, out: &mut [f32]) {
    let n = acts.n;
    let mut t0 = 0;
    while t0 + T_MANY <= n {
        rows_loop::<TY, R_MANY, T_MANY>(w, rb, acts, out, t0);
        t0 += T_MANY;
    }
    while t0 + 4 <= n {
        rows_loop::<TY, R_MANY, 4>(w, rb, acts, out, t0);
        t0 += 4;
    }
    while t0 < n {
        if TY == Q4_0_QUADS || TY == Q4_1_QUADS || TY == Q5_0_QUADS {
            rows_loop::<TY, R_ONE_QUADS, 1>(w, rb, acts, out, t0);
        } else {
            rows_loop::<TY, R_ONE, 1>(w, rb, acts, out, t0);
        }
        t0 += 1;
    }
}

rows_loop!("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c", Acts, ActRow);

/// Whether every row holds `nb` blocks of `bytes` and every token whole groups (pairs, or
/// quads) of activation blocks with 16 scalars each: checked once per tile so that the loads
/// in the block loop need no bounds checks. Both hold by construction (`super::run` slices
/// whole rows, `Acts` pads to whole groups).
fn lengths_ok<const R: usize, const T: usize>(
    rows: &[&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
    bytes: usize,
    group: usize,
) -> bool {
    let groups = nb.div_ceil(group);
    rows.iter().all(|r| r.len() == nb * bytes)
        && toks
            .iter()
            .all(|a| a.qs.len() >= groups * group * QK && a.d.len() >= groups * 16 && a.s.len() >= groups * 16)
}

/// One row × token tile; NaN if the lengths do not fit (unreachable, see [`lengths_ok`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile<const TY: u8, const R: usize, const T: usize>(
    rows: [&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
) -> [[f32; T]; R] {
    let (bytes, group) = match TY {
        Q4_0 => (18, 2),
        Q4_1 => (20, 2),
        Q5_0 => (22, 2),
        Q4_0_QUADS => (18, 4),
        Q4_1_QUADS => (20, 4),
        Q5_0_QUADS => (22, 4),
        _ => (34, 2),
    };
    if !lengths_ok(&rows, toks, nb, bytes, group) {
        return [[f32::NAN; T]; R];
    }
    let acc = match TY {
        Q8_0 => tile_q8::<R, T>(&rows, toks, nb),
        Q4_0_QUADS | Q4_1_QUADS | Q5_0_QUADS => tile_quads::<TY, R, T>(&rows, toks, nb),
        _ => tile_q4::<TY, R, T>(&rows, toks, nb),
    };
    let mut sums = [[0.0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            sums[i][j] = hsum(acc[i][j]);
        }
    }
    sums
}

/// The sum of the 16 lanes. Written out (rather than `acc.map(_mm512_reduce_add_ps)`) so it
/// inlines with the accumulators still in registers: as a call, each accumulator went through
/// memory and the narrower reloads stalled on store forwarding.
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let y = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    let x = _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps::<1>(y));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

/// The activations of token `a` for the pair starting at block `b`: values, scales, sums.
#[inline]
#[target_feature(enable = "avx512f")]
fn act_pair(a: &ActRow<'_>, b: usize) -> (__m512i, __m512, __m512) {
    // SAFETY: `lengths_ok` checked that the token holds whole pairs up to the last block, so
    // the 64 values and 16 + 16 scalars at pair b / 2 are inside its slices; unaligned loads
    // are allowed; the caller has AVX-512F.
    unsafe {
        (
            _mm512_loadu_si512(a.qs.as_ptr().add(b * QK).cast()),
            _mm512_loadu_ps(a.d.as_ptr().add(b * 8)),
            _mm512_loadu_ps(a.s.as_ptr().add(b * 8)),
        )
    }
}

/// Q4_0 (offset `-8 d`), Q4_1 (offset `m`) or Q5_0 (offset `-16 d`, the fifth bits added to
/// the nibbles under a mask) rows; activations in `Layout::Q4Pairs` order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q4<const TY: u8, const R: usize, const T: usize>(
    rows: &[&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
) -> [[__m512; T]; R] {
    let (bytes, off) = match TY {
        Q4_1 => (20, 4),
        Q5_0 => (22, 6),
        _ => (18, 2),
    };
    // Lane k of a product belongs to block (k / 4) % 2 of the pair: see `Layout::Q4Pairs`.
    let pick_d = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
    let pick_m = _mm512_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3, 1, 1, 1, 1, 3, 3, 3, 3);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for b in (0..nb).step_by(2) {
        // The last pair of an odd row has no second block: its loads are masked off (a
        // masked-off element is not read and cannot fault) and give zeros.
        let k16: __mmask16 = if b + 1 < nb { 0xFFFF } else { 0 };
        let mut wq = [_mm512_setzero_si512(); R];
        let mut dw = [_mm512_setzero_ps(); R];
        let mut mw = [_mm512_setzero_ps(); R];
        for i in 0..R {
            let p0 = rows[i].as_ptr().wrapping_add(b * bytes);
            let p1 = p0.wrapping_add(bytes);
            // SAFETY: block b is inside rows[i] (b < nb, length checked in `tile`), so the
            // unmasked loads at p0 read inside it; the loads at p1 read only when block b + 1
            // exists, also inside; unaligned loads are allowed; the caller has AVX-512 F/BW/VL.
            let (h0, q0, h1, q1) = unsafe {
                (
                    _mm_loadu_si32(p0),
                    _mm_loadu_si128(p0.add(off).cast()),
                    _mm_maskz_loadu_epi32(k16 as __mmask8 & 1, p1.cast()),
                    _mm_maskz_loadu_epi8(k16, p1.wrapping_add(off).cast()),
                )
            };
            wq[i] = nibbles_pair(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q0), q1));
            if TY == Q5_0 {
                // The fifth bits (4 bytes after d; bit j for value j) in the pair's byte order
                // (see `nibbles_pair`), as a mask of the bytes that get 16 added.
                // SAFETY: as above: qh lies inside block b, and inside block b + 1, which is
                // read only when it exists.
                let (qh0, qh1) = unsafe {
                    let qh = |p: *const u8| u64::from(u32::from_le(p.add(2).cast::<u32>().read_unaligned()));
                    (qh(p0), if b + 1 < nb { qh(p1) } else { 0 })
                };
                let k = (qh0 & 0xFFFF) | (qh1 & 0xFFFF) << 16 | (qh0 >> 16) << 32 | (qh1 >> 16) << 48;
                wq[i] = _mm512_mask_add_epi8(wq[i], k, wq[i], _mm512_set1_epi8(16));
            }
            // [d0, m0, d1, m1] as binary16 (Q4_0 has no m: those lanes hold nibbles, unused).
            let f = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_unpacklo_epi32(h0, h1)));
            dw[i] = _mm512_permutexvar_ps(pick_d, f);
            mw[i] = match TY {
                Q4_1 => _mm512_permutexvar_ps(pick_m, f),
                Q5_0 => _mm512_mul_ps(dw[i], _mm512_set1_ps(-16.0)),
                _ => _mm512_mul_ps(dw[i], _mm512_set1_ps(-8.0)),
            };
        }
        for j in 0..T {
            let (xq, dx, sx) = act_pair(&toks[j], b);
            for i in 0..R {
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[i], xq);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw[i], dx), acc[i][j]);
                acc[i][j] = _mm512_fmadd_ps(mw[i], sx, acc[i][j]);
            }
        }
    }
    acc
}

/// The activations of token `a` for the quad starting at block `b` (a multiple of 4): the
/// values of the low and of the high nibbles, the scales, the sums.
#[inline]
#[target_feature(enable = "avx512f")]
fn act_quad(a: &ActRow<'_>, b: usize) -> (__m512i, __m512i, __m512, __m512) {
    // SAFETY: `lengths_ok` checked that the token holds whole quads up to the last block, so
    // the 128 values and 16 + 16 scalars of quad b / 4 are inside its slices; unaligned loads
    // are allowed; the caller has AVX-512F.
    unsafe {
        let q = a.qs.as_ptr().add(b * QK);
        (
            _mm512_loadu_si512(q.cast()),
            _mm512_loadu_si512(q.add(64).cast()),
            _mm512_loadu_ps(a.d.as_ptr().add(b * 4)),
            _mm512_loadu_ps(a.s.as_ptr().add(b * 4)),
        )
    }
}

/// For the quad kernels: which 16-bit word of a row's bytes at block b, b + 1, ... (the first
/// load's 32 words, then the second load's as 32..) each word of the register takes. `qs`: the
/// 16 bytes of block k / 8 of the quad, in order (a block's nibble bytes start at an even
/// offset: 2 in Q4_0's 18, 4 in Q4_1's 20, 6 in Q5_0's 22); `dm`: words 0..16 the scale `d` of
/// block k / 4, words 16..32 Q4_1's minimum `m` of block (k - 16) / 4; for Q5_0, words 16..20
/// the low halves of blocks 0..4's fifth bits `qh` and words 20..24 their high halves (the
/// masks of the low- and of the high-nibble bytes, in the quad's byte order); the rest `d`.
const fn quad_words(bytes: usize) -> ([u16; 32], [u16; 32]) {
    let (half, first) = (bytes / 2, (bytes - 16) / 2);
    let (mut qs, mut dm) = ([0u16; 32], [0u16; 32]);
    let mut k = 0;
    while k < 32 {
        qs[k] = (half * (k / 8) + first + k % 8) as u16;
        dm[k] = if k < 16 {
            (half * (k / 4)) as u16
        } else if bytes == 20 {
            (half * ((k - 16) / 4) + 1) as u16
        } else if bytes == 22 && k < 24 {
            (half * ((k - 16) % 4) + 1 + (k - 16) / 4) as u16
        } else {
            (half * ((k - 16) / 4)) as u16
        };
        k += 1;
    }
    (qs, dm)
}

/// The bytes of a quad of blocks from `p` (`len` bytes: four blocks, or the one to three a
/// row ends with): the first 64 and the rest, zeros past `len`.
///
/// # Safety
/// `p..p + len` must be readable; the caller has AVX-512 F/BW.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load_quad<const TY: u8>(p: *const u8, len: usize) -> (__m512i, __m512i) {
    let whole = match TY {
        Q4_1_QUADS => 80,
        Q5_0_QUADS => 88,
        _ => 72,
    };
    // SAFETY: (the caller's) `p..p + len` is readable. A whole quad is 72, 80 or 88 bytes, so
    // the 64-byte load and the 8, 16 or 24 bytes at p + 64 are inside it; a short one loads
    // under masks of its `len` bytes (a masked-off byte is not read and cannot fault).
    unsafe {
        if len == whole {
            let rest = match TY {
                Q4_1_QUADS => _mm512_castsi128_si512(_mm_loadu_si128(p.add(64).cast())),
                Q5_0_QUADS => _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(0xFF_FFFF, p.add(64).cast())),
                _ => _mm512_castsi128_si512(_mm_loadl_epi64(p.add(64).cast())),
            };
            (_mm512_loadu_si512(p.cast()), rest)
        } else {
            let k0: u64 = if len >= 64 { !0 } else { (1u64 << len) - 1 };
            let k1: u64 = if len > 64 { (1u64 << (len - 64)) - 1 } else { 0 };
            (_mm512_maskz_loadu_epi8(k0, p.cast()), _mm512_maskz_loadu_epi8(k1, p.wrapping_add(64).cast()))
        }
    }
}

/// Q4_0 (offset `-8 d`), Q4_1 (offset `m`) or Q5_0 (offset `-16 d`, the fifth bits added
/// under masks) rows four blocks at a time, one per 128-bit lane; activations in
/// `Layout::Q4Quads` order.
///
/// Per quad and row: two loads, one two-source word permute that puts the four blocks' 16
/// nibble bytes side by side (their scales in between fall out), one word permute that spreads
/// the four scales (and minimums) over the lanes, and the conversion of those; per token two
/// `vpdpbusd` (low nibbles, high nibbles) into one set of sums, then the two FMAs of
/// [`tile_q4`]. That is about half the shuffles per block of [`tile_q4`], which spends three
/// per pair of blocks on the scales alone. On a 2-vCPU Xeon VM (one thread, a 1536 x 576 Q4_1
/// matrix in cache, CPU time per call) the pairs ran at 6.1-6.4 GB/s, bound by those shuffles
/// rather than by memory, the quads at 7.3-9.3 GB/s; the offset terms of one token go to
/// accumulators of their own, which alone took the quads from 6.4 to 8-9 GB/s.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_quads<const TY: u8, const R: usize, const T: usize>(
    rows: &[&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
) -> [[__m512; T]; R] {
    const Q4_0_WORDS: ([u16; 32], [u16; 32]) = quad_words(18);
    const Q4_1_WORDS: ([u16; 32], [u16; 32]) = quad_words(20);
    const Q5_0_WORDS: ([u16; 32], [u16; 32]) = quad_words(22);
    let (bytes, words) = match TY {
        Q4_1_QUADS => (20, &Q4_1_WORDS),
        Q5_0_QUADS => (22, &Q5_0_WORDS),
        _ => (18, &Q4_0_WORDS),
    };
    // SAFETY: each array holds 32 u16 values, the 64 bytes loaded; the caller has AVX-512F.
    let (qs_idx, dm_idx) =
        unsafe { (_mm512_loadu_si512(words.0.as_ptr().cast()), _mm512_loadu_si512(words.1.as_ptr().cast())) };
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    // One token: the offset terms in accumulators of their own, so that a quad's two FMAs
    // into a row do not wait on each other (a tile of one token has the registers).
    let mut acc_m = [[_mm512_setzero_ps(); T]; R];
    for b in (0..nb).step_by(4) {
        let len = (nb - b).min(4) * bytes;
        let mut lo = [_mm512_setzero_si512(); R];
        let mut hi = [_mm512_setzero_si512(); R];
        let mut dw = [_mm512_setzero_ps(); R];
        let mut mw = [_mm512_setzero_ps(); R];
        for i in 0..R {
            // SAFETY: blocks b..b + len / bytes are inside rows[i] (b < nb, the row's length
            // checked in `tile`); the caller has AVX-512 F/BW.
            let (a0, a1) = unsafe { load_quad::<TY>(rows[i].as_ptr().wrapping_add(b * bytes), len) };
            let q = _mm512_permutex2var_epi16(a0, qs_idx, a1);
            lo[i] = _mm512_and_si512(q, low);
            hi[i] = _mm512_and_si512(_mm512_srli_epi16::<4>(q), low);
            // Q5_0's fourth scale lies past the first 64 bytes: a two-source permute for it.
            let dm = if TY == Q5_0_QUADS {
                _mm512_permutex2var_epi16(a0, dm_idx, a1)
            } else {
                _mm512_permutexvar_epi16(dm_idx, a0)
            };
            if TY == Q5_0_QUADS {
                // The fifth bits as byte masks of lo and hi: 16 added where set.
                let qh = _mm512_extracti32x4_epi32::<2>(dm);
                let (k_lo, k_hi) = (_mm_cvtsi128_si64(qh) as u64, _mm_extract_epi64::<1>(qh) as u64);
                lo[i] = _mm512_mask_add_epi8(lo[i], k_lo, lo[i], _mm512_set1_epi8(16));
                hi[i] = _mm512_mask_add_epi8(hi[i], k_hi, hi[i], _mm512_set1_epi8(16));
            }
            dw[i] = _mm512_cvtph_ps(_mm512_castsi512_si256(dm));
            mw[i] = match TY {
                Q4_1_QUADS => _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(dm)),
                Q5_0_QUADS => _mm512_mul_ps(dw[i], _mm512_set1_ps(-16.0)),
                _ => _mm512_mul_ps(dw[i], _mm512_set1_ps(-8.0)),
            };
        }
        for j in 0..T {
            let (xl, xh, dx, sx) = act_quad(&toks[j], b);
            for i in 0..R {
                let p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[i], xl), hi[i], xh);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw[i], dx), acc[i][j]);
                if T == 1 {
                    acc_m[i][j] = _mm512_fmadd_ps(mw[i], sx, acc_m[i][j]);
                } else {
                    acc[i][j] = _mm512_fmadd_ps(mw[i], sx, acc[i][j]);
                }
            }
        }
    }
    if T == 1 {
        for i in 0..R {
            acc[i][0] = _mm512_add_ps(acc[i][0], acc_m[i][0]);
        }
    }
    acc
}

/// Q8_0 rows; activations in natural order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q8<const R: usize, const T: usize>(rows: &[&[u8]; R], toks: &[ActRow<'_>; T], nb: usize) -> [[__m512; T]; R] {
    const BYTES: usize = 34;
    // Lanes 0..8 of a product belong to the first block, 8..16 to the second.
    let pick = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for b in (0..nb).step_by(2) {
        // As in `tile_q4`: the missing second block of an odd row's last pair is masked off.
        let k32: __mmask32 = if b + 1 < nb { !0 } else { 0 };
        let mut wabs = [_mm512_setzero_si512(); R];
        let mut neg = [0u64; R];
        let mut dw = [_mm512_setzero_ps(); R];
        for i in 0..R {
            let p0 = rows[i].as_ptr().wrapping_add(b * BYTES);
            let p1 = p0.wrapping_add(BYTES);
            // SAFETY: as in `tile_q4`: block b is inside rows[i], block b + 1 is read only
            // when it exists; unaligned loads are allowed; the caller has AVX-512 F/BW/VL.
            let (d0, q0, d1, q1) = unsafe {
                (
                    _mm_loadu_si16(p0),
                    _mm256_loadu_si256(p0.add(2).cast()),
                    _mm_maskz_loadu_epi16(k32 as __mmask8 & 1, p1.cast()),
                    _mm256_maskz_loadu_epi8(k32, p1.wrapping_add(2).cast()),
                )
            };
            let wq = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1);
            wabs[i] = _mm512_abs_epi8(wq);
            neg[i] = _mm512_movepi8_mask(wq);
            dw[i] = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_unpacklo_epi16(d0, d1))));
        }
        for j in 0..T {
            let (xq, dx, _) = act_pair(&toks[j], b);
            for i in 0..R {
                // w * x = |w| * (x with w's sign): vpdpbusd wants its first operand unsigned.
                let sx = _mm512_mask_sub_epi8(xq, neg[i], _mm512_setzero_si512(), xq);
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wabs[i], sx);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    acc
}

/// The 16 bytes of nibbles of two blocks, [q0, q1] → [q0 & 15, q1 & 15, q0 >> 4, q1 >> 4]:
/// b0 values 0..16, b1 values 0..16, b0 values 16..32, b1 values 16..32 (`Layout::Q4Pairs`).
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn nibbles_pair(q: __m256i) -> __m512i {
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<4>(q));
    _mm512_and_si512(both, _mm512_set1_epi8(0x0F))
}
