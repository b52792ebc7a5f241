#!/usr/bin/env bash
# strata against llama.cpp on the CPU: same model file, same threads, same prompt text and token
# counts, in one run. The engines are interleaved in rounds (llama.cpp, strata exact, strata
# fast; every round runs all three before the next starts), so a slow minute on a shared
# machine hits all engines alike. Prints every run, then the median per engine, with the CPU
# model and its SIMD flags beside the numbers.
#
#   scripts/bench-cpu.sh [MODEL] [THREADS=2] [ROUNDS=3]
#
# MODEL: a .gguf path, or `default` (models/SmolLM2-135M-Instruct.Q4_1.gguf, the default), or
# `gemma3-270m` (models/gemma-3-270m-q4_k_m.gguf), or `qwen3moe` / `mixtral` (the
# mixture-of-experts test models derived from the default model with `strata synth --derive`,
# made in target/bench-models/ when missing); a missing named model is fetched with
# scripts/fetch-model.sh. Environment: LLAMA_CPP_PYTHON=path (the python with llama-cpp-python;
# default .venv-ref), PROMPT_REPS (repetitions of the prompt sentence, default 26: about 440
# tokens with the default model's tokenizer), GEN_TOKENS (default 128), STRATA_BASE=path (another
# strata binary, e.g. a copy built from main before a change: its exact and fast paths run in
# the same rounds as `base-exact` and `base-fast`, so a change is measured against its base
# under the same load).
#
# strata runs `strata run --json` on the prompt text (greedy, --ignore-eos, --warmup: one
# untimed pass first so the weights are in the caches); llama.cpp runs scripts/llama-cpp-bench.py
# (llama-cpp-python, one warm-up eval, then the same prompt and greedy loop). Both compute the
# logits of the last position only. A benchmark, not a test: nothing asserts on the numbers; an
# engine that cannot run the model is reported as failed and the others still run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

model_arg=default
if [[ $# -gt 0 && ! ${1} =~ ^[0-9]+$ ]]; then
  model_arg=$1
  shift
fi
threads=${1:-2}
rounds=${2:-3}
gen=${GEN_TOKENS:-128}
reps=${PROMPT_REPS:-26}

case $model_arg in
  default | smollm2) model=models/SmolLM2-135M-Instruct.Q4_1.gguf; fetch=smollm2 ;;
  gemma3-270m) model=models/gemma-3-270m-q4_k_m.gguf; fetch=gemma3-270m ;;
  qwen3moe | mixtral) model=target/bench-models/$model_arg-derived.gguf; fetch="" ;;
  *) model=$model_arg; fetch="" ;;
esac
if [[ $model_arg == qwen3moe || $model_arg == mixtral ]] && [[ ! -f $model ]]; then
  cargo build --release --quiet -p strata-cli
  mkdir -p target/bench-models
  target/release/strata synth --derive "$model_arg" --from models/SmolLM2-135M-Instruct.Q4_1.gguf -o "$model"
fi
if [[ ! -f $model ]]; then
  [[ -n $fetch ]] || { echo "bench-cpu: no model file $model" >&2; exit 1; }
  scripts/fetch-model.sh "$fetch"
fi
py=${LLAMA_CPP_PYTHON:-$(scripts/reference-env.sh --python)}
cargo build --release --quiet -p strata-cli

prompt=$(for ((i = 0; i < reps; i++)); do printf 'The quick brown fox jumps over the lazy dog, and the weather today is mild. '; done)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
flags=""
for f in avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx_vnni amx_tile; do
  if grep -qw "$f" /proc/cpuinfo; then flags+="$f "; fi
done
machine="CPU: $cpu, $(nproc) CPUs online; SIMD flags: ${flags% }"
results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "model $model, $threads threads, $rounds rounds, prompt of $reps sentences, $gen greedy tokens"
echo "$machine"
printf '%-14s %5s %8s %12s %10s %12s\n' engine round prompt "prompt tok/s" generated "gen tok/s"
row() { # engine round json-line
  python3 -c "
import json, sys
engine, rnd, line = sys.argv[1:4]
t = json.loads(line)
t = t.get('timings', t)
r = {'engine': engine, 'round': int(rnd), 'prompt_tokens': t['prompt_tokens'], 'pp': t['prompt_tokens_per_second'],
     'generated': t['generated_tokens'], 'tg': t['generation_tokens_per_second']}
print(json.dumps(r), file=open(sys.argv[4], 'a'))
print(f\"{engine:<14} {rnd:>5} {r['prompt_tokens']:>8} {r['pp']:>12.1f} {r['generated']:>10} {r['tg']:>12.1f}\")
" "$1" "$2" "$3" "$results"
}
failed() { printf '%-14s %5s   failed: %s\n' "$1" "$2" "$3"; }

for ((r = 1; r <= rounds; r++)); do
  if out=$("$py" scripts/llama-cpp-bench.py "$model" "$threads" "$prompt" "$gen" 2>&1 | tail -n1) && [[ $out == \{* ]]; then
    row llama.cpp "$r" "$out"
  else
    failed llama.cpp "$r" "$out"
  fi
  for k in exact fast ${STRATA_BASE:+base-exact base-fast}; do
    bin=target/release/strata name=strata-$k
    if [[ $k == base-* ]]; then bin=$STRATA_BASE name=$k; fi
    if out=$(RAYON_NUM_THREADS=$threads "$bin" --cpu-kernels "${k#base-}" run -m "$model" --device cpu --warmup \
      -p "$prompt" -t 0 -n "$gen" --ignore-eos --json 2>&1 | tail -n1) && [[ $out == \{* ]]; then
      row "$name" "$r" "$out"
    else
      failed "$name" "$r" "$out"
    fi
  done
done

echo
echo "median of $rounds rounds ($machine):"
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'engine':<14} {'prompt tok/s':>24}  {'gen tok/s':>24}")
for engine in ("llama.cpp", "strata-exact", "strata-fast", "base-exact", "base-fast"):
    rs = [r for r in rows if r["engine"] == engine]
    if not rs:
        if engine.startswith("base-"):
            continue
        print(f"{engine:<14} {'(no successful run)':>24}")
        continue
    pp, tg = [r["pp"] for r in rs], [r["tg"] for r in rs]
    fmt = lambda v: f"{statistics.median(v):.1f} [{' '.join(f'{x:.1f}' for x in v)}]"
    print(f"{engine:<14} {fmt(pp):>24}  {fmt(tg):>24}")
PY
