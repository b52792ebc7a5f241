// kv_cache.cu — append K or V rows to a cache at given positions, converting to the cache type.
//
// Layout: src is [n_tokens][row_len] f32 (row_len = n_kv_heads * head_dim); cache is
// [cache_rows][row_len] of F32 or F16; positions[t] (device) is the cache row for token t.
// F16 conversion rounds to nearest even, as the CPU reference (the `half` crate) does, so
// results are bit-identical. Bytes moved: n_tokens * row_len * (4 + cache element size).
#include "common.cuh"

using namespace strata;

static constexpr int kThreads = 256;

template <typename C>
static __device__ __forceinline__ C from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

template <typename C>
static __device__ __forceinline__ void kv_append_body(const float *src, int64_t n_tokens,
                                                      int64_t row_len, const int32_t *positions,
                                                      C *cache, int64_t cache_rows) {
    const int64_t items = n_tokens * row_len;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        const int64_t t = i / row_len, j = i % row_len;
        const int64_t pos = positions[t];
        if (pos < 0 || pos >= cache_rows) continue;
        cache[pos * row_len + j] = from_f32<C>(src[i]);
    }
}

static __global__ void __launch_bounds__(kThreads)
    strata_kv_append_f32_f32(const float *src, int64_t n_tokens, int64_t row_len,
                             const int32_t *positions, float *cache, int64_t cache_rows) {
    kv_append_body(src, n_tokens, row_len, positions, cache, cache_rows);
}

static __global__ void __launch_bounds__(kThreads)
    strata_kv_append_f32_f16(const float *src, int64_t n_tokens, int64_t row_len,
                             const int32_t *positions, __half *cache, int64_t cache_rows) {
    kv_append_body(src, n_tokens, row_len, positions, cache, cache_rows);
}

extern "C" strata_status strata_kv_append_f32(const float *src, int64_t n_tokens,
                                              int64_t row_len, const int32_t *positions,
                                              strata_dtype cache_dtype, void *cache,
                                              int64_t cache_rows, cudaStream_t stream) {
    STRATA_CHECK_ARG(n_tokens >= 0 && row_len >= 0 && cache_rows >= 0);
    STRATA_CHECK_ARG(cache_dtype == STRATA_DTYPE_F32 || cache_dtype == STRATA_DTYPE_F16);
    const int64_t items = n_tokens * row_len;
    if (items == 0) return STRATA_OK;
    STRATA_CHECK_ARG(src && positions && cache);
    const unsigned grid = grid_for(items, kThreads);
    if (cache_dtype == STRATA_DTYPE_F32)
        strata_kv_append_f32_f32<<<grid, kThreads, 0, stream>>>(
            src, n_tokens, row_len, positions, static_cast<float *>(cache), cache_rows);
    else
        strata_kv_append_f32_f16<<<grid, kThreads, 0, stream>>>(
            src, n_tokens, row_len, positions, static_cast<__half *>(cache), cache_rows);
    return launch_status();
}
