#!/usr/bin/env bash
# Installs the CUDA 13.0 toolchain strata's `cuda` feature builds with, from PyPI, into the
# git-ignored folder .cuda/ of this repository, and libclang (for bindgen) from Debian if it is
# missing. Idempotent: a second run checks and returns quickly.
#
# The GPU machines' driver is CUDA 13.0 (580.x), so the toolkit is pinned to 13.0.x: PTX from a
# newer toolkit may not load there.
#
# Usage:  scripts/setup-cuda.sh            # install, then print the environment to use
#         eval "$(scripts/setup-cuda.sh --env)"   # only print `export` lines (after installing)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cuda/venv"
toolkit="$venv/lib/python3.11/site-packages/nvidia/cu13"
py=${PYTHON:-python3}

packages=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-cccl==13.0.85"
)

log() { [[ ${quiet:-0} == 1 ]] || echo "setup-cuda: $*" >&2; }

install_toolkit() {
  if [[ -x $toolkit/bin/nvcc && -f $toolkit/lib/libcudart_static.a ]]; then
    log "CUDA toolkit present at $toolkit"
    return
  fi
  log "installing the CUDA 13.0 toolchain from PyPI into $venv (about 300 MB)"
  # The python that made the venv must match the path above (python3.11).
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
  # Some wheels ship the toolkit root under a different python minor: find nvcc wherever it is.
  if [[ ! -x $toolkit/bin/nvcc ]]; then
    found=$(find "$venv" -path '*/nvidia/cu13/bin/nvcc' -print -quit)
    [[ -n $found ]] || { echo "setup-cuda: nvcc not found after install" >&2; exit 1; }
    ln -sfn "$(dirname "$(dirname "$found")")" "$root/.cuda/toolkit"
  else
    ln -sfn "$toolkit" "$root/.cuda/toolkit"
  fi
  chmod +x "$root/.cuda/toolkit/bin/"* "$root/.cuda/toolkit/nvvm/bin/"* 2>/dev/null || true
}

install_libclang() {
  # bindgen loads libclang.so (or libclang-NN.so.1); libclang-cpp.so alone does not do.
  if ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' || compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null; then
    log "libclang present"
    return
  fi
  log "installing libclang-dev (bindgen needs it)"
  local sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libclang-dev >/dev/null
}

print_env() {
  local tk="$root/.cuda/toolkit"
  echo "export CUDA_PATH=\"$tk\""
  echo "export NVCC=\"$tk/bin/nvcc\""
  echo "export PATH=\"$tk/bin:\$PATH\""
}

if [[ ${1:-} == --env ]]; then
  quiet=1
  [[ -x $root/.cuda/toolkit/bin/nvcc ]] || { echo "setup-cuda: run scripts/setup-cuda.sh first" >&2; exit 1; }
  print_env
  exit 0
fi

install_toolkit
[[ -L $root/.cuda/toolkit ]] || ln -sfn "$toolkit" "$root/.cuda/toolkit"
install_libclang
"$root/.cuda/toolkit/bin/nvcc" --version | tail -n 2 >&2
log "done. Use this environment (build.rs also finds .cuda/toolkit on its own):"
print_env
