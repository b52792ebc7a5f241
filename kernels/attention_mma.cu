// attention_mma.cu — prefill attention on tensor cores (the `next` kernel set,
// STRATA_GPU_KERNELS=next), flash-attention-2 style.
//
// Same contract as strata_attention_prefill_f32 (attention.cu): q and out are
// [n_tokens][n_heads][head_dim] f32, the caches [cache_rows][n_kv_heads][head_dim]; token t at
// position pos0 + t attends rows 0..=pos0+t, or with a sliding window w > 0 only rows
// p+1-w..=p. This kernel takes an f16 cache and head_dim 64, 128 or 256 (SmolLM2, Qwen, Gemma 3)
// on compute capability 8.0+; the launcher sends every other case to the CUDA-core tiled kernel
// (attention_tiled.cu), which computes in f32.
//
// Rows: a block serves one kv head. Its query rows are the (token, head) pairs of that head's
// GQA group, row r = token r / group, head kvh * group + r % group, so the group's heads share
// every K/V load. A 128-thread block takes 64 consecutive rows (16 per warp, the mma's M) and
// walks the cache rows they see, [first row the first token sees, last token's position], in
// tiles of kBc = 64 keys (32 at head_dim 256, to keep the f32 output fragments in registers).
// Per tile, in shared memory as f16: Q (the block's 64 rows, rounded from f32 once per block),
// K and V (16-byte cp.async straight from the cache; rows past the range zero-filled). The V
// tile's copy runs during Q·Kᵀ and the next K tile's during P·V (FA2's order).
//
// Per warp and tile (skipped when none of the warp's rows sees any key of the tile):
//   S = Q Kᵀ   16 x kBc, mma.sync m16n8k16 (f16 in, f32 accumulate): A = Q rows from shared
//              memory, B = K rows (B is "col" = K's row-major rows, 32-bit loads);
//   softmax    scores * scale in f32, masked (causal, window, rows past the end) to -inf; the
//              row max over the quad of lanes that hold a row; running (m, l) per row, the
//              output fragments rescaled by exp(m_old - m_new); p = exp(s - m) rounded to f16
//              (the value P·V uses, and the one summed into l, so the weights sum to 1);
//   O += P V   P's accumulator fragments repacked as A fragments (the m16n8 C layout of two
//              adjacent key tiles is the m16k16 A layout), V's B fragments by ldmatrix.trans.
// At the end each row is divided by l (its own position is always visible, so l >= 1).
//
// Fragment layout (PTX ISA, mma.m16n8k16 with .f16): lane = 4 g + c; A regs a0..a3 hold
// (row g, cols 2c..2c+1), (row g+8, same), (row g, cols 2c+8..+9), (row g+8, same); B regs b0,
// b1 hold (k 2c..2c+1, col g), (k 2c+8..+9, col g); C regs c0..c3 hold (row g, cols 2c, 2c+1),
// (row g+8, same). tests/attention_mma.rs models this kernel's tiling, masking and fragment
// arithmetic on the host against the CPU reference.
//
// Numerics: Q is rounded to f16 (2^-11 relative) and P to f16; K and V are the cache's f16
// values exactly; sums and softmax are f32. The parity test bounds the error against the CPU
// reference run on the f16-rounded Q (check::attention_mma_bounds).
//
// Work: 4 * n_heads * head_dim * (visible keys summed over tokens) flops (~2 T^2 n_heads
// head_dim for a causal prompt of T tokens), on the f16 tensor cores (H100 SXM dense: ~990
// TFLOP/s); bytes: Q and out once (f32), each K/V row once per 64-row tile of its head's group.
// Shared memory: (64 + 2 kBc) * (head_dim + 8) halves: 27 KiB (64), 52 KiB (128), 66 KiB
// (256); the launcher raises the kernel's dynamic limit above 48 KiB.
#include "attention_common.cuh"

using namespace strata;

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarp;
constexpr int kRows = 16 * kWarps;  // query rows per block: 16 per warp (the mma's M)
constexpr int kPad = 8;             // halves of padding per shared row: rows 4 banks apart

// Keys per tile: 64, or 32 at head_dim 256 (there the output fragments alone take 128 f32
// registers per thread).
template <int kD>
__host__ __device__ constexpr int keys_per_tile() { return kD <= 128 ? 64 : 32; }

template <int kD>
constexpr size_t smem_bytes() {
    return sizeof(__half) * (size_t)(kRows + 2 * keys_per_tile<kD>()) * (kD + kPad);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// D += A B for one m16n8k16 tile, f16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 f16 matrices, transposed on the way: lanes 8i..8i+7 give matrix i's row addresses
// (16-byte aligned); lane 4g + c receives, of matrix i, elements (row 2c, col g) and (row 2c+1,
// col g) in r[i].
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// 16 bytes global -> shared, bypassing registers and L1 (.cg: each row is read once per block).
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most one committed group of this thread is still in flight.
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_0() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Two f16 at an even index of a shared row, as the 32-bit register an mma fragment takes.
__device__ __forceinline__ uint32_t ld_pair(const __half *p) { return *reinterpret_cast<const uint32_t *>(p); }

// Two f32 rounded to f16 and packed (lo in the low half: the lower column, as mma expects).
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}

// Cache rows base..base+kBc of one kv head into dst ([kBc][kD + kPad] halves) by cp.async; rows
// at or past `hi` are zero-filled (their scores are masked, but 0 * NaN garbage in V would not
// be).
template <int kD, int kBc>
__device__ __forceinline__ void load_kv_tile(__half *dst, const __half *head, int64_t base,
                                             int64_t hi, int64_t row_stride) {
    constexpr int kPieces = kD / 8;  // 16-byte pieces per row
    for (int i = threadIdx.x; i < kBc * kPieces; i += kThreads) {
        const int j = i / kPieces, c = i % kPieces;
        __half *d = dst + j * (kD + kPad) + 8 * c;
        const int64_t p = base + j;
        if (p < hi)
            cp_async16(d, head + p * row_stride + 8 * c);
        else
            *reinterpret_cast<uint4 *>(d) = make_uint4(0u, 0u, 0u, 0u);
    }
}
#endif

template <int kD>
__device__ __forceinline__ void attention_mma_body(const float *q, int64_t n_tokens, int64_t pos0,
                                                   const __half *k_cache, const __half *v_cache,
                                                   int64_t n_heads, int64_t n_kv_heads,
                                                   float scale, int64_t window, float *out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int kBc = keys_per_tile<kD>();
    constexpr int kS = kD + kPad;  // halves per shared row
    constexpr int kNT = kBc / 8;   // score tiles (n = 8 keys) per warp
    constexpr int kDT = kD / 8;    // output tiles (n = 8 dims) per warp
    extern __shared__ __align__(16) __half attn_smem[];
    __half *q_s = attn_smem;        // [kRows][kS]
    __half *k_s = q_s + kRows * kS; // [kBc][kS]
    __half *v_s = k_s + kBc * kS;   // [kBc][kS]

    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int g = lane / 4, c = lane % 4;  // the fragment row group and column pair
    const int64_t group = n_heads / n_kv_heads;
    const int64_t n_rows = n_tokens * group;  // query rows of one kv head
    const int64_t n_tiles = (n_rows + kRows - 1) / kRows;
    const int64_t row_stride = n_kv_heads * kD;  // cache elements per position

    for (int64_t item = blockIdx.x; item < n_tiles * n_kv_heads; item += gridDim.x) {
        // Consecutive blocks share a kv head (its rows stay in L2); within a head the last
        // tiles, which see the most keys, go first so the short ones fill the tail.
        const int64_t kvh = item / n_tiles;
        const int64_t r0 = (n_tiles - 1 - item % n_tiles) * kRows;
        const int64_t r_end = min(r0 + kRows, n_rows);
        // The keys any row of the block sees: from the first token's first visible row to the
        // last token's position.
        const int64_t lo = first_visible_row(pos0 + r0 / group, window);
        const int64_t hi = pos0 + (r_end - 1) / group + 1;
        // The warp's rows and the keys they see (a warp past r_end has none).
        const int64_t wr0 = r0 + 16 * warp, wr_end = min(wr0 + 16, r_end);
        const bool warp_rows = wr0 < wr_end;
        const int64_t w_lo = warp_rows ? first_visible_row(pos0 + wr0 / group, window) : 0;
        const int64_t w_hi = warp_rows ? pos0 + (wr_end - 1) / group + 1 : 0;
        // This lane's two rows, g and g + 8 of the warp's 16: valid, position, first key.
        bool row_ok[2];
        int64_t row_pos[2], row_first[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int64_t r = wr0 + g + 8 * i;
            row_ok[i] = r < r_end;
            row_pos[i] = pos0 + r / group;
            row_first[i] = first_visible_row(row_pos[i], window);
        }
        const __half *k_head = k_cache + kvh * kD;
        const __half *v_head = v_cache + kvh * kD;

        __syncthreads();  // the previous item's readers of shared memory are done
        // Q rows as f16, zeros past the end (two values per thread and step; q is 8-byte
        // aligned, which the launcher checked).
        for (int i = threadIdx.x; i < kRows * kD / 2; i += kThreads) {
            const int rr = i / (kD / 2), d = 2 * (i % (kD / 2));
            const int64_t r = r0 + rr;
            float2 v = make_float2(0.0f, 0.0f);
            if (r < r_end) {
                const int64_t t = r / group, h = kvh * group + r % group;
                v = *reinterpret_cast<const float2 *>(q + (t * n_heads + h) * kD + d);
            }
            *reinterpret_cast<__half2 *>(q_s + rr * kS + d) = __floats2half2_rn(v.x, v.y);
        }

        float o[kDT][4];
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

        const int64_t n_key_tiles = (hi - lo + kBc - 1) / kBc;
        load_kv_tile<kD, kBc>(k_s, k_head, lo, hi, row_stride);
        cp_async_commit();
        for (int64_t j = 0; j < n_key_tiles; ++j) {
            const int64_t base = lo + j * kBc;
            load_kv_tile<kD, kBc>(v_s, v_head, base, hi, row_stride);
            cp_async_commit();
            cp_async_wait_1();  // K tile j has landed (V tile j may still be in flight)
            __syncthreads();    // ... for every thread's copies, and q_s / the zero fills too
            // Warp-uniform: does any of the warp's rows see a key of this tile?
            const bool active = warp_rows && base < w_hi && base + kBc > w_lo;
            float s[kNT][4];
            if (active) {
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < kD / 16; ++kk) {
                    const __half *qa = q_s + (16 * warp + g) * kS + 16 * kk + 2 * c;
                    const uint32_t a[4] = {ld_pair(qa), ld_pair(qa + 8 * kS), ld_pair(qa + 8),
                                           ld_pair(qa + 8 * kS + 8)};
#pragma unroll
                    for (int nt = 0; nt < kNT; ++nt) {
                        const __half *kb = k_s + (8 * nt + g) * kS + 16 * kk + 2 * c;
                        mma_16816(s[nt], a, ld_pair(kb), ld_pair(kb + 8));
                    }
                }
                // Scale and mask; c0, c1 are row g's keys 8 nt + 2c, +1; c2, c3 row g + 8's.
                float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = e / 2;
                        const int64_t p = base + 8 * nt + 2 * c + (e & 1);
                        const bool valid = row_ok[i] && p >= row_first[i] && p <= row_pos[i];
                        s[nt][e] = valid ? s[nt][e] * scale : -INFINITY;
                        mx[i] = fmaxf(mx[i], s[nt][e]);
                    }
                }
                float corr[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    // The four lanes of a quad hold the same row.
                    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
                    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
                    const float m_new = fmaxf(m[i], mx[i]);
                    // A row with no visible key so far keeps m = -inf and its zero state.
                    corr[i] = m_new == -INFINITY ? 1.0f : expf(m[i] - m_new);
                    m[i] = m_new;
                    l[i] *= corr[i];
                }
#pragma unroll
                for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = e / 2;
                        const float pe = m[i] == -INFINITY ? 0.0f : expf(s[nt][e] - m[i]);
                        s[nt][e] = __half2float(__float2half_rn(pe));  // P as the mma sees it
                        l[i] += s[nt][e];
                    }
                }
#pragma unroll
                for (int dt = 0; dt < kDT; ++dt) {
                    o[dt][0] *= corr[0], o[dt][1] *= corr[0];
                    o[dt][2] *= corr[1], o[dt][3] *= corr[1];
                }
            }
            __syncthreads();  // every warp is done with the K tile
            if (j + 1 < n_key_tiles) load_kv_tile<kD, kBc>(k_s, k_head, base + kBc, hi, row_stride);
            cp_async_commit();  // possibly empty: keeps "all but the newest group" = V tile j
            cp_async_wait_1();
            __syncthreads();  // V tile j is in shared memory for every thread
            if (active) {
#pragma unroll
                for (int kk = 0; kk < kBc / 16; ++kk) {
                    // Score tiles 2kk, 2kk+1 (keys 16kk..16kk+15) in the C layout are P's A
                    // fragment for k = those keys.
                    const uint32_t a[4] = {pack_pair(s[2 * kk][0], s[2 * kk][1]),
                                           pack_pair(s[2 * kk][2], s[2 * kk][3]),
                                           pack_pair(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                           pack_pair(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                    for (int dt = 0; dt < kDT; dt += 2) {
                        // Matrices: keys 16kk+0..7 and +8..15 at dims 8dt.., then at 8(dt+1)..
                        uint32_t b[4];
                        ldmatrix_x4_trans(b, v_s + (16 * kk + (lane & 15)) * kS + 8 * dt + 8 * (lane >> 4));
                        mma_16816(o[dt], a, b[0], b[1]);
                        mma_16816(o[dt + 1], a, b[2], b[3]);
                    }
                }
            }
            __syncthreads();  // every warp is done with the V tile before the next one lands
        }
        cp_async_wait_0();  // the last (empty) group

        // l summed over the quad; out = O / l for this lane's valid rows.
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
            l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
            if (!row_ok[i]) continue;
            const int64_t r = wr0 + g + 8 * i;
            const int64_t t = r / group, h = kvh * group + r % group;
            float *orow = out + (t * n_heads + h) * kD;
#pragma unroll
            for (int dt = 0; dt < kDT; ++dt)
                *reinterpret_cast<float2 *>(orow + 8 * dt + 2 * c) =
                    make_float2(o[dt][2 * i] / l[i], o[dt][2 * i + 1] / l[i]);
        }
    }
#else
    // mma.m16n8k16 with f16 needs sm_80; the launcher refuses older devices (sending them to
    // the tiled kernel), so this is never reached.
    __trap();
#endif
}

} // namespace

// Kernel names say prefill, tensor cores, the cache type and (template argument) the head size.
template <int kD>
static __global__ void __launch_bounds__(kThreads)
    strata_attention_prefill_mma_f32_f16kv(const float *q, int64_t n_tokens, int64_t pos0,
                                           const __half *k_cache, const __half *v_cache,
                                           int64_t n_heads, int64_t n_kv_heads, float scale,
                                           int64_t window, float *out) {
    attention_mma_body<kD>(q, n_tokens, pos0, k_cache, v_cache, n_heads, n_kv_heads, scale,
                           window, out);
}

template <int kD>
static strata_status launch_mma(const float *q, int64_t n_tokens, int64_t pos0,
                                const void *k_cache, const void *v_cache, int64_t n_heads,
                                int64_t n_kv_heads, float scale, int64_t window, float *out,
                                cudaStream_t stream) {
    const auto k = strata_attention_prefill_mma_f32_f16kv<kD>;
    constexpr size_t smem = smem_bytes<kD>();
    if (smem > 48 * 1024) {
        const cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void *>(k),
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   (int)smem);
        if (e != cudaSuccess) return (strata_status)e;
    }
    const int64_t tiles = (n_tokens * (n_heads / n_kv_heads) + kRows - 1) / kRows;
    k<<<grid_for(tiles * n_kv_heads, 1), kThreads, smem, stream>>>(
        q, n_tokens, pos0, static_cast<const __half *>(k_cache), static_cast<const __half *>(v_cache),
        n_heads, n_kv_heads, scale, window, out);
    return launch_status();
}

static bool aligned(const void *p, uintptr_t bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

extern "C" strata_status strata_attention_prefill_mma_f32(const float *q, int64_t n_tokens,
                                                          int64_t pos0, strata_dtype cache_dtype,
                                                          const void *k_cache,
                                                          const void *v_cache, int64_t n_heads,
                                                          int64_t n_kv_heads, int64_t head_dim,
                                                          float scale, int64_t window,
                                                          float *out, cudaStream_t stream) {
    const auto tiled = [&] {
        return strata_attention_prefill_tiled_f32(q, n_tokens, pos0, cache_dtype, k_cache, v_cache,
                                                  n_heads, n_kv_heads, head_dim, scale, window, out,
                                                  stream);
    };
    return checked_prefill(q, n_tokens, pos0, cache_dtype, k_cache, v_cache, n_heads, n_kv_heads,
                           head_dim, window, out, [&](auto tag) -> strata_status {
                               using C = decltype(tag);
                               // f32 caches, other head sizes and unaligned buffers (16 bytes
                               // for cp.async rows, 8 for float2 q/out) take the tiled kernel.
                               if constexpr (!std::is_same_v<C, __half>) {
                                   return tiled();
                               } else {
                                   const bool shape = head_dim == 64 || head_dim == 128 || head_dim == 256;
                                   if (!shape || !aligned(k_cache, 16) || !aligned(v_cache, 16) ||
                                       !aligned(q, 8) || !aligned(out, 8))
                                       return tiled();
                                   int device = 0, major = 0;
                                   cudaError_t e = cudaGetDevice(&device);
                                   if (e == cudaSuccess)
                                       e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
                                   if (e != cudaSuccess) return (strata_status)e;
                                   if (major < 8) return tiled();
                                   switch (head_dim) {
                                   case 64:
                                       return launch_mma<64>(q, n_tokens, pos0, k_cache, v_cache, n_heads,
                                                             n_kv_heads, scale, window, out, stream);
                                   case 128:
                                       return launch_mma<128>(q, n_tokens, pos0, k_cache, v_cache, n_heads,
                                                              n_kv_heads, scale, window, out, stream);
                                   default:
                                       return launch_mma<256>(q, n_tokens, pos0, k_cache, v_cache, n_heads,
                                                              n_kv_heads, scale, window, out, stream);
                                   }
                               }
                           });
}
