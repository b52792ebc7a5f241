//! What the AVX2 and AVX-512 kernels share: storing a tile's sums, and prefetching the weights
//! of the tiles ahead.

use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};

/// Writes an R × T tile of sums into out ([rows][n]) at rows r0.., tokens t0...
pub(super) fn store<const R: usize, const T: usize>(
    tile: &[[f32; T]; R],
    out: &mut [f32],
    n: usize,
    r0: usize,
    t0: usize,
) {
    for (i, vals) in tile.iter().enumerate() {
        out[(r0 + i) * n + t0..][..T].copy_from_slice(vals);
    }
}

/// Asks for the cache lines of `w[at..at + len]` (clamped to `w`) ahead of use: the rows of a
/// tile are several interleaved streams, which the hardware prefetchers alone follow too late
/// in a decode step.
#[inline]
pub(super) fn prefetch(w: &[u8], at: usize, len: usize) {
    let end = at.saturating_add(len).min(w.len());
    let mut i = at;
    while i < end {
        // SAFETY: `i < w.len()`, so the pointer is inside `w`; a prefetch reads nothing the
        // program can observe and never faults; SSE is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(i).cast()) };
        i += 64;
    }
}
