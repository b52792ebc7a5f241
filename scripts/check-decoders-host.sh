#!/usr/bin/env bash
# Checks the CUDA weight decoders' index and bit math without a GPU: compiles kernels/common.cuh's
# Decoder<T> for every quantized type as host C++ (scripts/host-decoders/stubs.h stands in for
# the CUDA intrinsics) and compares each dequantized value bit for bit with gguf-py's output in
# tests/data/dequant/random.json. Needs g++ and python3. Exits 1 on any mismatch.
#
# What it does not check: the kernels around the decoders (grids, tails, reductions), the
# real intrinsics and nvcc's code generation; `tests/ops.rs` on a GPU does (scripts/gpu-check.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -ffp-contract=off: like the kernels' __fmul_rn/__fadd_rn, no fused multiply-add.
g++ -std=c++17 -O1 -ffp-contract=off -Wall -Wno-unused-function -Wno-unknown-pragmas \
  -include "$root/scripts/host-decoders/stubs.h" -I"$root/scripts/host-decoders/fake" -I"$root/kernels" \
  "$root/scripts/host-decoders/check.cpp" -o "$tmp/check"

python3 - "$root/tests/data/dequant/random.json" >"$tmp/blocks.txt" <<'PY'
import json, sys
for t in json.load(open(sys.argv[1]))["types"]:
    print(t["id"], t["blocks"], t["bytes_hex"], t["values_f32_hex"])
PY

"$tmp/check" <"$tmp/blocks.txt"
