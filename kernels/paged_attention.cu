// paged_attention.cu — causal grouped-query attention for a batch of sequences of different
// lengths over a paged KV cache (one continuous-batching pass).
//
// Layout: q and out are [n_rows][n_heads][head_dim] f32. The caches are one pool of
// [cache_rows][n_kv_heads][head_dim] (f32 or f16) cut into blocks of block_size rows. Row r is
// the query at logical position positions[r] of a sequence whose block table starts at
// tables[table_start[r]]; its logical position p lives in cache row
// tables[table_start[r] + p / block_size] * block_size + p % block_size. Query head h reads kv
// head h / (n_heads / n_kv_heads). With a window w > 0 the query at p sees only p+1-w..=p.
//
// One 128-thread block per (row, head), the structure of attention.cu: each warp walks chunks
// of 32 positions (lane l scores position base+l through the block table, q in shared memory),
// keeps an online softmax and accumulates V rows with lanes across head_dim; the four warps
// are merged at the end. A table entry or block outside the tables or the cache (which the
// host cannot check without a synchronize) makes that row's output NaN instead of reading out
// of bounds; the CPU reference returns an error for it.
//
// Bytes moved per (row, head): 2 * n_seen * head_dim * sizeof(cache element) of K and V plus
// n_seen / block_size table entries, n_seen = min(positions[r] + 1, window). Decode rows are
// memory-bound on the cache like attention_decode; the query heads of a group re-read the same
// rows, mostly from L2.
#include "attention_common.cuh"

using namespace strata;

static constexpr int kWarps = 4;
static constexpr int kThreads = kWarps * kWarp;

// The cache row of logical position p of a row whose table starts at `table`, or -1 when the
// table entry or the block is out of range.
static __device__ __forceinline__ int64_t paged_row(const int32_t *tables, int64_t n_table,
                                                    int64_t start, int64_t p, int64_t block_size,
                                                    int64_t cache_rows) {
    const int64_t t = start + p / block_size;
    if (t < 0 || t >= n_table) return -1;
    const int64_t b = tables[t];
    const int64_t row = b * block_size + p % block_size;
    return b < 0 || (b + 1) * block_size > cache_rows ? -1 : row;
}

template <typename C, int kMaxHeadDim>
static __device__ __forceinline__ void paged_attention_body(
    const float *q, int64_t n_rows, const int32_t *positions, const int32_t *table_start,
    const int32_t *tables, int64_t n_table, int64_t block_size, const C *k_cache,
    const C *v_cache, int64_t cache_rows, int64_t n_heads, int64_t n_kv_heads, int head_dim,
    float scale, int64_t window, float *out) {
    constexpr int kPerLane = kMaxHeadDim / kWarp;
    __shared__ float q_s[kMaxHeadDim];
    __shared__ float acc_s[kWarps][kMaxHeadDim];
    __shared__ float m_s[kWarps], l_s[kWarps];
    __shared__ int bad_s;

    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int64_t group = n_heads / n_kv_heads;
    const int64_t row_stride = n_kv_heads * head_dim;

    for (int64_t item = blockIdx.x; item < n_rows * n_heads; item += gridDim.x) {
        const int64_t r = item / n_heads, h = item % n_heads;
        const int64_t pos = positions[r], start = table_start[r];
        const int64_t n_kv = pos + 1;
        const int64_t lo = window > 0 && n_kv > window ? n_kv - window : 0;
        const C *k_head = k_cache + (h / group) * head_dim;
        const C *v_head = v_cache + (h / group) * head_dim;
        __syncthreads();  // the previous item's readers of q_s / acc_s / bad_s are done
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_s[d] = q[item * head_dim + d];
        if (threadIdx.x == 0) bad_s = pos < 0;
        __syncthreads();

        float m = -INFINITY, l = 0.0f, acc[kPerLane];
        bool bad = false;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) acc[i] = 0.0f;

        for (int64_t base = lo + (int64_t)warp * kWarp; base < n_kv; base += kWarps * kWarp) {
            const int64_t p = base + lane;
            const int64_t cr = p < n_kv ? paged_row(tables, n_table, start, p, block_size, cache_rows) : -1;
            bad |= p < n_kv && cr < 0;
            float s = -INFINITY;
            if (cr >= 0) {
                const C *k = k_head + cr * row_stride;
                s = 0.0f;
                for (int d = 0; d < head_dim; ++d) s += q_s[d] * cache_to_f32<C>(k[d]);
                s *= scale;
            }
            const float e = softmax_step<kPerLane, true>(s, cr >= 0, m, l, acc);
            const int n_here = (int)min((int64_t)kWarp, n_kv - base);
            for (int j = 0; j < n_here; ++j) {
                const float pj = __shfl_sync(0xffffffffu, e, j);
                const int64_t crj = __shfl_sync(0xffffffffu, cr, j);
                if (crj < 0) continue;
                const C *v_row = v_head + crj * row_stride;
#pragma unroll
                for (int i = 0; i < kPerLane; ++i) {
                    const int d = lane + i * kWarp;
                    if (d < head_dim) acc[i] += pj * cache_to_f32<C>(v_row[d]);
                }
            }
        }
        if (bad) atomicOr(&bad_s, 1);

        merge_warps<kWarps, kMaxHeadDim, kPerLane, true>(m, l, acc, m_s, l_s, acc_s, head_dim, bad_s != 0,
                                                          out + item * head_dim);
    }
}

// Kernel names say the op, the cache type and (template argument) the largest head dimension.
#define STRATA_PAGED_ATTENTION_KERNEL(name, C)                                                 \
    template <int kMaxHeadDim>                                                                 \
    static __global__ void __launch_bounds__(kThreads)                                         \
        name(const float *q, int64_t n_rows, const int32_t *positions,                         \
             const int32_t *table_start, const int32_t *tables, int64_t n_table,               \
             int64_t block_size, const C *k_cache, const C *v_cache, int64_t cache_rows,       \
             int64_t n_heads, int64_t n_kv_heads, int head_dim, float scale, int64_t window,   \
             float *out) {                                                                     \
        paged_attention_body<C, kMaxHeadDim>(q, n_rows, positions, table_start, tables,        \
                                             n_table, block_size, k_cache, v_cache,            \
                                             cache_rows, n_heads, n_kv_heads, head_dim, scale, \
                                             window, out);                                     \
    }

STRATA_PAGED_ATTENTION_KERNEL(strata_paged_attention_f32_f32kv, float)
STRATA_PAGED_ATTENTION_KERNEL(strata_paged_attention_f32_f16kv, __half)

template <typename C>
using PagedKernel = void (*)(const float *, int64_t, const int32_t *, const int32_t *,
                             const int32_t *, int64_t, int64_t, const C *, const C *, int64_t,
                             int64_t, int64_t, int, float, int64_t, float *);

template <typename C>
static strata_status launch_paged(PagedKernel<C> k64, PagedKernel<C> k128, PagedKernel<C> k256,
                                  const float *q, int64_t n_rows, const int32_t *positions,
                                  const int32_t *table_start, const int32_t *tables,
                                  int64_t n_table, int64_t block_size, const void *k_cache,
                                  const void *v_cache, int64_t cache_rows, int64_t n_heads,
                                  int64_t n_kv_heads, int64_t head_dim, float scale,
                                  int64_t window, float *out, cudaStream_t stream) {
    const PagedKernel<C> k = head_dim <= 64 ? k64 : head_dim <= 128 ? k128 : k256;
    k<<<grid_for(n_rows * n_heads, 1), kThreads, 0, stream>>>(
        q, n_rows, positions, table_start, tables, n_table, block_size,
        static_cast<const C *>(k_cache), static_cast<const C *>(v_cache), cache_rows, n_heads,
        n_kv_heads, (int)head_dim, scale, window, out);
    return launch_status();
}

extern "C" strata_status strata_paged_attention_f32(
    const float *q, int64_t n_rows, const int32_t *positions, const int32_t *table_start,
    const int32_t *tables, int64_t n_table, int64_t block_size, strata_dtype cache_dtype,
    const void *k_cache, const void *v_cache, int64_t cache_rows, int64_t n_heads,
    int64_t n_kv_heads, int64_t head_dim, float scale, int64_t window, float *out,
    cudaStream_t stream) {
    STRATA_CHECK_ARG(cache_dtype == STRATA_DTYPE_F32 || cache_dtype == STRATA_DTYPE_F16);
    STRATA_CHECK_ARG(n_rows >= 0 && n_heads >= 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    STRATA_CHECK_ARG(head_dim > 0 && head_dim <= 256 && block_size > 0 && n_table >= 0);
    STRATA_CHECK_ARG(cache_rows >= 0 && window >= 0);
    if (n_rows == 0 || n_heads == 0) return STRATA_OK;
    STRATA_CHECK_ARG(q && positions && table_start && tables && k_cache && v_cache && out);
    if (cache_dtype == STRATA_DTYPE_F16)
        return launch_paged<__half>(strata_paged_attention_f32_f16kv<64>,
                                    strata_paged_attention_f32_f16kv<128>,
                                    strata_paged_attention_f32_f16kv<256>, q, n_rows, positions,
                                    table_start, tables, n_table, block_size, k_cache, v_cache,
                                    cache_rows, n_heads, n_kv_heads, head_dim, scale, window,
                                    out, stream);
    return launch_paged<float>(strata_paged_attention_f32_f32kv<64>,
                               strata_paged_attention_f32_f32kv<128>,
                               strata_paged_attention_f32_f32kv<256>, q, n_rows, positions,
                               table_start, tables, n_table, block_size, k_cache, v_cache,
                               cache_rows, n_heads, n_kv_heads, head_dim, scale, window, out,
                               stream);
}
