// attention_split.cu — the "next" decode attention (STRATA_GPU_KERNELS=next): flash-decoding.
//
// The proven decode kernel (attention.cu) runs one block per query head, so a 7B decode step
// (32 heads) occupies 32 of an H100's 132 SMs and a 4k-token context is walked by 4 warps per
// head. Here the visible cache rows lo..n_kv are cut into splits of kSplitRows positions and
// each (kv head, split) is one block: every query head of the GQA group is scored against the
// block's K rows loaded once (query heads of a group share their K/V loads), with an online
// softmax per query head; the block writes each query head's partial (m, l, unnormalised acc)
// to a scratch buffer, and a second kernel combines the splits of each query head:
//   out = sum_s acc_s * exp(m_s - M) / sum_s l_s * exp(m_s - M),  M = max_s m_s.
// Same math as the proven kernel (f32 softmax, scores (q . k) * scale, the sliding window's
// first row lo = n_kv - window); only the order of the f32 sums differs.
//
// Layout as attention.cu: q and out [n_heads][head_dim] f32, caches [rows][n_kv_heads][head_dim]
// (f32 or f16), query head h reads kv head h / (n_heads / n_kv_heads). The partials are
// [n_heads][n_splits][head_dim + 2] f32 (acc, then m and l).
//
// The `_at` form (CUDA graphs of the decode step): the row count is read on the device from
// the query's position (n_kv = position[0] + 1, at most the cache's rows), so one captured
// launch serves every token; the grid is sized for the whole cache and blocks past the live
// splits exit at once. The launch itself never changes, only the device value.
//
// The kernels written while the switch exists keep their helpers here rather than share
// attention.cu's, so the proven kernels stay byte-for-byte what the last GPU run validated.
#include "attention_common.cuh"

using namespace strata;

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarp;
constexpr int64_t kSplitRows = 256;  // cache positions per block
constexpr int kMaxGroup = 8;         // most query heads of one kv head handled by one block

__host__ __device__ inline int64_t first_row(int64_t n_kv, int64_t window) {
    return window > 0 && n_kv > window ? n_kv - window : 0;
}

__host__ __device__ inline int64_t n_splits(int64_t n_kv, int64_t window) {
    return (n_kv - first_row(n_kv, window) + kSplitRows - 1) / kSplitRows;
}

// The rows a query at *position attends, within 1..=cache_rows (a position outside the cache,
// which the host never writes, reads the rows there are instead of past them).
__device__ inline int64_t live_rows(const int32_t *position, int64_t cache_rows) {
    const int64_t p = (int64_t)*position;
    return p < 0 ? 1 : min(p + 1, cache_rows);
}

// One block per (kv head, chunk of at most kG of its query heads, split). Each warp takes
// chunks of 32 positions of the split; lane l reads K row base + l once and scores it against
// every query head of the chunk (q in shared memory), then the warp accumulates V rows with
// lanes across head_dim. The four warps' (m, l, acc) are merged into the partials at the end.
// kG (1, 2, 4 or 8) is the group size rounded up to a power of two, so MHA models (group 1)
// do not pay for the GQA case's extra dot products.
template <typename C, int kMaxHeadDim, int kG>
__global__ void __launch_bounds__(kThreads)
    attention_split_partials(const float *q, const C *k_cache, const C *v_cache, int64_t n_heads,
                             int64_t n_kv_heads, int head_dim, int64_t n_kv, const int32_t *position,
                             float scale, int64_t window, float *part) {
    constexpr int kPerLane = kMaxHeadDim / kWarp;
    __shared__ float q_s[kG][kMaxHeadDim];
    __shared__ float acc_s[kWarps][kG][kMaxHeadDim];
    __shared__ float m_s[kWarps][kG], l_s[kWarps][kG];

    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    if (position) n_kv = live_rows(position, n_kv);
    const int64_t group = n_heads / n_kv_heads;
    const int64_t chunks_per_kv = (group + kG - 1) / kG;
    const int64_t splits = n_splits(n_kv, window);
    const int64_t lo = first_row(n_kv, window);
    const int64_t row_stride = n_kv_heads * head_dim;
    const int64_t items = n_kv_heads * chunks_per_kv * splits;

    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        const int64_t sp = item % splits;
        const int64_t kvh = item / splits / chunks_per_kv;
        const int64_t h0 = kvh * group + (item / splits % chunks_per_kv) * kG;
        const int ng = (int)min((int64_t)kG, kvh * group + group - h0);
        const int64_t begin = lo + sp * kSplitRows, end = min(begin + kSplitRows, n_kv);
        const C *k_head = k_cache + kvh * head_dim;
        const C *v_head = v_cache + kvh * head_dim;
        __syncthreads();  // the previous item's readers of q_s / acc_s are done
        // Rows of q_s past ng are zero so their (unused) scores stay finite.
        for (int i = threadIdx.x; i < kG * head_dim; i += blockDim.x)
            q_s[i / head_dim][i % head_dim] = i / head_dim < ng ? q[(h0 + i / head_dim) * head_dim + i % head_dim] : 0.0f;
        __syncthreads();

        float m[kG], l[kG], acc[kG][kPerLane];
#pragma unroll
        for (int g = 0; g < kG; ++g) {
            m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
            for (int i = 0; i < kPerLane; ++i) acc[g][i] = 0.0f;
        }
        for (int64_t base = begin + (int64_t)warp * kWarp; base < end; base += kWarps * kWarp) {
            const int64_t p = base + lane;
            const int n_here = (int)min((int64_t)kWarp, end - base);
            float dot[kG];
#pragma unroll
            for (int g = 0; g < kG; ++g) dot[g] = 0.0f;
            if (p < end) {
                const C *k = k_head + p * row_stride;
                for (int d = 0; d < head_dim; ++d) {
                    const float kv = cache_to_f32<C>(k[d]);
#pragma unroll
                    for (int g = 0; g < kG; ++g) dot[g] += q_s[g][d] * kv;
                }
            }
            float e[kG];
#pragma unroll
            for (int g = 0; g < kG; ++g) {
                const float s = p < end ? dot[g] * scale : -INFINITY;
                const float m_new = fmaxf(m[g], warp_max(s));
                const float corr = expf(m[g] - m_new);  // 0 on the first chunk (m = -inf)
                e[g] = p < end ? expf(s - m_new) : 0.0f;
                l[g] = l[g] * corr + warp_sum(e[g]);
                m[g] = m_new;
#pragma unroll
                for (int i = 0; i < kPerLane; ++i) acc[g][i] *= corr;
            }
            for (int j = 0; j < n_here; ++j) {
                const C *v_row = v_head + (base + j) * row_stride;
                float vv[kPerLane];
#pragma unroll
                for (int i = 0; i < kPerLane; ++i) {
                    const int d = lane + i * kWarp;
                    vv[i] = d < head_dim ? cache_to_f32<C>(v_row[d]) : 0.0f;
                }
#pragma unroll
                for (int g = 0; g < kG; ++g) {
                    const float pj = __shfl_sync(0xffffffffu, e[g], j);
#pragma unroll
                    for (int i = 0; i < kPerLane; ++i) acc[g][i] += pj * vv[i];
                }
            }
        }

        // Merge the warps' (m, l, acc) per query head into the partials.
#pragma unroll
        for (int g = 0; g < kG; ++g) {
            if (lane == 0) m_s[warp][g] = m[g], l_s[warp][g] = l[g];
#pragma unroll
            for (int i = 0; i < kPerLane; ++i) {
                const int d = lane + i * kWarp;
                if (d < head_dim) acc_s[warp][g][d] = acc[g][i];
            }
        }
        __syncthreads();
        for (int g = 0; g < ng; ++g) {
            float m_all = -INFINITY;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, m_s[w][g]);
            float l_all = 0.0f, f[kWarps];
#pragma unroll
            for (int w = 0; w < kWarps; ++w) {
                // A warp that saw no position has m = -inf: weight 0 (and never NaN, since
                // every split holds at least one row, so m_all is finite).
                f[w] = expf(m_s[w][g] - m_all);
                l_all += l_s[w][g] * f[w];
            }
            float *dst = part + ((h0 + g) * splits + sp) * (head_dim + 2);
            for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
                float v = 0.0f;
#pragma unroll
                for (int w = 0; w < kWarps; ++w) v += acc_s[w][g][d] * f[w];
                dst[d] = v;
            }
            if (threadIdx.x == 0) dst[head_dim] = m_all, dst[head_dim + 1] = l_all;
        }
    }
}

// One block per query head: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
__global__ void __launch_bounds__(kThreads)
    attention_split_combine(const float *part, int64_t n_heads, int head_dim, int64_t n_kv,
                            const int32_t *position, int64_t window, float *out) {
    const int64_t splits = n_splits(position ? live_rows(position, n_kv) : n_kv, window);
    for (int64_t h = blockIdx.x; h < n_heads; h += gridDim.x) {
        const float *ph = part + h * splits * (head_dim + 2);
        float m_all = -INFINITY;
        for (int64_t s = 0; s < splits; ++s) m_all = fmaxf(m_all, ph[s * (head_dim + 2) + head_dim]);
        float l_all = 0.0f;
        for (int64_t s = 0; s < splits; ++s) {
            const float *p = ph + s * (head_dim + 2);
            l_all += p[head_dim + 1] * expf(p[head_dim] - m_all);
        }
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            float v = 0.0f;
            for (int64_t s = 0; s < splits; ++s) {
                const float *p = ph + s * (head_dim + 2);
                v += p[d] * expf(p[head_dim] - m_all);
            }
            out[h * head_dim + d] = v / l_all;
        }
    }
}

template <typename C, int kG>
void launch_partials(unsigned grid, const float *q, const C *k, const C *v, int64_t n_heads, int64_t n_kv_heads,
                     int64_t head_dim, int64_t n_kv, const int32_t *pos, float scale, int64_t window, float *part,
                     cudaStream_t stream) {
    const int hd = (int)head_dim;
    if (head_dim <= 64)
        attention_split_partials<C, 64, kG>
            <<<grid, kThreads, 0, stream>>>(q, k, v, n_heads, n_kv_heads, hd, n_kv, pos, scale, window, part);
    else if (head_dim <= 128)
        attention_split_partials<C, 128, kG>
            <<<grid, kThreads, 0, stream>>>(q, k, v, n_heads, n_kv_heads, hd, n_kv, pos, scale, window, part);
    else
        attention_split_partials<C, 256, kG>
            <<<grid, kThreads, 0, stream>>>(q, k, v, n_heads, n_kv_heads, hd, n_kv, pos, scale, window, part);
}

template <typename C>
strata_status launch_split(const float *q, const void *k_cache, const void *v_cache, int64_t n_heads,
                           int64_t n_kv_heads, int64_t head_dim, int64_t n_kv, const int32_t *pos, float scale,
                           int64_t window, float *part, float *out, cudaStream_t stream) {
    // With `pos`, n_kv is the cache's rows: the grid covers every split the cache can have.
    const int64_t group = n_heads / n_kv_heads;
    int g = 1;  // the group size rounded up to a power of two, at most kMaxGroup
    while (g < group && g < kMaxGroup) g *= 2;
    const int64_t items = n_kv_heads * ((group + g - 1) / g) * n_splits(n_kv, window);
    const C *k = static_cast<const C *>(k_cache);
    const C *v = static_cast<const C *>(v_cache);
    const unsigned grid = grid_for(items, 1);
    switch (g) {
    case 1: launch_partials<C, 1>(grid, q, k, v, n_heads, n_kv_heads, head_dim, n_kv, pos, scale, window, part, stream); break;
    case 2: launch_partials<C, 2>(grid, q, k, v, n_heads, n_kv_heads, head_dim, n_kv, pos, scale, window, part, stream); break;
    case 4: launch_partials<C, 4>(grid, q, k, v, n_heads, n_kv_heads, head_dim, n_kv, pos, scale, window, part, stream); break;
    default: launch_partials<C, 8>(grid, q, k, v, n_heads, n_kv_heads, head_dim, n_kv, pos, scale, window, part, stream); break;
    }
    const strata_status st = launch_status();
    if (st != STRATA_OK) return st;
    attention_split_combine<<<grid_for(n_heads, 1), kThreads, 0, stream>>>(part, n_heads, (int)head_dim, n_kv, pos,
                                                                           window, out);
    return launch_status();
}

}  // namespace

extern "C" int64_t strata_attention_split_bytes(int64_t n_heads, int64_t head_dim, int64_t n_kv, int64_t window) {
    if (n_heads < 0 || head_dim <= 0 || n_kv < 1 || window < 0) return -1;
    return n_heads * n_splits(n_kv, window) * (head_dim + 2) * (int64_t)sizeof(float);
}

extern "C" strata_status strata_attention_decode_split_f32(const float *q, strata_dtype cache_dtype,
                                                           const void *k_cache, const void *v_cache, int64_t n_heads,
                                                           int64_t n_kv_heads, int64_t head_dim, int64_t n_kv,
                                                           float scale, int64_t window, void *scratch, float *out,
                                                           cudaStream_t stream) {
    STRATA_CHECK_ARG(cache_dtype == STRATA_DTYPE_F32 || cache_dtype == STRATA_DTYPE_F16);
    STRATA_CHECK_ARG(n_heads >= 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    STRATA_CHECK_ARG(head_dim > 0 && head_dim <= 256 && n_kv >= 1 && window >= 0);
    if (n_heads == 0) return STRATA_OK;
    STRATA_CHECK_ARG(q && k_cache && v_cache && scratch && out);
    float *part = static_cast<float *>(scratch);
    if (cache_dtype == STRATA_DTYPE_F16)
        return launch_split<__half>(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, n_kv, nullptr, scale, window,
                                    part, out, stream);
    return launch_split<float>(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, n_kv, nullptr, scale, window, part,
                               out, stream);
}

extern "C" strata_status strata_attention_decode_split_at_f32(const float *q, strata_dtype cache_dtype,
                                                              const void *k_cache, const void *v_cache,
                                                              int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                                              const int32_t *position, int64_t cache_rows, float scale,
                                                              int64_t window, void *scratch, float *out,
                                                              cudaStream_t stream) {
    STRATA_CHECK_ARG(cache_dtype == STRATA_DTYPE_F32 || cache_dtype == STRATA_DTYPE_F16);
    STRATA_CHECK_ARG(n_heads >= 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    STRATA_CHECK_ARG(head_dim > 0 && head_dim <= 256 && cache_rows >= 1 && window >= 0);
    if (n_heads == 0) return STRATA_OK;
    STRATA_CHECK_ARG(q && k_cache && v_cache && position && scratch && out);
    float *part = static_cast<float *>(scratch);
    if (cache_dtype == STRATA_DTYPE_F16)
        return launch_split<__half>(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, cache_rows, position, scale,
                                    window, part, out, stream);
    return launch_split<float>(q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, cache_rows, position, scale, window,
                               part, out, stream);
}
