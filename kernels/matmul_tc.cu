// matmul_tc.cu — the "next" prefill matmul (selected with STRATA_GPU_KERNELS=next; the proven
// one is matmul.cu): Y = X W^T on tensor cores, TF32 inputs and f32 accumulation.
//
// Layout as in matmul.cu: W is `rows` rows of `cols` values of any weight type; X is
// [n_tokens][cols] f32; Y is [n_tokens][rows] f32. Each 256-thread block (8 warps) computes a
// 64-row x 128-token tile of Y, stepping through `cols` one 32-value chunk at a time:
//   1. the 64 weight chunks are dequantized exactly as matmul.cu does (decode_part and
//      dequant_value: the CPU reference's f32 weights), rounded to TF32 and stored k-major;
//   2. the 128 x 32 X tile is rounded to TF32 and stored k-major;
//   3. warp w multiplies its 16 tokens by the 64 rows: 4 k-steps of 8, 4 mma each
//      (wmma m16n16k8, precision::tf32), accumulating in f32 fragments;
// and at the end each warp stages its fragments through shared memory to write Y with bounds
// checks (Y's rows need not be a multiple of 4, as wmma's direct store would require).
//
// Numerics: TF32 keeps 10 explicit mantissa bits, so each product carries a relative error of
// about 2^-10 (both inputs rounded to nearest); sums are f32. The parity test bounds the error
// by 1.5 * 2^-10 * sum_k |x_k w_k| per output, not by the f32 tolerance of the proven kernel.
// TF32 keeps f32's exponent range, so large activations (which f16 tiles could overflow) are
// safe.
//
// Work: 2 * rows * cols * n_tokens flops; each weight chunk is decoded once per 128 tokens.
// The roofline is the device's dense TF32 tensor-core rate (H100 SXM: ~495 TFLOP/s), about 7x
// its f32 FMA rate. Not yet tuned (no cp.async double buffering, no swizzled shared layout):
// a first cut for correctness, to be measured with Nsight on a GPU.
#include "common.cuh"

#include <mma.h>

using namespace strata;

namespace {

constexpr int kRows = 64;         // rows of W (columns of Y) per block
constexpr int kTokens = 128;      // tokens per block: 16 per warp
constexpr int kThreads = 256;     // 8 warps
constexpr int kChunk = 32;        // values of `cols` per step (one quant chunk)
constexpr int kLdW = kRows + 4;   // 68 floats: a multiple of 4, as wmma requires for tf32
constexpr int kLdX = kTokens + 4; // 132 floats: likewise; 8 rows of it are 32-byte aligned

static_assert(kThreads == 4 * kRows, "one thread per quarter weight chunk");
static_assert(kThreads == 2 * kTokens, "two threads per token's X chunk");
static_assert(kTokens == 16 * (kThreads / 32), "16 tokens per warp");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
using namespace nvcuda;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
#endif

template <strata_dtype T>
__device__ __forceinline__ void matmul_tc_body(const uint8_t *w, int64_t rbytes, int64_t rows,
                                               int64_t cols, const float *x, int64_t n_tokens,
                                               float *y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // ws[k][row] is B = W^T (k x rows, row-major); xs[k][token] is A = X (tokens x k,
    // column-major). 32-byte alignment: wmma loads need it at every 8th k and 16th column.
    __shared__ __align__(32) float ws[kChunk][kLdW];
    __shared__ __align__(32) float xs[kChunk][kLdX];
    __shared__ __align__(32) float stage[kThreads / 32][16 * 16];

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int load_i = tid / 4, load_p = tid % 4;      // weight row and quarter
    const int load_t = tid / 2, load_h = tid % 2;      // X token and half chunk
    const int64_t chunks = (cols + kChunk - 1) / kChunk;
    const int64_t tiles_m = (rows + kRows - 1) / kRows;
    const int64_t tiles_n = (n_tokens + kTokens - 1) / kTokens;

    for (int64_t tile = blockIdx.x; tile < tiles_m * tiles_n; tile += gridDim.x) {
        const int64_t m0 = (tile % tiles_m) * kRows;
        const int64_t n0 = (tile / tiles_m) * kTokens;
        FragC acc[kRows / 16];
#pragma unroll
        for (int j = 0; j < kRows / 16; ++j) wmma::fill_fragment(acc[j], 0.0f);

        for (int64_t c = 0; c < chunks; ++c) {
            {
                const int64_t r = m0 + load_i;
                float q[8] = {}, scale = 0.0f, offset = 0.0f;
                if (r < rows) decode_part<T>(w + r * rbytes, c, load_p, cols, q, scale, offset);
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const float v = r < rows ? dequant_value(q[k], scale, offset, has_offset(T)) : 0.0f;
                    ws[part_index(T, load_p, k)][load_i] = wmma::__float_to_tf32(v);
                }
            }
            {
                const int64_t t = n0 + load_t;
                const int64_t i0 = c * kChunk + 16 * load_h;
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    const float v = t < n_tokens && i0 + k < cols ? __ldg(x + t * cols + i0 + k) : 0.0f;
                    xs[16 * load_h + k][load_t] = wmma::__float_to_tf32(v);
                }
            }
            __syncthreads();
#pragma unroll
            for (int k8 = 0; k8 < kChunk; k8 += 8) {
                FragA a;
                wmma::load_matrix_sync(a, &xs[k8][16 * warp], kLdX);
#pragma unroll
                for (int j = 0; j < kRows / 16; ++j) {
                    FragB b;
                    wmma::load_matrix_sync(b, &ws[k8][16 * j], kLdW);
                    wmma::mma_sync(acc[j], a, b, acc[j]);
                }
            }
            __syncthreads();
        }
        // Fragment j holds tokens n0 + 16 warp .. +16 by rows m0 + 16 j .. +16.
        float *st = stage[warp];
#pragma unroll
        for (int j = 0; j < kRows / 16; ++j) {
            wmma::store_matrix_sync(st, acc[j], 16, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int e = lane; e < 16 * 16; e += 32) {
                const int64_t t = n0 + 16 * warp + e / 16;
                const int64_t r = m0 + 16 * j + e % 16;
                if (t < n_tokens && r < rows) y[t * rows + r] = st[e];
            }
            __syncwarp();
        }
    }
#else
    // Tensor-core TF32 needs sm_80; the build compiles for sm_80 and newer only (build.rs), and
    // the launcher refuses older devices, so this is never reached.
    __trap();
#endif
}

} // namespace

#define STRATA_MATMUL_TC_KERNEL(name, T)                                                       \
    static __global__ void __launch_bounds__(kThreads)                                         \
        name(const uint8_t *w, int64_t rbytes, int64_t rows, int64_t cols, const float *x,     \
             int64_t n_tokens, float *y) {                                                     \
        matmul_tc_body<T>(w, rbytes, rows, cols, x, n_tokens, y);                              \
    }

#define STRATA_MATMUL_TC_TYPED(sfx, T) STRATA_MATMUL_TC_KERNEL(strata_matmul_tc_##sfx##_f32, T)
STRATA_WEIGHT_DTYPES(STRATA_MATMUL_TC_TYPED)
#undef STRATA_MATMUL_TC_TYPED

using MatmulTcKernel = void (*)(const uint8_t *, int64_t, int64_t, int64_t, const float *,
                                int64_t, float *);

extern "C" strata_status strata_matmul_tc_f32(strata_dtype dtype, const void *w, int64_t rows,
                                              int64_t cols, const float *x, int64_t n_tokens,
                                              float *y, cudaStream_t stream) {
    STRATA_CHECK_ARG(is_weight_dtype(dtype) && rows >= 0 && cols >= 0 && n_tokens >= 0);
    STRATA_CHECK_ARG(row_bytes(dtype, cols) >= 0);
    if (rows == 0 || n_tokens == 0) return STRATA_OK;
    STRATA_CHECK_ARG(y);
    if (cols == 0)
        return (strata_status)cudaMemsetAsync(y, 0, rows * n_tokens * sizeof(float), stream);
    STRATA_CHECK_ARG(w && x);
    // TF32 tensor cores need compute capability 8.0 (the kernels trap below it).
    int device = 0, major = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e != cudaSuccess) return (strata_status)e;
    STRATA_CHECK_ARG(major >= 8);
    MatmulTcKernel k = nullptr;
    switch (dtype) {
#define STRATA_MATMUL_TC_CASE(sfx, T) case T: k = strata_matmul_tc_##sfx##_f32; break;
        STRATA_WEIGHT_DTYPES(STRATA_MATMUL_TC_CASE)
#undef STRATA_MATMUL_TC_CASE
    default: break; // not a weight type: is_weight_dtype() refused it above
    }
    const int64_t tiles = ((rows + kRows - 1) / kRows) * ((n_tokens + kTokens - 1) / kTokens);
    k<<<grid_for(tiles, 1), kThreads, 0, stream>>>(static_cast<const uint8_t *>(w),
                                                    row_bytes(dtype, cols), rows, cols, x,
                                                    n_tokens, y);
    return launch_status();
}
