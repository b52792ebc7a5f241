// matmul_tc.cu — the "next" prefill matmul (selected with STRATA_GPU_KERNELS=next; the proven
// one is matmul.cu): Y = X W^T on tensor cores, TF32 inputs and f32 accumulation.
//
// Layout as in matmul.cu: W is `rows` rows of `cols` values of any weight type; X is
// [n_tokens][cols] f32; Y is [n_tokens][rows] f32. Each 256-thread block (8 warps) computes a
// 64-row x 128-token tile of Y, stepping through `cols` one 32-value chunk at a time:
//   1. the 64 weight chunks are dequantized exactly as matmul.cu does (decode_part and
//      dequant_value: the CPU reference's f32 weights), rounded to TF32 and stored k-major;
//   2. the 128 x 32 X tile is copied raw into shared memory (token-major) with cp.async;
//   3. warp w multiplies its 16 tokens by the 64 rows: 4 k-steps of 8, 4 mma each
//      (wmma m16n16k8, precision::tf32; the X fragment rounded to TF32 after its load),
//      accumulating in f32 fragments;
// with both tiles double-buffered: chunk c + 1's X copy and weight decode are issued before
// chunk c's products, into the other stage, and one barrier per chunk separates the stages
// (cp.async cannot dequantize, so the weights go through registers; X does not).
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
// its f32 FMA rate. Shared memory: 62,464 bytes per block (dynamic; three blocks per SM on
// sm_90). Not yet tuned beyond the double buffering (no swizzled layout, weights decoded once
// per 128 tokens): to be measured with Nsight on a GPU.
#include "common.cuh"

#include <mma.h>

using namespace strata;

namespace {

constexpr int kRows = 64;         // rows of W (columns of Y) per block
constexpr int kTokens = 128;      // tokens per block: 16 per warp
constexpr int kThreads = 256;     // 8 warps
constexpr int kChunk = 32;        // values of `cols` per step (one quant chunk)
constexpr int kLdW = kRows + 4;   // 68 floats: a multiple of 4, as wmma requires for tf32
constexpr int kLdX = kChunk + 4;  // 36 floats: likewise; 16 rows of it are 32-byte aligned

static_assert(kThreads == 4 * kRows, "one thread per quarter weight chunk");
static_assert(kThreads == 2 * kTokens, "two threads per token's X chunk");
static_assert(kTokens == 16 * (kThreads / 32), "16 tokens per warp");

// Dynamic shared memory, two stages of each tile plus the store staging (every offset a
// multiple of 128 bytes; wmma needs 32-byte aligned tile pointers):
//   xs[stage][token][k]  2 x 128 x 36 f32 = 36,864 bytes (raw f32, filled by cp.async)
//   ws[stage][k][row]    2 x 32 x 68 f32  = 17,408 bytes (dequantized, TF32-rounded)
//   stage[warp][16x16]   8 x 256 f32      =  8,192 bytes
constexpr int kXsFloats = kTokens * kLdX;
constexpr int kWsFloats = kChunk * kLdW;
constexpr size_t kSmemBytes = (2 * kXsFloats + 2 * kWsFloats + (kThreads / 32) * 256) * sizeof(float);
static_assert((kXsFloats * sizeof(float)) % 128 == 0 && (kWsFloats * sizeof(float)) % 128 == 0,
              "stage offsets stay 128-byte aligned");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
using namespace nvcuda;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// 16 bytes global -> shared without passing through registers (sm_80's cp.async; .cg: L2 only,
// X is read once per block). Both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async16(float *dst, const float *src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Thread (load_t, load_h) fills xs[load_t][16 load_h .. +16] with X[n0 + load_t][c*32 + ...]:
// four 16-byte cp.async where the piece is inside X and aligned (cols a multiple of 4, so every
// row starts 16-byte aligned), else plain loads with zeros past the ends (tails, odd widths).
__device__ __forceinline__ void load_x_chunk(float *xs, const float *x, int64_t n_tokens, int64_t cols,
                                             int64_t n0, int64_t c, int load_t, int load_h) {
    const int64_t t = n0 + load_t;
    const int64_t i0 = c * kChunk + 16 * load_h;
    float *dst = xs + load_t * kLdX + 16 * load_h;
    const bool aligned = cols % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const int64_t i = i0 + 4 * p;
        if (aligned && t < n_tokens && i + 4 <= cols) {
            cp_async16(dst + 4 * p, x + t * cols + i);
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k)
                dst[4 * p + k] = t < n_tokens && i + k < cols ? __ldg(x + t * cols + i + k) : 0.0f;
        }
    }
}

// Thread (load_i, load_p) dequantizes its quarter of row m0 + load_i's chunk c into ws (k-major),
// exactly as matmul.cu does (the CPU reference's f32 weights), rounded to TF32.
template <strata_dtype T>
__device__ __forceinline__ void load_w_chunk(float *ws, const uint8_t *w, int64_t rbytes, int64_t rows,
                                             int64_t cols, int64_t m0, int64_t c, int load_i, int load_p) {
    const int64_t r = m0 + load_i;
    float q[8] = {}, scale = 0.0f, offset = 0.0f;
    if (r < rows) decode_part<T>(w + r * rbytes, c, load_p, cols, q, scale, offset);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float v = r < rows ? dequant_value(q[k], scale, offset, has_offset(T)) : 0.0f;
        ws[part_index(T, load_p, k) * kLdW + load_i] = wmma::__float_to_tf32(v);
    }
}
#endif

template <strata_dtype T>
__device__ __forceinline__ void matmul_tc_body(const uint8_t *w, int64_t rbytes, int64_t rows,
                                               int64_t cols, const float *x, int64_t n_tokens,
                                               float *y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // xs[token][k] is A = X (tokens x k, row-major); ws[k][row] is B = W^T (k x rows,
    // row-major).
    extern __shared__ __align__(128) float smem[];
    // Stage s of each tile (computed, not a pointer array: that would live in local memory).
    auto xs = [&](int s) { return smem + s * kXsFloats; };
    auto ws = [&](int s) { return smem + 2 * kXsFloats + s * kWsFloats; };

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int load_i = tid / 4, load_p = tid % 4;      // weight row and quarter
    const int load_t = tid / 2, load_h = tid % 2;      // X token and half chunk
    float *st = smem + 2 * kXsFloats + 2 * kWsFloats + warp * 256;
    const int64_t chunks = (cols + kChunk - 1) / kChunk;
    const int64_t tiles_m = (rows + kRows - 1) / kRows;
    const int64_t tiles_n = (n_tokens + kTokens - 1) / kTokens;

    for (int64_t tile = blockIdx.x; tile < tiles_m * tiles_n; tile += gridDim.x) {
        const int64_t m0 = (tile % tiles_m) * kRows;
        const int64_t n0 = (tile / tiles_m) * kTokens;
        FragC acc[kRows / 16];
#pragma unroll
        for (int j = 0; j < kRows / 16; ++j) wmma::fill_fragment(acc[j], 0.0f);

        // Two stages: while the warps multiply chunk c from one stage, chunk c + 1's X is in
        // flight (cp.async) and its weights are being dequantized into the other. One barrier
        // per chunk: after it, stage c % 2 is free and stage (c + 1) % 2 is complete.
        load_x_chunk(xs(0), x, n_tokens, cols, n0, 0, load_t, load_h);
        cp_async_commit();
        load_w_chunk<T>(ws(0), w, rbytes, rows, cols, m0, 0, load_i, load_p);
        cp_async_wait_all();
        __syncthreads();
        for (int64_t c = 0; c < chunks; ++c) {
            const int cur = (int)(c & 1);
            if (c + 1 < chunks) {
                load_x_chunk(xs(cur ^ 1), x, n_tokens, cols, n0, c + 1, load_t, load_h);
                cp_async_commit();
                load_w_chunk<T>(ws(cur ^ 1), w, rbytes, rows, cols, m0, c + 1, load_i, load_p);
            }
#pragma unroll
            for (int k8 = 0; k8 < kChunk; k8 += 8) {
                FragA a;
                wmma::load_matrix_sync(a, xs(cur) + 16 * warp * kLdX + k8, kLdX);
                // X is staged raw; rounding each element of the fragment to TF32 is the same
                // rounding the first cut applied on the way into shared memory.
#pragma unroll
                for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(a.x[e]);
#pragma unroll
                for (int j = 0; j < kRows / 16; ++j) {
                    FragB b;
                    wmma::load_matrix_sync(b, ws(cur) + k8 * kLdW + 16 * j, kLdW);
                    wmma::mma_sync(acc[j], a, b, acc[j]);
                }
            }
            cp_async_wait_all();
            __syncthreads();
        }
        // Fragment j holds tokens n0 + 16 warp .. +16 by rows m0 + 16 j .. +16.
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
    // Above the 48 KiB a kernel gets without asking.
    e = cudaFuncSetAttribute(reinterpret_cast<const void *>(k), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)kSmemBytes);
    if (e != cudaSuccess) return (strata_status)e;
    const int64_t tiles = ((rows + kRows - 1) / kRows) * ((n_tokens + kTokens - 1) / kTokens);
    k<<<grid_for(tiles, 1), kThreads, kSmemBytes, stream>>>(static_cast<const uint8_t *>(w),
                                                    row_bytes(dtype, cols), rows, cols, x,
                                                    n_tokens, y);
    return launch_status();
}
