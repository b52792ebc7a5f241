#!/usr/bin/env python3
"""llama.cpp's logits and greedy continuations for the default model, for
crates/strata-model/tests/data/reference/logits.json and greedy.json (the tests in
crates/strata-model/tests/reference.rs hold strata to them).

For each prompt (tokenized by llama.cpp with special tokens, no BOS: SmolLM2 adds none):

- logits.json: the top-10 ids and logits at every prompt position, from one batch of the
  whole prompt (best first; equal logits by lower id);
- greedy.json: the greedy continuation, one token at a time (argmax of the last row), up to
  48 tokens or the end-of-generation token, which is kept in the list; its text; and "forced":
  the prompt and the continuation evaluated again as one batch, where at each step "next" is
  the token greedy chose, "top" the argmax of that batch row and "margin" its top-1 minus
  top-2 logit (where the two evaluations disagree, the margin shows it was a near-tie).

    scripts/make-reference.py            # uses .venv-ref (scripts/reference-env.sh)
    scripts/make-reference.py --check    # regenerate into memory and compare with the files

Both files are {"made_by": ..., "cases": [...]}, written with json.dump(indent=0).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "crates", "strata-model", "tests", "data", "reference")
PROMPTS = [
    "The weather today is",
    "My favorite programming language is",
    # The model's chat template rendered for one system and one user message.
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nName three planets.<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n",
]
TOP = 10
N_GREEDY = 48


def reexec_in_reference_env():
    try:
        import llama_cpp  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        py = subprocess.run([os.path.join(ROOT, "scripts", "reference-env.sh"), "--python"],
                            check=True, capture_output=True, text=True).stdout.strip()
        os.execv(py, [py] + sys.argv)


def made_by():
    from importlib.metadata import version
    return ("scripts/make-reference.py (llama-cpp-python %s, numpy %s; n_ctx 512, n_batch 512, CPU)"
            % (version("llama_cpp_python"), version("numpy")))


def top_ids(row, n):
    import numpy as np
    return [int(i) for i in np.argsort(-row, kind="stable")[:n]]


def main():
    reexec_in_reference_env()
    import numpy as np
    from llama_cpp import Llama

    check = "--check" in sys.argv[1:]
    if not os.path.exists(MODEL):
        subprocess.run([os.path.join(ROOT, "scripts", "fetch-model.sh")], check=True)
    m = Llama(model_path=MODEL, n_ctx=512, n_batch=512, logits_all=True, verbose=False, seed=0)
    # SmolLM2's end of generation (<|im_end|>, id 2); it ends two of the continuations.
    eos = m.token_eos()
    logit_cases, greedy_cases = [], []
    for prompt in PROMPTS:
        ids = [int(i) for i in m.tokenize(prompt.encode(), add_bos=False, special=True)]
        m.reset()
        m.eval(ids)
        positions = []
        for p in range(len(ids)):
            row = np.array(m.scores[p])
            top = top_ids(row, TOP)
            positions.append({"ids": top, "logits": [float(row[i]) for i in top]})
        logit_cases.append({"prompt_ids": ids, "positions": positions})

        greedy = []
        while len(greedy) < N_GREEDY:
            tok = int(np.argmax(m.scores[m.n_tokens - 1]))
            greedy.append(tok)
            if tok == eos:
                break
            m.eval([tok])
        text = m.detokenize([t for t in greedy if t != eos]).decode("utf-8", errors="replace")

        m.reset()
        m.eval(ids + greedy[:-1])
        forced = []
        for i, tok in enumerate(greedy):
            row = np.array(m.scores[len(ids) - 1 + i])
            first, second = top_ids(row, 2)
            forced.append({"next": tok, "top": first, "margin": float(row[first] - row[second])})
        greedy_cases.append({"prompt": prompt, "prompt_ids": ids, "greedy_ids": greedy, "greedy_text": text,
                             "forced": forced})

    docs = {"logits.json": logit_cases, "greedy.json": greedy_cases}
    differ = []
    for name, cases in docs.items():
        path = os.path.join(OUT, name)
        if check:
            with open(path) as f:
                old = json.load(f)
            if old.get("cases") != cases:
                differ.append(name)
            print(f"{name}: {'identical to' if name not in differ else 'DIFFERS from'} {path}")
            continue
        with open(path, "w") as f:
            json.dump({"made_by": made_by(), "cases": cases}, f, indent=0)
        print(f"wrote {path}: {len(cases)} cases")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
