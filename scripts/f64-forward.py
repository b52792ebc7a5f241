#!/usr/bin/env python3
"""A float64 forward pass of a GGUF model: the oracle strata's exact CPU path is held to.

Weights are dequantized with gguf-py (`gguf.quants.dequantize`, the format's own definition)
and everything after that is numpy float64: no activation rounding, no f16, no reordering
noise. The result is what the quantized model computes in exact arithmetic, up to about 1e-12;
an engine's distance to it is that engine's own numerical error.

Architectures (`general.architecture`):

- llama: RMSNorm, RoPE on adjacent pairs (x[2i], x[2i+1]) as in GGUF llama files (the
  converter permutes Q/K rows so that this matches the HF half-split form), GQA attention,
  SwiGLU FFN, optional rope_freqs.weight (Llama 3.1 frequency divisors), output.weight or the
  tied token embedding.
- qwen2: llama plus Q/K/V biases, RoPE on halves (x[i], x[i + n_rot/2]) (llama.cpp's NEOX).
- qwen3: llama plus per-head RMSNorm of Q and K (attn_q_norm, attn_k_norm) before RoPE, head
  size from attention.key_length, RoPE on halves.
- qwen3moe, and llama with {arch}.expert_count > 0 (Mixtral): the FFN is a mixture of experts
  (llama.cpp's build_moe_ffn with softmax gating and norm_w for both): router logits
  x @ ffn_gate_inp, softmax over all experts, the expert_used_count largest kept (ties: lower
  index), their probabilities divided by their sum; the output is the weighted sum of the
  chosen experts' SwiGLU FFNs (slices of the 3-D ffn_{gate,up,down}_exps tensors).
- gemma3 (facts from llama.cpp's llm_build_gemma3 and its gemma3 hparams): embeddings scaled
  by sqrt(n_embd); RMSNorm with the weights as stored (the converter already stored 1 + w);
  per-head Q/K RMSNorm before RoPE on halves; Q scaled by 1/sqrt(key_length) (llama.cpp's
  f_attention_scale, which is Gemma's 1/sqrt(query_pre_attn_scalar) for every size but 27B,
  where it is 1/sqrt(n_embd / n_head)); attention output and FFN output each RMS-normed
  (post_attention_norm, post_ffw_norm) before their residual add; FFN GELU (tanh form) of
  gate times up; sliding-window layers (all but every 6th: il % 6 < 5) attend to the last
  attention.sliding_window positions only and use RoPE base 10000 (scale 1), the others the
  file's rope.freq_base; no final logit soft-capping.

Usage:

    f64-forward.py MODEL --ids 1,2,3 [--top-k 10] [--logits-of 5,6]
        JSON to stdout: per position, the top-k ids and logits and the logits of --logits-of.
    f64-forward.py MODEL --cases REF.json --out OUT.json [--top-k 10] [--made-by TEXT]
        For every case of a llama.cpp reference file (a list of cases, or {"cases": [...]}),
        each {"prompt_ids": [...], "positions": [{"ids": [...], ...}, ...]}: per position the
        f64 top-k ("ids", "logits") and the f64 logits of the reference's ids ("ref_ids",
        "ref_logits"). Written with made_by, the model's name and SHA-256, and the versions.
        A case may set "sliding_window": N (gemma3) to run as if the file's
        attention.sliding_window were N, so that short prompts cross the window's edge; the
        engine under test must make the same change to the file's metadata.

Needs numpy and gguf (scripts/reference-env.sh makes .venv-ref with both; this script
re-executes itself there when they are missing).
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reexec_in_reference_env():
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        py = subprocess.run([os.path.join(ROOT, "scripts", "reference-env.sh"), "--python"],
                            check=True, capture_output=True, text=True).stdout.strip()
        os.execv(py, [py] + sys.argv)


reexec_in_reference_env()

import gguf  # noqa: E402
import numpy as np  # noqa: E402

SUPPORTED = ("llama", "qwen2", "qwen3", "gemma3", "qwen3moe")
# llama.cpp's gemma3 hparams: every 6th layer is global, the rest slide; the sliding ones use
# RoPE base 10000 at scale 1 whatever the file says for the global ones.
GEMMA3_SWA_PATTERN = 6
GEMMA3_SWA_ROPE_BASE = 10000.0


class Model:
    """The hyperparameters and float64 weights of one GGUF file."""

    def __init__(self, path):
        self.reader = gguf.GGUFReader(path)
        self.arch = self.field("general.architecture")
        if self.arch not in SUPPORTED:
            sys.exit(f"f64-forward: architecture {self.arch!r} is not supported ({', '.join(SUPPORTED)})")
        a = self.arch
        self.n_embd = int(self.field(f"{a}.embedding_length"))
        self.n_layer = int(self.field(f"{a}.block_count"))
        self.n_head = int(self.field(f"{a}.attention.head_count"))
        self.n_head_kv = int(self.field(f"{a}.attention.head_count_kv", self.n_head))
        self.head_dim = int(self.field(f"{a}.attention.key_length", self.n_embd // self.n_head))
        self.head_dim_v = int(self.field(f"{a}.attention.value_length", self.head_dim))
        self.eps = float(self.field(f"{a}.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(self.field(f"{a}.rope.freq_base", 10000.0))
        self.n_rot = int(self.field(f"{a}.rope.dimension_count", self.head_dim))
        scaling = self.field(f"{a}.rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            sys.exit(f"f64-forward: RoPE scaling {scaling!r} is not supported (none, linear)")
        factor = float(self.field(f"{a}.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
        self.rope_scale = 1.0 / factor if factor else 1.0
        self.n_swa = int(self.field(f"{a}.attention.sliding_window", 0)) if a == "gemma3" else 0
        self.neox = a in ("qwen2", "qwen3", "gemma3", "qwen3moe")
        self.n_expert = int(self.field(f"{a}.expert_count", 0))
        self.n_expert_used = int(self.field(f"{a}.expert_used_count", 0)) if self.n_expert else 0
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.cache = {}
        self.embd = self.weight("token_embd.weight")
        self.output = self.weight("output.weight") if "output.weight" in self.tensors else self.embd
        self.rope_freqs = self.weight("rope_freqs.weight") if "rope_freqs.weight" in self.tensors else None

    def field(self, key, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            if default is None:
                sys.exit(f"f64-forward: the file has no {key}")
            return default
        return f.contents()

    def has(self, name):
        return name in self.tensors

    def weight(self, name):
        """The tensor dequantized to float64, numpy shape (rows, row length) as GGUF stores it."""
        if name not in self.cache:
            t = self.tensors.get(name)
            if t is None:
                sys.exit(f"f64-forward: the file has no tensor {name}")
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = tuple(int(d) for d in reversed(t.shape))
            self.cache[name] = w.reshape(shape)
        return self.cache[name]

    def layer_is_swa(self, il):
        return self.arch == "gemma3" and il % GEMMA3_SWA_PATTERN < GEMMA3_SWA_PATTERN - 1


def rms_norm(x, w, eps):
    """RMSNorm over the last axis, times w."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, n_rot, base, scale, neox, freq_factors=None):
    """Rotates the first n_rot dims of every head of x (tokens, heads, head_dim) in place form.

    Adjacent pairs (x[2i], x[2i+1]) for llama files, halves (x[i], x[i + n_rot/2]) for neox.
    Frequency i turns by pos * scale * base^(-2i/n_rot) / freq_factors[i]."""
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors[:half]
    theta = (np.asarray(positions, dtype=np.float64) * scale)[:, None] * inv[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def linear(m, x, name):
    y = x @ m.weight(name + ".weight").T
    if m.has(name + ".bias"):
        y = y + m.weight(name + ".bias")
    return y


def attention(m, il, x, positions):
    """Self-attention of layer il over the whole sequence x (tokens, n_embd), causal."""
    p = f"blk.{il}"
    t = x.shape[0]
    q = linear(m, x, f"{p}.attn_q").reshape(t, m.n_head, m.head_dim)
    k = linear(m, x, f"{p}.attn_k").reshape(t, m.n_head_kv, m.head_dim)
    v = linear(m, x, f"{p}.attn_v").reshape(t, m.n_head_kv, m.head_dim_v)
    if m.arch in ("qwen3", "gemma3", "qwen3moe"):
        q = rms_norm(q, m.weight(f"{p}.attn_q_norm.weight"), m.eps)
        k = rms_norm(k, m.weight(f"{p}.attn_k_norm.weight"), m.eps)
    base, scale = m.rope_base, m.rope_scale
    if m.layer_is_swa(il):
        base, scale = GEMMA3_SWA_ROPE_BASE, 1.0
    q = rope(q, positions, m.n_rot, base, scale, m.neox, m.rope_freqs)
    k = rope(k, positions, m.n_rot, base, scale, m.neox, m.rope_freqs)
    kq_scale = 1.0 / math.sqrt(m.head_dim)
    pos = np.asarray(positions)
    mask = pos[None, :] > pos[:, None]  # key after query
    if m.layer_is_swa(il):
        mask |= pos[:, None] - pos[None, :] >= m.n_swa  # llama.cpp's standard SWA
    group = m.n_head // m.n_head_kv
    out = np.empty((t, m.n_head, m.head_dim_v))
    for h in range(m.n_head):
        kv = h // group
        s = (q[:, h, :] @ k[:, kv, :].T) * kq_scale
        s = np.where(mask, -np.inf, s)
        s = s - s.max(axis=1, keepdims=True)
        w = np.exp(s)
        w /= w.sum(axis=1, keepdims=True)
        out[:, h, :] = w @ v[:, kv, :]
    return linear(m, out.reshape(t, m.n_head * m.head_dim_v), f"{p}.attn_output")


def moe_ffn(m, il, x):
    """The mixture-of-experts FFN of layer il for x (tokens, n_embd)."""
    p = f"blk.{il}"
    logits = x @ m.weight(f"{p}.ffn_gate_inp.weight").T
    gate, up, down = (m.weight(f"{p}.ffn_{n}_exps.weight") for n in ("gate", "up", "down"))
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        z = logits[t] - logits[t].max()
        probs = np.exp(z) / np.exp(z).sum()
        chosen = np.argsort(-probs, kind="stable")[:m.n_expert_used]
        weights = probs[chosen] / probs[chosen].sum()
        for e, w in zip(chosen, weights):
            h = silu(gate[e] @ x[t]) * (up[e] @ x[t])
            out[t] += w * (down[e] @ h)
    return out


def ffn(m, il, x):
    p = f"blk.{il}"
    if m.n_expert:
        return moe_ffn(m, il, x)
    gate = linear(m, x, f"{p}.ffn_gate")
    up = linear(m, x, f"{p}.ffn_up")
    act = gelu_tanh(gate) if m.arch == "gemma3" else silu(gate)
    return linear(m, act * up, f"{p}.ffn_down")


def forward(m, ids):
    """Logits (tokens, n_vocab) in float64 for the token ids at positions 0..len-1."""
    for i in ids:
        if not 0 <= i < m.embd.shape[0]:
            sys.exit(f"f64-forward: token id {i} is outside the vocabulary of {m.embd.shape[0]}")
    positions = list(range(len(ids)))
    x = m.embd[np.asarray(ids)].copy()
    if m.arch == "gemma3":
        x *= math.sqrt(m.n_embd)
    for il in range(m.n_layer):
        p = f"blk.{il}"
        a = attention(m, il, rms_norm(x, m.weight(f"{p}.attn_norm.weight"), m.eps), positions)
        if m.arch == "gemma3":
            a = rms_norm(a, m.weight(f"{p}.post_attention_norm.weight"), m.eps)
        x = x + a
        f = ffn(m, il, rms_norm(x, m.weight(f"{p}.ffn_norm.weight"), m.eps))
        if m.arch == "gemma3":
            f = rms_norm(f, m.weight(f"{p}.post_ffw_norm.weight"), m.eps)
        x = x + f
    x = rms_norm(x, m.weight("output_norm.weight"), m.eps)
    return x @ m.output.T


def top_k(row, k):
    order = np.argsort(-row, kind="stable")[:k]
    return [int(i) for i in order], [float(row[i]) for i in order]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions():
    from importlib.metadata import version
    return f"numpy {np.__version__}, gguf {version('gguf')}, python {sys.version.split()[0]}"


def run_cases(m, ref, k):
    cases = ref["cases"] if isinstance(ref, dict) else ref
    out = []
    file_window = m.n_swa
    for case in cases:
        ids = [int(i) for i in case["prompt_ids"]]
        window = case.get("sliding_window")
        if window is not None and m.arch != "gemma3":
            sys.exit(f"f64-forward: a case sets sliding_window but {m.arch} has no sliding window")
        m.n_swa = int(window) if window is not None else file_window
        logits = forward(m, ids)
        positions = []
        for p, pos in enumerate(case["positions"]):
            top_ids, top_logits = top_k(logits[p], k)
            ref_ids = [int(i) for i in pos["ids"]]
            positions.append({"ids": top_ids, "logits": top_logits, "ref_ids": ref_ids,
                              "ref_logits": [float(logits[p][i]) for i in ref_ids]})
        entry = {"prompt_ids": ids, "positions": positions}
        if window is not None:
            entry = {"sliding_window": int(window), **entry}
        if "prompt" in case:
            entry = {"prompt": case["prompt"], **entry}
        out.append(entry)
        print(f"f64-forward: case of {len(ids)} tokens done", file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ids", help="comma-separated token ids")
    ap.add_argument("--logits-of", default="", help="comma-separated ids whose logits to print too")
    ap.add_argument("--cases", help="a llama.cpp reference JSON whose prompt_ids and positions to follow")
    ap.add_argument("--out", help="with --cases: the JSON file to write")
    ap.add_argument("--made-by", help="with --cases: the made_by text (default: this command line)")
    ap.add_argument("--top-k", type=int, default=10)
    args = ap.parse_args()
    m = Model(args.model)
    if args.cases:
        if not args.out:
            sys.exit("f64-forward: --cases needs --out")
        with open(args.cases) as f:
            ref = json.load(f)
        cases = run_cases(m, ref, args.top_k)
        made_by = args.made_by or "scripts/f64-forward.py " + " ".join(
            os.path.relpath(a, ROOT) if os.path.exists(a) else a for a in sys.argv[1:])
        doc = {"made_by": f"{made_by} ({versions()})", "model": os.path.basename(args.model),
               "model_sha256": sha256(args.model), "top_k": args.top_k, "cases": cases}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"f64-forward: wrote {args.out}: {len(cases)} cases", file=sys.stderr)
        return
    if not args.ids:
        sys.exit("f64-forward: give --ids or --cases")
    ids = [int(s) for s in args.ids.split(",") if s.strip()]
    extra = [int(s) for s in args.logits_of.split(",") if s.strip()]
    logits = forward(m, ids)
    rows = []
    for p in range(len(ids)):
        top_ids, top_logits = top_k(logits[p], args.top_k)
        rows.append({"ids": top_ids, "logits": top_logits, "logits_of": {str(i): float(logits[p][i]) for i in extra}})
    json.dump({"model": os.path.basename(args.model), "prompt_ids": ids, "positions": rows}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
