// stubs.h — host stand-ins for the CUDA qualifiers and intrinsics that kernels/common.cuh and
// kernels/decoders_quant.cuh use, so that the weight decoders compile as plain C++ and their index
// math can be checked on a machine without a GPU (scripts/check-decoders-host.sh). Each stand-in
// computes what the CUDA documentation says the intrinsic does (__byte_perm with its
// sign-replicate selector bit, binary16 with subnormals, infinities and NaN).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#define __host__
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
struct Dim { unsigned x = 0; };
static Dim threadIdx, blockDim, blockIdx, gridDim;
inline int cudaGetLastError() { return 0; }
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
struct __half { uint16_t b; };
inline __half __ushort_as_half(uint16_t b) { return __half{b}; }
inline float __half2float(__half h) {
    uint32_t s = (h.b >> 15) & 1, e = (h.b >> 10) & 31, m = h.b & 1023, bits;
    if (e == 0) {
        if (m == 0) bits = s << 31;
        else { float f = std::ldexp((float)m, -24); if (s) f = -f; return f; }
    } else if (e == 31) bits = (s << 31) | 0x7F800000u | (m << 13);
    else bits = (s << 31) | ((e - 15 + 127) << 23) | (m << 13);
    float f; std::memcpy(&f, &bits, 4); return f;
}
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    uint64_t in = (uint64_t)x | ((uint64_t)y << 32);
    uint32_t r = 0;
    for (int n = 0; n < 4; ++n) {
        uint32_t sel = (s >> (4 * n)) & 15;
        uint32_t b = (in >> (8 * (sel & 7))) & 0xFF;
        if (sel & 8) b = (b & 0x80) ? 0xFF : 0;
        r |= b << (8 * n);
    }
    return r;
}
template <typename T> inline T __ldg(const T *p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
inline void __syncthreads() {}
