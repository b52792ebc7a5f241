// attention_tiled.cu — prefill attention in tiles (the `next` kernel set, STRATA_GPU_KERNELS=next).
//
// Same contract as strata_attention_prefill_f32 (attention.cu): q and out are
// [n_tokens][n_heads][head_dim] f32, the caches [cache_rows][n_kv_heads][head_dim] of f32 or
// f16, token t at position pos0 + t attends rows 0..=pos0+t, or with a sliding window w > 0
// only rows p+1-w..=p.
//
// Why: the proven kernel runs one block per (token, head), so a prompt of T tokens reads each
// cached K/V row of a head up to T times (from L2 at best). Here one 128-thread block takes a
// tile of kQ = 16 consecutive tokens of one head and walks the cache range those tokens see in
// tiles of 32 rows: the block loads a K/V tile into shared memory once (as f32) and all 16
// queries use it, so global/L2 traffic drops by about 16x. Each warp owns 4 of the queries:
// lane l scores row base+l against each of them (q rows broadcast from shared memory, the K
// tile padded by one float per row so the 32 lanes hit 32 banks), keeps one online softmax per
// query (attention_common.cuh's softmax_step, with empty chunks allowed: a tile can lie past a
// query's position or before its window), and accumulates V with lanes across head_dim.
// No cross-warp merge: every warp walks the whole range for its own queries.
//
// Scores are (q . k) * scale with the dot summed in head_dim order in f32, as in attention.cu;
// results match the proven kernel up to f32 rounding (the CPU reference's tolerance).
//
// Shared memory: (kQ + 2 * 32) * head_dim floats (+32 of padding): 41 KiB at head_dim 128,
// 82 KiB at 256 (dynamic, above the 48 KiB default: the launcher raises the kernel's limit).
#include "attention_common.cuh"

using namespace strata;

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarp;
constexpr int kQ = 16;                  // queries (tokens of one head) per block
constexpr int kQPerWarp = kQ / kWarps;  // queries per warp
constexpr int kKV = kWarp;              // cache rows per tile: one per lane

template <int kMaxHeadDim>
constexpr size_t smem_bytes() {
    return sizeof(float) * (kQ * kMaxHeadDim + kKV * (kMaxHeadDim + 1) + kKV * kMaxHeadDim);
}

template <typename C, int kMaxHeadDim>
__device__ __forceinline__ void attention_tiled_body(const float *q, int64_t n_tokens,
                                                     int64_t pos0, const C *k_cache,
                                                     const C *v_cache, int64_t n_heads,
                                                     int64_t n_kv_heads, int head_dim,
                                                     float scale, int64_t window, float *out) {
    constexpr int kPerLane = kMaxHeadDim / kWarp;
    constexpr int kKStride = kMaxHeadDim + 1;  // the pad puts lane l's row on bank l
    extern __shared__ float smem[];
    float *q_s = smem;                           // [kQ][kMaxHeadDim]
    float *k_s = q_s + kQ * kMaxHeadDim;         // [kKV][kKStride]
    float *v_s = k_s + kKV * kKStride;           // [kKV][kMaxHeadDim]

    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t group = n_heads / n_kv_heads;
    const int64_t row_stride = n_kv_heads * head_dim;
    const int64_t n_tiles = (n_tokens + kQ - 1) / kQ;

    for (int64_t item = blockIdx.x; item < n_tiles * n_heads; item += gridDim.x) {
        const int64_t tile = item / n_heads, h = item % n_heads;
        const int64_t t0 = tile * kQ;
        const int n_q = (int)min((int64_t)kQ, n_tokens - t0);
        // The rows any query of the tile sees: from the first query's window start to the
        // last query's position.
        const int64_t lo = first_visible_row(pos0 + t0, window), hi = pos0 + t0 + n_q;
        const C *k_head = k_cache + (h / group) * head_dim;
        const C *v_head = v_cache + (h / group) * head_dim;

        __syncthreads();  // the previous item's readers of q_s are done
        for (int i = threadIdx.x; i < kQ * head_dim; i += blockDim.x) {
            const int qi = i / head_dim, d = i % head_dim;
            q_s[qi * kMaxHeadDim + d] = qi < n_q ? q[((t0 + qi) * n_heads + h) * head_dim + d] : 0.0f;
        }

        float m[kQPerWarp], l[kQPerWarp], acc[kQPerWarp][kPerLane];
#pragma unroll
        for (int qq = 0; qq < kQPerWarp; ++qq) {
            m[qq] = -INFINITY, l[qq] = 0.0f;
#pragma unroll
            for (int i = 0; i < kPerLane; ++i) acc[qq][i] = 0.0f;
        }

        for (int64_t base = lo; base < hi; base += kKV) {
            __syncthreads();  // q_s is written; the previous tile's readers of k_s/v_s are done
            for (int i = threadIdx.x; i < kKV * head_dim; i += blockDim.x) {
                const int j = i / head_dim, d = i % head_dim;
                const int64_t p = base + j;
                const bool in = p < hi;
                k_s[j * kKStride + d] = in ? cache_to_f32<C>(k_head[p * row_stride + d]) : 0.0f;
                v_s[j * kMaxHeadDim + d] = in ? cache_to_f32<C>(v_head[p * row_stride + d]) : 0.0f;
            }
            __syncthreads();

            const int64_t p = base + lane;
            float e[kQPerWarp];
#pragma unroll
            for (int qq = 0; qq < kQPerWarp; ++qq) {
                const int qi = warp * kQPerWarp + qq;
                const int64_t pq = pos0 + t0 + qi;
                const bool valid = qi < n_q && p <= pq && p >= first_visible_row(pq, window);
                const float *qrow = q_s + qi * kMaxHeadDim;
                const float *krow = k_s + lane * kKStride;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d) dot += qrow[d] * krow[d];
                e[qq] = softmax_step<kPerLane, true>(valid ? dot * scale : -INFINITY, valid, m[qq],
                                                     l[qq], acc[qq]);
            }
            for (int j = 0; j < kKV; ++j) {
                float vv[kPerLane];
#pragma unroll
                for (int i = 0; i < kPerLane; ++i) {
                    const int d = lane + i * kWarp;
                    vv[i] = d < head_dim ? v_s[j * kMaxHeadDim + d] : 0.0f;
                }
#pragma unroll
                for (int qq = 0; qq < kQPerWarp; ++qq) {
                    const float pj = __shfl_sync(0xffffffffu, e[qq], j);
#pragma unroll
                    for (int i = 0; i < kPerLane; ++i) acc[qq][i] += pj * vv[i];
                }
            }
        }

#pragma unroll
        for (int qq = 0; qq < kQPerWarp; ++qq) {
            const int qi = warp * kQPerWarp + qq;
            if (qi >= n_q) continue;  // every valid query saw its own row, so l > 0
            float *o = out + ((t0 + qi) * n_heads + h) * head_dim;
#pragma unroll
            for (int i = 0; i < kPerLane; ++i) {
                const int d = lane + i * kWarp;
                if (d < head_dim) o[d] = acc[qq][i] / l[qq];
            }
        }
    }
}

} // namespace

// Kernel names say prefill, tiled, the cache type, and (template argument) the largest head
// dimension the instance handles.
#define STRATA_ATTENTION_TILED_KERNEL(name, C)                                                 \
    template <int kMaxHeadDim>                                                                 \
    static __global__ void __launch_bounds__(kThreads)                                         \
        name(const float *q, int64_t n_tokens, int64_t pos0, const C *k_cache,                 \
             const C *v_cache, int64_t n_heads, int64_t n_kv_heads, int head_dim, float scale, \
             int64_t window, float *out) {                                                     \
        attention_tiled_body<C, kMaxHeadDim>(q, n_tokens, pos0, k_cache, v_cache, n_heads,     \
                                             n_kv_heads, head_dim, scale, window, out);        \
    }

STRATA_ATTENTION_TILED_KERNEL(strata_attention_prefill_tiled_f32_f32kv, float)
STRATA_ATTENTION_TILED_KERNEL(strata_attention_prefill_tiled_f32_f16kv, __half)

template <typename C>
using TiledKernel = void (*)(const float *, int64_t, int64_t, const C *, const C *, int64_t,
                             int64_t, int, float, int64_t, float *);

// The tiled family of each cache element type.
template <typename C>
struct Tiled;
template <>
struct Tiled<float> {
    template <int kMaxHeadDim>
    static TiledKernel<float> get() { return strata_attention_prefill_tiled_f32_f32kv<kMaxHeadDim>; }
};
template <>
struct Tiled<__half> {
    template <int kMaxHeadDim>
    static TiledKernel<__half> get() { return strata_attention_prefill_tiled_f32_f16kv<kMaxHeadDim>; }
};

template <typename C, int kMaxHeadDim>
static strata_status launch_tiled(const float *q, int64_t n_tokens, int64_t pos0,
                                  const void *k_cache, const void *v_cache, int64_t n_heads,
                                  int64_t n_kv_heads, int64_t head_dim, float scale,
                                  int64_t window, float *out, cudaStream_t stream) {
    const TiledKernel<C> k = Tiled<C>::template get<kMaxHeadDim>();
    constexpr size_t smem = smem_bytes<kMaxHeadDim>();
    if (smem > 48 * 1024) {
        const cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void *>(k),
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   (int)smem);
        if (e != cudaSuccess) return (strata_status)e;
    }
    const int64_t items = ((n_tokens + kQ - 1) / kQ) * n_heads;
    k<<<grid_for(items, 1), kThreads, smem, stream>>>(
        q, n_tokens, pos0, static_cast<const C *>(k_cache), static_cast<const C *>(v_cache),
        n_heads, n_kv_heads, (int)head_dim, scale, window, out);
    return launch_status();
}

// Picks the instance for head_dim (64, 128 or 256 at most).
template <typename C>
static strata_status launch_for_head_dim(const float *q, int64_t n_tokens, int64_t pos0,
                                         const void *k_cache, const void *v_cache,
                                         int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                         float scale, int64_t window, float *out,
                                         cudaStream_t stream) {
    if (head_dim <= 64)
        return launch_tiled<C, 64>(q, n_tokens, pos0, k_cache, v_cache, n_heads,
                                   n_kv_heads, head_dim, scale, window, out, stream);
    if (head_dim <= 128)
        return launch_tiled<C, 128>(q, n_tokens, pos0, k_cache, v_cache, n_heads,
                                    n_kv_heads, head_dim, scale, window, out, stream);
    return launch_tiled<C, 256>(q, n_tokens, pos0, k_cache, v_cache, n_heads,
                                n_kv_heads, head_dim, scale, window, out, stream);
}

extern "C" strata_status strata_attention_prefill_tiled_f32(const float *q, int64_t n_tokens,
                                                            int64_t pos0,
                                                            strata_dtype cache_dtype,
                                                            const void *k_cache,
                                                            const void *v_cache,
                                                            int64_t n_heads, int64_t n_kv_heads,
                                                            int64_t head_dim, float scale,
                                                            int64_t window, float *out,
                                                            cudaStream_t stream) {
    return checked_prefill(q, n_tokens, pos0, cache_dtype, k_cache, v_cache, n_heads, n_kv_heads,
                           head_dim, window, out, [&](auto tag) {
                               using C = decltype(tag);
                               return launch_for_head_dim<C>(q, n_tokens, pos0, k_cache, v_cache,
                                                             n_heads, n_kv_heads, head_dim, scale,
                                                             window, out, stream);
                           });
}
