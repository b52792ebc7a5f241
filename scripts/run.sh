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

[[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]] || scripts/fetch-model.sh

features=${STRATA_FEATURES-auto}
if [[ $features == auto ]]; then
  features=""
  if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so' || [[ -e /proc/driver/nvidia/version ]]; then
    features=cuda
  fi
fi
if [[ $features == cuda ]]; then
  [[ -x .cuda/toolkit/bin/nvcc ]] || scripts/setup-cuda.sh >/dev/null
  eval "$(scripts/setup-cuda.sh --env)"
  cargo build --release --quiet --features cuda -p strata-cli
else
  cargo build --release --quiet -p strata-cli
fi

if [[ ${1:-} == -- ]]; then
  shift
  exec target/release/strata "$@"
fi
prompt=${1:-"What are the three primary colors? Answer in one sentence."}
exec target/release/strata run --chat --prompt "$prompt" --temperature 0 --max-tokens 128
