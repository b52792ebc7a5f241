#!/usr/bin/env python3
"""llama.cpp's reference data for a model of another architecture (gemma3, qwen2, qwen3 …), and
the float64 oracle's logits for the same token ids, for crates/strata-model/tests/data/reference:

    scripts/make-arch-reference.py MODEL NAME [--made-from TEXT]

writes NAME.json (llama.cpp, via llama-cpp-python) and f64_NAME.json (scripts/f64-forward.py).

NAME.json: {"made_by", "model", "model_sha256", "made_from" (how MODEL itself was made, when
it is not a downloaded file), "ignore_eos": true, "cases": [...]}, each case:

- "prompt", "prompt_ids": the prompt tokenized by llama.cpp with its special tokens, BOS
  included where the model's vocabulary asks for it (tokenizer.ggml.add_bos_token);
- "positions": at every prompt position, llama.cpp's top-10 "ids" and "logits" and its own
  top-2 "margin" (logit of the best minus the second best);
- "greedy_ids", "greedy_margins": 16 greedy tokens after the prompt (end-of-generation tokens
  do not stop it) and llama.cpp's top-2 margin at each step.

Tests compare top-1 and greedy tokens only where llama.cpp's margin is clear (>= 0.5): below
that, its own rounding noise can order the two either way.

Uses .venv-ref (scripts/reference-env.sh), re-executing itself there.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "crates", "strata-model", "tests", "data", "reference")
N_GREEDY = 16
TOP_K = 10

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "In the middle of the valley there was a small town with a river running through it. "
    "Every morning the baker opened his shop before sunrise, and the smell of fresh bread "
    "drifted along the narrow streets.",
    "Water boils at 100 degrees Celsius. Ice melts at",
]


def reexec_in_reference_env():
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        py = subprocess.run([os.path.join(ROOT, "scripts", "reference-env.sh"), "--python"],
                            check=True, capture_output=True, text=True).stdout.strip()
        os.execv(py, [py] + sys.argv)


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def top(row, k):
    import numpy as np
    order = np.argsort(-row, kind="stable")[:k]
    return [int(i) for i in order], [float(row[i]) for i in order]


def llama_cpp_cases(model_path):
    import numpy as np
    from llama_cpp import Llama
    m = Llama(model_path=model_path, n_ctx=512, n_batch=512, logits_all=True, verbose=False, seed=0)
    cases = []
    for prompt in PROMPTS:
        # add_bos=True is llama.cpp's add_special: BOS only where the vocabulary asks for it.
        ids = m.tokenize(prompt.encode(), add_bos=True, special=True)
        m.reset()
        m.eval(ids)
        positions = []
        for p in range(len(ids)):
            row = np.array(m.scores[p], dtype=np.float64)
            top_ids, top_logits = top(row, TOP_K)
            positions.append({"ids": top_ids, "logits": top_logits, "margin": top_logits[0] - top_logits[1]})
        greedy, margins = [], []
        for _ in range(N_GREEDY):
            row = np.array(m.scores[m.n_tokens - 1], dtype=np.float64)
            top_ids, top_logits = top(row, 2)
            greedy.append(top_ids[0])
            margins.append(top_logits[0] - top_logits[1])
            m.eval([top_ids[0]])
        cases.append({"prompt": prompt, "prompt_ids": [int(i) for i in ids], "positions": positions,
                      "greedy_ids": greedy, "greedy_margins": margins})
        print(f"make-arch-reference: {len(ids)} prompt tokens, greedy {greedy}", file=sys.stderr)
    return cases


def main():
    reexec_in_reference_env()
    import llama_cpp
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("name", help="output names: NAME.json and f64_NAME.json")
    ap.add_argument("--made-from", help="how MODEL was made (e.g. the strata commit and synth command)")
    args = ap.parse_args()
    model = os.path.abspath(args.model)
    out = os.path.join(OUT_DIR, args.name + ".json")
    out_f64 = os.path.join(OUT_DIR, "f64_" + args.name + ".json")
    command = f"scripts/make-arch-reference.py {os.path.basename(model)} {args.name}"
    doc = {"made_by": f"{command} (llama-cpp-python {llama_cpp.__version__})",
           "model": os.path.basename(model), "model_sha256": sha256(model)}
    if args.made_from:
        doc["made_from"] = args.made_from
    doc["ignore_eos"] = True
    doc["cases"] = llama_cpp_cases(model)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"make-arch-reference: wrote {out}", file=sys.stderr)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "f64-forward.py"), model, "--cases", out,
                    "--out", out_f64, "--made-by", f"{command} via scripts/f64-forward.py --cases {args.name}.json"],
                   check=True)


if __name__ == "__main__":
    main()
