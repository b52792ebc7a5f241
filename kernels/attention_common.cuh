// attention_common.cuh — the pieces attention.cu, attention_tiled.cu, attention_mma.cu and
// paged_attention.cu (and, for the cache element, attention_split.cu) share: the launchers'
// argument checks, the first row a windowed query sees, reading a cache element as f32, one
// step of a warp's online softmax over a chunk of 32 positions, and the merge of a block's
// warps at the end.
//
// `kMayBeEmpty` is for kernels where a chunk, or a whole warp's walk, can hold no valid
// position (paged_attention.cu: a bad block-table entry; attention_tiled.cu: a tile past a
// query's position or before its window): the running max then stays -inf and
// the state is kept as it is. Without it (attention.cu, where every chunk a warp walks holds at
// least one position), the code is exactly the unguarded arithmetic.
#pragma once

#include "common.cuh"

namespace strata {

// The first cache row a query at position p sees with a sliding window (0: none): llama.cpp's
// standard window, the query sees p+1-window..=p (the CPU reference's `first_visible`).
__host__ __device__ __forceinline__ int64_t first_visible_row(int64_t p, int64_t window) {
    return window > 0 && p + 1 > window ? p + 1 - window : 0;
}

template <typename C>
__device__ __forceinline__ float cache_to_f32(C v);
template <>
__device__ __forceinline__ float cache_to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float cache_to_f32<__half>(__half v) { return __half2float(v); }

// The argument checks the contiguous-cache attention launchers share (attention.cu,
// attention_tiled.cu): an f32 or f16 cache, query heads a multiple of the kv heads, head_dim in
// 1..=256.
__host__ inline bool attention_args_ok(strata_dtype cache_dtype, int64_t n_heads,
                                       int64_t n_kv_heads, int64_t head_dim) {
    return (cache_dtype == STRATA_DTYPE_F32 || cache_dtype == STRATA_DTYPE_F16) &&
           n_heads >= 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0 &&
           head_dim <= 256;
}

// The prefill launchers' front (attention.cu, attention_tiled.cu): the argument checks, nothing
// to do for no heads or tokens, then `launch(C{})` with the cache element type C (float or
// __half) as a tag.
template <typename Launch>
__host__ inline strata_status checked_prefill(const float *q, int64_t n_tokens, int64_t pos0,
                                              strata_dtype cache_dtype, const void *k_cache,
                                              const void *v_cache, int64_t n_heads,
                                              int64_t n_kv_heads, int64_t head_dim,
                                              int64_t window, const float *out, Launch launch) {
    STRATA_CHECK_ARG(attention_args_ok(cache_dtype, n_heads, n_kv_heads, head_dim));
    STRATA_CHECK_ARG(n_tokens >= 0 && pos0 >= 0 && window >= 0);
    if (n_heads == 0 || n_tokens == 0) return STRATA_OK;
    STRATA_CHECK_ARG(q && k_cache && v_cache && out);
    return cache_dtype == STRATA_DTYPE_F16 ? launch(__half{}) : launch(float{});
}

// One chunk of a warp's online softmax: `s` is this lane's score (-inf when the lane has no
// valid position), (m, l, acc) the warp's running max, sum and per-lane V accumulators. Rescales
// the state to the new max and returns this lane's weight exp(s - m), 0 when not `valid`.
template <int kPerLane, bool kMayBeEmpty>
__device__ __forceinline__ float softmax_step(float s, bool valid, float &m, float &l,
                                              float (&acc)[kPerLane]) {
    const float m_new = fmaxf(m, warp_max(s));
    // 0 on the first chunk (m = -inf); with kMayBeEmpty a chunk with no valid position leaves
    // m at -inf and the state unchanged.
    const float corr = kMayBeEmpty && m_new == -INFINITY ? 1.0f : expf(m - m_new);
    const float e = valid ? expf(s - m_new) : 0.0f;
    l = l * corr + warp_sum(e);
    m = m_new;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] *= corr;
    return e;
}

// Merges the (m, l, acc) of a block's kWarps warps and writes out[d] = sum / l for d <
// head_dim (NaN everywhere when `poisoned`). Every thread of the block must call it; it
// synchronizes the block once. The shared arrays belong to the caller.
template <int kWarps, int kMaxHeadDim, int kPerLane, bool kMayBeEmpty>
__device__ __forceinline__ void merge_warps(float m, float l, const float (&acc)[kPerLane],
                                            float (&m_s)[kWarps], float (&l_s)[kWarps],
                                            float (&acc_s)[kWarps][kMaxHeadDim], int head_dim,
                                            bool poisoned, float *out) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    if (lane == 0) m_s[warp] = m, l_s[warp] = l;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + i * kWarp;
        if (d < head_dim) acc_s[warp][d] = acc[i];
    }
    __syncthreads();
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, m_s[w]);
    float l_all = 0.0f, f[kWarps];
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        // 0 for a warp that saw no position.
        f[w] = kMayBeEmpty && m_s[w] == -INFINITY ? 0.0f : expf(m_s[w] - m_all);
        l_all += l_s[w] * f[w];
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) v += acc_s[w][d] * f[w];
        out[d] = poisoned ? NAN : v / l_all;
    }
}

} // namespace strata
