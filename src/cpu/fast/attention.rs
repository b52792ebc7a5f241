//! Fast grouped-query causal attention over an f32 or f16 KV cache, optionally within a
//! sliding window: the same results as [`crate::cpu::attention_prefill`] /
//! [`crate::cpu::attention_decode`] up to the order of f32 additions (and fused multiply-adds
//! where the CPU has them). With a window, decode reads only the rows the query sees
//! ([`crate::cpu::first_visible`]); prefill still converts the rows 0..n_kv once per KV head
//! and scores each query only from the block of 16 holding its first visible row.
//!
//! The reference reads the cache one element at a time (converting each f16 on the way) and
//! sums every score in one sequential chain, so it cannot use SIMD; with the matrix products
//! fast, it took half of a 256-token prefill. Here, for prefill, K is converted once per KV
//! head to f32 and transposed to [head_dim][position], so a query's scores for 16 positions are
//! 16 SIMD lanes of one multiply-add chain over head_dim, and V once to f32
//! [position][head_dim], so the weighted sum is a multiply-add per position across head_dim.
//! For one token (decode) that conversion and transposition would cost more than the attention
//! itself: each K and V row is converted once for the query heads of its group and used as it
//! is, with a KV head's rows split into chunks whose softmax states are merged at the end (so a
//! long context uses every thread). The loops are plain Rust,
//! compiled three times: for AVX-512, for AVX2 + FMA (selected at run time, like the matrix
//! kernels) and for the baseline target; the compiler vectorizes them.

use std::ops::Range;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::Isa;
use super::glu::exp;
use crate::cpu::{CacheRef, first_visible};
use crate::{Error, Result};

/// Positions per score vector: one 512-bit register of f32.
const LANES: usize = 16;

/// Decode attention, like [`crate::cpu::attention_decode`]: q and out are
/// `[n_heads][head_dim]`; attends cache rows 0..n_kv (the last `window` of them with one).
///
/// # Errors
/// As the reference: a length or shape that does not fit, or `n_kv == 0`.
pub fn attention_decode(
    q: &[f32],
    k_cache: CacheRef,
    v_cache: CacheRef,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    n_kv: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) -> Result<()> {
    if n_kv == 0 {
        return Err(Error::invalid("fast::attention_decode", "n_kv must be at least 1"));
    }
    attention_prefill(q, 1, n_kv - 1, k_cache, v_cache, n_heads, n_kv_heads, head_dim, scale, window, out)
}

/// Prefill attention, like [`crate::cpu::attention_prefill`]: q and out are
/// `[n_tokens][n_heads][head_dim]`; token t attends cache rows 0..=pos0+t, or
/// `first_visible(pos0 + t, window)..=pos0+t` with a window.
///
/// # Errors
/// As the reference: a length or shape that does not fit.
pub fn attention_prefill(
    q: &[f32],
    n_tokens: usize,
    pos0: usize,
    k_cache: CacheRef,
    v_cache: CacheRef,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "fast::attention_prefill";
    // The reference's argument checks, on an empty output: they are the contract.
    crate::cpu::check_attention(OP, q, n_tokens, pos0, &k_cache, &v_cache, n_heads, n_kv_heads, head_dim, window, out)?;
    if n_tokens == 0 || n_heads == 0 {
        return Ok(());
    }
    let n_kv = pos0 + n_tokens;
    if n_tokens <= FEW_TOKENS {
        // Decode, and the few tokens of a `--lookup` verification pass: each token as a decode
        // step over the rows it sees, reading the cache as it is. Converting and transposing
        // every cached row per KV head (below) cost a verification pass at a 500-token context
        // more than its products.
        let per = n_heads * head_dim;
        for (t, (qt, ot)) in q.chunks_exact(per).zip(out.chunks_exact_mut(per)).enumerate() {
            let p = pos0 + t;
            decode(qt, &k_cache, &v_cache, n_heads, n_kv_heads, head_dim, first_visible(p, window)..p + 1, scale, ot);
        }
        return Ok(());
    }
    let group = n_heads / n_kv_heads;
    let row = n_kv_heads * head_dim;
    let n_pad = n_kv.next_multiple_of(LANES);
    let isa = Isa::best();
    // Per KV head: K as f32 [head_dim][n_pad] (zero padded), V as f32 [n_kv][head_dim].
    let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..n_kv_heads)
        .into_par_iter()
        .map(|g| {
            let mut kt = vec![0.0f32; head_dim * n_pad];
            let mut vf = vec![0.0f32; n_kv * head_dim];
            let mut krow = vec![0.0f32; head_dim];
            for p in 0..n_kv {
                let at = p * row + g * head_dim;
                read_row_on(isa, &k_cache, at, &mut krow);
                for (d, &v) in krow.iter().enumerate() {
                    kt[d * n_pad + p] = v;
                }
                read_row_on(isa, &v_cache, at, &mut vf[p * head_dim..][..head_dim]);
            }
            (kt, vf)
        })
        .collect();
    // One item per (token, head); a few per task so that a short decode does not pay a task
    // per head. Each task reuses one score buffer.
    out.par_chunks_mut(head_dim).zip(q.par_chunks(head_dim)).enumerate().with_min_len(4).for_each_init(
        || vec![0.0f32; n_pad],
        |scores, (item, (o, qh))| {
            let (t, h) = (item / n_heads, item % n_heads);
            let (kt, vf) = &heads[h / group];
            let p = pos0 + t;
            attend(isa, qh, kt, vf, n_pad, first_visible(p, window)..p + 1, scale, scores, o);
        },
    );
    Ok(())
}

/// Most tokens an attention call runs as decode steps, one per token (see
/// [`attention_prefill`]); the products' small-batch tiles go as far.
const FEW_TOKENS: usize = 8;

/// Positions per decode task: a KV head's rows are split into chunks of this many so that a
/// long context spreads over the threads; each chunk keeps its own softmax max and sum, and
/// the chunks are merged per head (the split-K form of attention).
const DECODE_CHUNK: usize = 128;

/// One token (decode) straight from the cache: each task converts a chunk of a KV head's K and
/// V rows once, for all the query heads of its group. (Converting and transposing the whole
/// cache, as prefill does, would cost as much as the attention itself for one token.)
#[allow(clippy::too_many_arguments)]
fn decode(
    q: &[f32],
    k_cache: &CacheRef,
    v_cache: &CacheRef,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    visible: Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let group = n_heads / n_kv_heads;
    let chunks = visible.len().div_ceil(DECODE_CHUNK);
    let isa = Isa::best();
    // On the spinning team, like the decode step's products (`crate::cpu::team`).
    let mut slots: Vec<Option<Partial>> = (0..n_kv_heads * chunks).map(|_| None).collect();
    crate::cpu::team::for_each_chunk_mut(&mut slots, 1, |task, slot| {
        let (g, c) = (task / chunks, task % chunks);
        let rows = visible.start + c * DECODE_CHUNK..(visible.start + (c + 1) * DECODE_CHUNK).min(visible.end);
        let qg = &q[g * group * head_dim..][..group * head_dim];
        let at = Cache { k: k_cache, v: v_cache, off: g * head_dim, row: n_kv_heads * head_dim };
        slot[0] = Some(decode_chunk(isa, qg, &at, rows, head_dim, scale));
    });
    let parts: Vec<Partial> = slots.into_iter().flatten().collect();
    // out[h] = sum_c exp(m_c - m) acc_c / sum_c exp(m_c - m) l_c, per head of each group.
    for (g, og) in out.chunks_exact_mut(group * head_dim).enumerate() {
        for (h, o) in og.chunks_exact_mut(head_dim).enumerate() {
            let mine = &parts[g * chunks..][..chunks];
            let m = mine.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.max[h]));
            let mut l = 0.0f32;
            o.fill(0.0);
            for p in mine {
                let w = (p.max[h] - m).exp();
                l += w * p.sum[h];
                for (o, &a) in o.iter_mut().zip(&p.acc[h * head_dim..][..head_dim]) {
                    *o += w * a;
                }
            }
            let inv = 1.0 / l;
            for o in o.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// Where a KV head's rows are: element `p * row + off + d` of each cache.
struct Cache<'a, 'c> {
    k: &'a CacheRef<'c>,
    v: &'a CacheRef<'c>,
    off: usize,
    row: usize,
}

/// A chunk's softmax state per query head: max score, sum of exp(score - max), and the
/// exp-weighted sum of V rows ([head][head_dim]).
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

fn decode_chunk(isa: Isa, qg: &[f32], at: &Cache, rows: Range<usize>, hd: usize, scale: f32) -> Partial {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::best()` returned AVX-512, so this CPU has the features of
        // `decode_chunk_avx512`.
        Isa::Avx512Vnni => unsafe { decode_chunk_avx512(qg, at, rows, hd, scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::best()` returned AVX2, so this CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { decode_chunk_avx2(qg, at, rows, hd, scale) },
        _ => decode_chunk_body::<false, false>(qg, at, rows, hd, scale),
    }
}

/// [`decode_chunk_body`] on AVX-512, the same results bit for bit, in blocks of 16 positions
/// when the head size is a multiple of 16 (else the body's row-at-a-time code): a block's K
/// rows are converted to f32 once (512-bit `vcvtph2ps`) and scored 16 at a time ([`scores16`],
/// [`dot512`]'s sums); its V rows likewise, then added into the query heads' sums held in
/// registers, four heads by 64 values at a time ([`v_tile`]), where the body loaded and stored
/// every sum for every row. Every sum is still one chain in position order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn decode_chunk_avx512(qg: &[f32], at: &Cache, rows: Range<usize>, hd: usize, scale: f32) -> Partial {
    if !hd.is_multiple_of(LANES) {
        return decode_chunk_body::<true, true>(qg, at, rows, hd, scale);
    }
    let group = qg.len() / hd;
    let n = rows.len();
    let end = rows.end;
    let mut scores = vec![0.0f32; group * n];
    let mut block = vec![0.0f32; LANES * hd];
    // `rows` `i0..i0 + len` (at most 16) of the chunk, each a head_dim row of `block`.
    let fill = |c: &CacheRef, block: &mut [f32], i0: usize, len: usize| {
        for (j, r) in block.chunks_exact_mut(hd).take(len).enumerate() {
            let p = rows.start + i0 + j;
            if p + DECODE_PREFETCH < end {
                prefetch_row(c, (p + DECODE_PREFETCH) * at.row + at.off, hd);
            }
            // SAFETY: this function is compiled with AVX-512 F.
            unsafe { read_row512(c, p * at.row + at.off, r) };
        }
    };
    let mut i0 = 0;
    while i0 < n {
        let len = (n - i0).min(LANES);
        fill(at.k, &mut block, i0, len);
        for (h, qh) in qg.chunks_exact(hd).enumerate() {
            let s = &mut scores[h * n + i0..][..len];
            if len == LANES {
                // SAFETY: this function is compiled with AVX-512 F, AVX2, FMA and F16C.
                let d = unsafe { scores16(qh, &block) };
                for (o, v) in s.iter_mut().zip(d) {
                    *o = v * scale;
                }
            } else {
                for (o, k) in s.iter_mut().zip(block.chunks_exact(hd)) {
                    // SAFETY: as above.
                    *o = unsafe { dot512(qh, k) } * scale;
                }
            }
        }
        i0 += len;
    }
    let mut part = Partial { max: vec![f32::NEG_INFINITY; group], sum: vec![0.0; group], acc: vec![0.0; group * hd] };
    for (h, s) in scores.chunks_exact_mut(n.max(1)).enumerate().take(group) {
        (part.max[h], part.sum[h]) = softmax_weights(s);
    }
    let mut i0 = 0;
    while i0 < n {
        let len = (n - i0).min(LANES);
        fill(at.v, &mut block, i0, len);
        let vb = &block[..len * hd];
        let mut d0 = 0;
        while d0 < hd {
            let w = if hd - d0 >= 4 * LANES { 4 } else { 1 };
            let mut h0 = 0;
            while h0 < group {
                let t = Tile { vb, hd, d0, h0, e: &scores, n, i0 };
                let acc = &mut part.acc;
                // SAFETY: this function is compiled with AVX-512 F.
                unsafe {
                    match ((group - h0).min(4), w) {
                        (1, 4) => v_tile::<1, 4>(&t, acc),
                        (2, 4) => v_tile::<2, 4>(&t, acc),
                        (3, 4) => v_tile::<3, 4>(&t, acc),
                        (4, 4) => v_tile::<4, 4>(&t, acc),
                        (1, _) => v_tile::<1, 1>(&t, acc),
                        (2, _) => v_tile::<2, 1>(&t, acc),
                        (3, _) => v_tile::<3, 1>(&t, acc),
                        _ => v_tile::<4, 1>(&t, acc),
                    }
                }
                h0 += 4;
            }
            d0 += w * LANES;
        }
        i0 += len;
    }
    part
}

/// A block's share of the weighted V sums: `vb` holds its rows as f32 ([len][hd]), `e` the
/// softmax weights ([head][n], the block's at `i0..`); the tile is heads `h0..` and values
/// `d0..`.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    vb: &'a [f32],
    hd: usize,
    d0: usize,
    h0: usize,
    e: &'a [f32],
    n: usize,
    i0: usize,
}

/// acc[h0 + h][d0 .. d0 + 16 W] += e[h0 + h][i0 + r] * vb[r][d0 ..] for the block's rows r in
/// order, H heads by W registers of sums held in registers across the block (loaded once and
/// stored once): each sum is the same chain of fused multiply-adds as one per row.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn v_tile<const H: usize, const W: usize>(t: &Tile, acc: &mut [f32]) {
    use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps};
    let (hd, d0, h0) = (t.hd, t.d0, t.h0);
    let at = |h: usize, w: usize| (h0 + h) * hd + d0 + w * LANES;
    // SAFETY (all loads and stores): each reads or writes 16 f32 of a slice indexed to 16
    // values first; the caller's CPU has AVX-512 F.
    let mut a: [[__m512; W]; H] =
        std::array::from_fn(|h| std::array::from_fn(|w| unsafe { _mm512_loadu_ps(acc[at(h, w)..][..LANES].as_ptr()) }));
    for (r, v) in t.vb.chunks_exact(hd).enumerate() {
        let v: [__m512; W] = std::array::from_fn(|w| unsafe { _mm512_loadu_ps(v[d0 + w * LANES..][..LANES].as_ptr()) });
        for (h, ah) in a.iter_mut().enumerate() {
            let e = unsafe { _mm512_set1_ps(t.e[(h0 + h) * t.n + t.i0 + r]) };
            for (aw, vw) in ah.iter_mut().zip(v) {
                *aw = unsafe { _mm512_fmadd_ps(e, vw, *aw) };
            }
        }
    }
    for (h, ah) in a.iter().enumerate() {
        for (w, aw) in ah.iter().enumerate() {
            unsafe { _mm512_storeu_ps(acc[at(h, w)..][..LANES].as_mut_ptr(), *aw) };
        }
    }
}

/// [`read_row`] with 16 values per `vcvtph2ps`, for the AVX-512 code.
///
/// # Safety
/// The CPU must have AVX-512 F (the caller is compiled with it, so this inlines into it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn read_row512(c: &CacheRef, at: usize, out: &mut [f32]) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_storeu_ps};
    match c {
        CacheRef::F32(v) => out.copy_from_slice(&v[at..at + out.len()]),
        CacheRef::F16(v) => {
            let src: &[f16] = &v[at..at + out.len()];
            let (sc, st) = src.as_chunks::<LANES>();
            let (oc, ot) = out.as_chunks_mut::<LANES>();
            for (s, o) in sc.iter().zip(oc) {
                // SAFETY: s is 16 f16 = 32 bytes and o 16 f32, both in bounds; unaligned loads
                // and stores; the caller's CPU has AVX-512 F.
                unsafe {
                    _mm512_storeu_ps(o.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast::<__m256i>())))
                };
            }
            for (s, o) in st.iter().zip(ot) {
                *o = s.to_f32();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn decode_chunk_avx2(qg: &[f32], at: &Cache, rows: Range<usize>, hd: usize, scale: f32) -> Partial {
    decode_chunk_body::<true, false>(qg, at, rows, hd, scale)
}

/// Positions ahead whose K (or V) row a decode chunk asks the CPU to fetch: a head's rows are
/// a KV-cache row apart (n_kv_heads * head_dim values), a stride the hardware prefetcher
/// follows late, and the first touch of each row stalled the conversion.
const DECODE_PREFETCH: usize = 8;

/// Asks the CPU to bring cache values `at..at + len` into L1 (a hint: no effect on results).
#[inline(always)]
fn prefetch_row(c: &CacheRef, at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let (ptr, bytes, size) = match c {
            CacheRef::F32(v) => (v.as_ptr().cast::<u8>(), std::mem::size_of_val(*v), 4),
            CacheRef::F16(v) => (v.as_ptr().cast::<u8>(), std::mem::size_of_val(*v), 2),
        };
        let end = at.saturating_add(len).saturating_mul(size).min(bytes);
        let mut i = at.saturating_mul(size);
        while i < end {
            // SAFETY: i < the slice's size in bytes, so the pointer is inside it; a prefetch
            // reads nothing the program observes and never faults; SSE is x86_64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.add(i).cast()) };
            i += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (c, at, len);
}

/// `FMA` is true only in the AVX2 / AVX-512 instances, which also have F16C (see [`read_row`]);
/// `AVX512` only in the AVX-512 one.
#[inline(always)]
fn decode_chunk_body<const FMA: bool, const AVX512: bool>(
    qg: &[f32],
    at: &Cache,
    rows: Range<usize>,
    hd: usize,
    scale: f32,
) -> Partial {
    let group = qg.len() / hd;
    let n = rows.len();
    let mut row = vec![0.0f32; hd];
    let mut scores = vec![0.0f32; group * n];
    let end = rows.end;
    for (i, p) in rows.clone().enumerate() {
        if p + DECODE_PREFETCH < end {
            prefetch_row(at.k, (p + DECODE_PREFETCH) * at.row + at.off, hd);
        }
        read_row::<FMA>(at.k, p * at.row + at.off, &mut row);
        for (h, qh) in qg.chunks_exact(hd).enumerate() {
            #[cfg(target_arch = "x86_64")]
            let d = if AVX512 {
                // SAFETY: `AVX512` is true only in `decode_chunk_avx512`, which runs where
                // `Isa::best()` found AVX-512 F.
                unsafe { dot512(qh, &row) }
            } else {
                dot::<FMA>(qh, &row)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let d = dot::<FMA>(qh, &row);
            scores[h * n + i] = d * scale;
        }
    }
    let mut part = Partial { max: vec![f32::NEG_INFINITY; group], sum: vec![0.0; group], acc: vec![0.0; group * hd] };
    for (h, s) in scores.chunks_exact_mut(n.max(1)).enumerate().take(group) {
        (part.max[h], part.sum[h]) = softmax_weights(s);
    }
    for (i, p) in rows.enumerate() {
        if p + DECODE_PREFETCH < end {
            prefetch_row(at.v, (p + DECODE_PREFETCH) * at.row + at.off, hd);
        }
        read_row::<FMA>(at.v, p * at.row + at.off, &mut row);
        for (h, acc) in part.acc.chunks_exact_mut(hd).enumerate() {
            let e = scores[h * n + i];
            for (a, &v) in acc.iter_mut().zip(&row) {
                *a = madd::<FMA>(e, v, *a);
            }
        }
    }
    part
}

/// scores[p - b0 * 16] = scale * q · k[p] for the blocks of 16 positions b0..ceil(n / 16),
/// from K transposed to kt [head_dim][n_pad]: 16 positions are 16 lanes of one multiply-add
/// chain over head_dim. Four blocks at a time, so four chains run side by side: one chain is
/// an FMA's latency per step (4 cycles) where the core can start two FMAs per cycle, and the
/// one-block loop was most of a Gemma 3 prefill's attention (head_dim 256). Each position's sum
/// is the same chain either way, so the scores are the same bit for bit.
#[inline(always)]
fn scores_into<const FMA: bool>(
    q: &[f32],
    kt: &[f32],
    n_pad: usize,
    b0: usize,
    n: usize,
    scale: f32,
    scores: &mut [f32],
) {
    const GROUP: usize = 4;
    let n_blocks = n.div_ceil(LANES) - b0;
    let (groups, rest) = scores[..n_blocks * LANES].as_chunks_mut::<{ GROUP * LANES }>();
    for (i, s) in groups.iter_mut().enumerate() {
        let pb = b0 + i * GROUP;
        let mut acc = [[0.0f32; LANES]; GROUP];
        for (d, &qd) in q.iter().enumerate() {
            let k = &kt[d * n_pad + pb * LANES..][..GROUP * LANES];
            for (a, kb) in acc.iter_mut().zip(k.as_chunks::<LANES>().0) {
                for l in 0..LANES {
                    a[l] = madd::<FMA>(qd, kb[l], a[l]);
                }
            }
        }
        for (sb, a) in s.as_chunks_mut::<LANES>().0.iter_mut().zip(&acc) {
            for l in 0..LANES {
                sb[l] = a[l] * scale;
            }
        }
    }
    let done = groups.len() * GROUP;
    for (i, s) in rest.chunks_exact_mut(LANES).enumerate() {
        let pb = b0 + done + i;
        let mut acc = [0.0f32; LANES];
        for (d, &qd) in q.iter().enumerate() {
            let k = &kt[d * n_pad + pb * LANES..][..LANES];
            for l in 0..LANES {
                acc[l] = madd::<FMA>(qd, k[l], acc[l]);
            }
        }
        for l in 0..LANES {
            s[l] = acc[l] * scale;
        }
    }
}

/// The largest of `s` (-inf for none), as a sequential `f32::max` fold gives it but 16 lanes at
/// a time: the fold is one chain of scalar compares (a NaN check each), which the compiler does
/// not vectorize (`perf annotate` of the decode chunks showed them). `max` picks the same value in
/// any order (a NaN is skipped either way); at most the sign of a zero maximum differs, which
/// no `exp(x - max)` sees.
#[inline(always)]
fn max_of(s: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let (chunks, tail) = s.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            m[l] = m[l].max(c[l]);
        }
    }
    m.iter().chain(tail).fold(f32::NEG_INFINITY, |a, &v| a.max(v))
}

/// s[i] = exp(s[i] - max s) in place; returns max s and the sum of the new s. The exponentials
/// are [`exp`], which vectorizes (libm's `expf` is a call per value and took a third of a decode
/// step's attention).
#[inline(always)]
fn softmax_weights(s: &mut [f32]) -> (f32, f32) {
    let m = max_of(s);
    for v in s.iter_mut() {
        *v = exp(*v - m);
    }
    let mut acc = [0.0f32; LANES];
    let (chunks, tail) = s.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    (m, acc.iter().sum::<f32>() + tail.iter().sum::<f32>())
}

/// q · k: 16 lane-wise partial sums (one f32 chain would not vectorize), then a tree of vector
/// adds. The chunks are copied into locals, which keeps the compiler to full-width vectors.
#[inline(always)]
fn dot<const FMA: bool>(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (qc, qt) = q.as_chunks::<LANES>();
    let (kc, kt) = k.as_chunks::<LANES>();
    for (a, b) in qc.iter().zip(kc) {
        let (a, b) = (*a, *b);
        for l in 0..LANES {
            acc[l] = madd::<FMA>(a[l], b[l], acc[l]);
        }
    }
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    let mut s = acc[0];
    for (&a, &b) in qt.iter().zip(kt) {
        s = madd::<FMA>(a, b, s);
    }
    s
}

/// [`dot`] with FMA in 512-bit registers, the same sums bit for bit: lane l of one register
/// takes the products of lane l of every 16-value chunk in order, and the lanes are added as
/// `dot`'s tree does (high half onto low half: 8, 4, 2, 1 lanes). The compiler made `dot`'s
/// lane loop 2-wide (`vmovsd` loads) in the decode chunks, 14% of a fast decode step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn dot512(q: &[f32], k: &[f32]) -> f32 {
    use std::arch::x86_64::{
        _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehdup_ps, _mm_movehl_ps, _mm256_add_ps, _mm256_castpd_ps,
        _mm256_castps256_ps128, _mm256_extractf128_ps, _mm512_castps_pd, _mm512_castps512_ps256,
        _mm512_extractf64x4_pd, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps,
    };
    let (qc, qt) = q.as_chunks::<LANES>();
    let (kc, kt) = k.as_chunks::<LANES>();
    let mut acc = _mm512_setzero_ps();
    for (a, b) in qc.iter().zip(kc) {
        // SAFETY: a and b are 16 f32 each; unaligned loads.
        acc = unsafe { _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr()), _mm512_loadu_ps(b.as_ptr()), acc) };
    }
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    let a8 = _mm256_add_ps(_mm512_castps512_ps256(acc), hi);
    let a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps::<1>(a8));
    let a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
    let mut s = _mm_cvtss_f32(_mm_add_ss(a2, _mm_movehdup_ps(a2)));
    for (&a, &b) in qt.iter().zip(kt) {
        s = a.mul_add(b, s);
    }
    s
}

/// q · k[j] for the 16 rows of `kb` ([16][q.len()], q.len() a multiple of 16): [`dot512`]'s
/// sums bit for bit (each row's products in one 16-lane chain in chunk order, then the lanes
/// added as its tree does: 8 onto 8, 4 onto 4, 2 onto 2, 1 onto 1), but the 16 trees run
/// together, four stages of shuffles and adds over 16 registers, where `dot512` reduced each
/// row's register alone (seven operations for one sum): with a head size of 64 the reduction
/// was most of a decode step's scores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn scores16(q: &[f32], kb: &[f32]) -> [f32; LANES] {
    use std::arch::x86_64::*;
    let hd = q.len();
    let mut v = [_mm512_setzero_ps(); LANES];
    // Chunk by chunk across the 16 rows: 16 independent chains side by side (row by row, each
    // row's chain of head_dim / 16 multiply-adds waited on its own latency); each row's sum
    // still takes its chunks in order.
    for (c, qc) in q.as_chunks::<LANES>().0.iter().enumerate() {
        // SAFETY: qc is 16 f32; unaligned load.
        let qv = unsafe { _mm512_loadu_ps(qc.as_ptr()) };
        // A fixed count of 16, so the sums stay in registers.
        for (r, a) in v.iter_mut().enumerate() {
            // SAFETY: 16 f32 of row r, indexed first; unaligned load.
            *a = unsafe { _mm512_fmadd_ps(qv, _mm512_loadu_ps(kb[r * hd + c * LANES..][..LANES].as_ptr()), *a) };
        }
    }
    // Stage 1, lanes l + l+8: s1[k] = [rows 2k | 2k+1], 8 lanes each.
    let mut s1 = [_mm512_setzero_ps(); 8];
    for (k, o) in s1.iter_mut().enumerate() {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        *o = _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b));
    }
    // Stage 2, lanes l + l+4: s2[m]'s 128-bit block j holds row 4m + j's 4 lanes.
    let mut s2 = [_mm512_setzero_ps(); 4];
    for (m, o) in s2.iter_mut().enumerate() {
        let (a, b) = (s1[2 * m], s1[2 * m + 1]);
        *o = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b));
    }
    // Stage 3, lanes l + l+2: s3[u]'s block j holds rows 8u + j and 8u + 4 + j, 2 lanes each.
    let mut s3 = [_mm512_setzero_ps(); 2];
    for (u, o) in s3.iter_mut().enumerate() {
        let (a, b) = (_mm512_castps_pd(s2[2 * u]), _mm512_castps_pd(s2[2 * u + 1]));
        *o = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // Stage 4, lane 0 + lane 1: lane 4j + e holds row 4e + j.
    let (a, b) = (s3[0], s3[1]);
    let t = _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(a, b), _mm512_shuffle_ps::<0b11_01_11_01>(a, b));
    // Row r = 4e + j is at lane 4j + e.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut out = [0.0f32; LANES];
    // SAFETY: `out` holds 16 f32.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_permutexvar_ps(order, t)) };
    out
}

/// [`read_row`] with F16C where `isa` (the CPU's best) has it.
fn read_row_on(isa: Isa, c: &CacheRef, at: usize, out: &mut [f32]) {
    match isa {
        Isa::Scalar => read_row::<false>(c, at, out),
        _ => read_row::<true>(c, at, out),
    }
}

/// Cache values `at..at + out.len()` as f32. f16 is converted in bulk: with `F16C` (true only
/// where `Isa::best()` found AVX2 + F16C: the AVX2 / AVX-512 kernels and [`read_row_on`]) by
/// `vcvtph2ps`, in line in the kernels, otherwise by `half` (which checks the CPU and calls a
/// converter per 8 values: 5% of a decode step's samples). f16 to f32 is exact either way.
#[inline(always)]
fn read_row<const F16C: bool>(c: &CacheRef, at: usize, out: &mut [f32]) {
    match c {
        CacheRef::F32(v) => out.copy_from_slice(&v[at..at + out.len()]),
        CacheRef::F16(v) => {
            let src: &[f16] = &v[at..at + out.len()];
            #[cfg(target_arch = "x86_64")]
            if F16C {
                // SAFETY: `F16C` is true only where `Isa::best()` found AVX2 and F16C.
                unsafe { f16_to_f32_f16c(src, out) };
                return;
            }
            src.convert_to_f32_slice(out);
        }
    }
}

/// out = src as f32, 8 values per `vcvtph2ps`; `out` as long as `src`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn f16_to_f32_f16c(src: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
    let (sc, st) = src.as_chunks::<8>();
    let (oc, ot) = out.as_chunks_mut::<8>();
    for (s, o) in sc.iter().zip(oc) {
        // SAFETY: s is 8 f16 = 16 bytes and o 8 f32, both in bounds; unaligned loads/stores.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast::<__m128i>()))) };
    }
    for (s, o) in st.iter().zip(ot) {
        *o = s.to_f32();
    }
}

/// One query against positions `rows` (ending at most at n_pad), on the best code this CPU runs.
#[allow(clippy::too_many_arguments)]
fn attend(
    isa: Isa,
    q: &[f32],
    kt: &[f32],
    vf: &[f32],
    n_pad: usize,
    rows: Range<usize>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::best()` returned AVX-512, so this CPU has the features `attend_avx512`
        // is compiled for.
        Isa::Avx512Vnni => unsafe { attend_avx512(q, kt, vf, n_pad, rows, scale, scores, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::best()` returned AVX2, so this CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { attend_avx2(q, kt, vf, n_pad, rows, scale, scores, out) },
        _ => attend_body::<false>(q, kt, vf, n_pad, rows, scale, scores, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
fn attend_avx512(
    q: &[f32],
    kt: &[f32],
    vf: &[f32],
    n_pad: usize,
    r: Range<usize>,
    s: f32,
    sc: &mut [f32],
    o: &mut [f32],
) {
    attend_body::<true>(q, kt, vf, n_pad, r, s, sc, o)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(
    q: &[f32],
    kt: &[f32],
    vf: &[f32],
    n_pad: usize,
    r: Range<usize>,
    s: f32,
    sc: &mut [f32],
    o: &mut [f32],
) {
    attend_body::<true>(q, kt, vf, n_pad, r, s, sc, o)
}

/// softmax(scale * q·k[p], p in rows) weighted sum of v[p], written so the compiler vectorizes it:
/// scores 16 positions at a time (lanes) with one chain over head_dim, the weighted sum across
/// head_dim. Inlined into each `#[target_feature]` wrapper, so each gets its own vector code.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_body<const FMA: bool>(
    q: &[f32],
    kt: &[f32],
    vf: &[f32],
    n_pad: usize,
    rows: Range<usize>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    // Whole blocks of 16 from the one holding the first visible row; the rows of that block
    // before it are scored and dropped.
    let b0 = rows.start / LANES;
    scores_into::<FMA>(q, kt, n_pad, b0, rows.end, scale, scores);
    let scores = &mut scores[rows.start - b0 * LANES..rows.end - b0 * LANES];
    let (_, l) = softmax_weights(scores);
    let inv = 1.0 / l;
    // The weighted sum in chunks of head_dim held in registers over all positions (a
    // read-modify-write of `out` per position was half of a Gemma 3 prefill's attention): 128
    // values (8 registers of 16) where the rows have them, then 16 at a time, then one.
    let (big, rest) = out.as_chunks_mut::<128>();
    let (mid, tail) = rest.as_chunks_mut::<LANES>();
    let mut d0 = 0;
    for o in big {
        weighted_sum::<FMA, 128>(vf, hd, d0, rows.clone(), scores, inv, o);
        d0 += 128;
    }
    for o in mid {
        weighted_sum::<FMA, LANES>(vf, hd, d0, rows.clone(), scores, inv, o);
        d0 += LANES;
    }
    for o in tail.as_chunks_mut::<1>().0 {
        weighted_sum::<FMA, 1>(vf, hd, d0, rows.clone(), scores, inv, o);
        d0 += 1;
    }
}

/// out[i] = inv * sum over p in rows of e[p] * v[p][d0 + i] (e = scores, one per row), each
/// sum one chain in position order, as the reference adds them.
#[inline(always)]
fn weighted_sum<const FMA: bool, const N: usize>(
    vf: &[f32],
    hd: usize,
    d0: usize,
    rows: Range<usize>,
    scores: &[f32],
    inv: f32,
    out: &mut [f32; N],
) {
    let mut acc = [0.0f32; N];
    for (p, &e) in rows.zip(scores) {
        let v = &vf[p * hd + d0..][..N];
        for i in 0..N {
            acc[i] = madd::<FMA>(e, v[i], acc[i]);
        }
    }
    for i in 0..N {
        out[i] = acc[i] * inv;
    }
}

/// `a * b + c`: fused in the code compiled with FMA (`f32::mul_add` becomes one instruction
/// there), two operations elsewhere (where `mul_add` would call a slow software fma).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// `scores16` is `dot512` bit for bit, row by row, for head sizes of 16 to 256.
    #[test]
    fn batched_scores_equal_one_dot_per_row_bit_for_bit() {
        if !Isa::Avx512Vnni.is_available() {
            crate::check::skip("attention::batched_scores_equal_one_dot_per_row_bit_for_bit", "this CPU lacks AVX-512");
            return;
        }
        let mut next = crate::check::test_values(0x2545_F491_4F6C_DD1D);
        for hd in [16, 48, 64, 128, 256] {
            let q: Vec<f32> = (0..hd).map(|_| next()).collect();
            let kb: Vec<f32> = (0..LANES * hd).map(|_| next() * 1e3f32.powi((next() > 1.5) as i32)).collect();
            // SAFETY: checked above that this CPU has AVX-512 F (and the AVX2 / FMA / F16C every
            // AVX-512 set here includes).
            let got = unsafe { scores16(&q, &kb) };
            for (r, k) in kb.chunks_exact(hd).enumerate() {
                // SAFETY: as above.
                let want = unsafe { dot512(&q, k) };
                assert_eq!(got[r].to_bits(), want.to_bits(), "head size {hd}, row {r}: {} vs {want}", got[r]);
            }
        }
    }

    /// The AVX-512 decode chunk (blocks of 16 positions, sums held in registers) is the
    /// row-at-a-time body bit for bit: maxima, sums and weighted V sums, for head sizes of 16 to
    /// 256 (and 40, which takes the body's path), groups of 1 to 6 query heads (register tiles of
    /// 4 + 2), chunks of 1 to 128 positions (whole blocks, a short last block, none whole), the
    /// second of two KV heads, f16 and f32 caches.
    #[test]
    fn blocked_decode_chunk_equals_the_row_by_row_body_bit_for_bit() {
        if !Isa::Avx512Vnni.is_available() {
            crate::check::skip(
                "attention::blocked_decode_chunk_equals_the_row_by_row_body_bit_for_bit",
                "this CPU lacks AVX-512",
            );
            return;
        }
        let mut next = crate::check::test_values(0x9E37_79B9_7F4A_7C15);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for hd in [16, 40, 64, 80, 128, 256] {
            for group in [1, 3, 6] {
                for (start, n) in [(0, 1), (3, 16), (0, 17), (5, 40), (100, 128)] {
                    let row = 2 * hd;
                    let k: Vec<f32> = (0..(start + n) * row).map(|_| next()).collect();
                    let v: Vec<f32> = (0..(start + n) * row).map(|_| next()).collect();
                    let (k16, v16): (Vec<f16>, Vec<f16>) =
                        (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
                    let q: Vec<f32> = (0..group * hd).map(|_| next()).collect();
                    let caches = [(CacheRef::F32(&k), CacheRef::F32(&v)), (CacheRef::F16(&k16), CacheRef::F16(&v16))];
                    for (kc, vc) in &caches {
                        let at = Cache { k: kc, v: vc, off: hd, row };
                        let rows = start..start + n;
                        // SAFETY: checked above that this CPU has AVX-512 F (and the AVX2 / FMA
                        // / F16C every AVX-512 set here includes).
                        let got = unsafe { decode_chunk_avx512(&q, &at, rows.clone(), hd, 0.125) };
                        let want = decode_chunk_body::<true, true>(&q, &at, rows, hd, 0.125);
                        let case = format!("head size {hd}, group {group}, rows {start}+{n}");
                        assert_eq!(bits(&got.max), bits(&want.max), "{case}: maxima");
                        assert_eq!(bits(&got.sum), bits(&want.sum), "{case}: sums");
                        assert_eq!(bits(&got.acc), bits(&want.acc), "{case}: weighted V sums");
                    }
                }
            }
        }
    }
}
