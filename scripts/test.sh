#!/usr/bin/env bash
# The test command (the README's, and what CI runs through .ci/run):
#   the default model (a failed fetch fails the run), formatting, clippy with and without
#   `cuda`, the library docs (rustdoc with warnings denied: no broken links), the workspace
#   tests (doctests included), the library examples and the `strata serve` tests
#   (scripts/test-serve.sh: the pinned `openai` client, PyPI the first time) without `cuda`,
#   then the CUDA toolchain (scripts/setup-cuda.sh) and the workspace tests with `cuda`. On a
#   machine without a GPU the CUDA tests print `skipped: ...` and pass; each test binary says
#   how many were skipped and why.
#
# Variables:
#   STRATA_SKIP_CUDA=1  skip the CUDA half (toolchain, clippy and tests with `cuda`): on a
#                       machine without a GPU it only builds and skips (~10 minutes). CI never
#                       sets it.
#   STRATA_NO_MODEL=1   this machine has no model: no fetch, and the tests that need the model
#                       are counted as skipped instead of failing. CI never sets it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's header says when it began (minutes into the run), so a slow step shows in the log.
say() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

if [[ ${STRATA_NO_MODEL:-} == 1 ]]; then
  say "default model: not fetched (STRATA_NO_MODEL=1: the tests that need it are skipped)"
else
  say "default model (the tests that need it fail without it; STRATA_NO_MODEL=1 skips them)"
  # The default model, and Gemma 3 270M for the tests of its K-quant tensors.
  for name in smollm2 gemma3-270m; do
    if ! scripts/fetch-model.sh "$name"; then
      echo "test: could not fetch the model $name; fix the download, or set STRATA_NO_MODEL=1 to run without models" >&2
      exit 1
    fi
  done
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "clippy (no cuda)"
cargo clippy --workspace --all-targets -- -D warnings

say "rustdoc (no cuda): the library docs build without a warning (no broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

say "tests (no cuda)"
cargo test --workspace

if [[ ${STRATA_NO_MODEL:-} != 1 ]]; then
  # `cargo test` has just built the examples (and the `strata` binary below) with the
  # workspace's features; `cargo run -p strata-model` would resolve features for that one
  # package and rebuild the workspace (minutes on 2 cores, in the last CI log).
  say "library examples on the default model (no cuda)"
  for example in generate score plan batch; do
    bin=${CARGO_TARGET_DIR:-target}/debug/examples/$example
    if [[ ! -x $bin ]]; then
      echo "test: $bin is missing: cargo test should have built the example $example" >&2
      exit 1
    fi
    echo "--- example $example"
    "$bin"
  done
fi

say "strata serve through the openai Python client (no cuda; skipped with STRATA_NO_MODEL=1)"
scripts/test-serve.sh "${CARGO_TARGET_DIR:-target}/debug/strata"

if [[ ${STRATA_SKIP_CUDA:-} == 1 ]]; then
  say "CUDA half skipped (STRATA_SKIP_CUDA=1): no CUDA clippy, no CUDA tests"
  exit 0
fi

say "CUDA toolchain"
scripts/setup-cuda.sh >/dev/null
eval "$(scripts/setup-cuda.sh --env)"

say "clippy (cuda)"
cargo clippy --workspace --all-targets --features cuda -- -D warnings

say "tests (cuda)"
cargo test --workspace --features cuda
