// check.cpp — runs every quantized type's Decoder<T> (kernels/common.cuh) on the host over the
// blocks of tests/data/dequant/random.json and compares dequant_value(decode(...)) bit for bit with
// the values gguf-py wrote there (an expected NaN only needs a NaN). Input: one line per type,
// "ggml_id n_blocks bytes_hex values_f32_hex" (scripts/check-decoders-host.sh makes them).
// Each row is read at a 4-byte aligned and a 2-byte aligned address, as blocks are on the device.
#include "stubs.h"
#include "common.cuh"
#include <cstdio>
#include <string>
#include <vector>
#include <iostream>
using namespace strata;
static std::vector<uint8_t> hex(const std::string &s) {
    std::vector<uint8_t> v(s.size() / 2);
    for (size_t i = 0; i < v.size(); ++i) v[i] = (uint8_t)std::stoul(s.substr(2 * i, 2), nullptr, 16);
    return v;
}
template <strata_dtype T>
static int check(const std::vector<uint8_t> &bytes, const std::vector<uint8_t> &want, int64_t cols) {
    // Copy into a buffer at an odd-by-2 offset too, to exercise the 2-byte aligned loads.
    int bad = 0;
    for (int shift : {0, 2}) {
        std::vector<uint8_t> buf(bytes.size() + 8);
        std::memcpy(buf.data() + shift, bytes.data(), bytes.size());
        const uint8_t *row = buf.data() + shift;
        for (int64_t c = 0; c < cols / 32; ++c)
            for (int p = 0; p < 4; ++p) {
                float q[8], scale, offset;
                decode_part<T>(row, c, p, cols, q, scale, offset);
                for (int k = 0; k < 8; ++k) {
                    int64_t idx = c * 32 + part_index(T, p, k);
                    float v = dequant_value(q[k], scale, offset, has_offset(T));
                    float w; std::memcpy(&w, want.data() + 4 * idx, 4);
                    uint32_t vb, wb; std::memcpy(&vb, &v, 4); std::memcpy(&wb, &w, 4);
                    bool ok = (std::isnan(v) && std::isnan(w)) || vb == wb;
                    if (!ok && bad++ < 5) printf("  type %d idx %lld: got %g want %g\n", (int)T, (long long)idx, v, w);
                }
            }
    }
    return bad;
}
int main() {
    int id; long long nblocks; std::string b, v; int total_bad = 0;
    // Every quantized type must be in the data: a type left out would otherwise pass unseen.
    std::vector<int> unseen = {2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23};
    while (std::cin >> id >> nblocks >> b >> v) {
        for (size_t i = 0; i < unseen.size(); ++i)
            if (unseen[i] == id) { unseen.erase(unseen.begin() + (long)i); break; }
        auto bytes = hex(b), want = hex(v);
        int64_t cols = (int64_t)(want.size() / 4);
        int bad = -1;
        switch (id) {
#define C(T) case T: bad = check<(strata_dtype)T>(bytes, want, cols); break;
        C(STRATA_DTYPE_Q4_0) C(STRATA_DTYPE_Q4_1) C(STRATA_DTYPE_Q8_0) C(STRATA_DTYPE_Q5_0) C(STRATA_DTYPE_Q5_1)
        C(STRATA_DTYPE_IQ4_NL) C(STRATA_DTYPE_Q2_K) C(STRATA_DTYPE_Q3_K) C(STRATA_DTYPE_Q4_K) C(STRATA_DTYPE_Q5_K)
        C(STRATA_DTYPE_Q6_K) C(STRATA_DTYPE_IQ4_XS)
        default: break;
        }
        printf("type %2d: %lld blocks, %lld values: %s (%d mismatches)\n", id, nblocks, (long long)cols,
               bad == 0 ? "ok" : bad < 0 ? "NOT CHECKED" : "MISMATCH", bad);
        if (bad) total_bad++;
    }
    for (int u : unseen) {
        printf("type %2d: NOT IN THE DATA\n", u);
        total_bad++;
    }
    return total_bad ? 1 : 0;
}
