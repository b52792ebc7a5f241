// matmul.cu — prefill matrix product Y = X W^T for n_tokens tokens at once.
//
// Layout: W is `rows` rows of `cols` values of any weight type; X is [n_tokens][cols] f32;
// Y is [n_tokens][rows] f32. Each 256-thread block computes a 64-row x 64-token tile of Y,
// stepping through `cols` one 32-value chunk at a time: it dequantizes the 64 weight chunks
// and loads the 64 x 32 X tile into shared memory, then each thread accumulates a 4 x 4
// register tile. Each weight chunk is decoded once per 64 tokens (a matvec per token would
// read and decode it n_tokens times).
//
// Work: 2 * rows * cols * n_tokens flops; bytes: W once per 64-token tile column plus X and Y,
// so it is compute-bound past a few dozen tokens: the roofline is the device's f32 FMA rate.
// Plain f32 FMA (no tensor cores), so results stay within f32 rounding of the CPU reference.
#include "common.cuh"

using namespace strata;

static constexpr int kTileRows = 64;    // rows of W (columns of Y) per block
static constexpr int kTileTokens = 64;  // tokens per block
static constexpr int kThreads = 256;
static constexpr int kPad = 4;          // keeps float4 reads aligned and spreads banks

template <strata_dtype T>
static __device__ __forceinline__ void matmul_body(const uint8_t *w, int64_t rbytes,
                                                   int64_t rows, int64_t cols, const float *x,
                                                   int64_t n_tokens, float *y) {
    __shared__ __align__(16) float ws[32][kTileRows + kPad];   // ws[k][row]
    __shared__ __align__(16) float xs[32][kTileTokens + kPad]; // xs[k][token]

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;  // this thread's 4 rows and 4 tokens
    const int load_i = tid / 4, load_p = tid % 4;
    const int64_t chunks = (cols + 31) / 32;
    const int64_t tiles_m = (rows + kTileRows - 1) / kTileRows;
    const int64_t tiles_n = (n_tokens + kTileTokens - 1) / kTileTokens;

    for (int64_t tile = blockIdx.x; tile < tiles_m * tiles_n; tile += gridDim.x) {
        const int64_t m0 = (tile % tiles_m) * kTileRows;
        const int64_t n0 = (tile / tiles_m) * kTileTokens;
        float acc[4][4] = {};

        for (int64_t c = 0; c < chunks; ++c) {
            // Weight chunk c of row m0 + load_i, part load_p, dequantized.
            {
                const int64_t r = m0 + load_i;
                float q[8] = {}, scale = 0.0f, offset = 0.0f;
                if (r < rows) decode_part<T>(w + r * rbytes, c, load_p, cols, q, scale, offset);
#pragma unroll
                for (int k = 0; k < 8; ++k)
                    ws[part_index(T, load_p, k)][load_i] =
                        r < rows ? dequant_value(q[k], scale, offset, has_offset(T))
                                 : 0.0f;
            }
            // X values 8*load_p .. 8*load_p+7 of chunk c for token n0 + load_i.
            {
                const int64_t t = n0 + load_i;
                const int64_t i0 = c * 32 + 8 * load_p;
#pragma unroll
                for (int k = 0; k < 8; ++k)
                    xs[8 * load_p + k][load_i] =
                        t < n_tokens && i0 + k < cols ? __ldg(x + t * cols + i0 + k) : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int k = 0; k < 32; ++k) {
                const float4 a = *reinterpret_cast<const float4 *>(&ws[k][tx * 4]);
                const float4 b = *reinterpret_cast<const float4 *>(&xs[k][ty * 4]);
                const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
            }
            __syncthreads();
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int64_t t = n0 + ty * 4 + j;
            if (t >= n_tokens) continue;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int64_t r = m0 + tx * 4 + i;
                if (r < rows) y[t * rows + r] = acc[i][j];
            }
        }
    }
}

#define STRATA_MATMUL_KERNEL(name, T)                                                          \
    static __global__ void __launch_bounds__(kThreads)                                         \
        name(const uint8_t *w, int64_t rbytes, int64_t rows, int64_t cols, const float *x,     \
             int64_t n_tokens, float *y) {                                                     \
        matmul_body<T>(w, rbytes, rows, cols, x, n_tokens, y);                                 \
    }

#define STRATA_MATMUL_TYPED(sfx, T) STRATA_MATMUL_KERNEL(strata_matmul_##sfx##_f32, T)
STRATA_WEIGHT_DTYPES(STRATA_MATMUL_TYPED)
#undef STRATA_MATMUL_TYPED

using MatmulKernel = void (*)(const uint8_t *, int64_t, int64_t, int64_t, const float *,
                              int64_t, float *);

static strata_status launch_matmul(MatmulKernel kernel, strata_dtype dtype, const void *w,
                                   int64_t rows, int64_t cols, const float *x,
                                   int64_t n_tokens, float *y, cudaStream_t stream) {
    const int64_t tiles = ((rows + kTileRows - 1) / kTileRows) *
                          ((n_tokens + kTileTokens - 1) / kTileTokens);
    kernel<<<grid_for(tiles, 1), kThreads, 0, stream>>>(static_cast<const uint8_t *>(w),
                                                         row_bytes(dtype, cols), rows, cols, x,
                                                         n_tokens, y);
    return launch_status();
}

extern "C" strata_status strata_matmul_f32(strata_dtype dtype, const void *w, int64_t rows,
                                           int64_t cols, const float *x, int64_t n_tokens,
                                           float *y, cudaStream_t stream) {
    STRATA_CHECK_ARG(is_weight_dtype(dtype) && rows >= 0 && cols >= 0 && n_tokens >= 0);
    STRATA_CHECK_ARG(row_bytes(dtype, cols) >= 0);
    if (rows == 0 || n_tokens == 0) return STRATA_OK;
    STRATA_CHECK_ARG(y);
    if (cols == 0)
        return (strata_status)cudaMemsetAsync(y, 0, rows * n_tokens * sizeof(float), stream);
    STRATA_CHECK_ARG(w && x);
    MatmulKernel k = nullptr;
    switch (dtype) {
#define STRATA_MATMUL_CASE(sfx, T) case T: k = strata_matmul_##sfx##_f32; break;
        STRATA_WEIGHT_DTYPES(STRATA_MATMUL_CASE)
#undef STRATA_MATMUL_CASE
    default: break; // not a weight type: is_weight_dtype() refused it above
    }
    return launch_matmul(k, dtype, w, rows, cols, x, n_tokens, y, stream);
}
