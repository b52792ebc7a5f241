#!/usr/bin/env python3
"""llama.cpp's side of scripts/bench-cpu.sh: greedy generation with llama-cpp-python, timed the
way `strata run --json` times itself (prompt: one eval of the whole prompt; generation: the
loop of argmax + one-token eval), printed as one JSON line. Like strata, llama.cpp computes the
logits of the last position only (logits_all=False; read through the context, since
llama-cpp-python then keeps no copy).

    python scripts/llama-cpp-bench.py MODEL THREADS PROMPT N
"""
import json, sys, time
import numpy as np
from llama_cpp import Llama
model, threads, prompt, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
m = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=512, logits_all=False, verbose=False)
n_vocab = m.n_vocab()
last_logits = lambda: np.ctypeslib.as_array(m._ctx.get_logits(), shape=(n_vocab,))
m.eval([1, 2, 3, 4]); m.reset()  # warm-up: the first eval sets up buffers
ids = m.tokenize(prompt.encode(), add_bos=False, special=True)
t0 = time.perf_counter(); m.eval(ids); t1 = time.perf_counter()
out = []
for i in range(n):
    tok = int(np.argmax(last_logits()))
    out.append(tok)
    if i + 1 < n:
        m.eval([tok])
t2 = time.perf_counter()
print(json.dumps({"engine": "llama.cpp", "prompt_tokens": len(ids), "prompt_tokens_per_second": len(ids) / (t1 - t0),
                  "generated_tokens": n, "generation_tokens_per_second": n / (t2 - t1), "generated_ids": out}))
