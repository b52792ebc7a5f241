// rope.cu — rotary position embedding, in place on Q or K.
//
// Layout: x is [n_tokens][n_heads][head_dim] f32; positions[t] (device) is token t's position.
// Pair i (0 <= i < n_rot/2) is (x[2i], x[2i+1]) in the ADJACENT layout (GGUF llama) or
// (x[i], x[i + n_rot/2]) in the HALF_SPLIT layout (NeoX, Hugging Face); it is rotated by
// theta = (pos * freq_scale) * inv_freq[i], inv_freq[i] = (float)(pow(base, -2i/n_rot) / ff[i])
// computed in double so that the CPU reference gets the same f32 value (ff[i]: the optional
// per-frequency divisors of Llama 3.1-style scaling, else 1). One thread per pair.
// Bytes moved: 2 * n_rot/head_dim of x read and written: memory-bound and small.
#include "common.cuh"

using namespace strata;

static constexpr int kThreads = 256;

static __global__ void __launch_bounds__(kThreads)
    strata_rope_f32_kernel(float *x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                           const int32_t *positions, int64_t n_rot, float freq_base,
                           float freq_scale, const float *freq_factors, int half_split) {
    const int64_t half = n_rot / 2;
    const int64_t items = n_tokens * n_heads * half;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < items;
         idx += stride) {
        const int64_t i = idx % half;
        const int64_t th = idx / half;  // token * n_heads + head
        const int64_t t = th / n_heads;
        double inv = pow((double)freq_base, -2.0 * (double)i / (double)n_rot);
        if (freq_factors) inv /= (double)freq_factors[i];
        const float inv_freq = (float)inv;
        const float theta = ((float)positions[t] * freq_scale) * inv_freq;
        float s, c;
        sincosf(theta, &s, &c);
        float *h = x + th * head_dim;
        const int64_t a = half_split ? i : 2 * i, b = half_split ? i + half : 2 * i + 1;
        const float x0 = h[a], x1 = h[b];
        // No fused multiply-add, to round as the CPU reference does.
        h[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        h[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}

extern "C" strata_status strata_rope_f32(float *x, int64_t n_tokens, int64_t n_heads,
                                         int64_t head_dim, const int32_t *positions,
                                         int64_t n_rot, float freq_base, float freq_scale,
                                         const float *freq_factors, strata_rope_layout layout,
                                         cudaStream_t stream) {
    STRATA_CHECK_ARG(n_tokens >= 0 && n_heads >= 0 && head_dim >= 0);
    STRATA_CHECK_ARG(n_rot >= 0 && n_rot % 2 == 0 && n_rot <= head_dim);
    STRATA_CHECK_ARG(freq_base > 0.0f);
    STRATA_CHECK_ARG(layout == STRATA_ROPE_ADJACENT || layout == STRATA_ROPE_HALF_SPLIT);
    const int64_t items = n_tokens * n_heads * (n_rot / 2);
    if (items == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && positions);
    strata_rope_f32_kernel<<<grid_for(items, kThreads), kThreads, 0, stream>>>(
        x, n_tokens, n_heads, head_dim, positions, n_rot, freq_base, freq_scale, freq_factors,
        layout == STRATA_ROPE_HALF_SPLIT);
    return launch_status();
}
