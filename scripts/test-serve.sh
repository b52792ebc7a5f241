#!/usr/bin/env bash
# The `strata serve` tests driven by the official `openai` Python package (scripts/test-serve.py),
# as scripts/test.sh runs them: a virtual environment under .venv-serve/ with the pinned client
# (created once; PyPI is needed the first time), the debug `strata` binary (built if missing),
# the default model.
#
#   scripts/test-serve.sh [path/to/strata]
#
# With STRATA_NO_MODEL=1 the tests are counted as skipped (there is no model to serve).
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned client: its request and response types are what the tests hold the server to.
OPENAI_VERSION=3.51.0
VENV=.venv-serve

if [[ ${STRATA_NO_MODEL:-} == 1 ]]; then
  echo "serve tests: skipped: STRATA_NO_MODEL=1 (no model to serve), 1 skipped"
  exit 0
fi

if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
fi

bin=${1:-target/debug/strata}
if [[ $# -eq 0 ]]; then
  cargo build --quiet -p strata-cli
fi
exec "$VENV/bin/python" scripts/test-serve.py "$bin"
