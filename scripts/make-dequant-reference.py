#!/usr/bin/env python3
"""Writes tests/data/dequant/*.json: reference dequantizations by an independent implementation,
gguf-py's `gguf.quants.dequantize` (llama.cpp's Python package), which tests/quant.rs compares
with strata's reference dequantizer bit for bit.

Two kinds of data:
- random.json: per type, seeded random blocks (random quant bits and packed sub-block scales;
  binary16 scales drawn from normal values, plus edge cases: zero, negative zero, subnormal,
  the largest finite, negative, infinity and NaN) and the f32 values gguf-py gives them;
- gemma.json: a few rows of real tensors of models/gemma-3-270m-q4_k_m.gguf (Q4_K, Q6_K,
  Q5_0, Q8_0 in that file), named by tensor and row; the test reads the rows from the file.

f32 values are stored as the hex of their little-endian bytes, so they are exact. Needs the
versions pinned in scripts/reference-env.sh (gguf==0.17.1, numpy==2.2.6), e.g.

    python3 -m venv /tmp/venv-gguf && /tmp/venv-gguf/bin/pip install gguf==0.17.1 numpy==2.2.6
    /tmp/venv-gguf/bin/python scripts/make-dequant-reference.py
"""

import importlib.metadata
import json
import pathlib
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "dequant"
GEMMA = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
SEED = 20261130

# Byte offsets of the binary16 scale fields of each block (d, and m/dmin where present).
SCALE_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}
# Blocks per type: fewer for the 256-value super-blocks, to keep the file small.
N_BLOCKS = {t: (12 if gguf.GGML_QUANT_SIZES[t][0] == 256 else 40) for t in SCALE_FIELDS}
EDGE_SCALES = [0x0000, 0x8000, 0x0001, 0x03FF, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00]


def hex_f32(values: np.ndarray) -> str:
    return np.ascontiguousarray(values, dtype="<f4").tobytes().hex()


def random_blocks(rng: np.random.Generator, t: T) -> np.ndarray:
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[t]
    n = N_BLOCKS[t]
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    for i in range(n):
        for k, at in enumerate(SCALE_FIELDS[t]):
            if i < len(EDGE_SCALES) and k == 0:
                bits = EDGE_SCALES[i]
            else:
                # A normal binary16 of either sign, exponent -12..2.
                v = np.float16(rng.uniform(1.0, 2.0) * 2.0 ** rng.integers(-12, 3) * rng.choice([-1.0, 1.0]))
                bits = int(v.view(np.uint16))
            raw[i, at] = bits & 0xFF
            raw[i, at + 1] = bits >> 8
    return raw


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    generator = f"gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}, seed {SEED}"
    random = {"generator": generator, "types": []}
    with np.errstate(all="ignore"):
        for t in SCALE_FIELDS:
            raw = random_blocks(rng, t)
            values = dequantize(raw.reshape(-1), t)
            random["types"].append({
                "type": t.name,
                "id": int(t),
                "blocks": int(raw.shape[0]),
                "bytes_hex": raw.tobytes().hex(),
                "values_f32_hex": hex_f32(values),
            })
    (OUT / "random.json").write_text(json.dumps(random, indent=1) + "\n")

    if not GEMMA.is_file():
        print(f"{GEMMA} is missing: gemma.json not written", file=sys.stderr)
        return 1
    reader = gguf.GGUFReader(GEMMA)
    picks = {
        "blk.0.attn_output.weight": [0, 639],   # Q4_K, 1024 values per row
        "blk.17.attn_output.weight": [311],     # Q4_K, the last layer
        "blk.0.ffn_down.weight": [0, 640 - 1],  # Q6_K, 2048
        "blk.3.ffn_down.weight": [200],         # Q6_K
        "blk.0.attn_q.weight": [0, 1023],       # Q5_0, 640
        "blk.0.ffn_up.weight": [1000],          # Q5_0
        "blk.0.attn_v.weight": [5],             # Q8_0, 640
        "token_embd.weight": [0, 262143],       # Q8_0
    }
    rows = []
    by_name = {t.name: t for t in reader.tensors}
    for name, want in picks.items():
        info = by_name[name]
        t = info.tensor_type
        ne0 = int(info.shape[0])
        data = np.asarray(info.data)  # (rows, row_bytes) for quantized types
        for r in want:
            values = dequantize(data[r].reshape(-1), t)
            assert values.shape == (ne0,), (name, values.shape)
            rows.append({"tensor": name, "type": t.name, "row": r, "cols": ne0, "values_f32_hex": hex_f32(values)})
    gemma = {"file": GEMMA.name, "generator": generator, "rows": rows}
    (OUT / "gemma.json").write_text(json.dumps(gemma, indent=1) + "\n")
    for f in sorted(OUT.glob("*.json")):
        print(f"{f.relative_to(ROOT)}: {f.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
