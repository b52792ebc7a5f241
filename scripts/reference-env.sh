#!/usr/bin/env bash
# Creates (or reuses) .venv-ref/ in the repository root: the llama.cpp reference environment
# used to produce test data (token ids, chat renders) that strata must reproduce exactly.
#
#   scripts/reference-env.sh            create or update .venv-ref, then print its python
#   scripts/reference-env.sh --python   print the venv's python path only (creates it first if missing)
#
# llama-cpp-python builds llama.cpp from source (CPU only, about 10 minutes on 2 cores); the
# version is pinned so regenerated data stays comparable. Idempotent: a venv that already has
# the pinned versions is left alone.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
GGUF_VERSION="0.17.1"
NUMPY_VERSION="2.2.6"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-ref"
py="$venv/bin/python"

quiet=0
if [[ "${1:-}" == "--python" ]]; then
    quiet=1
fi

log() {
    if [[ $quiet -eq 0 ]]; then echo "reference-env: $*"; else echo "reference-env: $*" >&2; fi
}

# llama.cpp's own best CPU path for this machine, minus AMX: GGML_NATIVE=ON enables AMX on CPUs
# that report it, and in VMs that do not grant the AMX tile state (Firecracker here) the first
# eval then crashes. AVX-512 (with VNNI) when the CPU has it, else AVX2/FMA/F16C.
cpu_flags() {
    local f="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    f+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then f+=" -DGGML_AVX512=ON"; fi
    if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then f+=" -DGGML_AVX512_VNNI=ON"; fi
    if grep -qw avx_vnni /proc/cpuinfo 2>/dev/null; then f+=" -DGGML_AVX_VNNI=ON"; fi
    echo "$f"
}

have_pinned() {
    [[ -x "$py" ]] && "$py" - "$LLAMA_CPP_PYTHON_VERSION" "$GGUF_VERSION" "$NUMPY_VERSION" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(["llama_cpp_python", "gguf", "numpy"], sys.argv[1:]))
sys.exit(0 if all(version(k) == v for k, v in want.items()) else 1)
PYEOF
}

if ! have_pinned; then
    if [[ ! -x "$py" ]]; then
        log "creating $venv"
        python3 -m venv "$venv"
    fi
    log "installing numpy $NUMPY_VERSION, gguf $GGUF_VERSION"
    "$py" -m pip install --quiet --upgrade pip >&2
    "$py" -m pip install --quiet "numpy==$NUMPY_VERSION" "gguf==$GGUF_VERSION" >&2
    log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (CPU only; this takes a while)"
    start=$(date +%s)
    CMAKE_ARGS="${CMAKE_ARGS:-$(cpu_flags)}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$py" -m pip install --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
    log "llama-cpp-python built in $(( $(date +%s) - start )) s"
    have_pinned || { echo "reference-env: $venv does not have the pinned versions after install" >&2; exit 1; }
else
    log "$venv is up to date"
fi

if [[ $quiet -eq 1 ]]; then
    echo "$py"
else
    log "python: $py"
fi
