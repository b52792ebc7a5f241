#!/usr/bin/env bash
# GPU check: build here, run on a GPU machine that has no Rust toolchain.
#
#   scripts/gpu-check.sh build   # here: release test and bench binaries with --features cuda
#                                # for sm_90 (H100/H200), stripped, into gpu-bundle/ (ignored)
#   scripts/gpu-check.sh run     # there: device info, copy bandwidths, the GPU report (every
#                                # kernel: max error vs the CPU reference, time, GB/s, fraction
#                                # of the device-to-device copy bandwidth), every CUDA parity
#                                # test, and compute-sanitizer memcheck/racecheck; logs and JSON
#                                # go to $OUT (default ./gpu-out). Fits in about 5 minutes.
#   scripts/gpu-check.sh stream  # there: parity tests and copy bandwidth (quickly), then the
#                                # runtime end to end: synthetic default-shape and llama-7b Q4_0
#                                # models made there by `strata synth`, greedy tokens on the CPU
#                                # and the GPU, and streaming runs of the 7B model at several
#                                # --gpu-memory budgets (auto, --stream, --cpu-layers): tok/s,
#                                # overlap, copy GB/s and the plan's prediction, as JSON in
#                                # $OUT/stream.tgz. About 5 minutes on an H100/H200.
#   scripts/gpu-check.sh next    # there: the `next` kernel set (STRATA_GPU_KERNELS=next) against
#                                # the proven one (decode matvec on 8-bit activations, flash-
#                                # decoding attention, tensor-core prefill matmul and
#                                # attention, fused decode ops, CUDA graphs of the resident
#                                # decode step):
#                                # parity tests (kernels, tensor API, model
#                                # tokens vs the CPU), memcheck on it, the matvec benches of both
#                                # sets at 7B shapes, and `strata bench -p 512 -n 128` on a
#                                # synthetic 7B Q4_0 all resident and at 4 GiB / 2 GiB with each
#                                # set, and `next` with STRATA_CUDA_GRAPHS=0 (all resident
#                                # and 4 GiB). About 7 minutes on an H100/H200.
#   scripts/gpu-check.sh spec    # there: speculative decoding over streamed weights: the
#                                # synthetic 7B at 2 GiB, plain vs --lookup vs a 2-layer draft
#                                # model; tokens per target pass, tok/s, ids equal plain's.
#                                # About 3 minutes.
#
# Set STRATA_CUDA_ARCHS to build for other GPUs (default here: 90).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bundle="$root/gpu-bundle"

build() {
  cd "$root"
  [[ -x .cuda/toolkit/bin/nvcc ]] || scripts/setup-cuda.sh >/dev/null
  eval "$(scripts/setup-cuda.sh --env)"
  export STRATA_CUDA_ARCHS=${STRATA_CUDA_ARCHS:-90}
  rm -rf "$bundle" && mkdir -p "$bundle/bin"
  local list
  list=$(mktemp)
  # Test binaries of the whole workspace and the bench binaries, in release (kernels are always
  # -O3; release makes the CPU reference the tests compare with fast too).
  cargo test --workspace --release --features cuda --no-run --message-format=json-render-diagnostics >"$list"
  cargo bench --workspace --features cuda --no-run --message-format=json-render-diagnostics >>"$list"
  python3 - "$list" "$bundle/bin" <<'PY'
import json, os, shutil, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") != "compiler-artifact" or not exe:
        continue
    kind = m["target"]["kind"][0]
    name = m["target"]["name"]
    if kind == "lib":  # unit tests of a library: none have tests; not worth the bytes
        continue
    # CPU-only binaries stay here: the device tool carries at most 64 MiB.
    if name in ("cpu_ops", "runtime", "cli") or name in seen:
        continue
    seen.add(name)
    dst = os.path.join(sys.argv[2], name)
    shutil.copy2(exe, dst)
    print(f"{kind:6} {name}")
PY
  cargo build --release --features cuda -p strata-cli
  cp "${CARGO_TARGET_DIR:-target}/release/strata" "$bundle/bin/strata"
  strip "$bundle"/bin/*
  cp "$root/scripts/gpu-check.sh" "$bundle/"
  du -sh "$bundle"
  local size
  size=$(du -sm "$bundle" | cut -f1)
  if ((size > 60)); then
    echo "gpu-check: the bundle is ${size} MiB; the device tool carries at most 64 MiB" >&2
    exit 1
  fi
  echo "gpu-check: bundle ready; carry gpu-bundle and run: scripts/gpu-check.sh run"
}

# step NAME TIMEOUT CMD...: runs a step with a time limit, logs it, and records its status.
summary=()
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc=0
  echo "=== $name" | tee -a "$out/check.log"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
  tail -n "${TAIL:-25}" "$out/$name.log"
  summary+=("$(printf '%-22s rc=%-4s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  echo "$name rc=$rc $((SECONDS - t0))s" >>"$out/check.log"
}

run() {
  out=${OUT:-$root/gpu-out}
  mkdir -p "$out"
  local bin="$bundle/bin"
  [[ -d $bin ]] || { echo "gpu-check: no $bin; run 'scripts/gpu-check.sh build' first" >&2; exit 1; }
  cd "$bundle"
  # The bundle carries no model (the device tool's 64 MiB): the tests that need it are counted
  # as skipped instead of failing.
  export STRATA_NO_MODEL=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$out/device.txt"
  step start 30 "$bin/kernels" --list
  # About 150 cases since every weight type has kernels (79 before the K-quants): 300 s.
  TAIL=170 step report 300 "$bin/gpu_report" --json "$out/report.json"
  if [[ -x $bin/copy_bandwidth ]]; then TAIL=30 step copy 90 "$bin/copy_bandwidth" --json "$out/copy.json"; fi
  # One criterion CUDA bench case per decoder family, to show the bench runs there (the report
  # above has them all): a 32-value block type and a 256-value super-block type.
  TAIL=8 step criterion 60 "$bin/cuda_ops" --bench "matvec q4_0 4096x4096"
  TAIL=8 step criterion-k 60 "$bin/cuda_ops" --bench "matvec q4_K 4096x4096"
  local t
  for t in "$bin"/*; do
    case $(basename "$t") in gpu_report | cuda_ops | cpu_ops | copy_bandwidth | *_bench) continue ;; esac
    TAIL=6 step "test-$(basename "$t")" 120 "$t" --test-threads 8
  done
  if command -v compute-sanitizer >/dev/null; then
    TAIL=6 step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/kernels" --test-threads 4 cuda
    TAIL=6 step memcheck-tensor 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/tensor" --test-threads 4
    # Kernels that use shared memory: matmul, attention, rmsnorm, softmax/argmax.
    TAIL=6 step racecheck 150 env STRATA_TEST_CASES=2 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/kernels" --test-threads 4 \
      ops::matmul::cuda ops::attention_decode::cuda ops::attention_prefill::cuda ops::rmsnorm::cuda ops::softmax_rows::cuda ops::argmax_rows::cuda
    TAIL=6 step racecheck-paged 120 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/tensor" --test-threads 4 paged::paged_attention::cuda
  else
    summary+=("sanitizer: skipped: compute-sanitizer not on PATH")
  fi
  echo "=== summary"
  printf '%s\n' "${summary[@]}" | tee -a "$out/check.log"
  # The device tool brings back at most 8 files: keep the JSON and the summary, pack the logs.
  (cd "$out" && tar czf logs.tgz ./*.log && find . -maxdepth 1 -name '*.log' ! -name check.log -delete)
}

# prepare DIR: the output folder (with DIR for the JSON lines), the bundle's binaries in the
# caller's `bin`, `S` (strata) and `tmp` (synthetic models), and the card's state on record.
prepare() {
  out=${OUT:-$root/gpu-out}
  mkdir -p "$out/$1"
  bin="$bundle/bin" S="$bundle/bin/strata" tmp=${TMPDIR:-/tmp}/strata-gpu
  [[ -x $S ]] || { echo "gpu-check: no $S; run 'scripts/gpu-check.sh build' first" >&2; exit 1; }
  mkdir -p "$tmp"
  cd "$bundle"
  export STRATA_NO_MODEL=1 # no model in the bundle; see run()
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/device.txt" || true
}

# finish DIR: the summary, then DIR and the logs packed into DIR.tgz (the device tool brings
# back few files).
finish() {
  echo "=== summary"
  printf '%s\n' "${summary[@]}" | tee -a "$out/check.log"
  (cd "$out" && tar czf "$1.tgz" "$1" ./*.log && rm -rf "$1" && find . -maxdepth 1 -name '*.log' ! -name check.log -delete)
}

# The runtime end to end (see the top). Every `strata run` writes one JSON line.
stream() {
  local bin S tmp
  prepare stream
  # STRATA_GPU_QUICK=1 (a re-run after a fix) skips the kernel and tensor parity tests and the
  # 7B CPU run (synthetic models are deterministic: the first run's CPU tokens still hold).
  local quick=${STRATA_GPU_QUICK:-0}
  if [[ $quick != 1 ]]; then
    TAIL=4 step test-kernels 90 "$bin/kernels" --test-threads 8 cuda
    TAIL=4 step test-tensor 60 "$bin/tensor" --test-threads 8
  fi
  TAIL=12 step test-model-gpu 90 "$bin/model" --test-threads 4 gpu:: --nocapture
  if [[ -x $bin/copy_bandwidth ]]; then TAIL=12 step copy 60 "$bin/copy_bandwidth" --json "$out/copy.json"; fi
  TAIL=3 step synth-small 60 "$S" synth --preset smollm2-135m --dtype q4_1 --seed 1 --out "$tmp/smol.gguf"
  TAIL=3 step synth-7b 120 "$S" synth --preset llama-7b --dtype q4_0 --seed 1 --out "$tmp/l7b.gguf"
  local p32 p512 common
  p32=$(printf 'The quick brown fox jumps over.')
  # 512 bytes of ASCII: 512 tokens for the byte-level vocabulary of synthetic models.
  p512=$(printf '%.0sStreaming layers overlap copies with compute. ' {1..12} | head -c 512)
  common=(-t 0 -n 32 --ignore-eos --json)
  TAIL=2 step smol-cpu 120 sh -c "'$S' run -m '$tmp/smol.gguf' --device cpu ${common[*]} -p '$p32' > '$out/stream/smol-cpu.json'"
  TAIL=2 step smol-cuda 60 sh -c "'$S' run -m '$tmp/smol.gguf' --device cuda ${common[*]} -p '$p32' > '$out/stream/smol-cuda.json'"
  [[ $quick == 1 ]] || TAIL=2 step l7b-cpu 200 sh -c "'$S' run -m '$tmp/l7b.gguf' --device cpu --context 640 ${common[*]} -p '$p32' > '$out/stream/l7b-cpu.json'"
  # Hybrid decode (issue 15): at each cap, `auto` is the planner's choice (now a hybrid split,
  # streamed layers among cpu layers, where the bandwidths favour it), `stream` pure streaming,
  # `cpu` pure cpu layers, side by side. Each JSON line has the plan (predicted
  # `hybrid_efficiency`) and `stats.decode.hybrid_efficiency` (measured).
  local mem mode flag prompt
  for mem in unlimited 4GiB 2GiB 1GiB; do
    for mode in auto stream cpu; do
      case $mode in auto) flag="" ;; stream) flag="--stream" ;; cpu) flag="--cpu-layers" ;; esac
      [[ $mem == unlimited && $mode != auto ]] && continue
      # Layers on the CPU make a 512-token prefill slow: give them a 64-token prompt.
      prompt=$p512
      [[ $mode == cpu ]] && prompt=${p512:0:64}
      local cap=""
      [[ $mem != unlimited ]] && cap="--gpu-memory $mem"
      TAIL=3 step "l7b-$mem-$mode" 150 sh -c "'$S' run -m '$tmp/l7b.gguf' --device cuda $cap $flag --context 640 --batch 256 ${common[*]} -p '$prompt' > '$out/stream/l7b-$mem-$mode.json'"
    done
  done
  # Prefill placement (issue 15): the cpu-layer plans with prompt passes that stream the cpu
  # layers (a 512-token prompt, --prefill-stream-min 32) and that do not (`off`, a 64-token
  # prompt: on the CPU a 512-token one takes minutes); compare stats.prefill.tokens_per_second.
  local pf
  for mem in 2GiB 1GiB; do
    for pf in 32 off; do
      prompt=$p512
      [[ $pf == off ]] && prompt=${p512:0:64}
      TAIL=3 step "l7b-$mem-cpu-prefill-$pf" 150 sh -c "'$S' run -m '$tmp/l7b.gguf' --device cuda --gpu-memory $mem --cpu-layers --prefill-stream-min $pf --context 640 --batch 256 ${common[*]} -p '$prompt' > '$out/stream/l7b-$mem-cpu-prefill-$pf.json'"
    done
  done
  if command -v nsys >/dev/null; then
    # STRATA_NVTX=1: ranges are recorded only when asked for or when nsys injects NVTX.
    TAIL=5 step nsys 120 nsys profile --trace=cuda,nvtx --force-overwrite=true -o "$out/stream-decode" \
      env STRATA_NVTX=1 "$S" run -m "$tmp/l7b.gguf" --device cuda --gpu-memory 2GiB --stream --context 640 -t 0 -n 4 --ignore-eos -p "$p32"
  else
    summary+=("nsys: skipped: nsys not on PATH")
  fi
  finish stream
}

# The `next` kernel set against the proven one (see the top).
next() {
  local bin S tmp
  prepare next
  TAIL=8 step next-kernels 60 "$bin/kernels" --test-threads 8 matvec_q8 attention_mma
  TAIL=8 step next-tensor 60 "$bin/tensor" --test-threads 8 _next_cuda
  TAIL=12 step next-model 120 env STRATA_GPU_KERNELS=next "$bin/model" --test-threads 4 gpu:: --nocapture
  if command -v compute-sanitizer >/dev/null; then
    TAIL=6 step next-memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/tensor" --test-threads 4 _next_cuda
    TAIL=6 step next-racecheck 120 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/tensor" --test-threads 4 attention_decode_next_cuda attention_prefill_next_cuda matmul_next_cuda fused_decode_next_cuda
  else
    summary+=("sanitizer: skipped: compute-sanitizer not on PATH")
  fi
  if [[ -x $bin/copy_bandwidth ]]; then TAIL=12 step copy 60 "$bin/copy_bandwidth" --json "$out/copy.json"; fi
  # Both sets' decode matvecs, the next prefill matmul (TF32 tensor cores) and the prefill
  # attentions (proven, tiled on CUDA cores, mma on f16 tensor cores) at the 7B shapes:
  # criterion prints GB/s (the matvecs against the copy bandwidth above); the matmul's flops
  # are 2 x rows x cols x 512 per call, the attention's 4 x 32 x 128 x 512 x 513 / 2 = 4.3
  # GFLOP per call (against ~990 TFLOP/s dense f16 for mma). The fused
  # decode ops (matvec_q8_add, matvec_q8_glu, rmsnorm_quantize_q8) beside what they replace
  # (matvec_q8 of the same shapes, silu_mul 11008, rmsnorm 1x4096).
  TAIL=150 step next-bench 300 "$bin/cuda_ops" --bench "((matvec.*|matmul_tc) (q4_0|q4_K|q6_K|q8_0) (4096x4096|11008x4096|4096x11008|32000x4096)|attention_prefill(_tiled|_mma)? f16 kv 32/32x128 T=512|matvec_q8_glu (silu|gelu) .*|rmsnorm_quantize_q8 .*|rmsnorm f32 1x4096|silu_mul f32 11008$)"
  TAIL=3 step synth-7b 120 "$S" synth --preset llama-7b --dtype q4_0 --seed 1 --out "$tmp/l7b.gguf"
  local set mem cap
  for set in proven next; do
    for mem in unlimited 4GiB 2GiB; do
      cap=""
      [[ $mem != unlimited ]] && cap="--gpu-memory $mem"
      TAIL=12 step "bench-$set-$mem" 150 sh -c "STRATA_GPU_KERNELS=$set '$S' bench -m '$tmp/l7b.gguf' --device cuda $cap -p 512 -n 128 -r 2 --json > '$out/next/bench-$set-$mem.json'"
    done
  done
  # CUDA graphs of the resident decode step (on by default under `next`): the same runs with
  # them off, so decode tok/s with and without graphs come from one session (all resident, and
  # at 4 GiB where a resident prefix is graphed and the streamed layers follow it).
  for mem in unlimited 4GiB; do
    cap=""
    [[ $mem != unlimited ]] && cap="--gpu-memory $mem"
    TAIL=12 step "bench-next-nographs-$mem" 150 sh -c "STRATA_GPU_KERNELS=next STRATA_CUDA_GRAPHS=0 '$S' bench -m '$tmp/l7b.gguf' --device cuda $cap -p 512 -n 128 -r 2 --json > '$out/next/bench-next-nographs-$mem.json'"
  done
  finish next
}

# Speculative decoding over streamed weights (issue 15 section 2): the synthetic 7B Q4_0 at
# --gpu-memory 2GiB, plain greedy, `--lookup` (its default setting) and `--draft-model` with the
# same shape and seed cut to 2 layers (resident beside it), 64 tokens each, one JSON line per
# run with `speculative` (tokens per target pass, acceptance, draft and verify time) and the
# decode tok/s. Random weights: the 2-layer draft agrees with the 32-layer target only by
# chance, so its line measures the cost of a round more than the gain; random models fall into
# cycles that `--lookup` can follow. Every run must give plain greedy's ids (checked below).
spec() {
  local bin S tmp
  prepare spec
  TAIL=3 step synth-7b 120 "$S" synth --preset llama-7b --dtype q4_0 --seed 1 --out "$tmp/l7b.gguf"
  TAIL=3 step synth-7b-2l 60 "$S" synth --preset llama-7b --dtype q4_0 --seed 1 --layers 2 --out "$tmp/l7b-2l.gguf"
  local p32 common name flag
  p32=$(printf 'The quick brown fox jumps over.')
  common=(--device cuda --gpu-memory 2GiB --context 640 -t 0 -n 64 --ignore-eos --stats --json)
  for name in plain lookup draft; do
    case $name in plain) flag="" ;; lookup) flag="--lookup" ;; draft) flag="--draft-model '$tmp/l7b-2l.gguf'" ;; esac
    TAIL=3 step "spec-2GiB-$name" 200 sh -c "'$S' run -m '$tmp/l7b.gguf' ${common[*]} $flag -p '$p32' > '$out/spec/spec-2GiB-$name.json'"
  done
  TAIL=6 step spec-same-ids 10 python3 - "$out/spec" <<'PY'
import json, os, sys
d = sys.argv[1]
runs = {n: json.load(open(os.path.join(d, f"spec-2GiB-{n}.json"))) for n in ("plain", "lookup", "draft")}
ok = True
for n, r in runs.items():
    s = r.get("speculative") or {}
    tps = r.get("stats", {}).get("decode", {}).get("tokens_per_second")
    same = r["generated_ids"] == runs["plain"]["generated_ids"]
    ok &= same
    print(f"{n:7} decode {tps} tok/s, {s.get('tokens_per_target_pass', 1.0)} tokens/pass, ids equal plain: {same}")
sys.exit(0 if ok else 1)
PY
  finish spec
}

case ${1:-} in
  build) build ;;
  run) run ;;
  stream) stream ;;
  next) next ;;
  spec) spec ;;
  *) echo "usage: scripts/gpu-check.sh build|run|stream|next|spec (see the comment at the top)" >&2; exit 2 ;;
esac
