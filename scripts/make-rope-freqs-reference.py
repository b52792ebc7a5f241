#!/usr/bin/env python3
"""llama.cpp's logits and greedy tokens for the default model with Llama 3.1-style RoPE
frequency factors added (tensor rope_freqs.weight), for
crates/strata-model/tests/data/reference/rope_freqs.json.

No small public model ships the tensor, so this adds one to the default model: factors made by
Llama 3.1's formula (factor 8, low/high frequency factors 1 and 4), as llama.cpp's converter
computes them, but for an original context of 64 positions instead of 8192. With 8192 only the
slowest frequencies change, which moves the logits of prompts this short by less than the two
engines' rounding noise; with 64 most frequencies are divided by 1.5 to 8 and the test can see
whether they are applied. The test builds the same file in memory from the default model and
these factors, so it needs no extra file.

    scripts/make-rope-freqs-reference.py            # uses .venv-ref (scripts/reference-env.sh)
"""
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "crates", "strata-model", "tests", "data", "reference", "rope_freqs.json")
PROMPTS = [
    "The history of the printing press",
    # Long enough that the low frequencies, which the factors slow down by up to 8x, turn far.
    "In the middle of the valley there was a small town with a river running through it. "
    "Every morning the baker opened his shop before sunrise, and the smell of fresh bread "
    "drifted along the narrow streets. The children walked to school past the old stone bridge, "
    "where fishermen sat with their lines in the water and talked about the weather, the harvest "
    "and the news from the city. In the evening the square filled with people",
]
N_GREEDY = 16
# The "original context" of the factor formula (Llama 3.1: 8192); see the module doc.
OLD_CONTEXT = 64


def reexec_in_reference_env():
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        py = subprocess.run([os.path.join(ROOT, "scripts", "reference-env.sh"), "--python"],
                            check=True, capture_output=True, text=True).stdout.strip()
        os.execv(py, [py] + sys.argv)


def llama31_factors(base, n_rot, old_context_len):
    """The divisors of Llama 3.1's RoPE scaling, as llama.cpp's convert_hf_to_gguf computes them."""
    import numpy as np
    factor, low_freq_factor, high_freq_factor = 8.0, 1.0, 4.0
    freqs = 1.0 / (base ** (np.arange(0, n_rot, 2, dtype=np.float32) / n_rot))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(1.0)
        elif wavelen > low_freq_wavelen:
            out.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_with_factors(src, dst, factors):
    """A copy of src (metadata and tensors unchanged) plus the tensor rope_freqs.weight."""
    import gguf
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.add_tensor_info("rope_freqs.weight", factors.shape, factors.dtype, factors.nbytes,
                           gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    writer.write_tensor_data(factors)
    writer.close()


def main():
    reexec_in_reference_env()
    import gguf
    import numpy as np
    from llama_cpp import Llama

    if not os.path.exists(MODEL):
        subprocess.run([os.path.join(ROOT, "scripts", "fetch-model.sh")], check=True)
    reader = gguf.GGUFReader(MODEL)
    base = float(reader.fields["llama.rope.freq_base"].contents())
    n_rot = int(reader.fields["llama.rope.dimension_count"].contents())
    factors = llama31_factors(base, n_rot, OLD_CONTEXT)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "with-rope-freqs.gguf")
        write_with_factors(MODEL, path, factors)
        m = Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, verbose=False, seed=0)
        cases = []
        for prompt in PROMPTS:
            ids = m.tokenize(prompt.encode(), add_bos=False, special=True)
            m.reset()
            m.eval(ids)
            positions = []
            for p in range(len(ids)):
                row = np.array(m.scores[p])
                top = np.argsort(-row, kind="stable")[:10]
                positions.append({"ids": [int(i) for i in top], "logits": [float(row[i]) for i in top]})
            greedy = []
            for _ in range(N_GREEDY):
                tok = int(np.argmax(m.scores[m.n_tokens - 1]))
                greedy.append(tok)
                m.eval([tok])
            cases.append({"prompt": prompt, "prompt_ids": [int(i) for i in ids], "positions": positions,
                          "greedy_ids": greedy})
    doc = {"made_by": "scripts/make-rope-freqs-reference.py (llama-cpp-python %s)" % __import__("llama_cpp").__version__,
           "rope_freq_base": base, "n_rot": n_rot, "old_context_len": OLD_CONTEXT, "factors": [float(f) for f in factors], "cases": cases}
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases, factors {[round(float(f), 3) for f in factors]}")


if __name__ == "__main__":
    main()
