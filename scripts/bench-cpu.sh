#!/usr/bin/env bash
# strata against llama.cpp on the CPU: same model, same threads, same prompt and token counts,
# run alternately in one go, each REPS times. Prints a table of prompt and generation tok/s.
#
#   scripts/bench-cpu.sh [THREADS=2] [REPS=3]   # LLAMA_CPP_PYTHON=path: use that python
#
# Both engines run one untimed warm-up pass first (strata --warmup; the llama.cpp script evals
# four tokens), so neither pays for reading the weights into the caches in its timings.
# Needs the reference environment (scripts/reference-env.sh, ~10 minutes once) and builds
# strata in release. A benchmark, not a test: nothing asserts on the numbers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=${1:-2}
reps=${2:-3}
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $model ]] || scripts/fetch-model.sh
py=${LLAMA_CPP_PYTHON:-$(scripts/reference-env.sh --python)}
cargo build --release --quiet -p strata-cli
short="The weather today is"
long=$(printf '%.0sThe quick brown fox jumps over the lazy dog, and the weather today is mild. ' {1..20})
echo "model $model, $threads threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs"
printf '%-12s %-6s %8s %12s %10s %12s\n' engine prompt tokens "prompt tok/s" generated "gen tok/s"
for ((i = 0; i < reps; i++)); do
  for p in short long; do
    text=${!p}
    for k in fast exact; do
      RAYON_NUM_THREADS=$threads target/release/strata --cpu-kernels $k run -m "$model" --device cpu --warmup -p "$text" -t 0 -n 64 --ignore-eos --json 2>/dev/null |
        tail -n1 | python3 -c "import json,sys; r=json.load(sys.stdin); t=r['timings']; print(f\"{'strata-$k':<12} {'$p':<6} {t['prompt_tokens']:>8} {t['prompt_tokens_per_second']:>12.1f} {t['generated_tokens']:>10} {t['generation_tokens_per_second']:>12.1f}\")"
    done
    "$py" scripts/llama-cpp-bench.py "$model" "$threads" "$text" 64 2>/dev/null |
      python3 -c "import json,sys; t=json.load(sys.stdin); print(f\"{'llama.cpp':<12} {'$p':<6} {t['prompt_tokens']:>8} {t['prompt_tokens_per_second']:>12.1f} {t['generated_tokens']:>10} {t['generation_tokens_per_second']:>12.1f}\")"
  done
done
