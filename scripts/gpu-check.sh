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
    if kind == "lib":  # unit tests of a library
        name = name + "-unit"
    if name in seen:
        continue
    seen.add(name)
    dst = os.path.join(sys.argv[2], name)
    shutil.copy2(exe, dst)
    print(f"{kind:6} {name}")
PY
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
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$out/device.txt"
  step start 30 "$bin/kernels" --list
  TAIL=80 step report 150 "$bin/gpu_report" --json "$out/report.json"
  if [[ -x $bin/copy_bandwidth ]]; then TAIL=30 step copy 90 "$bin/copy_bandwidth" --json "$out/copy.json"; fi
  # One criterion CUDA bench case, to show the bench runs there (the report above has them all).
  TAIL=8 step criterion 60 "$bin/cuda_ops" --bench "matvec q4_0 4096x4096"
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
  else
    summary+=("sanitizer: skipped: compute-sanitizer not on PATH")
  fi
  echo "=== summary"
  printf '%s\n' "${summary[@]}" | tee -a "$out/check.log"
  # The device tool brings back at most 8 files: keep the JSON and the summary, pack the logs.
  (cd "$out" && tar czf logs.tgz ./*.log && find . -maxdepth 1 -name '*.log' ! -name check.log -delete)
}

case ${1:-} in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/gpu-check.sh build|run (see the comment at the top)" >&2; exit 2 ;;
esac
