#!/usr/bin/env bash
# The test command (the README's, and what CI runs through .ci/run):
#   formatting, clippy with and without `cuda`, the workspace tests (doctests included) and the
#   library examples without `cuda`, then the
#   CUDA toolchain (scripts/setup-cuda.sh) and the workspace tests with `cuda`. On a machine
#   without a GPU the CUDA tests print `skipped: ...` and pass; the test binaries say how many
#   were skipped and why.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

say "default model (tests that need it skip without it)"
scripts/fetch-model.sh || echo "test: could not fetch the default model; model tests will print skipped" >&2

say "cargo fmt --check"
cargo fmt --all -- --check

say "clippy (no cuda)"
cargo clippy --workspace --all-targets -- -D warnings

say "tests (no cuda)"
cargo test --workspace

say "library examples on the default model (no cuda)"
cargo run -p strata-model --example generate
cargo run -p strata-model --example score
cargo run -p strata-model --example plan

say "CUDA toolchain"
scripts/setup-cuda.sh >/dev/null
eval "$(scripts/setup-cuda.sh --env)"

say "clippy (cuda)"
cargo clippy --workspace --all-targets --features cuda -- -D warnings

say "tests (cuda)"
cargo test --workspace --features cuda
