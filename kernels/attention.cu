// attention.cu — causal grouped-query attention over an f16 or f32 KV cache.
//
// Layout: q and out are [n_tokens][n_heads][head_dim] f32; the caches are
// [cache_rows][n_kv_heads][head_dim]; query head h reads kv head h / (n_heads / n_kv_heads).
// Token t (at position pos0 + t) attends cache rows 0..=pos0+t; decode is one token with
// pos0 = n_kv - 1. With a sliding window w > 0 (0: none) the query at position p attends only
// rows p+1-w..=p (llama.cpp's standard window: a key k is masked when p - k >= w); the rows
// before are not read.
//
// One 128-thread block per (token, head). Each warp walks chunks of 32 cache positions: lane l
// scores position base+l against q (held in shared memory, read as a broadcast), the warp
// keeps an online softmax (running max m, running sum l), and accumulates V rows with lanes
// across head_dim (coalesced reads). The four warps' partial results are merged at the end.
// Softmax is f32 throughout; scores are (q . k) * scale.
//
// Bytes moved per (token, head): 2 * n_seen * head_dim * sizeof(cache element) of K and V,
// n_seen = min(n_kv, window)
// (query heads of one group re-read the same rows, mostly from L2). Decode is memory-bound
// on the cache; prefill re-reads K/V per token from L2 ("correct first": no tiling yet).
#include "attention_common.cuh"

using namespace strata;

static constexpr int kWarps = 4;
static constexpr int kThreads = kWarps * kWarp;

// q . k for one cache row `k` of head_dim values, q in shared memory.
template <typename C, bool kVec>
static __device__ __forceinline__ float dot_row(const float *q_s, const C *k, int head_dim) {
    float s = 0.0f;
    if (kVec) {
        constexpr int kPer = 16 / sizeof(C);  // values per 16-byte load
        for (int d = 0; d < head_dim; d += kPer) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(k + d);
            const C *v = reinterpret_cast<const C *>(&raw);
#pragma unroll
            for (int j = 0; j < kPer; ++j) s += q_s[d + j] * cache_to_f32<C>(v[j]);
        }
    } else {
        for (int d = 0; d < head_dim; ++d) s += q_s[d] * cache_to_f32<C>(k[d]);
    }
    return s;
}

template <typename C, int kMaxHeadDim, bool kVec>
static __device__ __forceinline__ void attention_body(const float *q, int64_t n_tokens,
                                                      int64_t pos0, const C *k_cache,
                                                      const C *v_cache, int64_t n_heads,
                                                      int64_t n_kv_heads, int head_dim,
                                                      float scale, int64_t window, float *out) {
    constexpr int kPerLane = kMaxHeadDim / kWarp;
    __shared__ float q_s[kMaxHeadDim];
    __shared__ float acc_s[kWarps][kMaxHeadDim];
    __shared__ float m_s[kWarps], l_s[kWarps];

    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t group = n_heads / n_kv_heads;
    const int64_t row_stride = n_kv_heads * head_dim;

    for (int64_t item = blockIdx.x; item < n_tokens * n_heads; item += gridDim.x) {
        const int64_t t = item / n_heads, h = item % n_heads;
        const int64_t n_kv = pos0 + t + 1;
        const int64_t lo = window > 0 && n_kv > window ? n_kv - window : 0;  // first row seen
        const C *k_head = k_cache + (h / group) * head_dim;
        const C *v_head = v_cache + (h / group) * head_dim;
        __syncthreads();  // the previous item's readers of q_s / acc_s are done
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_s[d] = q[item * head_dim + d];
        __syncthreads();

        float m = -INFINITY, l = 0.0f, acc[kPerLane];
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;

        for (int64_t base = lo + (int64_t)warp * kWarp; base < n_kv; base += kWarps * kWarp) {
            const int64_t p = base + lane;
            const float s = p < n_kv ? dot_row<C, kVec>(q_s, k_head + p * row_stride, head_dim) * scale
                                     : -INFINITY;
            const float e = softmax_step<kPerLane, false>(s, p < n_kv, m, l, acc);
            const int n_here = (int)min((int64_t)kWarp, n_kv - base);
            for (int j = 0; j < n_here; ++j) {
                const float pj = __shfl_sync(0xffffffffu, e, j);
                const C *v_row = v_head + (base + j) * row_stride;
#pragma unroll
                for (int i = 0; i < kPerLane; ++i) {
                    const int d = lane + i * kWarp;
                    if (d < head_dim) acc[i] += pj * cache_to_f32<C>(v_row[d]);
                }
            }
        }

        merge_warps<kWarps, kMaxHeadDim, kPerLane, false>(m, l, acc, m_s, l_s, acc_s, head_dim, false,
                                                           out + item * head_dim);
    }
}

// Kernel names say decode/prefill, the cache type, and (template argument) the largest head
// dimension the instance handles.
#define STRATA_ATTENTION_KERNEL(name, C)                                                       \
    template <int kMaxHeadDim, bool kVec>                                                      \
    static __global__ void __launch_bounds__(kThreads)                                         \
        name(const float *q, int64_t n_tokens, int64_t pos0, const C *k_cache,                 \
             const C *v_cache, int64_t n_heads, int64_t n_kv_heads, int head_dim, float scale, \
             int64_t window, float *out) {                                                     \
        attention_body<C, kMaxHeadDim, kVec>(q, n_tokens, pos0, k_cache, v_cache, n_heads,     \
                                             n_kv_heads, head_dim, scale, window, out);        \
    }

STRATA_ATTENTION_KERNEL(strata_attention_decode_f32_f32kv, float)
STRATA_ATTENTION_KERNEL(strata_attention_decode_f32_f16kv, __half)
STRATA_ATTENTION_KERNEL(strata_attention_prefill_f32_f32kv, float)
STRATA_ATTENTION_KERNEL(strata_attention_prefill_f32_f16kv, __half)

template <typename C>
using AttentionKernel = void (*)(const float *, int64_t, int64_t, const C *, const C *, int64_t,
                                 int64_t, int, float, int64_t, float *);

// Picks the instance for head_dim (64, 128 or 256 at most; vector loads when rows are
// 16-byte aligned) and launches one block per (token, head).
template <typename C, template <int, bool> class Pick>
static strata_status launch_attention(const float *q, int64_t n_tokens, int64_t pos0,
                                      const void *k_cache, const void *v_cache, int64_t n_heads,
                                      int64_t n_kv_heads, int64_t head_dim, float scale,
                                      int64_t window, float *out, cudaStream_t stream) {
    const bool vec = head_dim % (16 / sizeof(C)) == 0 && ((uintptr_t)k_cache % 16) == 0;
    AttentionKernel<C> k;
    if (head_dim <= 64) k = vec ? Pick<64, true>::get() : Pick<64, false>::get();
    else if (head_dim <= 128) k = vec ? Pick<128, true>::get() : Pick<128, false>::get();
    else k = vec ? Pick<256, true>::get() : Pick<256, false>::get();
    k<<<grid_for(n_tokens * n_heads, 1), kThreads, 0, stream>>>(
        q, n_tokens, pos0, static_cast<const C *>(k_cache), static_cast<const C *>(v_cache),
        n_heads, n_kv_heads, (int)head_dim, scale, window, out);
    return launch_status();
}

// Template-template adaptors naming each kernel family.
#define STRATA_PICK(pick, kernel, C)                                                           \
    template <int kMaxHeadDim, bool kVec>                                                      \
    struct pick {                                                                              \
        static AttentionKernel<C> get() { return kernel<kMaxHeadDim, kVec>; }                  \
    };
STRATA_PICK(PickDecodeF32, strata_attention_decode_f32_f32kv, float)
STRATA_PICK(PickDecodeF16, strata_attention_decode_f32_f16kv, __half)
STRATA_PICK(PickPrefillF32, strata_attention_prefill_f32_f32kv, float)
STRATA_PICK(PickPrefillF16, strata_attention_prefill_f32_f16kv, __half)

extern "C" strata_status strata_attention_decode_f32(const float *q, strata_dtype cache_dtype,
                                                     const void *k_cache, const void *v_cache,
                                                     int64_t n_heads, int64_t n_kv_heads,
                                                     int64_t head_dim, int64_t n_kv,
                                                     float scale, int64_t window, float *out,
                                                     cudaStream_t stream) {
    STRATA_CHECK_ARG(attention_args_ok(cache_dtype, n_heads, n_kv_heads, head_dim));
    STRATA_CHECK_ARG(n_kv >= 1 && window >= 0);
    if (n_heads == 0) return STRATA_OK;
    STRATA_CHECK_ARG(q && k_cache && v_cache && out);
    if (cache_dtype == STRATA_DTYPE_F16)
        return launch_attention<__half, PickDecodeF16>(q, 1, n_kv - 1, k_cache, v_cache, n_heads,
                                                       n_kv_heads, head_dim, scale, window, out,
                                                       stream);
    return launch_attention<float, PickDecodeF32>(q, 1, n_kv - 1, k_cache, v_cache, n_heads,
                                                  n_kv_heads, head_dim, scale, window, out,
                                                  stream);
}

// The prefill family of each cache element type.
template <typename C>
struct PickPrefill;
template <>
struct PickPrefill<float> {
    template <int kMaxHeadDim, bool kVec>
    using Of = PickPrefillF32<kMaxHeadDim, kVec>;
};
template <>
struct PickPrefill<__half> {
    template <int kMaxHeadDim, bool kVec>
    using Of = PickPrefillF16<kMaxHeadDim, kVec>;
};

extern "C" strata_status strata_attention_prefill_f32(const float *q, int64_t n_tokens,
                                                      int64_t pos0, strata_dtype cache_dtype,
                                                      const void *k_cache, const void *v_cache,
                                                      int64_t n_heads, int64_t n_kv_heads,
                                                      int64_t head_dim, float scale,
                                                      int64_t window, float *out,
                                                      cudaStream_t stream) {
    return checked_prefill(q, n_tokens, pos0, cache_dtype, k_cache, v_cache, n_heads, n_kv_heads,
                           head_dim, window, out, [&](auto tag) {
                               using C = decltype(tag);
                               return launch_attention<C, PickPrefill<C>::template Of>(
                                   q, n_tokens, pos0, k_cache, v_cache, n_heads, n_kv_heads,
                                   head_dim, scale, window, out, stream);
                           });
}
